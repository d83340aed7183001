"""Landing segment bytes → lake rows, or quarantine rows that say what is wrong and keep the raw bytes.

One rule set decides every line: it must be UTF-8 and one JSON object (NaN and Infinity read as numbers, as Arrow's
reader reads them) that names no landing field twice, with a known schema version and kind, every required field,
and values of the declared type within the bounds below (finite floats, 64-bit integers, timestamps in
[1970, 2200) UTC, strings without lone surrogates, JSON-text objects at most MAX_JSON_DEPTH deep). Fields the lake
does not store are ignored, whatever they hold. `_parse_line` and `_coerce` are that rule set; it is applied two ways:
- fast: a batch of clean segments is parsed at once by Arrow's multi-threaded JSON reader and the same bounds are
  checked column-wise (`_suspects`). That only finds the suspect rows: `_parse_line` decides and words each one,
  so both paths quarantine with the same words. Whatever Arrow refuses (bad JSON, wrong types, invalid UTF-8, lone
  surrogates, duplicate fields) sends the batch to the slower paths;
- line by line: a segment the fast path refuses is re-read one line at a time, so each bad line is quarantined with
  the field it fails on and every good line still lands.
test_hostile_input.py feeds random hostile lines through both and requires the same rows and quarantine rows.
No line can fail the run: an unexpected exception costs that line (`internal_error`), and a segment that still cannot
be normalized is returned as failed (the ingest moves it to landing/failed/ with a quarantine row).

Redaction, for what other producers write (a landing file dropped by hand, an importer): both paths redact every
free-text column of the rows they return (`redact_rows`: `Redactor.flags` picks the rows column-wise, the exact
redactor runs only on those, with the row's task's redactor) and the raw bytes and reasons of quarantine rows, so no
PII reaches Iceberg through any table. Redacting is idempotent: what the SDK already redacted comes through unchanged.
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from continuum_pipeline.capture.landing import FAILED_DIR
from continuum_pipeline.capture.record import (
    CONSENTS,
    FIELDS_BY_KIND,
    KINDS,
    STATUSES,
    SUPPORTED_SCHEMA_VERSIONS,
    LandingField,
    content_hash,
)
from continuum_pipeline.capture.writer import memoized
from continuum_pipeline.lake.schemas import ARROW_TYPES, FEEDBACK_EVENTS, INTERACTIONS, QUARANTINE, TS
from continuum_pipeline.privacy.redact import TaskRedactors, task_redactors

log = logging.getLogger(__name__)

TARGET = {"interaction": INTERACTIONS, "feedback": FEEDBACK_EVENTS}
ENUMS = {("interaction", "status"): STATUSES, ("interaction", "consent"): CONSENTS}
RANGES = {("feedback", "score"): (0.0, 1.0)}
# The lake partitions by day(ts): pyiceberg's day transform overflows outside years 1..9999, and a time before the
# Unix epoch or after 2200 is a clock or unit bug (seconds read as milliseconds), so ts must lie in [1970, 2200) UTC.
TS_BOUNDS = (datetime(1970, 1, 1, tzinfo=UTC), datetime(2200, 1, 1, tzinfo=UTC))
INT_BOUNDS = (-(1 << 63), (1 << 63) - 1)  # Iceberg long
# Free-form fields stored as JSON text: an object given in their place is accepted and encoded.
JSON_TEXT_FIELDS = {"metadata", "tool_calls", "redactions"}
# `redactions`: PII kind → count, as the redactor writes it; anything else would mislead audits and the UI. The same
# pattern runs in Python (fullmatch) and in Arrow's RE2 (anchored), so both paths decide alike.
_REDACTIONS = r'\{(?:"[A-Z][A-Z0-9_]*": ?[0-9]{1,9}(?:, ?"[A-Z][A-Z0-9_]*": ?[0-9]{1,9})*)?\}'
_REDACTIONS_RE = re.compile(_REDACTIONS)
FORMATS = {"redactions": (_REDACTIONS_RE, "a JSON object of PII kind (UPPER_SNAKE) → count, e.g. "
                          '{"EMAIL_ADDRESS":2}, as the redactor writes it; leave it out when nothing was redacted')}
MAX_JSON_DEPTH = 32  # levels of such an object
# json.loads recurses once per level and gives up near 1000: deeper containers are cut to null before it reads a
# line. Anything at that depth lies deeper than MAX_JSON_DEPTH in a stored field, or in one the lake drops.
_CUT_DEPTH = 64
_SURROGATE = re.compile("[\ud800-\udfff]")
# Text decoded from valid UTF-8 holds a lone surrogate only through a JSON escape: look for one once per line.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
# Number spellings Arrow's reader (RapidJSON) accepts and Python's json does not: read them as Python's.
_ARROW_ONLY_NUMBERS = re.compile(r"-?(?:NaN|Inf(?:inity)?)")
_PYTHON_SPELLING = {"-NaN": "NaN", "Inf": "Infinity", "-Inf": "-Infinity"}

# Everything a landing line may carry, for the fast reader (both kinds share one explicit schema).
_LANDING_UNION: dict[str, pa.DataType] = {}
for _fields in FIELDS_BY_KIND.values():
    for _f in _fields:
        _LANDING_UNION[_f.name] = ARROW_TYPES[_f.kind]
LANDING_SCHEMA = pa.schema(list(_LANDING_UNION.items()))
_LANDING_BY_KIND = {kind: pa.schema([(f.name, _LANDING_UNION[f.name]) for f in fields])
                    for kind, fields in FIELDS_BY_KIND.items()}
_PARSE = pj.ParseOptions(explicit_schema=LANDING_SCHEMA, unexpected_field_behavior="ignore")
_READ = pj.ReadOptions(use_threads=True, block_size=8 << 20)


@dataclass
class QuarantineRow:
    segment: str
    line: int  # 0: the whole segment (segment_failed)
    # invalid_utf8 | oversize | invalid_json | duplicate_key | unknown_schema_version | unknown_kind | missing_field |
    # wrong_type | invalid_value | internal_error | segment_failed
    error: str
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
    failed: list[str] = field(default_factory=list)  # segments that could not be normalized at all
    # segments whose bytes held something the redactor replaced: only these need a redacted archive copy
    redacted: set[str] = field(default_factory=set)

    @property
    def fast_path(self) -> bool:
        return self.fast_path_segments == self.segments

    @classmethod
    def merge(cls, parts: list[NormalizedBatch]) -> NormalizedBatch:
        return cls(pa.concat_tables([p.interactions for p in parts]), pa.concat_tables([p.feedback_events for p in parts]),
                   [q for p in parts for q in p.quarantine], sum(p.segments for p in parts),
                   sum(p.fast_path_segments for p in parts), [s for p in parts for s in p.failed],
                   set().union(*(p.redacted for p in parts)))


class Invalid(Exception):
    def __init__(self, error: str, reason: str, field_name: str | None = None, kind: str | None = None):
        super().__init__(reason)
        self.error, self.reason, self.field, self.kind = error, reason, field_name, kind


def normalize_batch(segments: list[tuple[str, bytes]], at: datetime, max_record_bytes: int = 1 << 20) -> NormalizedBatch:
    """Normalize (segment name, bytes) pairs: all at once when clean, else split until the bad ones are found."""
    if not segments:
        return NormalizedBatch(INTERACTIONS.empty_table(), FEEDBACK_EVENTS.empty_table())
    try:
        fast = _fast_path(segments, at, max_record_bytes)
    except Exception:  # Arrow refusing input returns None; this is a bug, and the slower paths still decide
        log.exception("the fast path failed on %d segments; reading them one by one", len(segments))
        fast = None
    if fast is not None:
        return fast
    if len(segments) > 1:  # one bad segment spoils the joint parse: halve, so the clean ones stay fast
        mid = len(segments) // 2
        return NormalizedBatch.merge([normalize_batch(segments[:mid], at, max_record_bytes),
                                      normalize_batch(segments[mid:], at, max_record_bytes)])
    name, data = segments[0]
    try:
        return _line_by_line(name, data, at, max_record_bytes)
    except Exception as exc:  # one segment must not block the landing folder: it is set aside instead
        log.exception("could not normalize landing segment %s", name)
        return failed_segment(name, f"could not be normalized ({type(exc).__name__}: {_clip(exc)})")


def normalize_segment(segment: str, data: bytes, at: datetime, max_record_bytes: int = 1 << 20) -> NormalizedBatch:
    return normalize_batch([(segment, data)], at, max_record_bytes)


def failed_segment(segment: str, why: str) -> NormalizedBatch:
    """A segment that cannot be read or normalized: one quarantine row (line 0) instead of rows; the ingest moves the
    file to landing/failed/, so it is not retried forever and holds nothing back."""
    reason = (f"segment {why}; moved to landing/{FAILED_DIR}/{segment}: fix it (or report the bug) and move it back "
              "into the landing folder to ingest it")
    return NormalizedBatch(INTERACTIONS.empty_table(), FEEDBACK_EVENTS.empty_table(),
                           redact_quarantine([QuarantineRow(segment, 0, "segment_failed", reason, b"")]),
                           segments=1, failed=[segment])


def quarantine_table(rows: list[QuarantineRow], at: datetime) -> pa.Table:
    return pa.Table.from_pylist(
        [{"segment": q.segment, "segment_line": q.line, "kind": q.kind, "error": q.error, "field": q.field,
          "reason": q.reason, "raw": q.raw, "quarantined_at": at} for q in rows],
        schema=QUARANTINE,
    )


# --- fast path -----------------------------------------------------------------------------------

def _fast_path(segments: list[tuple[str, bytes]], at: datetime, max_bytes: int) -> NormalizedBatch | None:
    """One multi-threaded Arrow parse for the whole batch, validated column-wise; None if anything is off."""
    datas = [d if not d or d.endswith(b"\n") else d + b"\n" for _, d in segments]
    buf = b"".join(datas)
    counts = np.array([d.count(b"\n") for d in datas])
    if not buf:
        return NormalizedBatch(INTERACTIONS.empty_table(), FEEDBACK_EVENTS.empty_table(), [], len(segments), len(segments))
    view = np.frombuffer(buf, dtype=np.uint8)
    ends = np.flatnonzero(view == 10)  # buf ends with a newline
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts
    if lengths.min() == 0 or lengths.max() > max_bytes:
        return None
    # Arrow reads a stream of JSON values, not lines: only when every line starts with "{" and ends with "}" (or "}\r")
    # is each line exactly one of its rows. A bare value or a split object would shift every row after it (and a
    # leading `null` crashes pyarrow 25's reader).
    last = view[ends - 1]
    closed = (last == 125) | ((last == 13) & (view[np.maximum(ends - 2, 0)] == 125))
    if not ((view[starts] == 123).all() and closed.all()) or not _is_utf8(buf):
        return None
    try:
        parsed = pj.read_json(io.BytesIO(buf), read_options=_READ, parse_options=_PARSE)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None
    if parsed.num_rows != len(starts):
        return None

    names = pa.array([name for name, _ in segments], pa.string())
    segment_index = np.repeat(np.arange(len(segments)), counts)
    line_no = np.concatenate([np.arange(1, c + 1, dtype=np.int32) for c in counts])
    kind_col = parsed["kind"]
    bad = _np(pc.invert(pc.fill_null(pc.is_in(parsed["v"], pa.array(sorted(SUPPORTED_SCHEMA_VERSIONS), pa.int64())), False)))
    bad |= _np(pc.invert(pc.fill_null(pc.is_in(kind_col, pa.array(KINDS)), False)))
    is_kind = {kind: _np(pc.fill_null(pc.equal(kind_col, kind), False)) for kind in TARGET}
    for kind in TARGET:
        for f in FIELDS_BY_KIND[kind]:
            bad |= is_kind[kind] & _suspects(kind, f, parsed[f.name])
    quarantine = []
    for i in np.flatnonzero(bad):
        raw = buf[starts[i]:ends[i]]
        segment = segments[segment_index[i]][0]
        try:
            _parse_line(raw, max_bytes)
        except Invalid as exc:
            quarantine.append(QuarantineRow(segment, int(line_no[i]), exc.error, exc.reason, raw, exc.field, exc.kind))
        else:  # a column check the rules do not back: a bug, but the line path still decides right
            log.warning("the fast path and the line path disagree on %s line %d; reading it line by line",
                        segment, line_no[i])
            return None
    tables, redacted = {}, set()
    for kind, target in TARGET.items():
        keep = is_kind[kind] & ~bad
        rows = parsed if keep.all() else parsed.filter(pa.array(keep))  # a filter copies every column
        tables[kind] = _finish(rows, target, names.take(pa.array(segment_index[keep])), pa.array(line_no[keep]), at,
                               redacted)
    return NormalizedBatch(tables["interaction"], tables["feedback"], redact_quarantine(quarantine, redacted),
                           len(segments), len(segments), redacted=redacted)


def _is_utf8(buf: bytes) -> bool:
    """The line path decodes whole lines, so every byte counts, in fields the lake drops too (Arrow's reader checks
    none): one pass of Arrow's SIMD validator over the whole batch, zero-copy."""
    offsets = pa.py_buffer(np.array([0, len(buf)], dtype=np.int64))
    try:
        pa.Array.from_buffers(pa.large_string(), 1, [None, offsets, pa.py_buffer(buf)]).validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def _suspects(kind: str, f: LandingField, column: pa.ChunkedArray) -> np.ndarray:
    """Rows whose value `_coerce` or `_parse_line` may refuse, among those Arrow parsed: the rules, column-wise."""
    masks = []
    if f.required:
        masks.append(pc.is_null(column))
    allowed = ENUMS.get((kind, f.name))
    if allowed:
        masks.append(pc.invert(pc.fill_null(pc.is_in(column, pa.array(allowed)), True)))
    if f.kind == "float":  # Arrow reads NaN, Infinity and overlong integers (as inf)
        masks.append(pc.invert(pc.fill_null(pc.is_finite(column), True)))
    bounds = RANGES.get((kind, f.name))
    if bounds:
        masks.append(pc.or_(pc.less(column, bounds[0]), pc.greater(column, bounds[1])))
    if f.name in FORMATS:
        masks.append(pc.invert(pc.match_substring_regex(column, "^" + FORMATS[f.name][0].pattern + "$")))
    if f.kind == "timestamp":
        lo, hi = (pa.scalar(b, TS) for b in TS_BOUNDS)
        masks.append(pc.or_(pc.less(column, lo), pc.greater_equal(column, hi)))
    mask = np.zeros(len(column), dtype=bool)
    for m in masks:
        mask |= _np(pc.fill_null(m, False))
    if f.kind in ("messages", "string_list"):  # null items, messages without a role
        mask |= _bad_items(column, f.kind == "messages")
    return mask


