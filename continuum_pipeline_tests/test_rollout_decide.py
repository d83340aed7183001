"""The rollout's decision at each look: rollback, hold, advance, promote — driven like the canary sensor drives it.

`_run` plays a rollout look by look: traffic split by the current weights, running sums per arm, `decide` with
the state the previous look returned (as the JSON a sensor cursor keeps), the weights applied, the step's
counters reset on advance. Outcomes are drawn from a seeded generator, so each run is reproducible.
"""

from __future__ import annotations

import numpy as np
import pydantic
import pytest

from continuum_pipeline.config_errors import format_validation_error
from continuum_pipeline.rollout import ArmObservation, ArmSums, Decision, RolloutSpec, decide, step_setting

LOOK_TRAFFIC = 200  # interactions between looks
LOOK_MINUTES = 10


def _run(spec: RolloutSpec, *, reward: tuple[float, float], errors: tuple[float, float] = (0.01, 0.01),
         latency: tuple[float, float] = (400.0, 420.0), seed: int = 0, max_looks: int = 400) -> list[Decision]:
    rng = np.random.default_rng(seed)
    sums = {arm: {"reward": ArmSums(), "error_rate": ArmSums()} for arm in ("stable", "challenger")}
    step, at_step, minutes, state = 0, 0, 0.0, None
    weight, shadow_rate = step_setting(spec, 0)
    history: list[Decision] = []
    for _ in range(max_looks):
        # Shadow: the challenger answers a copy of a sample; otherwise it serves its share of the traffic.
        n_chal = rng.binomial(LOOK_TRAFFIC, shadow_rate if weight == 0.0 else weight)
        n_stable = LOOK_TRAFFIC if weight == 0.0 else LOOK_TRAFFIC - n_chal
        for arm, n, i in (("stable", n_stable, 0), ("challenger", n_chal, 1)):
            sums[arm]["reward"] = sums[arm]["reward"].add(rng.binomial(1, reward[i], n))
            sums[arm]["error_rate"] = sums[arm]["error_rate"].add(rng.binomial(1, errors[i], n))
        at_step += n_chal
        minutes += LOOK_MINUTES
        d = decide(spec, step_index=step, minutes_at_step=minutes, state=state,
                   stable=ArmObservation(dict(sums["stable"]), latency_p95_ms=latency[0]),
                   challenger=ArmObservation(dict(sums["challenger"]), at_step=at_step, latency_p95_ms=latency[1]))
        history.append(d)
        state = d.state_json()  # what a sensor cursor persists between ticks
        if d.action in ("rollback", "promote"):
            break
        if d.step_index != step:
            step, at_step, minutes = d.step_index, 0, 0.0
        weight, shadow_rate = d.challenger_weight, d.shadow_sample_rate
    return history


def _weights_seen(history: list[Decision]) -> list[float]:
    seen: list[float] = []
    for d in history:
        if not seen or seen[-1] != d.challenger_weight:
            seen.append(d.challenger_weight)
    return seen


def test_degraded_challenger_is_rolled_back_before_its_weight_passes_25_percent():
    history = _run(RolloutSpec(), reward=(0.85, 0.65))  # twenty points worse, allowance five
    last = history[-1]
    assert last.action == "rollback" and last.weights == {"stable": 1.0, "challenger": 0.0}
    assert max(d.challenger_weight for d in history[:-1]) <= 0.25
    assert "reward" in last.reason and "worse than the allowed 0.05" in last.reason
    row = next(r for r in last.rows if r.metric == "reward")
    assert row.verdict == "worse" and row.p_worse <= 0.05 and row.ci_high < -0.05
    assert row.mean_challenger < row.mean_stable


def test_equal_challenger_ramps_step_by_step_and_is_promoted():
    history = _run(RolloutSpec(), reward=(0.85, 0.85), seed=1)
    assert history[-1].action == "promote", history[-1].reason
    assert _weights_seen(history) == [0.05, 0.25, 0.5, 1.0]
    assert not any(d.action == "rollback" for d in history)
    assert {r.verdict for r in history[-1].rows} <= {"within", "better"}
    # Each advance waited for its step's minimums.
    advances = [d for d in history if d.action == "advance"]
    assert len(advances) == 3 and all("within its allowance" in d.reason for d in advances)


