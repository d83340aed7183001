"""Landing segments → Iceberg rows, exactly once.

Each lake table keeps a ledger — the landing segments whose rows it already holds — as a table
property written in the same Iceberg commit as those rows. A segment is archived (moved to
landing/archive/) only after every table that gets rows from it has committed. So:
- a crash before a table's commit leaves no rows and no ledger entry: the rerun appends them;
- a crash after it leaves rows and ledger entry together: the rerun skips that table for the segment;
- a crash after all commits but before archiving: the rerun finds every table done and archives.
The ledger holds only segments still in landing (archived ones are pruned), so it stays small.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from continuum_pipeline.capture.landing import ARCHIVE_DIR, list_segments
from continuum_pipeline.lake.catalog import Lake
from continuum_pipeline.lake.normalize import normalize_batch, quarantine_table
from continuum_pipeline.lake.schemas import INGEST_TABLES

log = logging.getLogger(__name__)

LEDGER_PROPERTY = "continuum.ingest.ledger"
COMMIT_ATTEMPTS = 5

# Progress events, in order: listed, normalized, data_files_written:<table>, committed:<table>, archived.
# The Dagster asset logs them; tests raise or exit in them to crash the run at an exact point.
Progress = Callable[[str, dict], None]


@dataclass
class TableCommit:
    table: str
    rows: int = 0
    skipped_rows: int = 0  # rows of segments this table already held (a rerun after a crash)
    snapshot_id: int | None = None


@dataclass
class IngestReport:
    segments: list[str] = field(default_factory=list)
    commits: dict[str, TableCommit] = field(default_factory=dict)
    quarantine_reasons: Counter = field(default_factory=Counter)
    fast_path_segments: int = 0
    bytes_read: int = 0
    seconds: float = 0.0
    remaining_segments: int = 0

    def rows(self, table: str) -> int:
        commit = self.commits.get(table)
        return commit.rows if commit else 0


def read_ledger(table) -> set[str]:
    return set(json.loads(table.properties.get(LEDGER_PROPERTY, "[]")))


def ingest_landing(lake: Lake, landing: Path, *, max_segments: int = 2000, max_bytes: int = 512 << 20,
                   max_record_bytes: int = 1 << 20, progress: Progress | None = None,
                   run_id: str | None = None) -> IngestReport:
    """Ingest waiting landing segments (up to `max_segments` and about `max_bytes`) into interactions,
    feedback_events and quarantine; whatever is left waits for the next run."""
    started = time.perf_counter()
    emit = progress or (lambda event, info: None)
    lake.ensure_tables()
    present = list_segments(landing)
    batch: list[str] = []
    contents: list[tuple[str, bytes]] = []
    size = 0
    for name in present[:max_segments]:
        if size >= max_bytes:
            break  # bound the memory one run needs; the rest waits
        data = (landing / name).read_bytes()
        contents.append((name, data))
        batch.append(name)
        size += len(data)
    report = IngestReport(segments=batch, remaining_segments=len(present) - len(batch), bytes_read=size)
    emit("listed", {"segments": len(batch), "remaining": report.remaining_segments, "bytes": report.bytes_read})
    if not batch:
        return report

    now = datetime.now(UTC)
    normalized = normalize_batch(contents, now, max_record_bytes)
    del contents
    report.fast_path_segments = normalized.fast_path_segments
    report.quarantine_reasons.update(q.error for q in normalized.quarantine)
    rows = {
        "interactions": normalized.interactions,
        "feedback_events": normalized.feedback_events,
        "quarantine": quarantine_table(normalized.quarantine, now),
    }
    emit("normalized", {name: t.num_rows for name, t in rows.items()})

    present_set = set(present)
    summary = {"continuum.segments": str(len(batch)), "continuum.first-segment": batch[0],
               "continuum.last-segment": batch[-1]}
    if run_id:
        summary["continuum.dagster-run-id"] = run_id
    for name in INGEST_TABLES:
        report.commits[name] = _commit_exactly_once(lake, name, rows[name], present_set, summary, emit)

    archive = landing / ARCHIVE_DIR
    archive.mkdir(parents=True, exist_ok=True)
    for name in batch:
        # a concurrent run may have archived it already, after committing the same rows (our commit was a no-op)
        with contextlib.suppress(FileNotFoundError):
            os.replace(landing / name, archive / name)
    emit("archived", {"segments": len(batch)})
    report.seconds = time.perf_counter() - started
    return report


def _commit_exactly_once(lake: Lake, name: str, rows: pa.Table, present: set[str], summary: dict[str, str],
                         emit: Progress) -> TableCommit:
    from pyiceberg.exceptions import CommitFailedException

    result = TableCommit(name)
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        table = lake.table(name)
        ledger = read_ledger(table)
        done = pc.is_in(rows["segment"], pa.array(sorted(ledger), pa.string())) if ledger else None
        todo = rows.filter(pc.invert(done)) if done is not None else rows
        new_segments = set(pc.unique(todo["segment"]).to_pylist()) if todo.num_rows else set()
        result.skipped_rows = rows.num_rows - todo.num_rows
        if not new_segments:
            emit(f"committed:{name}", {"rows": 0, "skipped": result.skipped_rows})
            return result
        pruned = sorted((ledger & present) | new_segments)
        txn = table.transaction()
        txn.append(todo, snapshot_properties=summary)
        txn.set_properties({LEDGER_PROPERTY: json.dumps(pruned, separators=(",", ":"))})
        emit(f"data_files_written:{name}", {"rows": todo.num_rows})
        try:
            committed = txn.commit_transaction()
        except CommitFailedException as exc:
            # Someone else committed to this table since we read the ledger: re-read it and try again.
            log.warning("ingest commit to %s conflicted (attempt %d/%d): %s", name, attempt, COMMIT_ATTEMPTS, exc)
            time.sleep(0.05 * 2**attempt)
            continue
        result.rows = todo.num_rows
        result.snapshot_id = committed.current_snapshot().snapshot_id
        emit(f"committed:{name}", {"rows": result.rows, "skipped": result.skipped_rows, "snapshot_id": result.snapshot_id})
        return result
    raise RuntimeError(f"could not commit to lake table {name!r} after {COMMIT_ATTEMPTS} attempts: other writers kept "
                       "committing first; rerun the ingest (nothing was lost or doubled)")