def _bad_items(column: pa.ChunkedArray, messages: bool) -> np.ndarray:
    out = np.zeros(len(column), dtype=bool)
    offset = 0
    for chunk in column.chunks:
        items = pc.list_flatten(chunk)
        bad = pc.is_null(items)
        if messages:
            bad = pc.or_(bad, pc.is_null(pc.struct_field(items, "role")))
        if pc.any(bad).as_py():
            out[offset + pc.list_parent_indices(chunk).to_numpy()[_np(bad)]] = True
        offset += len(chunk)
    return out


def _np(arr: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=bool)


def _finish(rows: pa.Table, target: pa.Schema, segments: pa.Array, lines: pa.Array, at: datetime,
            redacted: set[str]) -> pa.Table:
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
    table = redact_rows(pa.table(columns, schema=target), "interaction" if target is INTERACTIONS else "feedback",
                        redacted=redacted)
    if "content_hash" in target.names and n and table["content_hash"].null_count:  # of the redacted text, as the SDK
        table = _fill_content_hash(table)
    return table


def _fill_content_hash(table: pa.Table) -> pa.Table:
    hashes = table["content_hash"].to_pylist()
    prompts, messages, responses = (table[c].to_pylist() for c in ("prompt", "messages", "response"))
    filled = [h if h is not None else content_hash(p, m, r) for h, p, m, r in zip(hashes, prompts, messages, responses, strict=True)]
    return table.set_column(table.schema.get_field_index("content_hash"), "content_hash", pa.array(filled, pa.string()))


