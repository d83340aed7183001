"""The regression gate: a candidate may not be worse than the champion on any slice beyond its margin.

Both models answer the same golden examples and the same check scores them, so outcomes are paired:
the per-slice p-value is an exact McNemar test (stdlib binomial; scipy is not needed for this).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

PASS_SCORE = 0.5  # a check score at or above this counts as a success


@dataclass(frozen=True)
class GoldenExample:
    golden_id: str
    slices: tuple[str, ...]  # e.g. ("refund_status", "changed_intents", "all")
    messages: list[dict]
    metadata: dict  # what the check needs (intent, slots, phase)


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
class GateResult:
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


def success(answers: Sequence[str], examples: Sequence[GoldenExample],
            check: Callable[[str, dict], tuple[float, str]]) -> list[bool]:
    return [check(answer, ex.metadata)[0] >= PASS_SCORE for answer, ex in zip(answers, examples, strict=True)]


def success_rates(outcomes: Sequence[bool], examples: Sequence[GoldenExample]) -> dict[str, float]:
    by_slice: dict[str, list[bool]] = {}
    for ok, ex in zip(outcomes, examples, strict=True):
        for s in ex.slices:
            by_slice.setdefault(s, []).append(ok)
    return {s: sum(v) / len(v) for s, v in sorted(by_slice.items())}


def compare(examples: Sequence[GoldenExample], champion: Sequence[bool], candidate: Sequence[bool],
            margins: dict[str, float] | None = None, default_margin: float = 0.05) -> GateResult:
    margins = margins or {}
    pairs: dict[str, list[tuple[bool, bool]]] = {}
    for ex, a, b in zip(examples, champion, candidate, strict=True):
        for s in ex.slices:
            pairs.setdefault(s, []).append((a, b))
    result = GateResult()
    for s, outcomes in sorted(pairs.items()):
        n = len(outcomes)
        lost = sum(1 for a, b in outcomes if a and not b)
        won = sum(1 for a, b in outcomes if b and not a)
        result.slices.append(SliceResult(
            slice=s, n=n, champion=sum(a for a, _ in outcomes) / n, candidate=sum(b for _, b in outcomes) / n,
            margin=margins.get(s, default_margin), p_value=mcnemar_p(lost, won)))
    return result


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar test on the discordant pairs b and c."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)
