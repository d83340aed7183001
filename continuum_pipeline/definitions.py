"""The Continuum code location: the single entry point Dagster loads (workspace.yaml).

The shared data plane (ingest, lake upkeep, SQL staging models) once, plus one FlywheelComponent instance
per task YAML found in CONTINUUM_TASKS (default: the packaged support-desk example's `defs.yaml`).
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from continuum_pipeline.defs.ingest.assets import ingest_job, ingest_landing_segments
from continuum_pipeline.defs.ingest.sensors import landing_sensor
from continuum_pipeline.defs.lake.assets import (
    lake_maintenance,
    lake_maintenance_job,
    lake_maintenance_schedule,
)
from continuum_pipeline.defs.loggers import compact_console
from continuum_pipeline.defs.resources import default_sql_dir, resources_from_settings
from continuum_pipeline.defs.sql.assets import sql_assets, sql_models_job
from continuum_pipeline.settings import Settings, get_settings


def task_yaml_files(paths: tuple[Path, ...]) -> list[Path]:
    """Task instances: YAML files given directly, or every `defs.yaml` under a given folder."""
    found: list[Path] = []
    for path in paths:
        found += sorted(path.rglob("defs.yaml")) if path.is_dir() else [path]
    return found


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
    sql_dir = sql_dir or default_sql_dir()
    shared = dg.Definitions(
        assets=[ingest_landing_segments, lake_maintenance, *sql_assets(sql_dir)],
        jobs=[ingest_job, sql_models_job, lake_maintenance_job],
        sensors=[landing_sensor],
        schedules=[lake_maintenance_schedule],
        resources=resources_from_settings(settings),
        loggers={"compact_console": compact_console},
    )
    return dg.Definitions.merge(shared, *load_tasks(settings.tasks))


defs = build_definitions()
