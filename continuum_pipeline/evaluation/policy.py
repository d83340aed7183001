"""The gate policy: a task's YAML `gate:` section. Apart from the statistics (evaluation.gate, numpy) so that
reading a task's configuration — which every Dagster process does — stays light."""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, field_validator


class MetricPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    judge: str  # the task's judge that scores golden answers for this metric
    min_delta: float = 0.0  # the worst acceptable candidate − champion change in mean score

    @field_validator("judge")
    @classmethod
    def _judge(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("judge is empty: name one of the task's judges")
        return value

    @field_validator("min_delta")
    @classmethod
    def _min_delta(cls, value: float) -> float:
        if not -1.0 <= value <= 1.0 or math.isnan(value):
            raise ValueError(f"min_delta must be in [-1, 1] (a change in mean score: -0.02 allows two points "
                             f"worse), got {value}")
        return value


class GatePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    metrics: dict[str, MetricPolicy]
    alpha: float = 0.05  # family-wise error rate per metric (and for the improve list)
    require_significance: bool = False  # every slice must show non-inferiority, not merely not regress
    improve: list[str] = []  # slices that must improve significantly on every metric
    min_examples: int = 5  # smaller slices: point rule only (see the module docstring)
    bootstrap_samples: int = 2000
    seed: int = 0

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, value: dict[str, MetricPolicy]) -> dict[str, MetricPolicy]:
        if not value:
            raise ValueError("no metrics: name at least one, e.g. {accuracy: {judge: <a judge>, min_delta: 0}}")
        return value

    @field_validator("alpha")
    @classmethod
    def _alpha(cls, value: float) -> float:
        if not 0.0 < value <= 0.5:
            raise ValueError(f"alpha must be in (0, 0.5] (a one-sided error rate, e.g. 0.05), got {value}")
        return value

    @field_validator("improve")
    @classmethod
    def _improve(cls, value: list[str]) -> list[str]:
        repeated = sorted({s for s in value if value.count(s) > 1})
        if repeated:
            raise ValueError(f"improve lists {repeated} more than once: name each slice once")
        return value

    @field_validator("min_examples")
    @classmethod
    def _min_examples(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"min_examples must be at least 1 (1 tests every slice), got {value}")
        return value

    @field_validator("bootstrap_samples")
    @classmethod
    def _bootstrap_samples(cls, value: int) -> int:
        if value < 200:  # the smallest bootstrap p is 1/(B+1): it must clear α/k for a family of slices
            raise ValueError(f"bootstrap_samples must be at least 200 (2000 is usual), got {value}")
        return value

    @field_validator("seed")
    @classmethod
    def _seed(cls, value: int) -> int:
        if value < 0:
            raise ValueError(f"seed must be >= 0 (numpy seeds are non-negative), got {value}")
        return value
