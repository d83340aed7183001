"""The eval gate's statistics and decisions: pure, fast, no Dagster."""

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np
import pydantic
import pytest

from continuum_pipeline.evaluation.gate import (
    decide,
    exact_score_p,
    holm,
    mcnemar_one_sided,
    mcnemar_p,
    tango_interval,
    tango_z,
    tarone_family,
)
from continuum_pipeline.evaluation.policy import GatePolicy, MetricPolicy

# A demo-shaped golden set: 14 intents (8 of 8 items, 6 of 6) = 100 items, 4 intents changed by the policy.
SIZES = [8] * 8 + [6] * 6


# --- the previous margin rule (max(3 points, one example) per slice), which `decide` replaced: kept here as the
# reference the comparison test below holds the new rule against ------------------------------------------------
@dataclass(frozen=True)
class GoldenExample:
    golden_id: str
    slices: tuple[str, ...]  # e.g. ("refund_status", "changed_intents", "all")
    messages: list[dict]
    metadata: dict


@dataclass(frozen=True)
class SliceResult:
    slice: str
    n: int
    champion: float  # success rate
    candidate: float
    margin: float
    p_value: float  # exact McNemar, two-sided, on the paired outcomes

    @property
    def delta(self) -> float:
        return self.candidate - self.champion

    @property
    def passed(self) -> bool:
        return self.delta >= -self.margin - 1e-9


@dataclass
class MarginGateResult:
    slices: list[SliceResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(s.passed for s in self.slices)

    @property
    def failures(self) -> list[SliceResult]:
        return [s for s in self.slices if not s.passed]

    def table(self) -> list[dict]:
        return [{"slice": s.slice, "n": s.n, "champion": s.champion, "candidate": s.candidate, "delta": s.delta,
                 "margin": s.margin, "p_value": s.p_value, "passed": s.passed} for s in self.slices]


def compare(examples: Sequence[GoldenExample], champion: Sequence[bool], candidate: Sequence[bool],
            margins: dict[str, float] | None = None, default_margin: float = 0.05) -> MarginGateResult:
    """The point-margin rule: a slice passes when Δ ≥ −margin."""
    margins = margins or {}
    pairs: dict[str, list[tuple[bool, bool]]] = {}
    for ex, a, b in zip(examples, champion, candidate, strict=True):
        for s in ex.slices:
            pairs.setdefault(s, []).append((a, b))
    result = MarginGateResult()
    for s, outcomes in sorted(pairs.items()):
        n = len(outcomes)
        lost = sum(1 for a, b in outcomes if a and not b)
        won = sum(1 for a, b in outcomes if b and not a)
        result.slices.append(SliceResult(
            slice=s, n=n, champion=sum(a for a, _ in outcomes) / n, candidate=sum(b for _, b in outcomes) / n,
            margin=margins.get(s, default_margin), p_value=mcnemar_p(lost, won)))
    return result


CHANGED = {0, 1, 8, 9}
START = [sum(SIZES[:k]) for k in range(len(SIZES))]
ITEMS = [GoldenExample(f"intent_{k:02d}/{j}", (f"intent_{k:02d}", "changed" if k in CHANGED else "unchanged", "all"),
                       [], {}) for k, size in enumerate(SIZES) for j in range(size)]
SLICES = [ex.slices for ex in ITEMS]
ACCURACY = {"accuracy": MetricPolicy(judge="kb")}


def outcomes(lose: dict[int, int] | None = None, win: dict[int, int] | None = None,
             champion_misses: dict[int, int] | None = None) -> tuple[list[float], list[float]]:
    """(champion, candidate) 0/1 outcomes on ITEMS: the champion misses the first items of the intents in
    `champion_misses` (and `win`), the candidate gets the `win` ones right and loses `lose` items it had."""
    champion, candidate = [1.0] * len(ITEMS), [1.0] * len(ITEMS)
    for k, count in {**(champion_misses or {}), **(win or {})}.items():
        for j in range(count):
            champion[START[k] + j] = candidate[START[k] + j] = 0.0
    for k, count in (win or {}).items():
        for j in range(count):
            candidate[START[k] + j] = 1.0
    for k, count in (lose or {}).items():
        for j in range(count):
            candidate[START[k] + SIZES[k] - 1 - j] = 0.0  # from the end: items the champion has right
    return champion, candidate


def gate(champion, candidate, **policy):
    return decide(GatePolicy(**{"metrics": ACCURACY, **policy}), {"accuracy": (champion, candidate)}, SLICES)


def binom_tail(k: int, m: int) -> float:  # P(Binomial(m, 1/2) <= k), written out
    return sum(math.comb(m, i) for i in range(k + 1)) / 2**m


# --- statistics ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("lost", "won", "less", "greater"), [
    (8, 0, 1 / 256, 1.0), (1, 0, 1 / 2, 1.0), (0, 0, 1.0, 1.0), (5, 1, 7 / 64, 63 / 64), (1, 5, 63 / 64, 7 / 64),
    (10, 3, binom_tail(3, 13), binom_tail(10, 13)),
])
def test_exact_mcnemar_one_sided_p_values(lost, won, less, greater):
    assert mcnemar_one_sided(lost, won, "less") == pytest.approx(less)
    assert mcnemar_one_sided(lost, won, "greater") == pytest.approx(greater)
    try:  # scipy is not a dependency; when it is installed, agree with it too
        from scipy.stats import binomtest
    except ImportError:
        return
    if lost + won:
        assert binomtest(won, lost + won, 0.5, alternative="less").pvalue == pytest.approx(less)
        assert binomtest(won, lost + won, 0.5, alternative="greater").pvalue == pytest.approx(greater)


