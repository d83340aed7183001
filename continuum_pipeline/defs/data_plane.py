"""The shared data plane: ingest, lake upkeep, SQL staging models, their jobs, sensors and schedules.

One set per code location. Ours (definitions.py) adds the task instances of CONTINUUM_TASKS; a dg project
with its own FlywheelComponent instances merges it once:

    dg.Definitions.merge(dg.load_from_defs_folder(path_within_project=...), data_plane())
"""

from pathlib import Path

import dagster as dg

from continuum_pipeline.defs.ingest.assets import ingest_job, ingest_landing_segments
from continuum_pipeline.defs.ingest.sensors import landing_sensor
from continuum_pipeline.defs.lake.assets import lake_maintenance_job, lake_maintenance_schedule
from continuum_pipeline.defs.loggers import compact_console
from continuum_pipeline.defs.privacy import forget_job, privacy_upkeep_job, privacy_upkeep_schedule
from continuum_pipeline.defs.resources import default_sql_dir, resources_from_settings
from continuum_pipeline.defs.sql.assets import sql_assets, sql_models_job
from continuum_pipeline.settings import Settings, get_settings

# On by default: reward labels and SQL models (their `follows_upstream` condition) follow each ingest with nobody
# switching a toggle; Dagster's own default automation sensor starts stopped. Every asset of the code location with
# an automation condition is covered (those without one are not evaluated).
automation_sensor = dg.AutomationConditionSensorDefinition(
    "continuum_automation_sensor", target=dg.AssetSelection.all(), default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Labels and SQL models follow ingest: each asset's automation condition (eager, or missing with its "
                "parents present), evaluated every 30 s.")


def data_plane(settings: Settings | None = None, sql_dir: Path | None = None) -> dg.Definitions:
    """The shared data plane: ingest, lake upkeep, SQL staging models, their jobs, sensor and schedule. A dg
    project with FlywheelComponent instances merges this once into its definitions."""
    settings = settings or get_settings()
    return dg.Definitions(
        assets=[ingest_landing_segments, *sql_assets(sql_dir or default_sql_dir())],
        jobs=[ingest_job, sql_models_job, lake_maintenance_job, forget_job, privacy_upkeep_job],
        sensors=[landing_sensor, automation_sensor],
        schedules=[lake_maintenance_schedule, privacy_upkeep_schedule],
        resources=resources_from_settings(settings),
        loggers={"compact_console": compact_console},
    )
