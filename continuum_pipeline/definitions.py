"""The Continuum code location: the single entry point Dagster loads (workspace.yaml)."""

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
from continuum_pipeline.defs.resources import default_sql_dir, resources_from_settings
from continuum_pipeline.defs.sql.assets import sql_assets, sql_models_job
from continuum_pipeline.settings import Settings, get_settings


def build_definitions(settings: Settings | None = None, sql_dir: Path | None = None) -> dg.Definitions:
    settings = settings or get_settings()
    sql_dir = sql_dir or default_sql_dir()
    return dg.Definitions(
        assets=[ingest_landing_segments, lake_maintenance, *sql_assets(sql_dir)],
        jobs=[ingest_job, sql_models_job, lake_maintenance_job],
        sensors=[landing_sensor],
        schedules=[lake_maintenance_schedule],
        resources=resources_from_settings(settings, sql_dir),
    )


defs = build_definitions()