def test_two_sided_mcnemar_is_kept_for_its_callers():
    assert mcnemar_p(0, 10) == pytest.approx(2 / 1024) and mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(2, 0) == mcnemar_p(0, 2) == pytest.approx(0.5)


def test_holm_on_a_hand_example():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> kept monotone at 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0]) and holm([]) == []


def test_tarone_leaves_out_tests_that_cannot_reach_significance():
    # k=1: 3 tests can reach 0.05; k=2: 3 can reach 0.025; k=3: 3 can reach 0.0167 -> those three
    assert tarone_family([1 / 256, 1 / 64, 0.5, 1.0, 1 / 256], 0.05) == [0, 1, 4]
    assert tarone_family([1.0, 0.5], 0.05) == [] and tarone_family([0.0] * 3, 0.05) == [0, 1, 2]


def test_tango_score_statistic_and_interval():
    assert float(tango_z(1, 6, 20, 0.0)) == pytest.approx(5 / math.sqrt(7))  # McNemar's z at Δ = 0
    # the constrained maximum-likelihood P(lost) really maximises the likelihood (checked on a grid)
    lost, won, n, delta = 3, 1, 20, -0.1
    theta = np.linspace(-delta + 1e-9, (1 - delta) / 2 - 1e-9, 200_001)
    loglik = lost * np.log(theta) + won * np.log(theta + delta) + (n - lost - won) * np.log(1 - 2 * theta - delta)
    best = theta[np.argmax(loglik)]
    variance = n * (2 * best + delta - delta**2)
    assert float(tango_z(lost, won, n, delta)) == pytest.approx((won - lost - n * delta) / math.sqrt(variance),
                                                                 rel=1e-4)
    low, high = tango_interval(1, 6, 20, 0.05)
    z = NormalDist().inv_cdf(0.95)
    assert float(tango_z(1, 6, 20, low)) == pytest.approx(z) and float(tango_z(1, 6, 20, high)) == pytest.approx(-z)
    assert 0 < low < 5 / 20 < high
    assert tango_interval(8, 0, 8, 0.05)[0] == -1.0  # everything lost: Δ = -1 stays in the interval


