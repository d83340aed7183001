"""The task models (dbt_like_sql/task/*.sql) bound to one task: its tables, its reward settings, its selection."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from continuum_pipeline.sql_models.runner import TaskBinding
from continuum_pipeline.task.config import TaskConfig, TaskConfigError, sql_literal


def _value(task: TaskConfig, path: str) -> Any:
    value: Any = task.model_dump(mode="json")
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise TaskConfigError(f"var('{path}'): the task configuration has no such value")
        value = value[part]
    if isinstance(value, dict | list):
        raise TaskConfigError(f"var('{path}'): a SQL model can only use a single value, not a {type(value).__name__}")
    return value


def task_binding(task: TaskConfig, lake=None) -> TaskBinding:
    """`lake` evaluates the exclusion rules when the task keeps excluded interactions out of its SQL models
    (`privacy.keep_excluded_for_monitoring: false`); otherwise `excluded_interactions` is empty."""
    from continuum_pipeline.privacy.rules import monitoring_exclusions

    weights = task.judge_weights()
    return TaskBinding(
        table=task.table,
        config_tables={
            "judge_weights": pa.table({"judge": list(weights), "weight": list(weights.values())},
                                      schema=pa.schema([("judge", pa.string()), ("weight", pa.float64())])),
            "implicit_signals": pa.table({"signal": list(task.reward.implicit_signals),
                                          "reward": list(task.reward.implicit_signals.values())},
                                         schema=pa.schema([("signal", pa.string()), ("reward", pa.float64())])),
            "outcomes": pa.table({"outcome": list(task.reward.outcomes), "reward": list(task.reward.outcomes.values())},
                                 schema=pa.schema([("outcome", pa.string()), ("reward", pa.float64())])),
            "excluded_interactions": monitoring_exclusions(lake, task),
        },
        variables={"task_filter": task.selection_sql, "var": lambda path: sql_literal(_value(task, path))},
    )
