"""Always-valid comparison of two arms: the mixture sequential probability ratio test (mSPRT).

Johari, Pekelis & Walsh, "Always Valid Inference: Continuous Monitoring of A/B Tests" (Operations Research
70(3), 2022). A rollout looks at its data again and again (every sensor tick); a fixed-horizon test checked at
every look rejects far more often than its α (`bench/rollout_stats.py` measures ~0.3 at α = 0.05). The mSPRT's
p-value stays valid however often and whenever one looks, so the rollout may stop the moment it is small.

Per metric, with Δ̂ = mean(challenger) − mean(stable) and V its variance (normal approximation),

    rates  (0/1 per interaction: reward pass, error):  V = p̃A(1−p̃A)/nA + p̃B(1−p̃B)/nB
    means  (reward in [0, 1], latency, cost):          V = sA²/nA + sB²/nB

and a N(0, τ²) mixture over the true difference around the null value θ0,

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

Rates use the Agresti–Caffo adjustment p̃ = (x + 1)/(n + 2) in V only (Δ̂ stays the raw difference): with no
errors in either arm the raw V is 0 and no look would ever count, though 0/500 against 0/5000 is evidence.
A look with fewer than `MIN_N` interactions in an arm, or V = 0 (a mean metric with no spread yet), adds no
evidence: the state is carried over unchanged.

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
MIN_N = 2  # per arm: below this neither a rate's nor a mean's variance means anything


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

    def variance(self, kind: Kind) -> float:
        """Per-observation variance: p̃(1 − p̃) for a rate (Agresti–Caffo p̃), the sample variance for a mean."""
        if kind == "rate":
            p = (self.total + 1.0) / (self.n + 2.0)
            return p * (1.0 - p)
        if self.n < 2:
            return 0.0
        return max(0.0, (self.total_sq - self.total * self.total / self.n) / (self.n - 1))

    def check(self, kind: Kind, label: str) -> None:
        """Raise a ValueError naming `label` when these sums cannot be this kind's (a rate's values are 0/1)."""
        if self.n < 0 or self.total_sq < 0 or not all(map(math.isfinite, (self.total, self.total_sq))):
            raise ValueError(f"{label}: n and the sum of squares must be >= 0 and finite (got {self})")
        if kind == "rate" and not -1e-9 <= self.total <= self.n + 1e-9:
            raise ValueError(f"{label}: a rate's sum must lie in [0, n] (each interaction counts 0 or 1), "
                             f"got sum {self.total} for n {self.n} — pass 0/1 values or make the metric kind mean")


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
                         alternative: Literal["less", "greater"]) -> np.ndarray:
    """log Λ₁ of the half-normal mixture on the alternative's side: H1 Δ < null ("less") or Δ > null ("greater")."""
    d = np.asarray(delta, dtype=float) - null
    v = np.asarray(v, dtype=float)
    t2 = tau * tau
    safe = np.where(v > 0, v, 1.0)
    # Posterior of Δ − null under the two-sided mixture: mean mu, sd s; Λ₁ = 2·Λ·P(alternative's side).
    ratio = (t2 * d / (safe + t2)) / np.sqrt(safe * t2 / (safe + t2))
    towards = -ratio if alternative == "greater" else ratio  # Φ(ratio on the side) = erfc(towards/√2)/2
    side_mass = np.asarray(_erfc(np.asarray(towards / math.sqrt(2.0), dtype=float)), dtype=float) / 2.0
    with np.errstate(divide="ignore"):
        out = math.log(2.0) + log_lambda(d, safe, tau) + np.log(side_mass)
    return np.where(v > 0, out, 0.0)


def one_sided_p(delta: np.ndarray | float, v: np.ndarray | float, tau: float, null: float,
                alternative: Literal["less", "greater"]) -> np.ndarray:
    """This look's p-value (the caller keeps the running minimum) for H1: Δ < null or Δ > null."""
    return np.minimum(1.0, np.exp(-one_sided_log_lambda(delta, v, tau, null, alternative)))


def half_width(v: float, tau: float, alpha: float) -> float:
    """Distance from Δ̂ to each bound of this look's interval: where the one-sided p reaches α (∞ when v ≤ 0).

    Λ₁ lies between Λ and 2Λ on the alternative's side and grows with the distance, so the bound sits
    between the two-sided mixture's radii at α and 2α; bisection finds it."""
    if v <= 0:
        return math.inf
    t2 = tau * tau

    def radius(level: float) -> float:  # two-sided: log Λ = ln(1/level)
        return math.sqrt(2.0 * v * (v + t2) / t2 * (math.log(1.0 / level) + 0.5 * math.log((v + t2) / v)))

    target = math.log(1.0 / alpha)
    lo, hi = radius(min(2.0 * alpha, 1.0)), radius(alpha)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if float(one_sided_log_lambda(-mid, v, tau, 0.0, "less")) >= target:
            hi = mid
        else:
            lo = mid
    return hi


def difference(stable: ArmSums, challenger: ArmSums, kind: Kind) -> tuple[float | None, float]:
    """(Δ̂ = challenger − stable, V); Δ̂ None and V 0 while an arm has fewer than MIN_N interactions."""
    if stable.n < MIN_N or challenger.n < MIN_N:
        return None, 0.0
    delta = challenger.total / challenger.n - stable.total / stable.n
    return delta, stable.variance(kind) / stable.n + challenger.variance(kind) / challenger.n


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

    delta: float | None  # challenger − stable, natural units
    variance: float
    state: MetricState  # after this look


def update(state: MetricState, stable: ArmSums, challenger: ArmSums, *, kind: Kind, higher_is_better: bool,
           max_change: float, tau: float, alpha: float) -> Look:
    """One look: fold the current cumulative sums into the running test state.

    `max_change` (m ≥ 0) is the allowed worsening in the metric's units; `alpha` sets the interval's level.
    """
    if tau <= 0 or not math.isfinite(tau):
        raise ValueError(f"tau must be a positive effect scale in the metric's units, got {tau}")
    delta, v = difference(stable, challenger, kind)
    if delta is None or v <= 0:
        return Look(delta, v, state)
    # Goodness g = ±Δ: positive means the challenger is better.
    sign = 1.0 if higher_is_better else -1.0
    g = sign * delta
    p_worse = float(one_sided_p(g, v, tau, -max_change, "less"))
    p_not_worse = float(one_sided_p(g, v, tau, -max_change, "greater"))
    p_better = float(one_sided_p(g, v, tau, 0.0, "greater"))
    w = half_width(v, tau, alpha)
    low, high = delta - w, delta + w
    if state.ci_low is not None and state.ci_high is not None:
        new_low, new_high = max(low, state.ci_low), min(high, state.ci_high)
        # An empty intersection happens with probability ≤ α (or when the arms change under the test):
        # show this look's interval rather than none.
        if new_low <= new_high:
            low, high = new_low, new_high
    return Look(delta, v, replace(
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
