"""Always-valid comparison of two arms: the mixture sequential probability ratio test (mSPRT).

Johari, Pekelis & Walsh, "Always Valid Inference: Continuous Monitoring of A/B Tests" (Operations Research
70(3), 2022). A rollout looks at its data again and again (every sensor tick); a fixed-horizon test checked at
every look rejects far more often than its α (`bench/rollout_stats.py` measures ~0.3 at α = 0.05). The mSPRT's
p-value stays valid however often and whenever one looks, so the rollout may stop the moment it is small.

Per metric, with Δ̂ = mean(challenger) − mean(stable) and V its variance (normal approximation),

    rates  (0/1 per interaction: reward pass, error):  V = p̃A(1−p̃A)/nA + p̃B(1−p̃B)/nB
    means  (reward in [0, 1], latency, cost):          V = sA²/nA + sB²/nB

(for rates p̃ are the arms' rates estimated under the null being tested, below) and a N(0, τ²) mixture over
the true difference around the null value θ0,

    log Λ = ½·ln(V / (V + τ²)) + τ²·(Δ̂ − θ0)² / (2·V·(V + τ²))

Λ is (approximately) a martingale under Δ = θ0, so by Ville's inequality P(Λ ever ≥ 1/α) ≤ α: the
always-valid p-value is the running minimum of min(1, 1/Λ) over all looks, and it never rises. Its inversion
{θ0 : Λ(θ0) < 1/α}, intersected over the looks, is a confidence sequence: an interval that covers Δ at every
look at once with probability ≥ 1 − α.

The rollout asks one-sided questions with a margin m (the metric's allowed worsening), in "goodness" units
g = Δ for higher-is-better metrics and g = −Δ for lower-is-better ones:

    worse      H0: g ≥ −m   rejected → the challenger is worse beyond the allowance (roll back)
    not_worse  H0: g ≤ −m   rejected → the challenger is within the allowance (non-inferior: advance)
    better     H0: g ≤ 0    rejected → the challenger is better (an A/B test's winner)

Each is the mSPRT with a half-normal mixture on its alternative's side of the boundary θ0 (the one-sided
form of the same mixture): Λ₁ = 2·Λ·Φ(−μ/s), where μ = τ²(Δ̂ − θ0)/(V + τ²) and s² = V·τ²/(V + τ²) are the
mixture's posterior mean and variance of Δ − θ0, and Φ is taken on the alternative's side. It is still a
martingale mixture (Ville's bound holds), and it needs about a fifth fewer interactions to detect a drop than
the two-sided form used one-sidedly. Under a null strictly inside H0 rejection is rarer still. The interval
shown is the inversion of the two one-sided tests (each bound one-sided at α, as the eval gate's intervals),
intersected over the looks: `worse` rejecting is the same event as the goodness bound falling below −m, so
the table's interval and the decision agree.

τ, the mixture's scale: the mSPRT is most sensitive to effects of about τ (JPW §4: match τ to the effects
that matter). The default is the metric's allowed change m (reward 0.05, error rate 0.02): the rollout must
resolve differences of that size, on the scale of that metric's own units, so no single number fits reward
and latency alike. A metric with m = 0 needs an explicit τ (see policy.MetricRule).

Rates: V uses the arms' rates re-estimated under the null difference θ0 (the restricted maximum likelihood
of Farrington & Manning, Stat Med 9:1447, 1990; the score test's variance), not the observed p̂. With p̂ the
estimate and its variance move together, and at a 5% canary with a rate near 0.8 the non-inferiority test at
its boundary rejected 7% of 2,000 simulated canaries instead of ≤ 5% (2.3% with the restricted rates;
test_rollout_stats checks both boundaries). It also keeps V > 0 when neither arm has had an error: 0/400 against 0/7600 is evidence
that the challenger's error rate is not two points higher. So each of the three tests has its own V, and
the interval's bounds are found by bisection over θ0.

Means use the sample variances; 0/1 values are better declared a rate (the same skew as above). A look with
fewer than `MIN_N` interactions in an arm, or V = 0 (a mean metric with no spread yet), adds no evidence for
that test: its state is carried over unchanged.

The sums are running totals (n, Σx, Σx²) per arm since the rollout began, so the caller never keeps raw
samples (SQL gives them: count(*), sum(x), sum(x*x)). Allocation changes between steps are allowed: V is
recomputed from the cumulative counts at each look (the normal approximation of JPW's two-stream test).
Pure numpy; no Dagster.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from typing import Literal

import numpy as np

Kind = Literal["rate", "mean"]
Side = Literal["less", "greater"]
MIN_N = 10  # interactions per arm before a look counts: below that no normal approximation holds


@dataclass(frozen=True)
class ArmSums:
    """One arm's running sums for one metric: n, Σx and Σx² since the rollout began."""

    n: int = 0
    total: float = 0.0
    total_sq: float = 0.0

    @classmethod
    def of(cls, values: Iterable[float]) -> ArmSums:
        a = np.asarray(list(values), dtype=float)
        return cls(int(a.size), float(a.sum()), float((a * a).sum()))

    def add(self, values: Iterable[float]) -> ArmSums:
        more = ArmSums.of(values)
        return ArmSums(self.n + more.n, self.total + more.total, self.total_sq + more.total_sq)

    @property
    def mean(self) -> float | None:
        return self.total / self.n if self.n else None

    def check(self, kind: Kind, label: str) -> None:
        """Raise a ValueError naming `label` when these sums cannot be this kind's (a rate's values are 0/1)."""
        if self.n < 0 or self.total_sq < 0 or not all(map(math.isfinite, (self.total, self.total_sq))):
            raise ValueError(f"{label}: n and the sum of squares must be >= 0 and finite (got {self})")
        if kind == "rate" and not -1e-9 <= self.total <= self.n + 1e-9:
            raise ValueError(f"{label}: a rate's sum must lie in [0, n] (each interaction counts 0 or 1), "
                             f"got sum {self.total} for n {self.n} — pass 0/1 values or make the metric kind mean")


