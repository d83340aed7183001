"""The eval gate: may a candidate replace the champion? Paired one-sided tests per metric and golden slice.

Both models answer the same golden examples and one judge per metric scores both answers, so each metric
gives paired per-item scores in [0, 1] and, per slice, Δ = mean(candidate) − mean(champion). Every item
belongs to the slices the caller names; `decide` adds "all" to each item that lacks it, so "all" is always
every item (with several golden sets whose slices are prefixed "<set>/", their union; "<set>/all" is then an
ordinary slice). Each metric has its own judge, test family and δ = `min_delta`, the worst acceptable Δ:

* Default (`require_significance: false`) — block *shown* regressions. A slice FAILS when a one-sided test
  rejects H0: Δ ≥ δ, Holm-corrected across the metric's slices at family level α; "all" also FAILS when its
  point Δ < δ. Demanding that each slice *show* Δ > δ would, with δ = 0, pass only a candidate significantly
  better everywhere, which 6-8 items per intent cannot show. So: losing 1 of 8 passes (p = 1/2); forgetting
  an intent (8/8 → 0/8, p = 1/256) fails, the intent and the slices holding it; with δ = 0 any net loss
  overall fails on "all"'s point rule (a negative δ tolerates it).
* `require_significance: true` — every slice must show non-inferiority: H0: Δ ≤ δ rejected (Holm), i.e. the
  lower bound above δ. Only sensible with δ < 0 and slices of dozens of items; raise `min_examples`.
* `improve` — each named slice must show Δ > 0 (H0: Δ ≤ 0 rejected, Holm over the improve list), for every
  metric; it is then marked "improved".
* A slice with n < `min_examples` (default 5: below 5 pairs no one-sided exact test reaches p < 0.05) is
  reported but only held to the point rule Δ ≥ δ (Δ > 0 for an improve target) and stays out of Holm.

Tests. Binary metrics (every score 0 or 1), with lost/won the pairs only the champion/candidate got right:
* δ = 0: exact McNemar, one-sided: given m = lost + won, won ~ Binomial(m, 1/2). The smallest p it can give
  is 2^-m, so following Tarone (1990, Biometrics 46:515) Holm runs over only the slices that could reach
  p ≤ α/k (k = family size): a slice where the models disagree on 2 items can never be significant and
  would only dilute the others (18 slices of 8 items: plain Holm needs p ≤ 0.0028 < 1/256). Valid because
  the family depends only on the discordance counts, on which the exact tests condition.
* δ ≠ 0: no conditional test exists for a difference margin (under H0 the wins' share of discordant pairs
  depends on the discordance rate), so: the exact unconditional test ordered by Tango's score statistic,
  maximised over that nuisance on the boundary Δ = δ (Hsueh, Liu & Chen 2001, Biometrics 57:478). Its
  smallest p, ((1 ∓ δ)/2)^n, depends on n alone, so Tarone's rule applies to it as well.
* CI: Tango's score interval (Tango 1998, Stat Med 17:891; recommended by Fagerland, Lydersen & Laake 2014,
  Stat Med 33:2850). It is descriptive: decisions use the exact p-values.
Continuous metrics: paired bootstrap of the item deltas (seeded per metric and slice, so a row does not depend
on the others), percentile CI, p by test inversion: the share of resampled means on H0's side of δ, as
(1 + k) / (B + 1) so it is never 0. Percentile intervals under-cover below ~20 items: raise `min_examples`.

The CI is two-sided at 1 − 2α (each bound one-sided at α) and not multiplicity-adjusted; the p column is the
unadjusted p of the mode's test, "Holm p" the adjusted one the decision uses ("—": outside the family).
Holm and the exact tests are written out here (statsmodels is not installed, scipy is no dependency); each is
a few lines, tested against hand-computed values. It replaces the point-margin rule Δ ≥ −max(0.03, 1/n)
(`compare`, which nothing in the package calls any more); test_gate.py shows where the two disagree.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Literal

import numpy as np

from continuum_pipeline.evaluation.policy import GatePolicy

_EPS = 1e-9  # float slack for point rules and ties


# --- the result ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GateRow:
    metric: str
    slice: str
    n: int
    champion: float  # mean score
    candidate: float
    delta: float  # candidate − champion
    ci_low: float  # two-sided 1 − 2α interval for delta
    ci_high: float
    p_value: float  # one-sided, unadjusted: regression beyond min_delta (default) or non-inferiority
    p_holm: float | None  # Holm-adjusted; None when outside the family (small slice, cannot reach significance)
    decision: str  # "FAIL", "pass" or "improved"
    reason: str
    min_delta: float
    test: str  # "exact McNemar", "exact score", "bootstrap"
    improve_p: float | None = None  # improve targets only: one-sided p for Δ > 0, and its Holm adjustment
    improve_p_holm: float | None = None


@dataclass
class GateResult:
    rows: list[GateRow] = field(default_factory=list)
    alpha: float = 0.05
    require_significance: bool = False

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def failures(self) -> list[GateRow]:
        return [r for r in self.rows if r.decision == "FAIL"]

    def row(self, metric: str, slice: str) -> GateRow:
        return next(r for r in self.rows if r.metric == metric and r.slice == slice)

    def markdown(self) -> str:
        """The gate table, failing rows first."""
        verdict = (f"**gate: FAIL** ({len(self.failures)} of {len(self.rows)} metric × slice rows fail)"
                   if self.failures else f"**gate: pass** (all {len(self.rows)} metric × slice rows)")
        test = "non-inferiority (H0: Δ ≤ min_delta)" if self.require_significance else \
            "regression (H0: Δ ≥ min_delta)"
        lines = [verdict, "",
                 "| metric | slice | n | champion | candidate | Δ | CI | p | Holm p | decision | reason |",
                 "|---|---|--:|--:|--:|--:|---|--:|--:|---|---|"]
        for r in sorted(self.rows, key=lambda r: r.decision != "FAIL"):
            decision = "**FAIL**" if r.decision == "FAIL" else r.decision
            lines.append(
                f"| {_cell(r.metric)} | {_cell(r.slice)} | {r.n} | {r.champion:.3f} | {r.candidate:.3f} "
                f"| {r.delta:+.3f} | [{r.ci_low:+.3f}, {r.ci_high:+.3f}] | {_p(r.p_value)} | {_p(r.p_holm)} "
                f"| {decision} | {_cell(r.reason)} |")
        lines += ["", f"Δ = candidate − champion. CI: two-sided {1 - 2 * self.alpha:.0%}, descriptive (Tango score "
                      f"interval for 0/1 scores, bootstrap percentile otherwise). p: one-sided {test} test (exact for "
                      f"0/1 scores); Holm p: adjusted per metric at α = {self.alpha:g}, which decides."]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-ready (MLflow, Dagster metadata)."""
        return {"passed": self.passed, "alpha": self.alpha, "require_significance": self.require_significance,
                "rows": [asdict(r) for r in self.rows],
                "failures": [f"{r.metric}/{r.slice}: {r.reason}" for r in self.failures]}


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _p(p: float | None) -> str:
    return "—" if p is None else f"{p:.3g}"


