"""The rollout: always-valid statistics (stats), the policy from a task's YAML (policy) and the decision at each
look (decide). Pure Python + numpy; the Dagster `rollout` asset and canary sensor call `decide` and apply its
weights to the gateway.

    from continuum_pipeline.rollout import ArmObservation, ArmSums, RolloutSpec, decide

    spec = RolloutSpec()                                   # canary 5% → 25% → 50% → 100%
    d = decide(spec, step_index=0, minutes_at_step=42, state=cursor.get("tests"),
               stable=ArmObservation({"reward": ArmSums(n, s, ss), "error_rate": ...}, latency_p95_ms=410),
               challenger=ArmObservation({...}, at_step=230, latency_p95_ms=450))
    d.action, d.reason, d.weights, d.markdown(), d.state_json()   # persist state_json for the next look

(`decide` the function shadows `decide` the module here, so the names are imported eagerly; a reader of the
policy alone, e.g. the task's configuration, pays for numpy's import — every Dagster process has it loaded.)
"""

from continuum_pipeline.rollout.decide import ArmObservation, Decision, MetricRow, decide, step_setting
from continuum_pipeline.rollout.policy import ERROR_RATE, HardGuards, MetricRule, RolloutSpec, ShadowSpec
from continuum_pipeline.rollout.stats import ArmSums, MetricState, state_from_json, state_to_json, update

__all__ = [
    "ERROR_RATE", "ArmObservation", "ArmSums", "Decision", "HardGuards", "MetricRow", "MetricRule", "MetricState",
    "RolloutSpec", "ShadowSpec", "decide", "state_from_json", "state_to_json", "step_setting", "update",
]
