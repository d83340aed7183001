"""`feedback.record(...)`: a signal about an interaction, arriving any time after it.

Queued like interactions (never blocks, never fails because of the disk). Arguments that can
never make a valid feedback event raise ValueError at once, so the mistake shows up in development.
"""

from __future__ import annotations

import math
from time import time_ns
from typing import Any

from continuum_pipeline.capture._decorator import new_id
from continuum_pipeline.capture.record import FEEDBACK_SIGNALS, feedback_record
from continuum_pipeline.capture.writer import RECORD_BYTES, WRITER, approx_bytes


def _build(kwargs: dict[str, Any]) -> dict[str, Any]:
    return feedback_record(**kwargs)


def record(interaction_id: str, *, score: float | None = None, label: str | None = None,
           comment: str | None = None, signal: str | None = None, correction: str | None = None,
           outcome: str | None = None, preferred_over: str | None = None, user_id: str | None = None,
           metadata: dict[str, Any] | None = None) -> str:
    """Record feedback on `interaction_id`; returns the feedback id.

    score: explicit rating between 0 and 1 (1 = best; below 0.5 counts as negative); label: e.g. thumbs_down; comment: free text;
    signal: implicit (copy, share, retry, dismiss, engage); correction: an edited, corrected response;
    outcome: e.g. ticket_reopened; preferred_over: id of an interaction this one was preferred to.
    """
    if not isinstance(interaction_id, str) or not interaction_id:
        raise ValueError("feedback.record(interaction_id=...) needs the id of a captured interaction "
                         "(capture.last_interaction_id() right after the call)")
    if score is not None:
        if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
            raise ValueError(f"feedback.record(score={score!r}): score must be a finite number")
        if not 0.0 <= score <= 1.0:
            raise ValueError(f"feedback.record(score={score!r}): scores are between 0 and 1 (1 = best); "
                             "map star ratings with (stars - 1) / 4")
        score = float(score)
    values = {"score": score, "label": label, "comment": comment, "signal": signal, "correction": correction,
              "outcome": outcome, "preferred_over": preferred_over}
    if all(values[k] is None for k in FEEDBACK_SIGNALS):
        raise ValueError("feedback.record needs at least one of: " + ", ".join(FEEDBACK_SIGNALS))
    feedback_id = new_id()
    fields = {"feedback_id": feedback_id, "interaction_id": interaction_id, "wall_ns": time_ns(),
              "user_id": user_id, "metadata": metadata, **values}
    WRITER.submit(_build, (fields,), RECORD_BYTES + approx_bytes(fields))
    return feedback_id


async def arecord(interaction_id: str, **kwargs: Any) -> str:
    """Async form of record(); it does no I/O, so it never yields to the event loop for long."""
    return record(interaction_id, **kwargs)
