"""Normalization: each kind of bad input is quarantined with a reason naming the field; the rest lands."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from continuum_pipeline.lake.normalize import _line_by_line, normalize_batch, normalize_segment

from .conftest import feedback, interaction

AT = datetime(2026, 11, 21, tzinfo=UTC)


def lines(*records) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in records)


def test_clean_segment_takes_the_fast_path_and_matches_line_by_line():
    data = lines(*(interaction(i) for i in range(50)), *(feedback(i, f"i{i:06d}") for i in range(20)),
                 interaction(99, content_hash=None, metadata=None, messages=None))
    fast = normalize_segment("seg", data, AT)
    slow = _line_by_line("seg", data, AT, 1 << 20)
    assert fast.fast_path and not slow.fast_path
    assert (fast.interactions.num_rows, fast.feedback_events.num_rows, fast.quarantine) == (51, 20, [])
    assert fast.interactions.equals(slow.interactions)
    assert fast.feedback_events.equals(slow.feedback_events)
    row = fast.interactions.to_pylist()[-1]
    assert row["segment"] == "seg" and row["segment_line"] == 71 and row["schema_version"] == 1
    assert len(row["content_hash"]) == 64  # filled in at ingest when the producer did not send it


BAD = [
    ("invalid_json", b'{"v":1,"kind":"interaction", "task": }', None, "invalid JSON"),
    ("invalid_json", b'[1, 2, 3]', None, "must be a JSON object"),
    ("missing_field", json.dumps({k: v for k, v in interaction(1).items() if k != "model"}).encode(), "model",
     "missing required field 'model'"),
    ("wrong_type", json.dumps(interaction(2, latency_ms="slow")).encode(), "latency_ms",
     "field 'latency_ms' has type str ('slow'), expected number"),
    ("wrong_type", json.dumps(interaction(3, ts="yesterday")).encode(), "ts", "not an ISO-8601 timestamp"),
    ("invalid_utf8", json.dumps(interaction(4)).encode().replace(b"question 4", b"question \xff\xfe"), None,
     "not valid UTF-8"),
    ("oversize", json.dumps(interaction(5, response="x" * 5000)).encode(), None, "over the 4096-byte limit"),
    ("unknown_schema_version", json.dumps(interaction(6, v=2)).encode(), "v", "schema version) is 2"),
    ("unknown_kind", json.dumps(interaction(7, kind="span")).encode(), "kind", "'kind' is 'span'"),
    ("invalid_value", json.dumps(interaction(8, consent="maybe")).encode(), "consent", "must be one of granted"),
    ("invalid_value", json.dumps(feedback(9, "i1", score=4.0)).encode(), "score", "between 0 and 1"),
]


@pytest.mark.parametrize("error, raw, field, reason", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_line_is_quarantined_with_its_reason_and_the_rest_lands(error, raw, field, reason):
    data = lines(interaction(100), raw, interaction(101))
    seg = normalize_segment("seg-bad", data, AT, max_record_bytes=4096)
    assert seg.interactions["interaction_id"].to_pylist() == ["i000100", "i000101"]
    assert seg.interactions["segment_line"].to_pylist() == [1, 3]
    (q,) = seg.quarantine
    assert (q.line, q.error, q.field) == (2, error, field)
    assert reason in q.reason
    assert q.raw == raw  # the raw bytes are kept, exactly


def test_fast_path_quarantines_missing_fields_without_leaving_it():
    data = lines(interaction(1), {k: v for k, v in interaction(2).items() if k != "task"}, interaction(3, v=3))
    seg = normalize_segment("seg", data, AT)
    assert seg.fast_path
    assert [(q.line, q.error, q.field) for q in seg.quarantine] == [(2, "missing_field", "task"),
                                                                     (3, "unknown_schema_version", "v")]
    assert "is 3" in seg.quarantine[1].reason
    assert seg.interactions.num_rows == 1


def test_tolerated_forms_are_normalized():
    """An object where JSON text is stored, whole-number floats for ints, naive timestamps (read as UTC)."""
    rec = interaction(1, metadata={"a": 1}, prompt_tokens=12.0, ts="2026-11-20T12:00:00")
    seg = normalize_segment("seg", lines(rec), AT)
    (row,) = seg.interactions.to_pylist()
    assert json.loads(row["metadata"]) == {"a": 1} and row["prompt_tokens"] == 12
    assert row["ts"] == datetime(2026, 11, 20, 12, tzinfo=UTC)


def test_blank_lines_are_quarantined_not_silently_skipped():
    seg = normalize_segment("seg", lines(interaction(1)) + b"\n" + lines(interaction(2)), AT)
    assert seg.interactions.num_rows == 2
    assert [(q.line, q.error) for q in seg.quarantine] == [(2, "invalid_json")]


def test_a_bad_segment_in_a_batch_leaves_the_clean_ones_on_the_fast_path():
    clean = [(f"seg{i}", lines(*(interaction(i * 100 + j) for j in range(10)))) for i in range(7)]
    dirty = ("seg-dirty", lines(interaction(900), b"{broken", interaction(901)))
    batch = normalize_batch(clean[:3] + [dirty] + clean[3:], AT)
    assert (batch.segments, batch.fast_path_segments) == (8, 7)
    assert batch.interactions.num_rows == 72
    (q,) = batch.quarantine
    assert (q.segment, q.line, q.error) == ("seg-dirty", 2, "invalid_json")
    rows = batch.interactions.select(["segment", "segment_line", "interaction_id"]).to_pylist()
    assert {"segment": "seg-dirty", "segment_line": 3, "interaction_id": "i000901"} in rows
    assert {"segment": "seg5", "segment_line": 10, "interaction_id": "i000509"} in rows
