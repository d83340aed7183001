"""One task's learning loop as Dagster definitions: what FlywheelComponent.build_defs returns.

Every asset key starts with the task's name, every group is `<task>_<stage>`, and jobs, sensors and the
schedule are named after the task, so two tasks in one code location never share a model, a trigger or a gate.
"""

from pathlib import Path

import dagster as dg

from continuum_pipeline.task.config import TaskConfig


def build_task_definitions(task: TaskConfig, sql_dir: Path | None = None) -> dg.Definitions:
    from continuum_pipeline.defs.flywheel import (
        curation,
        curve,
        drift,
        embeddings,
        evaluation,
        labels,
        registry,
        rollout,
        sql,
        training,
        triggers,
    )
    from continuum_pipeline.defs.loggers import compact_console
    from continuum_pipeline.defs.privacy import retrain_on_forget_sensor
    from continuum_pipeline.defs.resources import default_sql_dir

    assets = [labels.reward_labels(task), *sql.task_models(task, sql_dir or default_sql_dir()),
              *evaluation.golden_sets(task), embeddings.embeddings_asset(task), curation.sft_dataset(task),
              training.base_model(task), training.candidate_model(task), registry.registered_model(task),
              registry.champion_spec(task), curve.learning_curve(task)]
    assets = dg.map_asset_specs(lambda spec: _with_column_schema(task, spec), assets)
    training_job, monitoring_job = triggers.jobs(task)
    rollout_asset, rollout_job, canary_sensor = rollout.definitions(task)
    return dg.Definitions(
        assets=[*assets, rollout_asset],
        asset_checks=[evaluation.eval_gate(task)],
        jobs=[training_job, monitoring_job, registry.promotion_job(task), rollout_job],
        sensors=[*triggers.sensors(task, training_job), drift.drift_sensor(task, training_job),
                 retrain_on_forget_sensor(task, training_job), canary_sensor],
        schedules=triggers.schedules(task, training_job),
        loggers={"compact_console": compact_console},  # the training job's default run config names it
    )


def _with_column_schema(task: TaskConfig, spec: dg.AssetSpec) -> dg.AssetSpec:
    """Declare the column schema (with descriptions) of the task's tables that have a fixed contract, so the UI
    shows it before the first materialization; SQL models report theirs when they run."""
    from continuum_pipeline.curation.dataset import SFT_DATASET
    from continuum_pipeline.curation.embeddings import EMBEDDINGS
    from continuum_pipeline.defs.flywheel.keys import key
    from continuum_pipeline.defs.metadata import column_schema
    from continuum_pipeline.evaluation.curve import LEARNING_CURVE
    from continuum_pipeline.evaluation.golden import GOLDEN_SET
    from continuum_pipeline.lake.schemas import REWARD_LABELS

    contracts = {key(task, "reward_labels"): REWARD_LABELS, key(task, "sft_dataset"): SFT_DATASET,
                 key(task, "embeddings"): EMBEDDINGS, key(task, "learning_curve"): LEARNING_CURVE,
                 **{key(task, "golden", g.name): GOLDEN_SET for g in task.golden_sets}}
    if spec.key not in contracts or "dagster/column_schema" in spec.metadata:
        return spec
    return spec.merge_attributes(metadata={"dagster/column_schema": column_schema(contracts[spec.key])})