def restricted_rates(x_c, n_c, x_s, n_s, null) -> tuple[np.ndarray, np.ndarray]:
    """Maximum-likelihood rates (challenger, stable) under p_c − p_s = null (Farrington & Manning 1990's
    closed form, the root of a cubic). Vectorised; n > 0 where used."""
    x_c, n_c, x_s, n_s = (np.asarray(a, dtype=float) for a in (x_c, n_c, x_s, n_s))
    d = np.asarray(null, dtype=float)
    p1, p2 = x_c / np.where(n_c > 0, n_c, 1), x_s / np.where(n_s > 0, n_s, 1)
    theta = n_s / np.where(n_c > 0, n_c, 1)
    a = 1.0 + theta
    b = -(1.0 + theta + p1 + theta * p2 + d * (theta + 2.0))
    c = d * d + d * (2.0 * p1 + theta + 1.0) + p1 + theta * p2
    e = -p1 * d * (1.0 + d)
    v = b ** 3 / (27.0 * a ** 3) - b * c / (6.0 * a * a) + e / (2.0 * a)
    u = np.sqrt(np.maximum(b * b / (9.0 * a * a) - c / (3.0 * a), 0.0))
    u = np.where(v < 0, -u, u)
    safe_u = np.where(u == 0, 1.0, u)
    w = (math.pi + np.arccos(np.clip(v / safe_u ** 3, -1.0, 1.0))) / 3.0
    q1 = np.where(u == 0, -b / (3.0 * a), 2.0 * u * np.cos(w) - b / (3.0 * a))
    q1 = np.clip(q1, np.maximum(d, 0.0), np.minimum(1.0 + d, 1.0))  # both rates in [0, 1]
    return q1, q1 - d


def variance_at(kind: Kind, null, n_s, sum_s, sq_s, n_c, sum_c, sq_c) -> np.ndarray:
    """V of Δ̂ = mean_c − mean_s from running sums: rates at the null (restricted ML), means from the sample
    variances (the null does not enter). Vectorised; 0 where an arm has fewer than MIN_N."""
    n_s, sum_s, sq_s, n_c, sum_c, sq_c = (np.asarray(a, dtype=float) for a in (n_s, sum_s, sq_s, n_c, sum_c, sq_c))
    enough = (n_s >= MIN_N) & (n_c >= MIN_N)
    ns, nc = np.where(enough, n_s, 2.0), np.where(enough, n_c, 2.0)
    if kind == "rate":
        q_c, q_s = restricted_rates(sum_c, nc, sum_s, ns, null)
        v = q_c * (1.0 - q_c) / nc + q_s * (1.0 - q_s) / ns
    else:
        var_s = np.maximum(0.0, (sq_s - sum_s * sum_s / ns) / (ns - 1.0))
        var_c = np.maximum(0.0, (sq_c - sum_c * sum_c / nc) / (nc - 1.0))
        v = var_s / ns + var_c / nc
    return np.where(enough, v, 0.0)