def test_exact_score_test_with_a_margin_on_tiny_tables():
    # n=1, H0: Δ = -0.2, one lost: p = max over θ = P(lost) in [0.2, 0.6] of θ = 0.6; n=2, two lost: 0.6² = 0.36
    assert exact_score_p(1, 0, 1, -0.2, "less") == pytest.approx(0.6)
    assert exact_score_p(2, 0, 2, -0.2, "less") == pytest.approx(0.36)
    assert exact_score_p(0, 1, 1, -0.2, "greater") == pytest.approx(0.4)  # max of θ - 0.2
    # 100 identical answers show non-inferiority to -0.1; 8 cannot (0.9^8 of seeing no loss at Δ = -0.1)
    assert exact_score_p(0, 0, 100, -0.1, "greater") < 1e-3
    assert exact_score_p(0, 0, 8, -0.1, "greater") == pytest.approx(0.9**8, rel=1e-3)


# --- decisions -----------------------------------------------------------------------------------------------
def test_default_mode_passes_noise_and_fails_a_forgotten_intent():
    result = gate(*outcomes(lose={2: 1}, win={10: 1}))  # one lost in a slice of 8, one won elsewhere
    assert result.passed and result.row("accuracy", "intent_02").p_value == pytest.approx(0.5)
    assert "cannot reach significance" in result.row("accuracy", "intent_02").reason
    forgot = gate(*outcomes(lose={2: 8}))
    assert {r.slice for r in forgot.failures} == {"intent_02", "unchanged", "all"}
    row = forgot.row("accuracy", "intent_02")
    assert (row.p_value, row.p_holm) == pytest.approx((1 / 256, 3 / 256))  # Holm over the 3 slices that can fail
    assert row.delta == -1.0 and "significant regression" in row.reason


def test_default_mode_requires_no_net_loss_overall():
    result = gate(*outcomes(lose={2: 1, 3: 1, 4: 1}))  # 3 of 100 lost, none significant
    assert [r.slice for r in result.failures] == ["all"]
    assert result.failures[0].reason == "overall point Δ -0.030 < min_delta +0.000"
    assert gate(*outcomes(lose={2: 1, 3: 1, 4: 1}), metrics={"accuracy": {"judge": "kb", "min_delta": -0.05}}).passed


def test_a_margin_on_a_binary_metric_uses_the_exact_score_test():
    margin = {"metrics": {"accuracy": {"judge": "kb", "min_delta": -0.05}}}
    forgot = gate(*outcomes(lose={2: 8}), **margin)
    row = forgot.row("accuracy", "intent_02")
    assert row.test == "exact score" and row.p_value == pytest.approx(1.05**8 / 2**8)  # the extreme table
    # 8 items cannot beat α/k among 9+ such slices (Tarone): only all, changed and unchanged are tested
    assert row.p_holm is None and row.reason == "no significant regression (8 items cannot reach significance)"
    assert [r.slice for r in forgot.failures] == ["all"]  # -8 points is only 3 beyond the margin: point rule
    assert forgot.failures[0].reason == "overall point Δ -0.080 < min_delta -0.050"


def test_require_significance_needs_evidence_per_slice():
    identical = outcomes(champion_misses={0: 2, 5: 1})
    strict = gate(*identical, require_significance=True,
                  metrics={"accuracy": {"judge": "kb", "min_delta": -0.1}})
    assert strict.row("accuracy", "all").decision == "pass" and strict.row("accuracy", "all").p_holm < 0.05
    assert strict.row("accuracy", "intent_02").decision == "FAIL"  # 8 items cannot show Δ > -0.1
    assert "not shown" in strict.row("accuracy", "intent_02").reason
    lenient = gate(*identical, require_significance=True, min_examples=30,
                   metrics={"accuracy": {"judge": "kb", "min_delta": -0.1}})
    assert lenient.passed and "point rule" in lenient.row("accuracy", "intent_02").reason
    # with δ = 0 nothing short of a significant improvement passes a slice: why it is not the default
    assert gate(*identical, require_significance=True).row("accuracy", "all").decision == "FAIL"


