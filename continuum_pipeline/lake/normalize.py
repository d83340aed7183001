"""Landing segment bytes → lake rows, or quarantine rows that say what is wrong and keep the raw bytes.

Two paths that give identical rows for the lines both accept:
- fast: a batch of clean segments is parsed at once by Arrow's multi-threaded JSON reader and validated
  column-wise; the few rows that fail a check are re-read line by line for their reason;
- line by line: a segment the fast path refuses (bad JSON, bad UTF-8, wrong types, blank or oversize
  lines) is re-read one line at a time, so each bad line is quarantined with the field it fails on and
  every good line still lands. (Only the fast path lets invalid UTF-8 pass in a field it does not store.)
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from continuum_pipeline.capture.record import (
    CONSENTS,
    FIELDS_BY_KIND,
    KINDS,
    STATUSES,
    SUPPORTED_SCHEMA_VERSIONS,
    LandingField,
    content_hash,
)
from continuum_pipeline.lake.schemas import ARROW_TYPES, FEEDBACK_EVENTS, INTERACTIONS, QUARANTINE

TARGET = {"interaction": INTERACTIONS, "feedback": FEEDBACK_EVENTS}
ENUMS = {("interaction", "status"): STATUSES, ("interaction", "consent"): CONSENTS}
RANGES = {("feedback", "score"): (0.0, 1.0)}
# Free-form fields stored as JSON text: an object given in their place is accepted and encoded.
JSON_TEXT_FIELDS = {"metadata", "tool_calls"}

# Everything a landing line may carry, for the fast reader (both kinds share one explicit schema).
_LANDING_UNION: dict[str, pa.DataType] = {}
for _fields in FIELDS_BY_KIND.values():
    for _f in _fields:
        _LANDING_UNION[_f.name] = ARROW_TYPES[_f.kind]
LANDING_SCHEMA = pa.schema(list(_LANDING_UNION.items()))
_PARSE = pj.ParseOptions(explicit_schema=LANDING_SCHEMA, unexpected_field_behavior="ignore")
_READ = pj.ReadOptions(use_threads=True, block_size=8 << 20)


@dataclass
class QuarantineRow:
    segment: str
    line: int
    error: str  # invalid_utf8 | oversize | invalid_json | unknown_schema_version | unknown_kind | missing_field | wrong_type | invalid_value
    reason: str
    raw: bytes
    field: str | None = None
    kind: str | None = None


@dataclass
class NormalizedBatch:
    interactions: pa.Table
    feedback_events: pa.Table
    quarantine: list[QuarantineRow] = field(default_factory=list)
    segments: int = 0
    fast_path_segments: int = 0

    @property
    def fast_path(self) -> bool:
        return self.fast_path_segments == self.segments

    @classmethod
    def merge(cls, parts: list[NormalizedBatch]) -> NormalizedBatch:
        return cls(pa.concat_tables([p.interactions for p in parts]), pa.concat_tables([p.feedback_events for p in parts]),
                   [q for p in parts for q in p.quarantine], sum(p.segments for p in parts),
                   sum(p.fast_path_segments for p in parts))


class Invalid(Exception):
    def __init__(self, error: str, reason: str, field_name: str | None = None, kind: str | None = None):
        super().__init__(reason)
        self.error, self.reason, self.field, self.kind = error, reason, field_name, kind


def normalize_batch(segments: list[tuple[str, bytes]], at: datetime, max_record_bytes: int = 1 << 20) -> NormalizedBatch:
    """Normalize (segment name, bytes) pairs: all at once when clean, else split until the bad ones are found."""
    if not segments:
        return NormalizedBatch(INTERACTIONS.empty_table(), FEEDBACK_EVENTS.empty_table())
    fast = _fast_path(segments, at, max_record_bytes)
    if fast is not None:
        return fast
    if len(segments) > 1:  # one bad segment spoils the joint parse: halve, so the clean ones stay fast
        mid = len(segments) // 2
        return NormalizedBatch.merge([normalize_batch(segments[:mid], at, max_record_bytes),
                                      normalize_batch(segments[mid:], at, max_record_bytes)])
    return _line_by_line(*segments[0], at, max_record_bytes)


def normalize_segment(segment: str, data: bytes, at: datetime, max_record_bytes: int = 1 << 20) -> NormalizedBatch:
    return normalize_batch([(segment, data)], at, max_record_bytes)


def quarantine_table(rows: list[QuarantineRow], at: datetime) -> pa.Table:
    return pa.Table.from_pylist(
        [{"segment": q.segment, "segment_line": q.line, "kind": q.kind, "error": q.error, "field": q.field,
          "reason": q.reason, "raw": q.raw, "quarantined_at": at} for q in rows],
        schema=QUARANTINE,
    )


# --- fast path -----------------------------------------------------------------------------------

def _line_bounds(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    newlines = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)
    ends = newlines if data.endswith(b"\n") else np.append(newlines, len(data))
    starts = np.concatenate(([0], newlines + 1))[: len(ends)]
    return starts, ends


def _fast_path(segments: list[tuple[str, bytes]], at: datetime, max_bytes: int) -> NormalizedBatch | None:
    """One multi-threaded Arrow parse for the whole batch, validated column-wise; None if anything is off."""
    datas = [d if not d or d.endswith(b"\n") else d + b"\n" for _, d in segments]
    buf = b"".join(datas)
    counts = np.array([d.count(b"\n") for d in datas])
    if not buf:
        return NormalizedBatch(INTERACTIONS.empty_table(), FEEDBACK_EVENTS.empty_table(), [], len(segments), len(segments))
    starts, ends = _line_bounds(buf)
    lengths = ends - starts
    if lengths.min() == 0 or lengths.max() > max_bytes:
        return None
    try:
        parsed = pj.read_json(io.BytesIO(buf), read_options=_READ, parse_options=_PARSE)
        # Arrow's reader does not check UTF-8; a full validation checks every string it stored.
        parsed.validate(full=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None
    if parsed.num_rows != len(starts):
        return None

    names = pa.array([name for name, _ in segments], pa.string())
    segment_index = np.repeat(np.arange(len(segments)), counts)
    line_no = np.concatenate([np.arange(1, c + 1, dtype=np.int32) for c in counts])
    bad = np.zeros(parsed.num_rows, dtype=bool)
    # Column-wise checks only find the bad rows; their reasons come from re-reading those few lines
    # one by one, so both paths quarantine with the same words.
    kind_col = parsed["kind"]
    bad |= _np(pc.invert(pc.fill_null(pc.is_in(parsed["v"], pa.array(sorted(SUPPORTED_SCHEMA_VERSIONS), pa.int64())), False)))
    bad |= _np(pc.invert(pc.fill_null(pc.is_in(kind_col, pa.array(KINDS)), False)))
    is_kind = {kind: _np(pc.fill_null(pc.equal(kind_col, kind), False)) for kind in TARGET}
    for kind in TARGET:
        for f in FIELDS_BY_KIND[kind]:
            column = parsed[f.name]
            if f.required:
                bad |= is_kind[kind] & _np(pc.is_null(column))
            allowed = ENUMS.get((kind, f.name))
            if allowed:
                bad |= is_kind[kind] & _np(pc.invert(pc.fill_null(pc.is_in(column, pa.array(allowed)), True)))
            if f.kind == "float":
                bad |= is_kind[kind] & _np(pc.fill_null(pc.is_nan(column), False))
            bounds = RANGES.get((kind, f.name))
            if bounds:
                out = pc.or_(pc.less(column, bounds[0]), pc.greater(column, bounds[1]))
                bad |= is_kind[kind] & _np(pc.fill_null(out, False))
    quarantine = []
    for i in np.flatnonzero(bad):
        raw = buf[starts[i]:ends[i]]
        try:
            _parse_line(raw, max_bytes)
        except Invalid as exc:
            quarantine.append(QuarantineRow(segments[segment_index[i]][0], int(line_no[i]), exc.error, exc.reason, raw,
                                            exc.field, exc.kind))
        else:  # the two paths disagree about this line: let the slower paths decide
            return None
    tables = {}
    for kind, target in TARGET.items():
        keep = is_kind[kind] & ~bad
        rows = parsed if keep.all() else parsed.filter(pa.array(keep))  # a filter copies every column
        tables[kind] = _finish(rows, target, names.take(pa.array(segment_index[keep])), pa.array(line_no[keep]), at)
    return NormalizedBatch(tables["interaction"], tables["feedback"], quarantine, len(segments), len(segments))


def _np(arr: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=bool)


def _finish(rows: pa.Table, target: pa.Schema, segments: pa.Array, lines: pa.Array, at: datetime) -> pa.Table:
    n = rows.num_rows
    columns = {}
    for f in target:
        if f.name == "schema_version":
            columns[f.name] = pc.cast(rows["v"], pa.int32())
        elif f.name == "segment":
            columns[f.name] = segments
        elif f.name == "segment_line":
            columns[f.name] = lines
        elif f.name == "ingested_at":
            columns[f.name] = pa.repeat(pa.scalar(at, f.type), n) if n else pa.array([], f.type)
        else:
            columns[f.name] = rows[f.name]
    table = pa.table(columns, schema=target)
    if "content_hash" in target.names and n and table["content_hash"].null_count:
        table = _fill_content_hash(table)
    return table


def _fill_content_hash(table: pa.Table) -> pa.Table:
    hashes = table["content_hash"].to_pylist()
    prompts, messages, responses = (table[c].to_pylist() for c in ("prompt", "messages", "response"))
    filled = [h if h is not None else content_hash(p, m, r) for h, p, m, r in zip(hashes, prompts, messages, responses, strict=True)]
    return table.set_column(table.schema.get_field_index("content_hash"), "content_hash", pa.array(filled, pa.string()))


# --- line by line --------------------------------------------------------------------------------

def _line_by_line(segment: str, data: bytes, at: datetime, max_bytes: int) -> NormalizedBatch:
    rows: dict[str, list[dict]] = {"interaction": [], "feedback": []}
    lines: dict[str, list[int]] = {"interaction": [], "feedback": []}
    quarantine: list[QuarantineRow] = []
    raw_lines = data.split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()
    for number, raw in enumerate(raw_lines, start=1):
        try:
            kind, row = _parse_line(raw, max_bytes)
        except Invalid as bad:
            quarantine.append(QuarantineRow(segment, number, bad.error, bad.reason, raw, bad.field, bad.kind))
            continue
        rows[kind].append(row)
        lines[kind].append(number)
    tables = {}
    for kind, target in TARGET.items():
        landing = [f.name for f in FIELDS_BY_KIND[kind]]
        parsed = pa.Table.from_pylist(rows[kind], schema=pa.schema([(n, _LANDING_UNION[n]) for n in landing]))
        segment_col = pa.array([segment] * parsed.num_rows, pa.string())
        tables[kind] = _finish(parsed, target, segment_col, pa.array(lines[kind], pa.int32()), at)
    return NormalizedBatch(tables["interaction"], tables["feedback"], quarantine, segments=1, fast_path_segments=0)


def _parse_line(raw: bytes, max_bytes: int) -> tuple[str, dict]:
    if not raw.strip():
        raise Invalid("invalid_json", "blank line: a landing line must hold one JSON object")
    if len(raw) > max_bytes:
        raise Invalid("oversize", f"record is {len(raw)} bytes, over the {max_bytes}-byte limit "
                      "(CONTINUUM_MAX_RECORD_BYTES); trim large fields such as contexts or messages")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Invalid("invalid_utf8", f"not valid UTF-8 at byte {exc.start}: write landing files as UTF-8") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise Invalid("invalid_json", f"invalid JSON at column {exc.colno}: {exc.msg}") from None
    if not isinstance(obj, dict):
        raise Invalid("invalid_json", f"a landing line must be a JSON object, got {type(obj).__name__}")
    version = obj.get("v")
    if isinstance(version, bool) or version not in SUPPORTED_SCHEMA_VERSIONS:
        raise Invalid("unknown_schema_version", _version_reason(version), "v")
    kind = obj.get("kind")
    if kind not in KINDS:
        raise Invalid("unknown_kind", f"field 'kind' is {kind!r}; it must be one of {', '.join(KINDS)}", "kind")
    row = {}
    for f in FIELDS_BY_KIND[kind]:
        value = obj.get(f.name)
        if value is None:
            if f.required:
                raise Invalid("missing_field", _missing_reason(f, kind), f.name, kind)
            row[f.name] = None
            continue
        row[f.name] = _coerce(f, value, kind)
        allowed = ENUMS.get((kind, f.name))
        if allowed and row[f.name] not in allowed:
            raise Invalid("invalid_value", _enum_reason(f.name, allowed) + f", got {value!r}", f.name, kind)
        bounds = RANGES.get((kind, f.name))
        if bounds and not bounds[0] <= row[f.name] <= bounds[1]:
            raise Invalid("invalid_value", _range_reason(f.name, bounds), f.name, kind)
    return kind, row


def _coerce(f: LandingField, value: object, kind: str):
    def wrong(expected: str) -> Invalid:
        return Invalid("wrong_type", f"field '{f.name}' has type {type(value).__name__} ({_short(value)}), expected {expected}",
                       f.name, kind)

    if f.kind == "string":
        if isinstance(value, str):
            return value
        if f.name in JSON_TEXT_FIELDS and isinstance(value, dict | list):
            return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        raise wrong("string")
    if f.kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise wrong("integer")
    if f.kind == "float":
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise Invalid("invalid_value", f"field '{f.name}' must be a finite number", f.name, kind)
            return float(value)
        raise wrong("number")
    if f.kind == "timestamp":
        if not isinstance(value, str):
            raise wrong("ISO-8601 timestamp string")
        try:
            ts = datetime.fromisoformat(value)
        except ValueError:
            raise Invalid("wrong_type", f"field '{f.name}' is {_short(value)}, not an ISO-8601 timestamp "
                          "such as 2026-01-31T12:00:00Z", f.name, kind) from None
        return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
    if f.kind == "string_list":
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        raise wrong("list of strings")
    if f.kind == "messages":
        if isinstance(value, list) and all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                           and isinstance(m.get("content"), str | None) for m in value):
            return [{"role": m["role"], "content": m.get("content")} for m in value]
        raise wrong("list of {role: string, content: string} messages")
    raise AssertionError(f"unknown landing field kind {f.kind}")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _version_reason(version: object) -> str:
    return (f"field 'v' (schema version) is {version!r}; this Continuum reads versions "
            f"{', '.join(map(str, sorted(SUPPORTED_SCHEMA_VERSIONS)))}: upgrade Continuum or write v=1 records")


def _missing_reason(f: LandingField, kind: str) -> str:
    hint = f" ({f.doc})" if f.doc else ""
    article = "an" if kind[0] in "aeiou" else "a"
    return f"missing required field '{f.name}' in {article} {kind} record{hint}"


def _range_reason(name: str, bounds: tuple[float, float]) -> str:
    return f"field '{name}' must be between {bounds[0]:g} and {bounds[1]:g}"


def _enum_reason(name: str, allowed: tuple[str, ...]) -> str:
    return f"field '{name}' must be one of {', '.join(allowed)}"