def log_lambda(delta: np.ndarray | float, v: np.ndarray | float, tau: float,
               null: float = 0.0) -> np.ndarray:
    """log Λ of the N(0, τ²) mixture for an observed difference `delta` with variance `v`, around Δ = `null`.

    Vectorised over delta and v (the benchmark and the tests run thousands of streams at once); where v ≤ 0
    the result is 0 (Λ = 1: no evidence)."""
    d = np.asarray(delta, dtype=float) - null
    v = np.asarray(v, dtype=float)
    t2 = tau * tau
    safe = np.where(v > 0, v, 1.0)
    out = 0.5 * np.log(safe / (safe + t2)) + t2 * d * d / (2.0 * safe * (safe + t2))
    return np.where(v > 0, out, 0.0)


_erfc = np.frompyfunc(math.erfc, 1, 1)  # numpy has no erfc; scipy is no dependency


def one_sided_log_lambda(delta: np.ndarray | float, v: np.ndarray | float, tau: float, null: float,
                         alternative: Side) -> np.ndarray:
    """log Λ₁ of the half-normal mixture on the alternative's side: H1 Δ < null ("less") or Δ > null ("greater")."""
    d = np.asarray(delta, dtype=float) - null
    v = np.asarray(v, dtype=float)
    t2 = tau * tau
    safe = np.where(v > 0, v, 1.0)
    # Posterior of Δ − null under the two-sided mixture: mean μ, sd s; Λ₁ = 2·Λ·P(alternative's side).
    ratio = (t2 * d / (safe + t2)) / np.sqrt(safe * t2 / (safe + t2))
    towards = -ratio if alternative == "greater" else ratio  # P(side) = erfc(towards/√2)/2
    side_mass = np.asarray(_erfc(np.asarray(towards / math.sqrt(2.0), dtype=float)), dtype=float) / 2.0
    with np.errstate(divide="ignore"):
        out = math.log(2.0) + log_lambda(d, safe, tau) + np.log(side_mass)
    return np.where(v > 0, out, 0.0)


def one_sided_p(delta: np.ndarray | float, v: np.ndarray | float, tau: float, null: float,
                alternative: Side) -> np.ndarray:
    """This look's p-value (the caller keeps the running minimum) for H1: Δ < null or Δ > null."""
    return np.minimum(1.0, np.exp(-one_sided_log_lambda(delta, v, tau, null, alternative)))


def look_p(kind: Kind, null: float, alternative: Side, tau: float, n_s, sum_s, sq_s, n_c, sum_c, sq_c) -> np.ndarray:
    """This look's one-sided p from running sums (vectorised: the benchmark's and the tests' path too)."""
    n_s, sum_s, n_c, sum_c = (np.asarray(a, dtype=float) for a in (n_s, sum_s, n_c, sum_c))
    delta = sum_c / np.where(n_c > 0, n_c, 1.0) - sum_s / np.where(n_s > 0, n_s, 1.0)
    v = variance_at(kind, null, n_s, sum_s, sq_s, n_c, sum_c, sq_c)
    return one_sided_p(delta, v, tau, null, alternative)


def _bound(kind: Kind, stable: ArmSums, challenger: ArmSums, delta: float, tau: float, alpha: float,
           side: Side) -> float | None:
    """One end of this look's interval: the null θ0 beyond Δ̂ where the one-sided p reaches α (bisection; the
    p grows monotonically as θ0 nears Δ̂). None: no such θ0 in range (unbounded on that side)."""
    def p(theta: float) -> float:
        return float(look_p(kind, theta, side, tau, stable.n, stable.total, stable.total_sq,
                            challenger.n, challenger.total, challenger.total_sq))

    sign = 1.0 if side == "less" else -1.0  # "less" rejects nulls above Δ̂: the upper bound
    if kind == "rate":
        far = sign * (1.0 - 1e-9)
    else:
        v = float(variance_at(kind, 0.0, stable.n, stable.total, stable.total_sq, challenger.n, challenger.total,
                              challenger.total_sq))
        if v <= 0:
            return None
        # Λ₁ ≥ Λ on the alternative's side: the two-sided radius at α is far enough.
        t2 = tau * tau
        far = delta + sign * 1.01 * math.sqrt(2.0 * v * (v + t2) / t2 * (math.log(1.0 / alpha)
                                                                         + 0.5 * math.log((v + t2) / v)))
    if p(far) > alpha:
        return None
    near = delta
    for _ in range(45):  # the range halves each time: 2^-45 of it is far below any shown digit
        mid = 0.5 * (near + far)
        if p(mid) <= alpha:
            far = mid
        else:
            near = mid
    return far


