"""The rollout: always-valid statistics (stats), the policy from a task's YAML (policy) and the decision at each
look (decide). Pure Python + numpy; the Dagster `rollout` asset and canary sensor call `decide` and apply its
weights to the gateway.

    from continuum_pipeline.rollout import ArmObservation, ArmSums, RolloutSpec, decide

    spec = RolloutSpec()                                   # canary 5% → 25% → 50% → 100%
    d = decide(spec, step_index=0, minutes_at_step=42, state=cursor.get("tests"),
               stable=ArmObservation({"reward": ArmSums(n, s, ss), "error_rate": ...}, latency_p95_ms=410),
               challenger=ArmObservation({...}, at_step=230, latency_p95_ms=450))
    d.action, d.reason, d.weights, d.markdown(), d.state_json()   # persist state_json for the next look

Names load on first use, so that reading a task's policy (`rollout.policy`, pydantic only) does not import numpy.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "continuum_pipeline.rollout.decide": ("ArmObservation", "Decision", "MetricRow", "decide", "step_setting"),
    "continuum_pipeline.rollout.policy": ("ERROR_RATE", "HardGuards", "MetricRule", "RolloutSpec", "ShadowSpec"),
    "continuum_pipeline.rollout.stats": ("ArmSums", "MetricState", "state_from_json", "state_to_json", "update"),
}
_WHERE = {name: module for module, names in _HOMES.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'continuum_pipeline.rollout' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