# --- line by line --------------------------------------------------------------------------------

def _line_by_line(segment: str, data: bytes, at: datetime, max_bytes: int) -> NormalizedBatch:
    accepted: dict[str, list[tuple[int, bytes, dict]]] = {"interaction": [], "feedback": []}
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
        accepted[kind].append((number, raw, row))
    tables, redacted = {}, set()
    for kind, target in TARGET.items():
        parsed, numbers = _arrow_rows(segment, kind, accepted[kind], quarantine)
        segment_col = pa.array([segment] * parsed.num_rows, pa.string())
        tables[kind] = _finish(parsed, target, segment_col, pa.array(numbers, pa.int32()), at, redacted)
    return NormalizedBatch(tables["interaction"], tables["feedback"], redact_quarantine(quarantine, redacted),
                           segments=1, fast_path_segments=0, redacted=redacted)


def _arrow_rows(segment: str, kind: str, accepted: list[tuple[int, bytes, dict]],
                quarantine: list[QuarantineRow]) -> tuple[pa.Table, list[int]]:
    schema = _LANDING_BY_KIND[kind]
    try:
        return pa.Table.from_pylist([row for _, _, row in accepted], schema=schema), [n for n, _, _ in accepted]
    except Exception:  # a value the rules let through but Arrow cannot hold (a bug): find it, quarantine that line only
        kept = []
        for number, raw, row in accepted:
            try:
                pa.Table.from_pylist([row], schema=schema)
            except Exception as exc:
                quarantine.append(QuarantineRow(segment, number, "internal_error", _internal_reason(exc), raw, None, kind))
            else:
                kept.append((number, raw, row))
        return pa.Table.from_pylist([row for _, _, row in kept], schema=schema), [n for n, _, _ in kept]


