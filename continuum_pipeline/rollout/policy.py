"""The rollout policy: a task's YAML `rollout:` section. Plain pydantic, apart from the statistics (numpy), so
that reading a task's configuration stays light.

    rollout:
      strategy: canary                 # canary | shadow | blue_green | ab
      steps: [0.05, 0.25, 0.5, 1.0]    # canary only: the challenger's traffic share, step by step
      min_interactions_per_step: 200   # challenger interactions at a step before it may advance
      min_minutes_per_step: 30
      alpha: 0.05
      metrics:
        reward: {kind: mean, direction: higher_is_better, max_change: 0.05}
        error_rate: {kind: rate, direction: lower_is_better, max_change: 0.02}
      hard_guards: {max_error_rate: 0.2, max_latency_p95_ratio: 2.0}
      shadow: {sample_rate: 0.1, require_pass_before_traffic: false}

`plan()` turns a strategy into the challenger's weight per step; 0.0 is a shadow step (the challenger answers
copies of requests, serves nobody):

    canary       [0.0 if shadow.require_pass_before_traffic] + steps, then promote
    shadow       [0.0], then promote (the switch happens at promotion; the old champion stays `previous`)
    blue_green   [0.0, 1.0]: a shadow (smoke) pass, then all traffic at once, then promote
    ab           [0.5]: hold at an even split until a metric shows the challenger better (promote) or
                 worse beyond its allowance (roll back)
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Strategy = Literal["canary", "shadow", "blue_green", "ab"]
ERROR_RATE = "error_rate"  # the metric the max_error_rate guard reads (share of interactions that failed)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MetricRule(_Strict):
    """One metric that decides the rollout, compared between the stable and the challenger arm."""

    kind: Literal["rate", "mean"] = Field(
        "mean", description="rate: each interaction counts 0 or 1 (pass, error); mean: any number per "
                            "interaction (reward in [0, 1], latency ms, cost USD).")
    direction: Literal["higher_is_better", "lower_is_better"] = Field(
        "higher_is_better", description="Which way is better for this metric.")
    max_change: float = Field(
        description="The allowed worsening in the metric's units (reward 0.05: at most five points lower). "
                    "Worse than this with always-valid p ≤ alpha rolls back; shown within it advances.")
    tau: float | None = Field(
        None, description="The mSPRT mixture's effect scale in the metric's units; default max_change (the "
                          "test is most sensitive to effects of about tau).")

    @field_validator("max_change")
    @classmethod
    def _max_change(cls, value: float) -> float:
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"max_change must be >= 0 (the allowed worsening, e.g. 0.05 for reward), got {value}")
        return value

    @field_validator("tau")
    @classmethod
    def _tau(cls, value: float | None) -> float | None:
        if value is not None and (not math.isfinite(value) or value <= 0):
            raise ValueError(f"tau must be > 0 (an effect size in the metric's units, e.g. 0.05), got {value}")
        return value

    @model_validator(mode="after")
    def _scale(self) -> MetricRule:
        if self.tau is None and self.max_change == 0:
            raise ValueError("max_change is 0, so tau has no default: set tau to the smallest change that "
                             "matters in this metric's units (e.g. 0.02), or allow a max_change > 0")
        if self.kind == "rate" and self.max_change >= 1:
            raise ValueError(f"max_change {self.max_change} allows any rate: a rate's change is in [0, 1), "
                             "e.g. 0.02 for two points")
        return self

    @property
    def effect_scale(self) -> float:
        return self.tau if self.tau is not None else self.max_change

    @property
    def higher_is_better(self) -> bool:
        return self.direction == "higher_is_better"


def _default_metrics() -> dict[str, MetricRule]:
    return {
        "reward": MetricRule(kind="mean", direction="higher_is_better", max_change=0.05),
        ERROR_RATE: MetricRule(kind="rate", direction="lower_is_better", max_change=0.02),
    }


class HardGuards(_Strict):
    """Limits that roll back at once, without a test: a broken challenger must not wait for evidence."""

    max_error_rate: float | None = Field(
        0.2, description=f"Roll back when the challenger's `{ERROR_RATE}` exceeds this share (null: off).")
    max_latency_p95_ms: float | None = Field(
        None, description="Roll back when the challenger's latency p95 exceeds this many ms (null: off; the "
                          "right number depends on the model, e.g. 2000).")
    max_latency_p95_ratio: float | None = Field(
        2.0, description="Roll back when the challenger's latency p95 exceeds this multiple of the stable "
                         "arm's (null: off).")
    min_interactions: int = Field(
        20, ge=1, description="Challenger interactions before a guard may fire (one failed call of one is "
                              "not a 100% error rate).")

    @field_validator("max_error_rate")
    @classmethod
    def _error_rate(cls, value: float | None) -> float | None:
        if value is not None and not 0 < value < 1:
            raise ValueError(f"max_error_rate must be in (0, 1) (a share of interactions, e.g. 0.2), got {value}")
        return value

    @field_validator("max_latency_p95_ms")
    @classmethod
    def _latency(cls, value: float | None) -> float | None:
        if value is not None and not value > 0:
            raise ValueError(f"max_latency_p95_ms must be > 0 (milliseconds, e.g. 2000), got {value}")
        return value

    @field_validator("max_latency_p95_ratio")
    @classmethod
    def _ratio(cls, value: float | None) -> float | None:
        if value is not None and not value > 1:
            raise ValueError(f"max_latency_p95_ratio must be > 1 (a multiple of the stable arm's p95, e.g. 2), "
                             f"got {value}")
        return value


class ShadowSpec(_Strict):
    """Shadow traffic: the challenger answers a copy of a sample of requests; only the stable answer is served."""

    sample_rate: float = Field(0.1, gt=0, le=1, description="Share of requests copied to the challenger.")
    require_pass_before_traffic: bool = Field(
        False, description="canary: start with a shadow step that must pass before any user sees the "
                           "challenger (blue_green always does; shadow is nothing else).")


class RolloutSpec(_Strict):
    """How a registered challenger reaches production, and when it is rolled back."""

    strategy: Strategy = Field("canary", description="canary | shadow | blue_green | ab (see plan()).")
    steps: list[float] = Field(
        default_factory=lambda: [0.05, 0.25, 0.5, 1.0],
        description="canary: the challenger's traffic share per step, increasing, each in (0, 1], ending at 1.")
    min_interactions_per_step: int = Field(
        200, ge=1, description="Challenger interactions (or shadow copies) at a step before it may advance.")
    min_minutes_per_step: float = Field(30, ge=0, description="Minutes at a step before it may advance.")
    metrics: dict[str, MetricRule] = Field(
        default_factory=_default_metrics,
        description="Metric name → rule; every metric must be shown within its max_change to advance.")
    alpha: float = Field(0.05, description="Always-valid error rate of each metric's test.")
    hard_guards: HardGuards = Field(default_factory=HardGuards, description="Limits that roll back at once.")
    shadow: ShadowSpec = Field(default_factory=ShadowSpec, description="Shadow steps: how much traffic is "
                                                                       "copied, and whether canary starts with one.")

    @field_validator("steps")
    @classmethod
    def _steps(cls, value: list[float]) -> list[float]:
        if not value:
            raise ValueError("no steps: give the challenger's traffic shares, e.g. [0.05, 0.25, 0.5, 1.0]")
        bad = [w for w in value if not (0 < w <= 1) or math.isnan(w)]
        if bad:
            raise ValueError(f"every step must be a share in (0, 1] (5% is 0.05), got {bad}")
        if any(b <= a for a, b in zip(value, value[1:], strict=False)):
            raise ValueError(f"steps must increase (each one a larger share than the last), got {value}")
        if value[-1] != 1.0:
            raise ValueError(f"the last step must be 1.0 (all traffic) before promotion, got {value[-1]}: "
                             f"append 1.0")
        return value

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, value: dict[str, MetricRule]) -> dict[str, MetricRule]:
        if not value:
            raise ValueError("no metrics: name at least one, e.g. {reward: {kind: mean, max_change: 0.05}}")
        return value

    @field_validator("alpha")
    @classmethod
    def _alpha(cls, value: float) -> float:
        if not 0.0 < value <= 0.5:
            raise ValueError(f"alpha must be in (0, 0.5] (an error rate, e.g. 0.05), got {value}")
        return value

    @model_validator(mode="after")
    def _steps_for_canary(self) -> RolloutSpec:
        if "steps" in self.model_fields_set and self.strategy != "canary":
            raise ValueError(f"steps: only canary uses steps, strategy is {self.strategy!r} — remove steps "
                             "(blue_green goes from a shadow pass to 1.0, ab holds at 0.5, shadow never serves)")
        return self

    def plan(self) -> list[float]:
        """The challenger's traffic share per step (0.0: a shadow step)."""
        if self.strategy == "canary":
            return ([0.0] if self.shadow.require_pass_before_traffic else []) + list(self.steps)
        if self.strategy == "shadow":
            return [0.0]
        if self.strategy == "blue_green":
            return [0.0, 1.0]
        return [0.5]