@dataclass(frozen=True)
class MetricState:
    """What one metric's test carries from look to look: the running minima and the running interval.

    Persist it with `to_dict`/`from_dict` (JSON-safe: an unbounded interval end is None). p-values are
    running minima (they never rise); the interval (Δ, natural units) is the running intersection."""

    looks: int = 0  # looks that carried evidence
    p_worse: float = 1.0
    p_not_worse: float = 1.0
    p_better: float = 1.0
    ci_low: float | None = None
    ci_high: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> MetricState:
        return cls(**data)


@dataclass(frozen=True)
class Look:
    """One look at one metric: the observed difference and where the test stands after it."""

    delta: float | None  # challenger − stable, natural units; None while an arm has fewer than MIN_N
    state: MetricState  # after this look


def update(state: MetricState, stable: ArmSums, challenger: ArmSums, *, kind: Kind, higher_is_better: bool,
           max_change: float, tau: float, alpha: float) -> Look:
    """One look: fold the current cumulative sums into the running test state.

    `max_change` (m ≥ 0) is the allowed worsening in the metric's units; `alpha` sets the interval's level.
    """
    if tau <= 0 or not math.isfinite(tau):
        raise ValueError(f"tau must be a positive effect scale in the metric's units, got {tau}")
    if stable.n < MIN_N or challenger.n < MIN_N:
        return Look(None, state)
    delta = challenger.total / challenger.n - stable.total / stable.n
    # In natural units: "worse beyond m" is Δ < −m when higher is better, Δ > +m when lower is better.
    margin = -max_change if higher_is_better else max_change
    worse_side: Side = "less" if higher_is_better else "greater"
    better_side: Side = "greater" if higher_is_better else "less"
    sums = (stable.n, stable.total, stable.total_sq, challenger.n, challenger.total, challenger.total_sq)
    p_worse = float(look_p(kind, margin, worse_side, tau, *sums))
    p_not_worse = float(look_p(kind, margin, better_side, tau, *sums))
    p_better = float(look_p(kind, 0.0, better_side, tau, *sums))
    if float(variance_at(kind, margin, *sums)) <= 0 and float(variance_at(kind, 0.0, *sums)) <= 0:
        return Look(delta, state)  # no spread yet: nothing to learn from this look
    low = _bound(kind, stable, challenger, delta, tau, alpha, "greater")
    high = _bound(kind, stable, challenger, delta, tau, alpha, "less")
    if state.ci_low is not None:
        low = state.ci_low if low is None else max(low, state.ci_low)
    if state.ci_high is not None:
        high = state.ci_high if high is None else min(high, state.ci_high)
    if low is not None and high is not None and low > high:
        # An empty intersection happens with probability ≤ 2α (or when the arms change under the test): show
        # this look's interval rather than none.
        low = _bound(kind, stable, challenger, delta, tau, alpha, "greater")
        high = _bound(kind, stable, challenger, delta, tau, alpha, "less")
    return Look(delta, replace(
        state, looks=state.looks + 1,
        p_worse=min(state.p_worse, p_worse),
        p_not_worse=min(state.p_not_worse, p_not_worse),
        p_better=min(state.p_better, p_better),
        ci_low=low, ci_high=high))


def state_to_json(states: dict[str, MetricState]) -> str:
    """Per-metric test states as JSON (what the caller persists between looks, e.g. in a sensor cursor)."""
    return json.dumps({name: s.to_dict() for name, s in sorted(states.items())})


def state_from_json(text: str | None) -> dict[str, MetricState]:
    if not text:
        return {}
    return {name: MetricState.from_dict(d) for name, d in json.loads(text).items()}
