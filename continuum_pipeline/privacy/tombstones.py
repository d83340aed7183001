"""Tombstones: the subjects a deletion forgot, hashed, so that nothing of theirs comes back.

`forget` records each subject (and each of the subject's interactions) here *before* deleting anything; ingest
re-reads the table at every commit attempt and drops an incoming row of a tombstoned subject whose `ts` is at
or before the forget time (a row captured later is new data: the person came back). Only a salted-by-prefix
sha256 of the id is stored, never the id. The table is tiny (one row per forgotten subject and interaction)
and lives in the lake like the rows it guards, so every ingest worker sees the same set.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc

from continuum_pipeline.lake.schemas import TS, TableLayout

TOMBSTONES_TABLE = "privacy_tombstones"
_PREFIX = "continuum.forget.v1\x00"  # fixed: a hash must match across processes and releases
KIND_COLUMNS = {"user": "user_id", "session": "session_id", "interaction": "interaction_id"}

TOMBSTONES = pa.schema([
    pa.field("subject_hash", pa.string()),
    pa.field("kind", pa.string()),  # user | session | interaction
    pa.field("forgotten_at", TS),  # rows of the subject with ts <= this are dropped at ingest
    pa.field("receipt_id", pa.string()),
])
TOMBSTONES_LAYOUT = TableLayout(TOMBSTONES_TABLE, TOMBSTONES, (),
                                "Forgotten subjects (sha256 of a fixed prefix and the id) and when: ingest drops "
                                "their rows captured before then.")


def subject_hash(kind: str, value: str) -> str:
    if kind not in KIND_COLUMNS:
        raise ValueError(f"subject kind {kind!r} is unknown; use one of {', '.join(KIND_COLUMNS)}")
    return hashlib.sha256(f"{_PREFIX}{kind}\x00{value}".encode()).hexdigest()


@dataclass
class Tombstones:
    """kind → subject hash → the latest forget time of that subject."""

    by_kind: dict[str, dict[str, datetime]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return any(self.by_kind.values())

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_kind.values())

    def cutoff(self, kind: str, value: str | None) -> datetime | None:
        hashes = self.by_kind.get(kind)
        if not hashes or not value:
            return None
        return hashes.get(subject_hash(kind, value))

    def record_cutoff(self, record: dict) -> datetime | None:
        """The forget time that covers a landing record (any of its ids), else None."""
        times = [t for kind, column in KIND_COLUMNS.items()
                 if isinstance(record.get(column), str) and (t := self.cutoff(kind, record[column])) is not None]
        return max(times) if times else None

    def record_forgotten(self, record: dict) -> bool:
        """A landing record (a parsed JSON line) of a tombstoned subject, captured at or before its forget time.
        A record without a readable ts counts as forgotten: privacy wins over an unreadable timestamp."""
        cutoff = self.record_cutoff(record)
        if cutoff is None:
            return False
        ts = _parse_ts(record.get("ts"))
        return ts is None or ts <= cutoff

    def mask(self, rows: pa.Table) -> pa.ChunkedArray | pa.Array:
        """True for the rows (an ingest batch: interactions or feedback_events) to drop."""
        drop = pa.array([False] * rows.num_rows)
        if not self or not rows.num_rows:
            return drop
        ts = rows["ts"] if "ts" in rows.column_names else None
        for kind, column in KIND_COLUMNS.items():
            if column not in rows.column_names or not self.by_kind.get(kind):
                continue
            values = rows[column].to_pylist()
            cache: dict[str | None, datetime | None] = {}
            cutoffs = [cache[v] if v in cache else cache.setdefault(v, self.cutoff(kind, v)) for v in values]
            if not any(c is not None for c in cutoffs):
                continue
            cutoff = pa.array(cutoffs, TS)
            hit = pc.fill_null(pc.less_equal(ts, cutoff) if ts is not None else pc.is_valid(cutoff), False)
            if ts is not None:  # a row without ts but of a forgotten subject: dropped too
                hit = pc.or_(hit, pc.and_(pc.is_valid(cutoff), pc.is_null(ts)))
            drop = pc.or_(drop, hit)
        return drop

    def quarantine_mask(self, rows: pa.Table) -> list[bool]:
        """Quarantine rows whose raw bytes parse as a record of a forgotten subject."""
        if not self or not rows.num_rows:
            return [False] * rows.num_rows
        return [_raw_forgotten(self, raw) for raw in rows["raw"].to_pylist()]


def _raw_forgotten(tombstones: Tombstones, raw: bytes | None) -> bool:
    if not raw:
        return False
    try:
        record = json.loads(raw)
    except (ValueError, RecursionError):
        return False  # not a record: no id to check against a hash
    return isinstance(record, dict) and tombstones.record_forgotten(record)


def _parse_ts(value) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def load_tombstones(lake) -> Tombstones:
    """Every tombstone in the lake (none when the table was never created)."""
    if not lake.table_exists(TOMBSTONES_TABLE):
        return Tombstones()
    rows = lake.table(TOMBSTONES_TABLE).scan(selected_fields=("subject_hash", "kind", "forgotten_at")).to_arrow()
    found = Tombstones()
    for r in rows.to_pylist():
        hashes = found.by_kind.setdefault(r["kind"], {})
        at = r["forgotten_at"]
        if r["subject_hash"] not in hashes or hashes[r["subject_hash"]] < at:
            hashes[r["subject_hash"]] = at
    return found


def add_tombstones(lake, receipt_id: str, subjects: Iterable[tuple[str, str]], forgotten_at: datetime) -> int:
    """Record (kind, raw id) subjects under `receipt_id`; idempotent per receipt (a rerun adds only what is
    missing). Returns the rows added."""
    from pyiceberg.exceptions import CommitFailedException
    from pyiceberg.expressions import EqualTo

    lake.ensure_table(TOMBSTONES_LAYOUT)
    wanted = {(kind, subject_hash(kind, value)) for kind, value in subjects}
    for attempt in range(5):
        table = lake.table(TOMBSTONES_TABLE)
        have = table.scan(row_filter=EqualTo("receipt_id", receipt_id), selected_fields=("subject_hash", "kind"))
        missing = sorted(wanted - {(r["kind"], r["subject_hash"]) for r in have.to_arrow().to_pylist()})
        if not missing:
            return 0
        rows = pa.table({"subject_hash": [h for _, h in missing], "kind": [k for k, _ in missing],
                         "forgotten_at": pa.array([forgotten_at] * len(missing), TS),
                         "receipt_id": [receipt_id] * len(missing)}, schema=TOMBSTONES)
        try:
            table.append(rows, snapshot_properties={"continuum.receipt": receipt_id})
            return len(missing)
        except CommitFailedException:
            if attempt == 4:
                raise
    return 0