def _parse_line(raw: bytes, max_bytes: int) -> tuple[str, dict]:
    """Decide one line: (kind, row), or Invalid with the reason. Both paths decide every refused line here."""
    try:
        return _decide(raw, max_bytes)
    except Invalid:
        raise
    except Exception as exc:  # a bug must cost this one line, not block the landing folder
        raise Invalid("internal_error", _internal_reason(exc)) from exc


def _decide(raw: bytes, max_bytes: int) -> tuple[str, dict]:
    if not raw.strip():
        raise Invalid("invalid_json", "blank line: a landing line must hold one JSON object")
    if len(raw) > max_bytes:
        raise Invalid("oversize", f"record is {len(raw)} bytes, over the {max_bytes}-byte limit "
                      "(CONTINUUM_MAX_RECORD_BYTES); trim large fields such as contexts or messages")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Invalid("invalid_utf8", f"not valid UTF-8 at byte {exc.start}: write landing files as UTF-8") from None
    obj, cut = _loads(text)
    if not isinstance(obj, dict):
        raise Invalid("invalid_json", f"a landing line must be a JSON object, got {type(obj).__name__}")
    kind = obj.get("kind")
    known_kind = kind if isinstance(kind, str) and kind in KINDS else None
    twice = [k for k in getattr(obj, "duplicates", ()) if k in _LANDING_UNION]
    if twice:  # json.loads keeps the last value: a second "consent" would silently override the first
        raise Invalid("duplicate_key", f"field '{twice[0]}' appears more than once in the line: write each field once "
                      "(which value holds would be a guess)", twice[0], known_kind)
    version = obj.get("v")
    if not isinstance(version, int | float) or isinstance(version, bool) or version not in SUPPORTED_SCHEMA_VERSIONS:
        raise Invalid("unknown_schema_version", _version_reason(version), "v")
    if known_kind is None:
        raise Invalid("unknown_kind", f"field 'kind' is {_short(kind)}; it must be one of {', '.join(KINDS)}", "kind")
    row = {}
    for f in FIELDS_BY_KIND[kind]:
        value = obj.get(f.name)
        if value is None:
            if f.required:
                raise Invalid("missing_field", _missing_reason(f, kind), f.name, kind)
            row[f.name] = None
            continue
        if f.name in cut and f.name in JSON_TEXT_FIELDS:
            raise _too_deep(f, kind)
        row[f.name] = _coerce(f, value, kind)
        allowed = ENUMS.get((kind, f.name))
        if allowed and row[f.name] not in allowed:
            raise Invalid("invalid_value", _enum_reason(f.name, allowed) + f", got {_short(value)}", f.name, kind)
        bounds = RANGES.get((kind, f.name))
        if bounds and not bounds[0] <= row[f.name] <= bounds[1]:
            raise Invalid("invalid_value", _range_reason(f.name, bounds), f.name, kind)
        fmt = FORMATS.get(f.name)
        if fmt and not fmt[0].fullmatch(row[f.name]):
            raise Invalid("invalid_value", f"field '{f.name}' must be {fmt[1]}", f.name, kind)
    if _SURROGATE_ESCAPE.search(raw):
        for f in FIELDS_BY_KIND[kind]:
            _no_lone_surrogate(f, row[f.name], kind)
    return kind, row


