"""One look at a rollout: roll back, hold, advance or promote (Argo Rollouts' analysis semantics).

The caller (the rollout asset or the canary sensor) calls `decide` at every look with the per-arm running sums
since the rollout began and the state the previous look returned, applies `Decision.weights` (and
`shadow_sample_rate`) to the gateway, and persists `Decision.state_json()` with the step index. The stable
arm's sums cover only its interactions since the rollout began, concurrent with the challenger's (older
traffic would confound the arms with time); at a shadow step they may be the stable answers to the copied
requests, judged like the challenger's. A new rollout starts at `step_setting(spec, 0)`. In order:

1. Hard guards (no test, once the challenger has `hard_guards.min_interactions`): its error rate or latency p95
   beyond a limit → rollback.
2. A metric shown worse beyond its `max_change` (always-valid p ≤ alpha; stats.update) → rollback: a failed
   analysis aborts and sends all traffic back to stable.
3. Fewer than `min_interactions_per_step` challenger interactions (or shadow copies) at this step, or fewer
   than `min_minutes_per_step` minutes → hold.
4. Every metric shown within its allowance (non-inferior, always-valid p ≤ alpha) → advance to the next step,
   or promote after the last (ab: promote only when some metric also shows the challenger better). Otherwise
   the analysis is inconclusive → hold.

Evidence accumulates over the whole rollout (the test is always valid across steps), so after the first step
a challenger already shown within its allowance advances as soon as each step's minimums are met; the
rollback test keeps watching at every weight (a regression that only appears under load still stops it).
Each metric is tested at alpha: a false rollback (≤ alpha per metric) costs one rollout, a missed regression
reaches users, so no correction is made across metrics; advancing needs every metric (intersection–union),
which needs none. A challenger exactly at its allowance holds (inconclusive) until a person decides
(`continuum rollout promote|rollback`).

Pure Python; no Dagster.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Literal

from continuum_pipeline.rollout.policy import ERROR_RATE, RolloutSpec
from continuum_pipeline.rollout.stats import ArmSums, MetricState, state_from_json, state_to_json, update

Action = Literal["rollback", "hold", "advance", "promote"]
STABLE, CHALLENGER = "stable", "challenger"


@dataclass(frozen=True)
class ArmObservation:
    """What the caller measured for one arm."""

    metrics: Mapping[str, ArmSums]  # metric name → running sums since the rollout began (shadow copies included)
    at_step: int = 0  # interactions (or shadow copies) since the current step began; read for the challenger
    # Since the rollout began. The challenger's is required once a latency guard may fire; the stable arm's
    # feeds max_latency_p95_ratio (None: that guard cannot be judged yet and is skipped).
    latency_p95_ms: float | None = None


@dataclass(frozen=True)
class MetricRow:
    """One metric's line in the rollout table (natural units; Δ = challenger − stable)."""

    metric: str
    kind: str
    direction: str
    max_change: float
    n_stable: int
    n_challenger: int
    mean_stable: float | None
    mean_challenger: float | None
    delta: float | None
    ci_low: float | None  # the always-valid interval for Δ (running intersection; None: unbounded)
    ci_high: float | None
    p_worse: float  # always-valid p: challenger worse beyond max_change
    p_not_worse: float  # always-valid p: challenger within max_change
    p_better: float  # always-valid p: challenger better
    verdict: Literal["worse", "better", "within", "inconclusive", "no data"]


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str  # one sentence
    step_index: int  # the step after this decision (index into spec.plan()); rollback: the step it left
    challenger_weight: float  # the challenger's traffic share from now on (0 after a rollback, 1 on promotion)
    shadow_sample_rate: float  # share of requests copied to the challenger from now on (0: no shadow)
    rows: tuple[MetricRow, ...]
    state: Mapping[str, MetricState] = field(default_factory=dict)
    guard: str | None = None  # the hard guard that fired, if any

    @property
    def weights(self) -> dict[str, float]:
        """Arm name → traffic share, for the gateway's arms file."""
        return {STABLE: round(1.0 - self.challenger_weight, 6), CHALLENGER: self.challenger_weight}

    def state_json(self) -> str:
        return state_to_json(dict(self.state))

    def table(self) -> list[dict]:
        """The rows as plain dicts (for a metadata table, JSON or a CLI)."""
        return [asdict(r) for r in self.rows]

    def markdown(self) -> str:
        """The rows as a markdown table, numbers rounded for people."""
        def num(x: float | None, digits: int = 4) -> str:
            return "—" if x is None else f"{x:.{digits}g}"

        lines = ["| metric | n stable | n challenger | mean stable | mean challenger | Δ | interval | "
                 "p worse | p within | verdict |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in self.rows:
            interval = f"[{num(r.ci_low, 3) if r.ci_low is not None else '−∞'}, " \
                       f"{num(r.ci_high, 3) if r.ci_high is not None else '∞'}]"
            lines.append(f"| {r.metric} | {r.n_stable} | {r.n_challenger} | {num(r.mean_stable)} | "
                         f"{num(r.mean_challenger)} | {num(r.delta, 3)} | {interval} | {num(r.p_worse, 3)} | "
                         f"{num(r.p_not_worse, 3)} | {r.verdict} |")
        return "\n".join(lines)


def step_setting(spec: RolloutSpec, step_index: int) -> tuple[float, float]:
    """(challenger weight, shadow sample rate) at a step of the plan: what a new rollout starts with at 0."""
    plan = spec.plan()
    if not 0 <= step_index < len(plan):
        raise ValueError(f"step_index {step_index} is outside the plan {plan} (0 … {len(plan) - 1})")
    weight = plan[step_index]
    return weight, (spec.shadow.sample_rate if weight == 0.0 else 0.0)


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _guard(spec: RolloutSpec, stable: ArmObservation, challenger: ArmObservation) -> str | None:
    """The hard guard the challenger breaches, as a sentence; None when none does (or too few interactions)."""
    g = spec.hard_guards
    n = max((s.n for s in challenger.metrics.values()), default=0)
    if n < g.min_interactions:
        return None
    if g.max_error_rate is not None:
        errors = challenger.metrics[ERROR_RATE]
        if errors.n and errors.total / errors.n > g.max_error_rate:
            return (f"the challenger's error rate {_fmt(errors.total / errors.n)} exceeds the hard limit "
                    f"{_fmt(g.max_error_rate)} ({int(round(errors.total))} of {errors.n})")
    p95 = challenger.latency_p95_ms
    if (g.max_latency_p95_ms is not None or g.max_latency_p95_ratio is not None) and p95 is None:
        raise ValueError("challenger.latency_p95_ms is None but a latency guard is on: pass the challenger's "
                         "latency p95 (ms), or set hard_guards.max_latency_p95_ms and max_latency_p95_ratio to null")
    if g.max_latency_p95_ms is not None and p95 > g.max_latency_p95_ms:
        return f"the challenger's latency p95 {_fmt(p95)} ms exceeds the hard limit {_fmt(g.max_latency_p95_ms)} ms"
    if g.max_latency_p95_ratio is not None and stable.latency_p95_ms and p95 > g.max_latency_p95_ratio * \
            stable.latency_p95_ms:
        return (f"the challenger's latency p95 {_fmt(p95)} ms exceeds {_fmt(g.max_latency_p95_ratio)}× the stable "
                f"arm's {_fmt(stable.latency_p95_ms)} ms")
    return None


def _row(name: str, spec: RolloutSpec, stable: ArmSums, challenger: ArmSums, before: MetricState,
         ) -> tuple[MetricRow, MetricState]:
    rule = spec.metrics[name]
    look = update(before, stable, challenger, kind=rule.kind, higher_is_better=rule.higher_is_better,
                  max_change=rule.max_change, tau=rule.effect_scale, alpha=spec.alpha)
    s = look.state
    if s.p_worse <= spec.alpha:
        verdict = "worse"
    elif s.p_not_worse <= spec.alpha:
        verdict = "better" if s.p_better <= spec.alpha else "within"
    else:
        verdict = "inconclusive" if s.looks else "no data"
    row = MetricRow(name, rule.kind, rule.direction, rule.max_change, stable.n, challenger.n, stable.mean,
                    challenger.mean, look.delta, s.ci_low, s.ci_high, s.p_worse, s.p_not_worse, s.p_better,
                    verdict)
    return row, s


def _interval(r: MetricRow) -> str:
    low = "−∞" if r.ci_low is None else _fmt(r.ci_low)
    high = "∞" if r.ci_high is None else _fmt(r.ci_high)
    return f"[{low}, {high}]"


def decide(spec: RolloutSpec, *, step_index: int, stable: ArmObservation, challenger: ArmObservation,
           minutes_at_step: float, state: Mapping[str, MetricState] | str | None = None) -> Decision:
    """One look: see the module docstring. `state` is what the previous decision returned (`Decision.state`, or
    its `state_json()`); None at the rollout's first look."""
    plan = spec.plan()
    step_setting(spec, step_index)  # validates the index
    if isinstance(state, str) or state is None:
        state = state_from_json(state)
    required = set(spec.metrics) | ({ERROR_RATE} if spec.hard_guards.max_error_rate is not None else set())
    for arm_name, arm in ((STABLE, stable), (CHALLENGER, challenger)):
        missing = sorted(required - set(arm.metrics))
        if missing:
            raise ValueError(f"{arm_name}.metrics lacks {missing}: pass running sums for every metric of the "
                             f"rollout policy{' and for error_rate (hard_guards.max_error_rate)' if ERROR_RATE in missing else ''}")
        for name in required:
            kind = spec.metrics[name].kind if name in spec.metrics else "rate"
            arm.metrics[name].check(kind, f"{arm_name}.metrics[{name!r}]")
    if not math.isfinite(minutes_at_step) or minutes_at_step < 0:
        raise ValueError(f"minutes_at_step must be >= 0, got {minutes_at_step}")

    rows, new_state = [], {}
    for name in spec.metrics:
        row, s = _row(name, spec, stable.metrics[name], challenger.metrics[name], state.get(name, MetricState()))
        rows.append(row)
        new_state[name] = s
    weight, shadow_rate = step_setting(spec, step_index)

    def out(action: Action, reason: str, index: int, guard: str | None = None) -> Decision:
        if action == "rollback":
            w, rate = 0.0, 0.0
        elif action == "promote":
            w, rate = 1.0, 0.0
        else:
            w, rate = step_setting(spec, index)
        return Decision(action, reason, index, w, rate, tuple(rows), new_state, guard)

    where = "the shadow step" if weight == 0.0 else f"{weight:.0%}"
    guard = _guard(spec, stable, challenger)
    if guard:
        return out("rollback", f"Roll back at {where}: {guard}.", step_index, guard)
    worse = [r for r in rows if r.verdict == "worse"]
    if worse:
        parts = "; ".join(f"{r.metric} Δ {_fmt(r.delta)} {_interval(r)} is worse than the allowed "
                          f"{_fmt(r.max_change)} (always-valid p {_fmt(r.p_worse)} ≤ {_fmt(spec.alpha)})"
                          for r in worse)
        return out("rollback", f"Roll back at {where}: {parts}.", step_index)
    if challenger.at_step < spec.min_interactions_per_step or minutes_at_step < spec.min_minutes_per_step:
        return out("hold", f"Hold at {where}: {challenger.at_step}/{spec.min_interactions_per_step} challenger "
                           f"interactions and {minutes_at_step:.0f}/{spec.min_minutes_per_step:g} minutes at this "
                           f"step so far.", step_index)
    open_ = [r for r in rows if r.verdict not in ("within", "better")]
    if open_:
        parts = "; ".join(f"{r.metric} Δ {_fmt(r.delta) if r.delta is not None else '—'} {_interval(r)} vs "
                          f"allowed {_fmt(r.max_change)}" for r in open_)
        return out("hold", f"Hold at {where}: not yet shown within the allowance — {parts}.", step_index)
    if spec.strategy == "ab":
        better = [r.metric for r in rows if r.verdict == "better"]
        if not better:
            return out("hold", "Hold at 50%: within every allowance but no metric shows the challenger better "
                               "yet.", step_index)
        return out("promote", f"Promote: the challenger is better on {', '.join(better)} and within every "
                              f"allowance.", step_index)
    if step_index + 1 < len(plan):
        nxt = plan[step_index + 1]
        return out("advance", f"Advance from {where} to {nxt:.0%}: every metric is within its allowance.",
                   step_index + 1)
    return out("promote", f"Promote after {where}: every metric is within its allowance.", step_index)
