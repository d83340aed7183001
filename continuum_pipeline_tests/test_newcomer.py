"""A newcomer's path: Dagster's own commands typed in the project folder use the home `continuum` uses, or say
loudly that they do not; the Makefile's install and env targets; a README that names every job, sensor and schedule
as the code location defines them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from continuum_pipeline.definitions import build_definitions
from continuum_pipeline.instance_check import dagster_home_problem
from continuum_pipeline.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
DG = Path(sys.executable).with_name("dg")
README = (REPO_ROOT / "README.md").read_text()


def shell_env(home: Path, **extra: str) -> dict[str, str]:
    """A shell as a newcomer has it: no Continuum or Dagster variables, except those given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONTINUUM_", "DAGSTER_"))}
    env.update(CONTINUUM_HOME=str(home), OMP_NUM_THREADS="1", **extra)
    return env


def runs_in(dagster_home: Path, job: str) -> list[dg.DagsterRun]:
    if not (dagster_home / "dagster.yaml").exists():
        return []
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        return list(instance.get_runs(dg.RunsFilter(job_name=job)))


def test_dg_launch_after_make_env_records_its_run_where_continuum_ui_looks(tmp_path):
    home = tmp_path / "home"
    # exactly what the README tells a newcomer to type in the project folder
    shell = subprocess.run(["bash", "-c", 'eval "$(make -s env)" && "$0" launch --job ingest_job', str(DG)],
                           cwd=REPO_ROOT, env=shell_env(home), capture_output=True, text=True, timeout=300)
    assert shell.returncode == 0, shell.stderr[-3000:]
    assert "DagsterHomeWarning" not in shell.stderr
    runs = runs_in(home / "dagster", "ingest_job")  # Settings.dagster_home: where `continuum ui` and the CLI look
    assert [r.status for r in runs] == [dg.DagsterRunStatus.SUCCESS]


def test_dg_launch_without_dagster_home_warns_once_with_the_fix_and_its_run_vanishes(tmp_path):
    home = tmp_path / "home"
    launched = subprocess.run([str(DG), "launch", "--job", "ingest_job"], cwd=REPO_ROOT, env=shell_env(home),
                              capture_output=True, text=True, timeout=300)
    assert launched.returncode == 0, launched.stderr[-3000:]
    warning = [line for line in launched.stderr.splitlines() if "DagsterHomeWarning" in line]
    assert len(warning) == 1, launched.stderr[-3000:]  # one paragraph, though Dagster loads the definitions often
    assert "DAGSTER_HOME is not set" in warning[0] and "TEMPORARY instance" in warning[0]
    assert f"export CONTINUUM_HOME={home} DAGSTER_HOME={home / 'dagster'}" in warning[0]
    assert "continuum ui" in warning[0]
    assert runs_in(home / "dagster", "ingest_job") == []  # what the warning says: the UI would never see it


def test_the_warning_names_a_dagster_home_of_another_home_and_is_silent_on_the_right_one(tmp_path, monkeypatch):
    monkeypatch.delenv("CONTINUUM_PROFILE", raising=False)
    monkeypatch.setenv("CONTINUUM_HOME", str(tmp_path / "home"))
    settings = Settings.from_env()
    assert dagster_home_problem(settings, {"DAGSTER_HOME": str(tmp_path / "home" / "dagster")}) is None
    # the same folder written another way is the same instance
    assert dagster_home_problem(settings, {"DAGSTER_HOME": f"{tmp_path}/home/../home/dagster/"}) is None
    other = dagster_home_problem(settings, {"DAGSTER_HOME": str(tmp_path / "elsewhere")})
    assert other is not None and f"DAGSTER_HOME={tmp_path / 'elsewhere'} is not the instance" in other
    assert f"DAGSTER_HOME={settings.dagster_home}`" in other
    unset = dagster_home_problem(settings, {})
    assert unset is not None and unset.startswith("DAGSTER_HOME is not set")


def test_a_mismatched_dagster_home_warns_when_the_code_location_loads(tmp_path, monkeypatch):
    monkeypatch.delenv("CONTINUUM_PROFILE", raising=False)
    monkeypatch.setenv("CONTINUUM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "elsewhere"))
    from continuum_pipeline import definitions
    from continuum_pipeline.instance_check import DagsterHomeWarning

    with pytest.warns(DagsterHomeWarning, match="is not the instance of CONTINUUM_HOME"):
        loaded = definitions.defs()  # what Dagster calls when it loads the code location
    assert loaded.resolve_job_def("ingest_job").name == "ingest_job"


def make_dry_run(*args: str) -> str:
    """The commands `make install` would run on a fresh machine (a stamp that does not exist), not running them."""
    return subprocess.run(["make", "-n", "install", "STAMP=/nonexistent/.installed", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, check=True, timeout=60).stdout


def test_make_install_takes_torch_from_torch_index_only_when_given():
    default = make_dry_run()
    assert re.search(r"pip install -q torch==2\.13\.0$", default, re.M), default
    assert "--index-url" not in default
    cpu = make_dry_run("TORCH_INDEX=https://download.pytorch.org/whl/cpu")
    assert re.search(r"pip install -q --index-url https://download\.pytorch\.org/whl/cpu torch==2\.13\.0$", cpu, re.M)
    # the rest of the install is the same either way
    assert [line for line in default.splitlines() if "torch" not in line] == \
           [line for line in cpu.splitlines() if "torch" not in line]


def test_readme_names_every_job_with_its_dg_launch_and_every_trigger_with_its_default(settings):
    repo = build_definitions(settings).get_repository_def()
    jobs = [j.name for j in repo.get_all_jobs() if not j.name.startswith("__")]
    missing = [name for name in jobs if f"dg launch --job {name}" not in README]
    assert not missing, f"README's 'Run the jobs' table lacks `dg launch --job` for {missing}"
    documented = {m["name"]: (m["kind"], m["default"] == "on") for m in re.finditer(
        r"^\| `(?P<name>\w+)` \| (?P<kind>sensor|schedule) \| (?P<default>on|off) \|", README, re.M)}
    defined = {s.name: ("sensor", s.default_status == dg.DefaultSensorStatus.RUNNING) for s in repo.sensor_defs}
    defined |= {s.name: ("schedule", s.default_status == dg.DefaultScheduleStatus.RUNNING)
                for s in repo.schedule_defs}
    assert documented == defined, "README's 'Sensors and schedules on by default' table differs from the code location"
