"""The Continuum code location: the single entry point Dagster loads (workspace.yaml).

The shared data plane (ingest, lake upkeep, SQL staging models) once, plus one FlywheelComponent instance
per task YAML found in CONTINUUM_TASKS (default: the packaged support-desk example's `defs.yaml`).
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from continuum_pipeline.defs.data_plane import data_plane
from continuum_pipeline.instance_check import warn_if_not_continuum_home
from continuum_pipeline.settings import Settings, SettingsError, get_settings
from continuum_pipeline.settings import task_yaml_files as find_task_yaml_files


def task_yaml_files(paths: tuple[Path, ...]) -> list[Path]:
    """Task instances: YAML files given directly, or every `defs.yaml` under a given folder."""
    for path in paths:
        # Checked here, not in Settings: the capture SDK reads Settings inside apps that have no task files.
        if not path.exists():
            raise SettingsError(f"CONTINUUM_TASKS names {path}, which does not exist; point it at task YAML "
                                "files or folders (`continuum init TASK` writes one)")
    return find_task_yaml_files(paths)


def load_tasks(paths: tuple[Path, ...]) -> list[dg.Definitions]:
    """Build every task instance: validated as a task (errors name the YAML path and the fix), then built by
    FlywheelComponent as in any dg project."""
    from continuum_pipeline.component import FlywheelComponent
    from continuum_pipeline.task.config import load_task_config

    defs = []
    for f in task_yaml_files(paths):
        task = load_task_config(f)
        context = dg.ComponentTree.for_test().load_context
        component = FlywheelComponent.from_attributes_dict(attributes=task.model_dump(mode="json"), context=context)
        defs.append(component.build_defs(context))
    return defs


def build_definitions(settings: Settings | None = None, sql_dir: Path | None = None) -> dg.Definitions:
    settings = settings or get_settings()
    # Steps run one after another in the run's process: two torch steps at once on a small machine run ~10×
    # slower, training is out of process already (Pipes), and a step subprocess would re-import everything.
    return dg.Definitions.merge(data_plane(settings, sql_dir), *load_tasks(settings.tasks),
                                dg.Definitions(executor=dg.in_process_executor))


@dg.definitions
def defs() -> dg.Definitions:
    """Built when loaded (not at import): a code location loaded again in one process sees the settings in effect."""
    settings = get_settings()
    warn_if_not_continuum_home(settings)  # `dg launch` without DAGSTER_HOME: a temporary instance, runs vanish
    return build_definitions(settings)