# --- the decision --------------------------------------------------------------------------------------------
@dataclass
class _Slice:
    name: str
    n: int
    champion: float
    candidate: float
    ci: tuple[float, float]
    test: str
    p: float  # the mode's test
    min_p: float  # the smallest p its test could give (Tarone)
    improve_p: float | None = None
    improve_min_p: float = 0.0
    discordant: int | None = None  # binary only

    @property
    def delta(self) -> float:
        return self.candidate - self.champion


def decide(policy: GatePolicy, scores: Mapping[str, tuple[Sequence[float], Sequence[float]]],
           slices: Sequence[Sequence[str]]) -> GateResult:
    """Gate a candidate: `scores` maps each policy metric to (champion, candidate) per-item scores in [0, 1],
    paired and in the order of `slices` (each item's slice names; "all" is added where missing)."""
    item_slices = [tuple(dict.fromkeys((*names, "all"))) for names in slices]
    if not item_slices:
        raise ValueError("no golden examples to gate on: the golden set is empty")
    missing = [m for m in policy.metrics if m not in scores]
    if missing:
        raise ValueError(f"no scores for metric(s) {missing}: score the golden answers with "
                         f"{[policy.metrics[m].judge for m in missing]}")
    extra = [m for m in scores if m not in policy.metrics]
    if extra:
        raise ValueError(f"scores for {extra}, which the gate policy does not name: add them under gate.metrics "
                         "or leave them out")
    names = sorted({s for names in item_slices for s in names}, key=lambda s: (s != "all", s))
    members = {s: np.array([i for i, names in enumerate(item_slices) if s in names]) for s in names}
    unknown = [s for s in policy.improve if s not in members]
    if unknown:
        raise ValueError(f"improve names slice(s) {unknown} that no golden example has; slices are {names}")
    result = GateResult(alpha=policy.alpha, require_significance=policy.require_significance)
    for metric, metric_policy in policy.metrics.items():
        champion, candidate = (_checked(metric, side, values, len(item_slices))
                               for side, values in zip(("champion", "candidate"), scores[metric], strict=True))
        binary = bool(np.isin(champion, (0.0, 1.0)).all() and np.isin(candidate, (0.0, 1.0)).all())
        stats = [_slice_stats(policy, metric, metric_policy.min_delta, s, champion[idx], candidate[idx], binary)
                 for s, idx in members.items()]
        result.rows += _decide_metric(policy, metric, metric_policy.min_delta, stats)
    return result


