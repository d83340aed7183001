"""The shared data plane: ingest, lake upkeep, SQL staging models, their jobs, sensor and schedule.

One set per code location. Ours (definitions.py) adds the task instances of CONTINUUM_TASKS; a dg project
with its own FlywheelComponent instances merges it once:

    dg.Definitions.merge(dg.load_from_defs_folder(path_within_project=...), data_plane())
"""

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
from continuum_pipeline.defs.privacy import forget_job, privacy_upkeep_job, privacy_upkeep_schedule
from continuum_pipeline.defs.resources import default_sql_dir, resources_from_settings
from continuum_pipeline.defs.sql.assets import sql_assets, sql_models_job
from continuum_pipeline.settings import Settings, get_settings


def data_plane(settings: Settings | None = None, sql_dir: Path | None = None) -> dg.Definitions:
    """The shared data plane: ingest, lake upkeep, SQL staging models, their jobs, sensor and schedule. A dg
    project with FlywheelComponent instances merges this once into its definitions."""
    settings = settings or get_settings()
    return dg.Definitions(
        assets=[ingest_landing_segments, lake_maintenance, *sql_assets(sql_dir or default_sql_dir())],
        jobs=[ingest_job, sql_models_job, lake_maintenance_job, forget_job, privacy_upkeep_job],
        sensors=[landing_sensor],
        schedules=[lake_maintenance_schedule, privacy_upkeep_schedule],
        resources=resources_from_settings(settings),
        loggers={"compact_console": compact_console},
    )