class _Twice(dict):
    """A JSON object that named some keys more than once (json.loads keeps the last value)."""

    duplicates: list[str]


def _object(pairs: list[tuple[str, object]]) -> dict:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    twice, seen = _Twice(obj), set()
    twice.duplicates = [k for k, _ in pairs if k in seen or seen.add(k)]
    return twice


def _loads(text: str) -> tuple[object, set[str]]:
    """json.loads reading what Arrow's reader reads, at any depth: (value, top-level keys whose value was cut deep)."""
    try:
        return json.loads(text, object_pairs_hook=_object), set()
    except RecursionError:
        pass
    except json.JSONDecodeError as exc:
        spelling = _ARROW_ONLY_NUMBERS.match(text, exc.pos)
        if spelling is None or spelling.group() not in _PYTHON_SPELLING:
            raise Invalid("invalid_json", f"invalid JSON at column {exc.pos + 1}: {exc.msg}") from None
    text, cut, shifts = _rewrite(text)  # rare: one pass of Python over the line, whatever it holds
    try:
        return json.loads(text, object_pairs_hook=_object), cut
    except RecursionError:
        raise Invalid("invalid_json", f"nested more than {_CUT_DEPTH} levels deep and not valid JSON") from None
    except json.JSONDecodeError as exc:
        column = exc.pos + 1 - sum(added for at, added in shifts if at < exc.pos)  # in the line as written
        raise Invalid("invalid_json", f"invalid JSON at column {column}: {exc.msg}") from None


