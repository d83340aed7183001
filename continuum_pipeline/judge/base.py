"""The judge interface: interactions in, rewards (verdicts with per-criterion scores in [0, 1]) out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

# Raw model output quoted in error messages is cut to this many characters.
RAW_PREVIEW_CHARS = 500


@dataclass(frozen=True)
class JudgeInput:
    """One captured interaction, as a judge sees it."""

    interaction_id: str
    prompt: str | None
    messages: list[dict] | None
    response: str | None
    metadata: dict  # free-form JSON from capture, e.g. {"intent": ..., "slots": ...}
    contexts: list[str] | None = None


@dataclass(frozen=True)
class CriterionScore:
    criterion: str
    score: float  # in [0, 1]
    weight: float
    rationale: str | None


@dataclass(frozen=True)
class Verdict:
    interaction_id: str
    judge: str
    judge_version: str
    score: float  # weighted mean of the criteria scores, in [0, 1]
    criteria: tuple[CriterionScore, ...]


@runtime_checkable
class Judge(Protocol):
    name: str
    version: str

    def judge(self, items: Sequence[JudgeInput]) -> list[Verdict]:
        """One verdict per item, in input order."""
        ...


class JudgeError(RuntimeError):
    """A judge could not produce a usable verdict (after its retries)."""


def weighted_mean(criteria: Sequence[CriterionScore]) -> float:
    total = sum(c.weight for c in criteria)
    # min() guards against float rounding nudging an all-ones mean just above 1.
    return min(1.0, sum(c.score * c.weight for c in criteria) / total)


def preview(raw: object) -> str:
    text = raw if isinstance(raw, str) else repr(raw)
    return repr(text if len(text) <= RAW_PREVIEW_CHARS else text[:RAW_PREVIEW_CHARS] + "…")
