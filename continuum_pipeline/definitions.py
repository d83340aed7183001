"""The Continuum code location: the single entry point Dagster loads (workspace.yaml)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from continuum_pipeline.defs.curation.assets import sft_dataset
from continuum_pipeline.defs.evaluation.assets import eval_gate, golden_set
from continuum_pipeline.defs.ingest.assets import ingest_job, ingest_landing_segments
from continuum_pipeline.defs.ingest.sensors import landing_sensor
from continuum_pipeline.defs.labels.assets import reward_labels
from continuum_pipeline.defs.lake.assets import (
    lake_maintenance,
    lake_maintenance_job,
    lake_maintenance_schedule,
)
from continuum_pipeline.defs.loggers import compact_console
from continuum_pipeline.defs.registry.assets import registered_model
from continuum_pipeline.defs.resources import default_sql_dir, resources_from_settings
from continuum_pipeline.defs.sql.assets import sql_assets, sql_models_job
from continuum_pipeline.defs.training.assets import base_model, candidate_model
from continuum_pipeline.defs.triggers.sensors import (
    error_rate_sensor,
    monitoring_job,
    quality_drop_sensor,
    sample_count_sensor,
    training_job,
    weekly_training,
)
from continuum_pipeline.settings import Settings, get_settings


def build_definitions(settings: Settings | None = None, sql_dir: Path | None = None) -> dg.Definitions:
    settings = settings or get_settings()
    sql_dir = sql_dir or default_sql_dir()
    return dg.Definitions(
        assets=[ingest_landing_segments, lake_maintenance, reward_labels, *sql_assets(sql_dir), sft_dataset,
                golden_set, base_model, candidate_model, registered_model],
        asset_checks=[eval_gate],
        jobs=[ingest_job, sql_models_job, lake_maintenance_job, monitoring_job, training_job],
        sensors=[landing_sensor, sample_count_sensor, quality_drop_sensor, error_rate_sensor],
        schedules=[lake_maintenance_schedule, weekly_training],
        resources=resources_from_settings(settings),
        loggers={"compact_console": compact_console},
    )


defs = build_definitions()
