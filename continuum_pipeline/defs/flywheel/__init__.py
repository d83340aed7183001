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
        embeddings,
        evaluation,
        labels,
        registry,
        sql,
        training,
        triggers,
    )
    from continuum_pipeline.defs.privacy import retrain_on_forget_sensor
    from continuum_pipeline.defs.resources import default_sql_dir

    assets = [labels.reward_labels(task), *sql.task_models(task, sql_dir or default_sql_dir()),
              *evaluation.golden_sets(task), embeddings.embeddings_asset(task), curation.sft_dataset(task),
              training.base_model(task), training.candidate_model(task), registry.registered_model(task)]
    training_job, monitoring_job = triggers.jobs(task)
    return dg.Definitions(
        assets=assets,
        asset_checks=[evaluation.eval_gate(task)],
        jobs=[training_job, monitoring_job],
        sensors=[*triggers.sensors(task, training_job), retrain_on_forget_sensor(task, training_job)],
        schedules=triggers.schedules(task, training_job),
    )
