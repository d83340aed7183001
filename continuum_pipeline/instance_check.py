"""Is the code location being loaded on the Dagster instance `continuum` records its runs in?

`continuum` sets DAGSTER_HOME to $CONTINUUM_HOME/dagster itself. A `dg launch` / `dagster …` command typed in the
project folder does not: without DAGSTER_HOME Dagster runs on a temporary instance and deletes it on exit, so its
runs, ticks and materializations vanish and `continuum ui` never shows them. Dagster only logs that at info level;
this says it loudly, with the fix, when the code location loads.

No `.env` instead: Dagster's CLI loads `./.env` *over* the environment (dagster._cli.utils._inject_local_env_file),
so a checked-in DAGSTER_HOME would silently redirect `CONTINUUM_HOME=/elsewhere continuum ui` run from the project
folder; python-dotenv's `${VAR:-default}` cannot nest `${PWD}` to keep an explicit setting, and Dagster needs
DAGSTER_HOME absolute.

Stdlib only (the code location calls it; nothing here needs Dagster).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path

from continuum_pipeline.settings import Settings


class DagsterHomeWarning(UserWarning):
    """Dagster commands here would not use the instance `continuum` and `continuum ui` use."""


def _fix(settings: Settings) -> str:
    return (f"Fix: in this shell `export CONTINUUM_HOME={settings.home} DAGSTER_HOME={settings.dagster_home}` "
            "(in the project folder `eval \"$(make -s env)\"` prints and sets both), then run the Dagster command "
            "again; or use `continuum ui`, which sets them itself.")


def dagster_home_problem(settings: Settings, environ: Mapping[str, str] | None = None) -> str | None:
    """One paragraph saying why this process's Dagster instance is not the home's, with the fix; None if it is."""
    environ = os.environ if environ is None else environ
    dagster_home = environ.get("DAGSTER_HOME", "")
    if not dagster_home:
        return ("DAGSTER_HOME is not set: this Dagster command runs on a TEMPORARY instance that is deleted when it "
                "exits, so its runs, sensor ticks and materializations vanish and `continuum ui` (which uses "
                f"{settings.dagster_home}) never shows them. " + _fix(settings))
    # In production the instance's storage is named in its dagster.yaml (deploy/), wherever DAGSTER_HOME is.
    if settings.profile == "local" and Path(dagster_home).expanduser().resolve() != settings.dagster_home:
        return (f"DAGSTER_HOME={dagster_home} is not the instance of CONTINUUM_HOME={settings.home}: `continuum` "
                f"commands and `continuum ui` record runs in {settings.dagster_home}, so runs and ticks made here "
                "will not show there (nor theirs here). " + _fix(settings))
    return None


_warned: set[str] = set()


def warn_if_not_continuum_home(settings: Settings) -> None:
    """Warn (DagsterHomeWarning, to stderr) when the code location loads on another instance than the home's.
    Once per process and problem: Dagster loads the definitions several times per command, resetting the warnings
    registry each time (catch_warnings), and one paragraph is loud enough."""
    problem = dagster_home_problem(settings)
    if problem and problem not in _warned:
        _warned.add(problem)
        warnings.warn(problem, DagsterHomeWarning, stacklevel=2)