def _rewrite(text: str) -> tuple[str, set[str], list[tuple[int, int]]]:
    """One pass outside strings: Arrow-only number spellings become Python's, and every container opening deeper than
    _CUT_DEPTH becomes null. Returns the text, the top-level keys whose value was cut, and (position, chars added)."""
    out, cut, shifts = [], set(), []
    depth, in_string, escaped, expect_key = 0, False, False, False
    key_start, key, cut_from, copied, i = None, None, None, 0, 0
    while i < len(text):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
                if key_start is not None:
                    key, key_start = text[key_start:i + 1], None
        elif ch == '"':
            in_string = True
            if depth == 1 and expect_key:
                key_start = i
        elif ch in "{[":
            depth += 1
            expect_key = depth == 1 and ch == "{"
            if depth == _CUT_DEPTH + 1:
                cut_from = i
        elif ch in "}]":
            if depth == _CUT_DEPTH + 1 and cut_from is not None:
                out += [text[copied:cut_from], "null"]
                shifts.append((cut_from, 4 - (i + 1 - cut_from)))
                copied, cut_from = i + 1, None
                cut.add(_key(key))
            depth -= 1
        elif depth == 1 and ch in ",:":
            expect_key = ch == ","
        elif ch in "-NI" and cut_from is None and (spelling := _ARROW_ONLY_NUMBERS.match(text, i)):
            python = _PYTHON_SPELLING.get(spelling.group())
            if python:
                out += [text[copied:i], python]
                shifts.append((i, len(python) - len(spelling.group())))
                copied = spelling.end()
            i = spelling.end()
            continue
        i += 1
    if cut_from is not None:
        raise Invalid("invalid_json", f"nested more than {_CUT_DEPTH} levels deep and never closed")
    out.append(text[copied:])
    return "".join(out), cut, shifts


def _key(raw_key: str | None) -> str | None:
    try:
        return json.loads(raw_key) if raw_key else None
    except ValueError:
        return raw_key