def test_too_few_interactions_at_the_step_hold():
    spec = RolloutSpec()
    good = {"reward": ArmSums(4000, 3400, 3400), "error_rate": ArmSums(4000, 40, 40)}
    same = {"reward": ArmSums(1200, 1020, 1020), "error_rate": ArmSums(1200, 12, 12)}
    d = decide(spec, step_index=1, minutes_at_step=45, state=None,
               stable=ArmObservation(good, latency_p95_ms=400),
               challenger=ArmObservation(same, at_step=120, latency_p95_ms=410))
    assert d.action == "hold" and d.challenger_weight == 0.25 and d.step_index == 1
    assert "120/200 challenger interactions" in d.reason
    # The same evidence with the step's minimums met advances.
    d2 = decide(spec, step_index=1, minutes_at_step=45, state=d.state,
                stable=ArmObservation(good, latency_p95_ms=400),
                challenger=ArmObservation(same, at_step=250, latency_p95_ms=410))
    assert d2.action == "advance" and d2.challenger_weight == 0.5


def test_inconclusive_evidence_holds_the_step():
    d = decide(RolloutSpec(), step_index=0, minutes_at_step=60, state=None,
               stable=ArmObservation({"reward": ArmSums(3800, 3230, 3230), "error_rate": ArmSums(3800, 38, 38)},
                                     latency_p95_ms=400),
               challenger=ArmObservation({"reward": ArmSums(200, 166, 166), "error_rate": ArmSums(200, 2, 2)},
                                         at_step=200, latency_p95_ms=400))
    assert d.action == "hold" and "not yet shown within the allowance" in d.reason and "reward" in d.reason


def test_hard_guards_roll_back_at_once():
    stable = {"reward": ArmSums(500, 425, 425), "error_rate": ArmSums(500, 5, 5)}
    broken = {"reward": ArmSums(25, 20, 20), "error_rate": ArmSums(25, 10, 10)}  # 40% errors
    d = decide(RolloutSpec(), step_index=0, minutes_at_step=1, state=None,
               stable=ArmObservation(stable, latency_p95_ms=400),
               challenger=ArmObservation(broken, at_step=25, latency_p95_ms=400))
    assert d.action == "rollback" and d.challenger_weight == 0 and "error rate 0.4 exceeds" in d.guard
    slow = {"reward": ArmSums(25, 21, 21), "error_rate": ArmSums(25, 0, 0)}
    d = decide(RolloutSpec(), step_index=0, minutes_at_step=1, state=None,
               stable=ArmObservation(stable, latency_p95_ms=400),
               challenger=ArmObservation(slow, at_step=25, latency_p95_ms=1300))
    assert d.action == "rollback" and "2× the stable arm's" in d.reason
    # Below the guards' minimum the same error share is not yet a verdict.
    few = {"reward": ArmSums(5, 4, 4), "error_rate": ArmSums(5, 2, 2)}
    d = decide(RolloutSpec(), step_index=0, minutes_at_step=1, state=None,
               stable=ArmObservation(stable, latency_p95_ms=400),
               challenger=ArmObservation(few, at_step=5, latency_p95_ms=400))
    assert d.action == "hold"


def test_error_rate_regression_rolls_back_through_the_test():
    history = _run(RolloutSpec(), reward=(0.85, 0.85), errors=(0.01, 0.12), seed=2)  # below the 20% guard
    last = history[-1]
    assert last.action == "rollback" and last.guard is None and "error_rate" in last.reason


def test_blue_green_switches_after_a_shadow_pass_and_shadow_never_serves():
    spec = RolloutSpec(strategy="blue_green", min_interactions_per_step=100, min_minutes_per_step=0)
    history = _run(spec, reward=(0.85, 0.85), seed=3)
    assert spec.plan() == [0.0, 1.0]
    assert history[0].challenger_weight == 0.0 and history[0].shadow_sample_rate == 0.1
    assert _weights_seen(history) == [0.0, 1.0] and history[-1].action == "promote"
    bad = _run(spec, reward=(0.85, 0.6), seed=3)
    assert bad[-1].action == "rollback" and all(d.challenger_weight == 0.0 for d in bad)
    shadow = _run(RolloutSpec(strategy="shadow", min_minutes_per_step=0), reward=(0.85, 0.85), seed=4)
    assert all(d.challenger_weight == 0.0 for d in shadow[:-1]) and shadow[-1].action == "promote"