def _checked(metric: str, side: str, values: Sequence[float], n: int) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.shape != (n,):
        raise ValueError(f"metric {metric!r}: {array.size} {side} scores for {n} golden examples; "
                         "score every example, in the order of `slices`")
    bad = np.flatnonzero(~np.isfinite(array) | (array < 0) | (array > 1))
    if bad.size:
        raise ValueError(f"metric {metric!r}: {side} score {array[bad[0]]} at example {bad[0]} is outside [0, 1]; "
                         "normalise the judge's scores to [0, 1]")
    return array


def _slice_stats(policy: GatePolicy, metric: str, min_delta: float, name: str, champion: np.ndarray,
                 candidate: np.ndarray, binary: bool) -> _Slice:
    n = len(champion)
    alternative = "greater" if policy.require_significance else "less"
    target = name in policy.improve
    if binary:
        lost = int(np.sum((champion == 1) & (candidate == 0)))
        won = int(np.sum((champion == 0) & (candidate == 1)))
        m = lost + won
        if min_delta == 0:
            test, p, min_p = "exact McNemar", mcnemar_one_sided(lost, won, alternative), 0.5**m
        else:
            # its most extreme table, all lost (all won), has p = ((1 ∓ δ)/2)^n: what n items can show at best
            best = ((1 - min_delta) if alternative == "less" else (1 + min_delta)) / 2
            test, p, min_p = "exact score", exact_score_p(lost, won, n, min_delta, alternative), best**n
        return _Slice(name, n, float(champion.mean()), float(candidate.mean()),
                      tango_interval(lost, won, n, policy.alpha), test, p, min_p,
                      mcnemar_one_sided(lost, won, "greater") if target else None, 0.5**m, m)
    seed = [policy.seed, zlib.crc32(f"{metric}\0{name}".encode())]  # stable across runs and slice sets
    means = bootstrap_means(candidate - champion, policy.bootstrap_samples, np.random.default_rng(seed))
    low, high = np.quantile(means, [policy.alpha, 1 - policy.alpha])
    return _Slice(name, n, float(champion.mean()), float(candidate.mean()), (float(low), float(high)), "bootstrap",
                  bootstrap_p(means, min_delta, alternative), 0.0,
                  bootstrap_p(means, 0.0, "greater") if target else None)


