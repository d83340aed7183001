"""The judge interface: interactions in, rewards (verdicts with per-criterion scores in [0, 1]) out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

# Raw model output quoted in error messages is cut to this many characters.
RAW_PREVIEW_CHARS = 500


@dataclass(frozen=True)
class JudgeInput:
    """One captured interaction (or golden-set item), as a judge sees it."""

    interaction_id: str
    prompt: str | None
    messages: list[dict] | None
    response: str | None
    metadata: dict  # free-form JSON from capture, e.g. {"intent": ..., "slots": ...}
    contexts: list[str] | None = None
    # The known right answer (or the accepted answers), where there is one: golden-set items, and
    # interactions whose app captured `metadata["reference"]`.
    reference: str | list[str] | None = None

    @property
    def user_input(self) -> str | None:
        """The question being answered: the last user message, else the prompt."""
        for message in reversed(self.messages or []):
            if message.get("role") == "user":
                content = message.get("content")
                if isinstance(content, list):  # multimodal content: its text parts
                    content = "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
                if content:
                    return str(content)
        return self.prompt


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
    """A judge could not produce a usable verdict (after its retries); the item stays unlabelled and is
    tried again next run."""


class BudgetExhausted(JudgeError):
    """The judge's cost budget for this run is spent: it starts no new request, the rest waits for the next run."""


class JudgeConfigError(ValueError):
    """A judge's configuration cannot be built: `field` names the setting, the message says the fix."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field, self.problem = field, problem


def weighted_mean(criteria: Sequence[CriterionScore]) -> float:
    total = sum(c.weight for c in criteria)
    # min() guards against float rounding nudging an all-ones mean just above 1.
    return min(1.0, sum(c.score * c.weight for c in criteria) / total)


def preview(raw: object) -> str:
    text = raw if isinstance(raw, str) else repr(raw)
    return repr(text if len(text) <= RAW_PREVIEW_CHARS else text[:RAW_PREVIEW_CHARS] + "…")
