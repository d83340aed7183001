"""Capture SDK: `@capture` and `feedback.record` for users' production apps.

Stdlib only. The module itself is the decorator (`from continuum_pipeline import capture`, then
`@capture` or `@capture(task=..., model=...)`), and carries the helpers as attributes:
`capture.last_interaction_id()`, `capture.annotate(...)`, `capture.context(...)`, `capture.flush()`,
`capture.stats()`, `capture.configure(landing_dir=...)`.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

from continuum_pipeline.capture import feedback
from continuum_pipeline.capture._decorator import annotate, capture, context, last_interaction_id, new_id
from continuum_pipeline.capture.writer import WRITER, WriterConfig

__all__ = ["capture", "feedback", "annotate", "context", "last_interaction_id", "new_id", "flush", "stats",
           "configure"]


def flush() -> int:
    """Write everything captured so far to landing now; returns how many records were written."""
    return WRITER.flush()


def stats() -> dict[str, int]:
    """Counters: written, segments, queued, and records dropped by cause."""
    return WRITER.stats()


def configure(landing_dir: str | Path | None = None, *, queue_size: int | None = None,
              segment_records: int | None = None, flush_seconds: float | None = None,
              max_bytes: int | None = None) -> None:
    """Override the settings taken from the environment (flushes what was queued first)."""
    base = WRITER.config
    WRITER.configure(WriterConfig(
        landing_dir=Path(landing_dir).resolve() if landing_dir else base.landing_dir,
        queue_size=queue_size or base.queue_size,
        segment_records=segment_records or base.segment_records,
        flush_seconds=flush_seconds or base.flush_seconds,
        **({"max_bytes": max_bytes} if max_bytes else {}),  # else CONTINUUM_CAPTURE_MAX_BYTES as it is now
    ))


class _CaptureModule(types.ModuleType):
    """Lets the module double as the decorator, so `from continuum_pipeline import capture` just works."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return capture(*args, **kwargs)


sys.modules[__name__].__class__ = _CaptureModule