def _decide_metric(policy: GatePolicy, metric: str, min_delta: float, stats: list[_Slice]) -> list[GateRow]:
    alpha = policy.alpha
    tested = [s for s in stats if s.n >= policy.min_examples]
    holm_p = _family_holm([(s.name, s.p, s.min_p) for s in tested], alpha)
    improve_holm = _family_holm([(s.name, s.improve_p, s.improve_min_p) for s in tested
                                 if s.improve_p is not None], alpha)
    rows = []
    for s in stats:
        small = s.n < policy.min_examples
        adjusted = holm_p.get(s.name)
        fails, notes, improved = [], [], False
        if small:
            below = s.delta < min_delta - _EPS
            (fails if below else notes).append(f"n < min_examples {policy.min_examples}, point rule: "
                                               f"Δ {s.delta:+.3f} {'<' if below else '≥'} min_delta {min_delta:+.3f}")
        elif policy.require_significance:
            shown = adjusted is not None and adjusted <= alpha
            (notes if shown else fails).append(
                f"non-inferior (Holm p {adjusted:.3g})" if shown else
                f"non-inferiority to {min_delta:+.3f} not shown ({_why_not(s, adjusted)})")
        elif adjusted is not None and adjusted <= alpha:
            fails.append(f"significant regression beyond {min_delta:+.3f} (Holm p {adjusted:.3g})")
        else:
            notes.append(f"no significant regression ({_why_not(s, adjusted)})")
        if s.name == "all" and not small and s.delta < min_delta - _EPS:
            fails.append(f"overall point Δ {s.delta:+.3f} < min_delta {min_delta:+.3f}")
        if s.improve_p is not None:
            if small:
                improved = s.delta > _EPS
                reason = f"improve target, n < min_examples: point Δ {s.delta:+.3f} {'>' if improved else '≤'} 0"
            else:
                improved = improve_holm.get(s.name) is not None and improve_holm[s.name] <= alpha
                reason = (f"improved (Holm p {improve_holm[s.name]:.3g})" if improved else
                          f"required improvement not shown ({_why_not(s, improve_holm.get(s.name), improve=True)})")
            (notes if improved else fails).insert(0, reason)
        decision = "FAIL" if fails else "improved" if improved else "pass"
        rows.append(GateRow(metric, s.name, s.n, s.champion, s.candidate, s.delta, s.ci[0], s.ci[1], s.p, adjusted,
                            decision, "; ".join(fails or notes), min_delta, s.test, s.improve_p,
                            improve_holm.get(s.name)))
    return rows


def _why_not(s: _Slice, adjusted: float | None, improve: bool = False) -> str:
    if adjusted is not None:
        return f"Holm p {adjusted:.3g}"
    if s.discordant is not None and (s.test == "exact McNemar" or improve):
        return f"{s.discordant} discordant pair{'' if s.discordant == 1 else 's'}: cannot reach significance"
    return f"{s.n} items cannot reach significance"  # the exact score test's best p is fixed by n


def _family_holm(family: list[tuple[str, float, float]], alpha: float) -> dict[str, float]:
    """Holm-adjusted p per name over the members whose test could reach significance (Tarone)."""
    keep = tarone_family([min_p for _, _, min_p in family], alpha)
    adjusted = holm([family[i][1] for i in keep])
    return {family[i][0]: p for i, p in zip(keep, adjusted, strict=True)}


# --- statistics ----------------------------------------------------------------------------------------------
def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (reject where ≤ α); valid under any dependence between the tests."""
    k = len(p_values)
    adjusted = [0.0] * k
    running = 0.0
    for rank, i in enumerate(sorted(range(k), key=lambda i: p_values[i])):
        running = max(running, min(1.0, (k - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def tarone_family(min_p_values: Sequence[float], alpha: float) -> list[int]:
    """Tarone (1990): the smallest k with at most k tests able to reach α/k; returns those tests' indices."""
    for k in range(1, len(min_p_values) + 1):
        family = [i for i, p in enumerate(min_p_values) if p <= alpha / k]
        if len(family) <= k:
            return family
    return []


def mcnemar_one_sided(lost: int, won: int, alternative: Literal["less", "greater"]) -> float:
    """Exact one-sided McNemar: given the discordant pairs, won ~ Binomial(lost + won, 1/2); "less" tests
    whether the candidate is worse (few wins), "greater" whether it is better."""
    m = lost + won
    k = won if alternative == "less" else lost  # P(W ≤ won) = P(L ≥ lost): by symmetry one lower tail
    return sum(math.comb(m, i) for i in range(k + 1)) / 2**m


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar test on the discordant pairs b and c."""
    if b + c == 0:
        return 1.0
    return min(1.0, 2 * mcnemar_one_sided(max(b, c), min(b, c), "less"))


def tango_z(lost, won, n: int, delta: float):
    """Tango's score statistic for H0: Δ = delta with Δ = P(won) − P(lost); vectorised over lost, won."""
    lost, won = np.asarray(lost, dtype=float), np.asarray(won, dtype=float)
    # P(lost) under H0, maximising the likelihood: the root of 2n x² + B x + C = 0
    b = -(lost + won) + delta * (2 * n + lost - won)
    c = -lost * delta * (1 - delta)
    x = (-b + np.sqrt(np.maximum(b * b - 8 * n * c, 0.0))) / (4 * n)
    variance = n * (2 * x + delta - delta * delta)
    numerator = won - lost - n * delta
    with np.errstate(divide="ignore", invalid="ignore"):  # 0/0 and x/0 are resolved just below
        z = numerator / np.sqrt(variance)
        return np.where(numerator == 0, 0.0, np.where(variance > 0, z, np.sign(numerator) * np.inf))


