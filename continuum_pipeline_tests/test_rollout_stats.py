"""The rollout's always-valid statistics: error rate under continuous monitoring, power, running minima, intervals.

The error-rate and power tests simulate thousands of rollouts at once with numpy (a look every 10 challenger
interactions at a 5% canary) through the same functions `stats.update` uses at each look; one test checks
that the per-look path and the vectorised path agree.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from continuum_pipeline.rollout.stats import (
    ArmSums,
    MetricState,
    log_lambda,
    look_p,
    restricted_rates,
    state_from_json,
    state_to_json,
    update,
)

ALPHA = 0.05
SIMS, LOOKS = 2000, 200
PER_LOOK_CHALLENGER, PER_LOOK_STABLE = 10, 190  # a 5% canary, a look every 200 interactions


def _rate_sums(rng: np.random.Generator, p_stable: float, p_challenger: float):
    """Running sums (n, Σx, Σx²) per arm for each simulated rollout and look, 0/1 outcomes."""
    xc = rng.binomial(PER_LOOK_CHALLENGER, p_challenger, (SIMS, LOOKS)).cumsum(axis=1)
    xs = rng.binomial(PER_LOOK_STABLE, p_stable, (SIMS, LOOKS)).cumsum(axis=1)
    nc = PER_LOOK_CHALLENGER * np.arange(1, LOOKS + 1)
    ns = PER_LOOK_STABLE * np.arange(1, LOOKS + 1)
    return ns, xs, xs, nc, xc, xc


def _mean_sums(rng: np.random.Generator, a_stable: float, a_challenger: float, per_look: int = 10):
    """The same for a continuous reward in [0, 1] (Beta(a, 2) scores), an even split (`per_look` per arm
    between looks: raw scores for 190 per look would cost seconds)."""
    def arm(a: float):
        x = rng.beta(a, 2.0, (SIMS, LOOKS, per_look))
        return per_look * np.arange(1, LOOKS + 1), x.sum(axis=2).cumsum(axis=1), (x * x).sum(axis=2).cumsum(axis=1)
    return (*arm(a_stable), *arm(a_challenger))


def _ever(sums, kind: str, null: float = 0.0, side: str = "less", tau: float = 0.05) -> np.ndarray:
    """Per simulated rollout: did the always-valid p (running minimum over the looks) reach α?"""
    p = np.minimum.accumulate(look_p(kind, null, side, tau, *sums), axis=1)
    return p[:, -1] <= ALPHA


def _bound(rate: float) -> float:
    return rate + 3 * math.sqrt(ALPHA * (1 - ALPHA) / SIMS)  # α plus three standard errors of the estimate


def test_aa_false_positive_rate_at_every_look_stays_below_alpha_while_naive_peeking_inflates_it():
    sums = _rate_sums(np.random.default_rng(20261122), 0.85, 0.85)
    fpr = _ever(sums, "rate").mean()
    ns, xs, _, nc, xc, _ = sums
    ps, pc = xs / ns, xc / nc
    z = (pc - ps) / np.sqrt(ps * (1 - ps) / ns + pc * (1 - pc) / nc + 1e-12)
    naive = (z < -1.6449).any(axis=1).mean()  # a fixed-horizon z-test checked at every look
    assert fpr <= _bound(ALPHA), f"mSPRT rejected {fpr:.3f} of A/A rollouts, over α = {ALPHA}"
    assert naive > 4 * ALPHA, f"the naive test should inflate under peeking, got {naive:.3f}"


def test_aa_false_positive_rate_for_a_mean_metric_and_at_the_margins():
    assert _ever(_mean_sums(np.random.default_rng(7), 5.0, 5.0), "mean").mean() <= _bound(ALPHA)
    # The challenger exactly m = 0.05 worse: both the rollback test (H0: Δ ≥ −m) and the advance test
    # (H0: Δ ≤ −m) sit on their boundary, the hardest case for each.
    sums = _rate_sums(np.random.default_rng(8), 0.85, 0.80)
    assert _ever(sums, "rate", null=-0.05, side="less").mean() <= _bound(ALPHA)
    assert _ever(sums, "rate", null=-0.05, side="greater").mean() <= _bound(ALPHA)
    # An error rate exactly two points higher (a lower-is-better rate near 0).
    sums = _rate_sums(np.random.default_rng(9), 0.01, 0.03)
    assert _ever(sums, "rate", null=0.02, side="less", tau=0.02).mean() <= _bound(ALPHA)
    assert _ever(sums, "rate", null=0.02, side="greater", tau=0.02).mean() <= _bound(ALPHA)


def test_power_on_a_known_drop():
    sums = _rate_sums(np.random.default_rng(11), 0.85, 0.75)  # ten points worse: 2,000 challenger interactions
    detected = _ever(sums, "rate")
    assert detected.mean() >= 0.95, f"detected only {detected.mean():.3f} of ten-point drops"
    # …and beyond a five-point allowance (the rollback test with m = 0.05) most of the time as well.
    assert _ever(sums, "rate", null=-0.05).mean() >= 0.8
    # An equal challenger is shown within the five-point allowance (the advance test) almost always.
    same = _rate_sums(np.random.default_rng(12), 0.85, 0.85)
    assert _ever(same, "rate", null=-0.05, side="greater").mean() >= 0.95


def test_restricted_rates_are_the_constrained_maximum_likelihood():
    rng = np.random.default_rng(13)
    for _ in range(200):
        nc, ns = int(rng.integers(10, 400)), int(rng.integers(10, 4000))
        xc, xs, d = int(rng.integers(0, nc + 1)), int(rng.integers(0, ns + 1)), float(rng.uniform(-0.3, 0.3))
        q_c, q_s = map(float, restricted_rates(xc, nc, xs, ns, d))
        assert q_c - q_s == pytest.approx(d) and 0 <= q_s <= 1 and 0 <= q_c <= 1
        grid = np.linspace(max(d, 0) + 1e-12, min(1 + d, 1) - 1e-12, 20001)
        loglik = (xc * np.log(grid) + (nc - xc) * np.log1p(-grid) + xs * np.log(grid - d)
                  + (ns - xs) * np.log1p(-(grid - d)))
        assert q_c == pytest.approx(grid[np.argmax(loglik)], abs=2e-4), (xc, nc, xs, ns, d)


def test_log_lambda_matches_the_formula_by_hand():
    # Δ̂ = −0.05, V = 0.0004, τ = 0.05: ½·ln(0.0004/0.0029) + 0.0025·0.0025 / (2·0.0004·0.0029)
    expected = 0.5 * math.log(0.0004 / 0.0029) + 0.0025 * 0.0025 / (2 * 0.0004 * 0.0029)
    assert float(log_lambda(-0.05, 0.0004, 0.05)) == pytest.approx(expected, rel=1e-12)
    assert float(log_lambda(0.3, 0.0, 0.05)) == 0.0  # no variance: no evidence


def test_interval_bounds_are_where_the_one_sided_p_reaches_alpha():
    stable, challenger = ArmSums(3800, 3230, 3230), ArmSums(400, 320, 320)
    s = update(MetricState(), stable, challenger, kind="rate", higher_is_better=True, max_change=0.05, tau=0.05,
               alpha=ALPHA).state
    sums = (stable.n, stable.total, stable.total_sq, challenger.n, challenger.total, challenger.total_sq)
    assert s.ci_low < -0.05 < s.ci_high
    assert float(look_p("rate", s.ci_high, "less", 0.05, *sums)) == pytest.approx(ALPHA, rel=1e-6)
    assert float(look_p("rate", s.ci_low, "greater", 0.05, *sums)) == pytest.approx(ALPHA, rel=1e-6)


def _stream(rng, p_stable, p_challenger, looks, max_change=0.05):
    state, stable, challenger, out = MetricState(), ArmSums(), ArmSums(), []
    for _ in range(looks):
        stable = stable.add(rng.binomial(1, p_stable, PER_LOOK_STABLE))
        challenger = challenger.add(rng.binomial(1, p_challenger, PER_LOOK_CHALLENGER))
        look = update(state, stable, challenger, kind="rate", higher_is_better=True, max_change=max_change,
                      tau=0.05, alpha=ALPHA)
        state = look.state
        out.append(look)
    return out


def test_p_values_never_rise_and_the_interval_only_narrows():
    looks = _stream(np.random.default_rng(3), 0.85, 0.82, 120)
    for name in ("p_worse", "p_not_worse", "p_better"):
        seq = [getattr(lk.state, name) for lk in looks]
        assert all(b <= a for a, b in zip(seq, seq[1:], strict=False)), name
    lows = [lk.state.ci_low for lk in looks]
    highs = [lk.state.ci_high for lk in looks]
    assert all(b >= a for a, b in zip(lows, lows[1:], strict=False))
    assert all(b <= a for a, b in zip(highs, highs[1:], strict=False))
    assert highs[-1] - lows[-1] < highs[0] - lows[0]


def test_rollback_test_and_interval_agree():
    # Twenty points worse against a five-point allowance: p_worse ≤ α exactly when the interval is below −m.
    for look in _stream(np.random.default_rng(5), 0.85, 0.65, 60):
        s = look.state
        if s.looks:
            assert (s.p_worse <= ALPHA) == (s.ci_high < -0.05 + 1e-9), s
    assert look.state.p_worse <= ALPHA  # and twenty points worse is caught within 600 challenger interactions


def test_per_look_update_agrees_with_the_vectorised_streams():
    rng = np.random.default_rng(9)
    stable, challenger, state = ArmSums(), ArmSums(), MetricState()
    rows, p_seen = [], []
    for _ in range(40):
        stable = stable.add(rng.binomial(1, 0.85, PER_LOOK_STABLE))
        challenger = challenger.add(rng.binomial(1, 0.75, PER_LOOK_CHALLENGER))
        rows.append((stable.n, stable.total, stable.total_sq, challenger.n, challenger.total, challenger.total_sq))
        state = update(state, stable, challenger, kind="rate", higher_is_better=True, max_change=0.0, tau=0.05,
                       alpha=ALPHA).state
        p_seen.append(state.p_worse)
    columns = [np.array(c, dtype=float) for c in zip(*rows, strict=True)]
    vectorised = np.minimum.accumulate(look_p("rate", 0.0, "less", 0.05, *columns))
    np.testing.assert_allclose(p_seen, vectorised, rtol=1e-12)


def test_lower_is_better_metric_counts_a_rise_as_worse():
    rng = np.random.default_rng(4)
    state, stable, challenger = MetricState(), ArmSums(), ArmSums()
    for _ in range(80):
        stable = stable.add(rng.binomial(1, 0.01, PER_LOOK_STABLE))
        challenger = challenger.add(rng.binomial(1, 0.10, PER_LOOK_CHALLENGER))  # errors: 1% → 10%
        state = update(state, stable, challenger, kind="rate", higher_is_better=False, max_change=0.02,
                       tau=0.02, alpha=ALPHA).state
    assert state.p_worse <= ALPHA and state.ci_low > 0.02


def test_no_errors_in_either_arm_still_shows_the_challenger_within_its_allowance():
    # p̂(1 − p̂) would be 0 (no evidence ever); the rates restricted to the null (+0.02) let 0/400 vs 0/7600 count.
    state = update(MetricState(), ArmSums(7600, 0, 0), ArmSums(400, 0, 0), kind="rate", higher_is_better=False,
                   max_change=0.02, tau=0.02, alpha=ALPHA).state
    assert state.p_not_worse <= ALPHA and state.p_worse == 1.0


def test_tiny_samples_add_no_evidence():
    before = MetricState()
    look = update(before, ArmSums(1, 1, 1), ArmSums(50, 10, 10), kind="rate", higher_is_better=True,
                  max_change=0.05, tau=0.05, alpha=ALPHA)
    assert look.delta is None and look.state == before
    same = update(before, ArmSums(30, 24, 30 * 0.64), ArmSums(30, 24, 30 * 0.64), kind="mean",
                  higher_is_better=True, max_change=0.05, tau=0.05, alpha=ALPHA)  # every score 0.8: no spread
    assert same.delta == pytest.approx(0.0) and same.state == before


def test_running_sums_and_state_round_trip_through_json():
    values = [0.2, 0.9, 0.4, 1.0]
    sums = ArmSums().add(values[:2]).add(values[2:])
    assert (sums.n, sums.mean) == (4, pytest.approx(0.625))
    assert sums.total_sq == pytest.approx(sum(x * x for x in values))
    states = {"reward": _stream(np.random.default_rng(1), 0.85, 0.85, 5)[-1].state, "error_rate": MetricState()}
    text = state_to_json(states)
    json.loads(text)  # plain JSON: no Infinity/NaN
    assert state_from_json(text) == states and state_from_json(None) == {}


def test_rate_sums_out_of_range_name_the_arm_and_the_fix():
    with pytest.raises(ValueError, match=r"challenger\.metrics\['reward'\]: a rate's sum must lie in \[0, n\]"):
        ArmSums(10, 12.0, 12.0).check("rate", "challenger.metrics['reward']")
    with pytest.raises(ValueError, match="tau must be a positive effect scale"):
        update(MetricState(), ArmSums(10, 5, 5), ArmSums(10, 5, 5), kind="rate", higher_is_better=True,
               max_change=0.05, tau=0.0, alpha=ALPHA)