def _coerce(f: LandingField, value: object, kind: str):
    def wrong(expected: str) -> Invalid:
        return Invalid("wrong_type", f"field '{f.name}' has type {type(value).__name__} ({_short(value)}), expected {expected}",
                       f.name, kind)

    if f.kind == "string":
        if isinstance(value, str):
            return value
        if f.name in JSON_TEXT_FIELDS and isinstance(value, dict | list):
            return _json_text(f, value, kind)
        raise wrong("string")
    if f.kind == "int":
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            if not INT_BOUNDS[0] <= value <= INT_BOUNDS[1]:
                raise Invalid("invalid_value", f"field '{f.name}' is {_short(value)}, beyond the 64-bit integer range the "
                              "lake stores: send a smaller number, or null when unknown", f.name, kind)
            return value
        raise wrong("integer")
    if f.kind == "float":
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an integer with hundreds of digits
                number = math.inf
            if not math.isfinite(number):
                raise Invalid("invalid_value", f"field '{f.name}' is {_short(value)}: it must be a finite number "
                              "(send null when unknown)", f.name, kind)
            return number
        raise wrong("number")
    if f.kind == "timestamp":
        if not isinstance(value, str):
            raise wrong("ISO-8601 timestamp string")
        try:
            ts = datetime.fromisoformat(value)
        except ValueError:
            raise Invalid("wrong_type", f"field '{f.name}' is {_short(value)}, not an ISO-8601 timestamp "
                          "such as 2026-01-31T12:00:00Z", f.name, kind) from None
        try:
            ts = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
        except OverflowError:  # beyond year 1..9999 once converted to UTC
            ts = None
        if ts is None or not TS_BOUNDS[0] <= ts < TS_BOUNDS[1]:
            raise Invalid("invalid_value", f"field '{f.name}' is {_short(value)}, outside {TS_BOUNDS[0]:%Y-%m-%d} .. "
                          f"{TS_BOUNDS[1]:%Y-%m-%d} (UTC, exclusive), the times the lake partitions by day: check the "
                          "producer's clock and time unit", f.name, kind)
        return ts
    if f.kind == "string_list":
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        raise wrong("list of strings")
    if f.kind == "messages":
        if isinstance(value, list) and all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                           and isinstance(m.get("content"), str | None) for m in value):
            twice = next((k for m in value for k in getattr(m, "duplicates", ()) if k in ("role", "content")), None)
            if twice:
                raise Invalid("duplicate_key", f"field 'messages' has a message that names '{twice}' more than once: "
                              "write it once", f.name, kind)
            return [{"role": m["role"], "content": m.get("content")} for m in value]
        raise wrong("list of {role: string, content: string} messages")
    raise AssertionError(f"unknown landing field kind {f.kind}")


def _no_lone_surrogate(f: LandingField, value: object, kind: str) -> None:
    """A JSON escape such as \\ud800 gives Python a lone surrogate, which no UTF-8 column can hold."""
    if isinstance(value, list):
        texts = [t for v in value for t in (v.values() if isinstance(v, dict) else (v,))]
    else:
        texts = [value]
    if any(isinstance(t, str) and _SURROGATE.search(t) for t in texts):
        raise Invalid("invalid_value", f"field '{f.name}' holds a lone surrogate escape (\\ud800-\\udfff), which is "
                      "not a Unicode character: escape both halves of the pair, or drop it", f.name, kind)