def test_canary_can_require_a_shadow_pass_before_any_user_sees_the_challenger():
    spec = RolloutSpec.model_validate({"shadow": {"require_pass_before_traffic": True, "sample_rate": 0.2},
                                       "min_minutes_per_step": 0})
    history = _run(spec, reward=(0.85, 0.85), seed=8)
    assert _weights_seen(history) == [0.0, 0.05, 0.25, 0.5, 1.0] and history[-1].action == "promote"
    assert {d.shadow_sample_rate for d in history if d.challenger_weight == 0.0} == {0.2}
    assert {d.shadow_sample_rate for d in history if d.challenger_weight > 0} == {0.0}


def test_ab_holds_at_half_until_a_metric_shows_a_winner():
    spec = RolloutSpec(strategy="ab", min_minutes_per_step=0)
    better = _run(spec, reward=(0.80, 0.88), seed=5)
    assert better[-1].action == "promote" and "better on reward" in better[-1].reason
    assert all(d.challenger_weight == 0.5 for d in better[:-1])
    equal = _run(spec, reward=(0.85, 0.85), seed=6, max_looks=60)
    assert {d.action for d in equal} == {"hold"}


def test_state_passes_between_looks_as_json_and_table_renders():
    history = _run(RolloutSpec(), reward=(0.85, 0.85), seed=7, max_looks=3)
    d = history[-1]
    assert [r["metric"] for r in d.table()] == ["reward", "error_rate"]
    assert d.markdown().splitlines()[0].startswith("| metric | n stable |")
    assert d.state["reward"].looks == 3


def test_missing_sums_and_bad_inputs_name_the_fix():
    spec = RolloutSpec()
    stable = ArmObservation({"reward": ArmSums(10, 8, 8)}, latency_p95_ms=1)
    with pytest.raises(ValueError, match=r"stable\.metrics lacks \['error_rate'\]"):
        decide(spec, step_index=0, stable=stable, challenger=stable, minutes_at_step=0)
    arms = {"reward": ArmSums(30, 20, 20), "error_rate": ArmSums(30, 0, 0)}
    with pytest.raises(ValueError, match="step_index 4 is outside the plan"):
        decide(spec, step_index=4, stable=ArmObservation(arms), challenger=ArmObservation(arms), minutes_at_step=0)
    with pytest.raises(ValueError, match="latency_p95_ms is None but a latency guard is on"):
        decide(spec, step_index=0, stable=ArmObservation(arms), challenger=ArmObservation(arms), minutes_at_step=0)


@pytest.mark.parametrize(("config", "message"), [
    ({"steps": [0.25, 0.05, 1.0]}, "rollout.steps: steps must increase"),
    ({"steps": [0.05, 1.5]}, "rollout.steps: every step must be a share in (0, 1]"),
    ({"steps": [0.05, 0.5]}, "the last step must be 1.0"),
    ({"strategy": "ab", "steps": [0.5, 1.0]}, "only canary uses steps"),
    ({"strategy": "rainbow"}, "rollout.strategy: must be one of"),
    ({"metrics": {"reward": {"max_change": -0.05}}}, "metrics.reward.max_change"),
    ({"metrics": {"reward": {"max_change": 0}}}, "set tau"),
    ({"metrics": {}}, "no metrics"),
    ({"alpha": 0.9}, "alpha must be in (0, 0.5]"),
    ({"hard_guards": {"max_error_rate": 2}}, "hard_guards.max_error_rate"),
    ({"canary_steps": [0.1, 1.0]}, "rollout.canary_steps: unknown setting"),
    ({"metrics": {"latency_ms": {"kind": "mean"}}}, "rollout.metrics.latency_ms.max_change: missing"),
])
def test_invalid_spec_errors_name_the_field_and_the_fix(config, message):
    with pytest.raises(pydantic.ValidationError) as info:
        RolloutSpec.model_validate(config)
    rendered = format_validation_error(info.value, prefix="rollout")
    assert message in rendered, rendered
    assert rendered.startswith("rollout"), rendered