def tango_interval(lost: int, won: int, n: int, alpha: float) -> tuple[float, float]:
    """Tango's score interval for Δ, two-sided 1 − 2α: each bound where the score test is at the α boundary."""
    z = NormalDist().inv_cdf(1 - alpha)

    def solve(target: float) -> float:  # Tango's Z decreases in delta
        lo, hi = -1.0, 1.0
        if float(tango_z(lost, won, n, lo)) <= target:
            return lo
        if float(tango_z(lost, won, n, hi)) >= target:
            return hi
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if float(tango_z(lost, won, n, mid)) > target else (lo, mid)
        return (lo + hi) / 2

    return solve(z), solve(-z)


def exact_score_p(lost: int, won: int, n: int, delta: float, alternative: Literal["less", "greater"],
                  grid: int = 200) -> float:
    """Exact unconditional p for H0: Δ = delta (one-sided): the largest probability, over P(lost) = θ, of
    tables whose Tango statistic is at least as extreme as the observed one."""
    b, c = (a.astype(float) for a in np.nonzero(np.add.outer(np.arange(n + 1), np.arange(n + 1)) <= n))
    z = tango_z(b, c, n, delta)
    observed = float(tango_z(lost, won, n, delta))
    extreme = z <= observed + _EPS if alternative == "less" else z >= observed - _EPS
    # sup P(extreme) = 1 - inf P(rest): sum over the smaller of the two sets (large golden sets)
    complement = np.count_nonzero(extreme) > extreme.size / 2
    b, c = (b[~extreme], c[~extreme]) if complement else (b[extreme], c[extreme])
    rest = n - b - c
    log_factorial = np.array([math.lgamma(k + 1) for k in range(n + 1)])
    log_coef = log_factorial[n] - log_factorial[b.astype(int)] - log_factorial[c.astype(int)] - \
        log_factorial[rest.astype(int)]

    def tail(theta: float) -> float:  # P(extreme) when P(lost) = θ, P(won) = θ + delta
        log_p = log_coef + _xlogy(b, theta) + _xlogy(c, theta + delta) + _xlogy(rest, 1 - 2 * theta - delta)
        total = float(np.exp(log_p).sum())
        return 1.0 - total if complement else total

    thetas = np.linspace(max(0.0, -delta), (1 - delta) / 2, grid + 1)
    values = [tail(t) for t in thetas]
    best = int(np.argmax(values))  # refine around the grid's maximum
    fine = np.linspace(thetas[max(best - 1, 0)], thetas[min(best + 1, grid)], 41)
    return min(1.0, max(0.0, *values, *(tail(t) for t in fine)))


def _xlogy(k: np.ndarray, p: float) -> np.ndarray:  # k log p with 0 log 0 = 0
    return k * math.log(p) if p > 0 else np.where(k == 0, 0.0, -np.inf)


def bootstrap_means(deltas: np.ndarray, samples: int, rng: np.random.Generator) -> np.ndarray:
    """Means of `samples` resamples (with replacement) of the paired per-item deltas."""
    n = len(deltas)
    chunk = max(1, 2_000_000 // n)  # bounded memory on large golden sets
    return np.concatenate([deltas[rng.integers(0, n, size=(min(chunk, samples - start), n))].mean(axis=1)
                           for start in range(0, samples, chunk)])


def bootstrap_p(means: np.ndarray, delta: float, alternative: Literal["less", "greater"]) -> float:
    """One-sided p by inverting the percentile interval: the share of resampled means on H0's side."""
    on_null_side = means >= delta - _EPS if alternative == "less" else means <= delta + _EPS
    return float((1 + np.count_nonzero(on_null_side)) / (len(means) + 1))