def test_improve_targets_must_improve_significantly():
    learned = outcomes(win={0: 8, 1: 8, 8: 6, 9: 6})  # the candidate learned the changed answers
    result = gate(*learned, improve=["changed", "intent_00"])
    assert result.passed
    assert [result.row("accuracy", s).decision for s in ("changed", "intent_00", "intent_01")] == \
        ["improved", "improved", "pass"]
    assert result.row("accuracy", "changed").improve_p == pytest.approx(2**-28)
    stale = gate(*outcomes(champion_misses={0: 8, 1: 8, 8: 6, 9: 6}), improve=["changed"])
    assert [r.slice for r in stale.failures] == ["changed"]
    assert "required improvement not shown" in stale.failures[0].reason


def test_small_slices_get_the_point_rule_only():
    result = gate(*outcomes(lose={10: 1}, win={2: 2}), min_examples=7)  # the 6-item slices are "small"
    row = result.row("accuracy", "intent_10")
    assert row.decision == "FAIL" and row.p_holm is None and "point rule" in row.reason
    assert result.row("accuracy", "intent_02").decision == "pass"
    assert "point rule" not in result.row("accuracy", "intent_02").reason


def scores(rng, n, shift):
    champion = rng.uniform(0.5, 0.9, n)
    return champion, np.clip(champion + shift + rng.normal(0, 0.05, n), 0, 1)


def test_continuous_scores_use_a_seeded_paired_bootstrap():
    rng = np.random.default_rng(7)
    policy = GatePolicy(metrics={"helpfulness": {"judge": "rubric", "min_delta": -0.02}})
    same = scores(rng, 100, 0.0)
    first = decide(policy, {"helpfulness": same}, SLICES)
    again = decide(policy, {"helpfulness": same}, SLICES)
    assert first.to_dict() == again.to_dict() and first.passed
    assert {r.test for r in first.rows} == {"bootstrap"}
    other_seed = decide(policy.model_copy(update={"seed": 1}), {"helpfulness": same}, SLICES).row("helpfulness", "all")
    assert other_seed.ci_low != first.row("helpfulness", "all").ci_low
    assert other_seed.ci_low == pytest.approx(first.row("helpfulness", "all").ci_low, abs=0.01)
    dropped = decide(policy, {"helpfulness": scores(rng, 100, -0.1)}, SLICES)
    assert not dropped.passed and dropped.row("helpfulness", "all").ci_high < -0.02
    assert dropped.row("helpfulness", "all").p_value == pytest.approx(1 / 2001)  # (1 + 0) / (B + 1)


def test_rows_for_every_metric_and_slice_with_the_table_fields():
    rng = np.random.default_rng(0)
    policy = GatePolicy(metrics={**ACCURACY, "helpfulness": {"judge": "rubric", "min_delta": -0.02}})
    result = decide(policy, {"accuracy": outcomes(lose={2: 8}), "helpfulness": scores(rng, 100, 0.0)}, SLICES)
    assert len(result.rows) == 2 * 17 and {r.metric for r in result.failures} == {"accuracy"}
    text = result.markdown()
    lines = text.splitlines()
    assert lines[0].startswith("**gate: FAIL** (3 of 34")
    assert "| metric | slice | n | champion | candidate | Δ | CI | p | Holm p | decision | reason |" in lines
    body = [line for line in lines if line.startswith("| accuracy") or line.startswith("| helpfulness")]
    assert all("**FAIL**" in line for line in body[:3]) and not any("FAIL" in line for line in body[3:])
    assert "| accuracy | intent_02 | 8 | 1.000 | 0.000 | -1.000 | [-1.000, -0.495] | 0.00391 | 0.0117 |" in text
    data = json.loads(json.dumps(result.to_dict()))
    assert data["passed"] is False and len(data["failures"]) == 3
    assert set(data["rows"][0]) >= {"metric", "slice", "n", "champion", "candidate", "delta", "ci_low", "ci_high",
                                    "p_value", "p_holm", "decision", "reason"}