def _json_text(f: LandingField, value: dict | list, kind: str) -> str:
    """Encode an object given for a JSON text field, refusing what JSON text cannot carry or what reads ambiguously
    (lone surrogates are caught in the encoded text, with every other stored string)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise _too_deep(f, kind)
        if isinstance(node, dict):
            if getattr(node, "duplicates", None):
                raise Invalid("duplicate_key", f"field '{f.name}' has an object that names '{node.duplicates[0]}' "
                              "more than once: write each key once", f.name, kind)
            items = node.values()
        else:
            items = node
        for item in items:
            if isinstance(item, dict | list):
                stack.append((item, depth + 1))
            elif isinstance(item, float) and not math.isfinite(item):
                raise Invalid("invalid_value", f"field '{f.name}' holds {item}, which JSON text cannot carry: "
                              "send a finite number, a string or null", f.name, kind)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _too_deep(f: LandingField, kind: str) -> Invalid:
    return Invalid("invalid_value", f"field '{f.name}' is nested more than {MAX_JSON_DEPTH} levels deep: flatten it",
                   f.name, kind)


def _clip(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 200 else text[:197] + "..."


def _internal_reason(exc: BaseException) -> str:
    return (f"normalizing this line raised {type(exc).__name__}: {_clip(exc)} — a Continuum bug: report it with this "
            "row (the raw bytes are kept)")


def _short(value: object) -> str:
    """A value quoted in a reason (reasons are stored in quarantine): redacted, then cut (cut first, a secret split in
    two would no longer be recognised)."""
    if isinstance(value, str):
        value = task_redactors()(None).redact(value)[0]
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _version_reason(version: object) -> str:
    return (f"field 'v' (schema version) is {_short(version)}; this Continuum reads versions "
            f"{', '.join(map(str, sorted(SUPPORTED_SCHEMA_VERSIONS)))}: upgrade Continuum or write v=1 records")


def _missing_reason(f: LandingField, kind: str) -> str:
    hint = f" ({f.doc})" if f.doc else ""
    article = "an" if kind[0] in "aeiou" else "a"
    return f"missing required field '{f.name}' in {article} {kind} record{hint}"


def _range_reason(name: str, bounds: tuple[float, float]) -> str:
    return f"field '{name}' must be between {bounds[0]:g} and {bounds[1]:g}"


def _enum_reason(name: str, allowed: tuple[str, ...]) -> str:
    return f"field '{name}' must be one of {', '.join(allowed)}"


# --- redaction -----------------------------------------------------------------------------------

# The free-text columns of each kind (Redactor.redact_record's fields); ids, times, enums, names are never touched.
TEXT_COLUMNS = {
    "interaction": ("prompt", "messages", "response", "tool_calls", "contexts", "error_message", "metadata"),
    "feedback": ("label", "comment", "correction", "metadata"),
}


def redact_rows(table: pa.Table, kind: str, redactors: TaskRedactors | None = None,
                redacted: set[str] | None = None) -> pa.Table:
    """Every free-text column of `kind` rows redacted, counts merged into `redactions`. Vectorised: each column's
    `flags` pick the rows that may hold PII; only those go through the exact redactor, each with its task's.
    `redacted` collects the segments of rows in which something was replaced."""
    if not table.num_rows:
        return table
    redactors = redactors or task_redactors()
    redactors.refresh()
    if kind == "interaction":  # task is required: never null here
        groups: dict[int, tuple[Any, list[str]]] = {}
        for task in pc.unique(table["task"]).to_pylist():
            groups.setdefault(id(r := redactors.get(task)), (r, []))[1].append(task)
    else:
        groups = {0: (redactors.get(None), [])}
    mask = np.zeros(table.num_rows, dtype=bool)
    for redactor, tasks in groups.values():  # one pass per distinct redactor, over the rows of its tasks
        flagged = _flagged(table, kind, redactor)
        mask |= flagged if len(groups) == 1 else flagged & _np(pc.is_in(table["task"], pa.array(tasks, pa.string())))
    picked = np.flatnonzero(mask)
    if not len(picked):
        return table
    records = table.take(pa.array(picked)).to_pylist()
    memos: dict[int, Any] = {}
    for record in records:
        redactor = redactors.get(record.get("task") if kind == "interaction" else None)
        memo = memos.get(id(redactor)) or memos.setdefault(id(redactor), memoized(redactor))
        if memo.redact_record(record) and redacted is not None:
            redacted.add(record["segment"])
        if record["redactions"] == "{}":  # flagged, yet nothing found: no field, as for rows not flagged
            record["redactions"] = None
    rewritten = pa.Table.from_pylist(records, schema=table.schema)
    rest = np.flatnonzero(~mask)
    order = np.argsort(np.concatenate([rest, picked]), kind="stable")
    return pa.concat_tables([table.take(pa.array(rest)), rewritten]).take(pa.array(order))


def _flagged(table: pa.Table, kind: str, redactor: Any) -> np.ndarray:
    mask = np.zeros(table.num_rows, dtype=bool)
    for name in TEXT_COLUMNS[kind]:
        column = table[name]
        if pa.types.is_list(column.type):
            offset = 0
            for chunk in column.chunks:
                items = pc.list_flatten(chunk)
                if pa.types.is_struct(items.type):
                    items = pc.struct_field(items, "content")
                if len(items):
                    hit = np.asarray(redactor.flags(items), dtype=bool)
                    mask[offset + pc.list_parent_indices(chunk).to_numpy()[hit]] = True
                offset += len(chunk)
        else:
            mask |= np.asarray(redactor.flags(column.combine_chunks()), dtype=bool)
    return mask


def redact_quarantine(rows: list[QuarantineRow], redacted: set[str] | None = None) -> list[QuarantineRow]:
    """Quarantine keeps a line's raw bytes, so they are redacted too (with the strictest redactor: the line's task
    is not known). Bytes that are not UTF-8 survive through surrogateescape; a line with nothing found is kept as is,
    byte for byte."""
    if not rows:
        return rows
    redactors = task_redactors()
    redactors.refresh()
    redactor = redactors.get(None)
    for q in rows:
        if q.raw:
            text = q.raw.decode("utf-8", "surrogateescape")
            text_redacted, counts = redactor.redact(text)
            if counts:
                q.raw = text_redacted.encode("utf-8", "surrogateescape")
                if redacted is not None:
                    redacted.add(q.segment)
        if q.reason:  # reasons quote up to 40 characters of the offending value
            q.reason = redactor.redact(q.reason)[0]
    return rows
