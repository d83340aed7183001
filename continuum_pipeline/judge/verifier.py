"""Programmatic verifiers: rewards from code that knows the right answer (a knowledge base, a test)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

from continuum_pipeline.judge.base import CriterionScore, JudgeError, JudgeInput, Verdict, preview

Check = Callable[[JudgeInput], tuple[float, str]]

# Scores this close outside [0, 1] are float noise from the check's arithmetic, not a bug.
_TOLERANCE = 1e-9


class ProgrammaticVerifier:
    """Wraps `check(item) -> (score in [0, 1], rationale)` as a one-criterion judge."""

    def __init__(self, check: Check, name: str = "verifier", version: str = "1", criterion: str = "correct"):
        if not callable(check):
            raise ValueError(f"check: expected a callable, got {check!r}")
        for arg, value in (("name", name), ("version", version), ("criterion", criterion)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{arg}: expected a non-empty string, got {value!r}")
        self.check, self.name, self.version, self.criterion = check, name, version, criterion

    def judge(self, items: Sequence[JudgeInput]) -> list[Verdict]:
        return [self._judge_one(item) for item in items]

    def judge_each(self, items: Sequence[JudgeInput]) -> list[Verdict | JudgeError]:
        """One outcome per item: the check runs once per item, even when another item's check fails."""
        return _each(self._judge_one, items)

    def _judge_one(self, item: JudgeInput) -> Verdict:
        where = (f"judge {self.name!r} v{self.version}, interaction {item.interaction_id!r}, "
                 f"criterion {self.criterion!r}")
        try:
            result = self.check(item)
        except Exception as exc:
            raise JudgeError(f"{where}: the check raised {type(exc).__name__}: {exc}") from exc
        if not (isinstance(result, tuple) and len(result) == 2):
            raise JudgeError(f"{where}: the check must return (score, rationale), got {preview(result)}")
        raw_score, rationale = result
        # bool is allowed on purpose: `return response == expected, "..."` is the natural check.
        if not isinstance(raw_score, int | float) or not math.isfinite(raw_score):
            raise JudgeError(f"{where}: the check returned a non-numeric or non-finite score "
                             f"{preview(raw_score)}")
        if not -_TOLERANCE <= raw_score <= 1 + _TOLERANCE:
            raise JudgeError(f"{where}: the check returned score {raw_score!r}, outside [0, 1]")
        score = min(1.0, max(0.0, float(raw_score)))
        criterion = CriterionScore(self.criterion, score, 1.0, None if rationale is None else str(rationale))
        return Verdict(item.interaction_id, self.name, self.version, score, (criterion,))


def normalize_answer(text: str) -> str:
    """Case, whitespace and trailing punctuation do not matter; nor does tokenizer spacing such as
    `order # 4 8 2 1 3 .` (spaces around punctuation and between digits are dropped)."""
    text = " ".join(text.casefold().split())
    text = re.sub(r" ?([^\w\s]) ?", r"\1", text)
    text = re.sub(r"(?<=\d) (?=\d)", "", text)
    return text.rstrip(".!?;:,。！？ ")


def exact_match_check(expected_key: str = "expected") -> Check:
    """A check scoring 1 when the response matches `metadata[expected_key]` (one answer or a list of them)."""

    def check(item: JudgeInput) -> tuple[float, str]:
        if expected_key not in item.metadata:
            # Scoring 0 here would train the model away from answers nobody checked.
            raise KeyError(f"metadata has no {expected_key!r} (keys: {sorted(item.metadata)})")
        expected = item.metadata[expected_key]
        accepted = [str(e) for e in expected] if isinstance(expected, list | tuple) else [str(expected)]
        return match_answer(item.response, accepted, "the expected answer")

    return check


def match_answer(response: str | None, accepted: Sequence[str], what: str) -> tuple[float, str]:
    """(1.0, why) when the response equals any accepted answer after `normalize_answer`, else (0.0, why)."""
    if response is None:
        return 0.0, "no response"
    got = normalize_answer(response)
    if any(normalize_answer(a) == got for a in accepted):
        return 1.0, f"matches {what}"
    return 0.0, f"expected {' or '.join(map(repr, accepted))}, got {response!r}"[:300]


def reference_answers(item: JudgeInput, field: str = "reference") -> list[str]:
    """The accepted answers for an item: its `reference`, or a dotted path into its metadata
    (`metadata.expected`, `metadata.answer.text`); one answer or a list of them. Raises KeyError naming
    what is missing: an item without a known right answer cannot be scored (0.0 would be a wrong label)."""
    if field == "reference":
        value = item.reference
        if value is None:
            raise KeyError("it has no reference answer (JudgeInput.reference is empty)")
    else:
        value = item.metadata
        for i, part in enumerate(field.split(".")[1:], 1):
            if not isinstance(value, dict) or part not in value:
                where = ".".join(field.split(".")[:i])
                keys = sorted(value) if isinstance(value, dict) else type(value).__name__
                raise KeyError(f"{where} has no {part!r} (it has {keys})")
            value = value[part]
    answers = [str(v) for v in value if v is not None] if isinstance(value, list | tuple) else [str(value)]
    if not answers:
        raise KeyError(f"{field} is an empty list of answers")
    return answers


class ReferenceMatchJudge:
    """Scores 1 when the response matches a known right answer (any of the accepted ones), after
    `normalize_answer`; one criterion, `exact_match`."""

    criterion = "exact_match"

    def __init__(self, *, name: str = "reference_match", version: str = "1", reference_field: str = "reference"):
        if reference_field != "reference" and not (reference_field.startswith("metadata.")
                                                   and all(reference_field.split(".")[1:])):
            raise ValueError(f"reference_field: expected 'reference' or a dotted path like 'metadata.expected', "
                             f"got {reference_field!r}")
        self.name, self.version, self.reference_field = name, version, reference_field

    def judge(self, items: Sequence[JudgeInput]) -> list[Verdict]:
        return [self._judge_one(item) for item in items]

    def judge_each(self, items: Sequence[JudgeInput]) -> list[Verdict | JudgeError]:
        return _each(self._judge_one, items)

    def _judge_one(self, item: JudgeInput) -> Verdict:
        try:
            accepted = reference_answers(item, self.reference_field)
        except KeyError as exc:
            raise JudgeError(f"judge {self.name!r} v{self.version}: cannot score interaction "
                             f"{item.interaction_id!r}: {exc.args[0]}") from None
        score, rationale = match_answer(item.response, accepted, "the reference answer")
        return Verdict(item.interaction_id, self.name, self.version, score,
                       (CriterionScore(self.criterion, score, 1.0, rationale),))


def _each(judge_one: Callable[[JudgeInput], Verdict], items: Sequence[JudgeInput]) -> list[Verdict | JudgeError]:
    out: list[Verdict | JudgeError] = []
    for item in items:
        try:
            out.append(judge_one(item))
        except JudgeError as exc:
            out.append(exc)
    return out