# --- validation ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("policy", "message"), [
    ({"metrics": {}}, "name at least one"),
    ({"metrics": {"accuracy": {"judge": "kb", "min_delta": 2}}}, "min_delta must be in [-1, 1]"),
    ({"metrics": {"accuracy": {"judge": ""}}}, "name one of the task's judges"),
    ({"metrics": {"accuracy": {"judge": "kb", "margin": 0.1}}}, "Extra inputs are not permitted"),
    ({"metrics": ACCURACY, "alpha": 0.7}, "alpha must be in (0, 0.5]"),
    ({"metrics": ACCURACY, "improve": ["a", "a"]}, "name each slice once"),
    ({"metrics": ACCURACY, "min_examples": 0}, "min_examples must be at least 1"),
    ({"metrics": ACCURACY, "bootstrap_samples": 50}, "at least 200"),
])
def test_policy_errors_name_the_fix(policy, message):
    with pytest.raises(pydantic.ValidationError, match=message.replace("(", r"\(").replace("[", r"\[")):
        GatePolicy.model_validate(policy)


def test_decide_rejects_inconsistent_scores():
    policy = GatePolicy(metrics=ACCURACY)
    good = outcomes()
    with pytest.raises(ValueError, match="no scores for metric"):
        decide(policy, {}, SLICES)
    with pytest.raises(ValueError, match="does not name"):
        decide(policy, {"accuracy": good, "tone": good}, SLICES)
    with pytest.raises(ValueError, match="99 champion scores for 100 golden examples"):
        decide(policy, {"accuracy": (good[0][:-1], good[1])}, SLICES)
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        decide(policy, {"accuracy": (good[0], [2.0] * 100)}, SLICES)
    with pytest.raises(ValueError, match="no golden example has"):
        decide(policy.model_copy(update={"improve": ["nope"]}), {"accuracy": good}, SLICES)
    result = decide(policy, {"accuracy": ([1, 0], [1, 1])}, [["a"], ["b"]])  # "all" is added
    assert [r.slice for r in result.rows] == ["all", "a", "b"]


# --- the previous margin rule, for the record ----------------------------------------------------------------
def margin_rule(champion, candidate) -> bool:
    """The replaced rule: every slice may drop by max(0.03, 1/n) in point estimate."""
    sizes = {s: sum(s in names for names in SLICES) for names in SLICES for s in names}
    margins = {s: max(0.03, 1 / n) for s, n in sizes.items()}
    return compare(ITEMS, [c == 1 for c in champion], [c == 1 for c in candidate], margins).passed


@pytest.mark.parametrize(("case", "lose", "win", "old", "new"), [
    ("1 lost in a slice of 8, nothing won", {2: 1}, {}, True, False),  # new: "all" must not lose net
    ("1 lost in a slice of 8, 1 won elsewhere", {2: 1}, {10: 1}, True, True),
    ("2 lost in a slice of 8, 2 won elsewhere", {2: 2}, {10: 2}, False, True),  # new: p = 1/4, noise
    ("an intent forgotten, 8/8 -> 0/8", {2: 8}, {}, False, False),
    ("3 of 100 lost in 3 intents", {2: 1, 3: 1, 4: 1}, {}, False, False),  # old: -4.2 pts on `unchanged`
    ("a broad 10-point drop, 1 lost in each of 10 intents", {k: 1 for k in range(10)}, {}, False, False),
])
def test_margin_rule_and_gate_decide_differently_on_characteristic_cases(case, lose, win, old, new):
    champion, candidate = outcomes(lose=lose, win=win)
    assert (margin_rule(champion, candidate), gate(champion, candidate).passed) == (old, new), case
