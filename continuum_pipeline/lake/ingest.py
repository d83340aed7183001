"""Landing segments → Iceberg rows, exactly once, whatever crashes and however many runs overlap.

Each lake table keeps a ledger — the landing segments whose rows it already holds — as a table
property written in the same Iceberg commit as those rows. Every commit is conditional on the snapshot
whose ledger it read (the append asserts the branch head, and the ledger never changes without a new
snapshot), so a conflicting commit re-reads the ledger and decides again. A segment is archived (moved
to landing/archive/) only after every table that gets rows from it has committed. So:
- a crash before a table's commit leaves no rows and no ledger entry: the rerun appends them;
- a crash after it leaves rows and ledger entry together: the rerun skips that table for the segment;
- a crash after all commits but before archiving: the rerun finds every table done and archives.

Overlapping runs. The ledger must not grow forever, yet a run that listed a segment may commit long
after another run ingested, archived and pruned it (issue #7: a stalled run re-appended them all).
- After reading the ledger, a run appends a segment missing from it only if the segment is still in
  landing and not in landing/archive/; otherwise another run has ingested it (archiving follows every
  commit) and its rows are skipped. An entry is dropped only by a commit that, listing landing *after*
  reading the ledger, found the segment gone, i.e. archived. So when a run reads a ledger without S and
  then still sees S in landing, nobody has committed S: had someone, S would be in that ledger, since a
  commit that dropped it must have seen S gone before our read. No time bound, lease or cleanup needed.
- An entry is dropped not when first found gone but `ledger_grace` (15 min) later: a margin for a
  landing folder on a filesystem shared by run workers, whose clients may see a rename late (NFS
  attribute caches: up to a minute), and for clock skew between them.
- An archived segment dropped into landing again (same name) is skipped for as long as the archive
  keeps it; names carry a timestamp and a random suffix, so only a copy of the segment shares its name.
The ledger thus holds the segments still in landing plus those archived within the grace: it stays as
small as the landing backlog. Claiming segments instead (renaming them into a per-run folder) would
still need this ledger for crash recovery, and a lease to tell a dead claimant from a slow one, whose
expiry on a slow run brings the double back.

Forgotten subjects (privacy/tombstones.py). Every commit attempt re-reads the tombstones *after* loading the
snapshot it commits against, and drops the rows of a subject forgotten at or after their `ts` (counted in
`forgotten_rows`, not quarantined), with the feedback of interactions so dropped. `forget` commits its
tombstones first, then moves every table's head, so an attempt that read no tombstone can no longer commit.

Archive hygiene. The archive copy of a segment is written redacted (the redactor of privacy/redact.py, line by
line) and without lines of forgotten subjects, under the same name (the ledger and the replay use names):
written to landing/.tmp/, renamed into the archive, and only then removed from landing, so at every instant the
segment is in landing or in the archive (a crash in between leaves both: the rerun skips it as archived).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from continuum_pipeline.capture.landing import ARCHIVE_DIR, FAILED_DIR, TMP_DIR, list_ignored, list_segments
from continuum_pipeline.lake.catalog import Lake
from continuum_pipeline.lake.normalize import (
    NormalizedBatch,
    failed_segment,
    normalize_batch,
    quarantine_table,
)
from continuum_pipeline.lake.schemas import INGEST_TABLES
from continuum_pipeline.privacy.tombstones import Tombstones, add_tombstones, load_tombstones

log = logging.getLogger(__name__)

LEDGER_PROPERTY = "continuum.ingest.ledger"
LEDGER_GRACE = timedelta(minutes=15)
COMMIT_ATTEMPTS = 5

# Progress events, in order: listed, normalized, data_files_written:<table>, committed:<table>, archived.
# The Dagster asset logs them; tests raise or exit in them to crash the run at an exact point.
Progress = Callable[[str, dict], None]


@dataclass
class TableCommit:
    table: str
    rows: int = 0
    skipped_rows: int = 0  # rows of segments already held: a rerun after a crash, or another run was first
    skipped_segments: int = 0
    forgotten_rows: int = 0  # rows of subjects forgotten since they were captured (tombstones): dropped, counted
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
    failed_segments: list[str] = field(default_factory=list)  # unreadable or not normalizable: moved to landing/failed/
    ignored_files: list[str] = field(default_factory=list)  # in landing but no segment: never read, reported
    redactions: dict[str, Counter] = field(default_factory=dict)  # table → PII kind → values replaced (SDK or ingest)

    def rows(self, table: str) -> int:
        commit = self.commits.get(table)
        return commit.rows if commit else 0


def _redaction_counts(rows: pa.Table) -> Counter:
    """PII kind → values replaced in these rows (their `redactions` counts, validated by normalize)."""
    total: Counter = Counter()
    if "redactions" in rows.column_names:
        for item in pc.value_counts(pc.drop_null(rows["redactions"])).to_pylist() if rows.num_rows else []:
            for kind, count in json.loads(item["values"]).items():
                total[kind] += count * item["counts"]
    return total


def read_ledger(table) -> dict[str, float | None]:
    """The table's ledger: segment → None while in landing, else when a commit first found it gone (epoch s)."""
    ledger = json.loads(table.properties.get(LEDGER_PROPERTY, "{}"))
    return dict.fromkeys(ledger) if isinstance(ledger, list) else ledger  # a list: written before gone times


def ingest_landing(lake: Lake, landing: Path, *, max_segments: int = 2000, max_bytes: int = 512 << 20,
                   max_record_bytes: int = 1 << 20, progress: Progress | None = None,
                   run_id: str | None = None, ledger_grace: timedelta = LEDGER_GRACE) -> IngestReport:
    """Ingest waiting landing segments (up to `max_segments` and about `max_bytes`) into interactions,
    feedback_events and quarantine; whatever is left waits for the next run. `ledger_grace`: how long a
    ledger entry outlives its segment's archiving (see the module docstring)."""
    started = time.perf_counter()
    emit = progress or (lambda event, info: None)
    lake.ensure_tables()
    present = list_segments(landing)
    batch: list[str] = []
    contents: list[tuple[str, bytes]] = []
    unreadable: list[NormalizedBatch] = []
    size = 0
    for name in present[:max_segments]:
        if size >= max_bytes:
            break  # bound the memory one run needs; the rest waits
        try:
            data = _read_segment(landing / name, max_bytes)
        except FileNotFoundError:
            continue  # another run archived it since we listed it
        except Exception as exc:  # unreadable or corrupt: set aside, or every run would fail on it again
            log.warning("landing segment %s cannot be read: %s", name, exc)
            unreadable.append(failed_segment(name, f"cannot be read ({type(exc).__name__}: {exc})"))
            batch.append(name)
            continue
        contents.append((name, data))
        batch.append(name)
        size += len(data)
    report = IngestReport(segments=batch, remaining_segments=len(present) - len(batch), bytes_read=size,
                          ignored_files=list_ignored(landing))
    if report.ignored_files:
        log.warning("%d files in %s are not landing segments (*.jsonl, *.jsonl.gz) and are not ingested: %s",
                    len(report.ignored_files), landing, ", ".join(report.ignored_files[:20]))
    emit("listed", {"segments": len(batch), "remaining": report.remaining_segments, "bytes": report.bytes_read,
                    "ignored_files": len(report.ignored_files)})
    if not batch:
        return report

    now = datetime.now(UTC)
    normalized = NormalizedBatch.merge([normalize_batch(contents, now, max_record_bytes), *unreadable])
    del contents
    report.fast_path_segments = normalized.fast_path_segments
    report.failed_segments = normalized.failed
    report.quarantine_reasons.update(q.error for q in normalized.quarantine)
    rows = {
        "interactions": normalized.interactions,
        "feedback_events": normalized.feedback_events,
        "quarantine": quarantine_table(normalized.quarantine, now),
    }
    emit("normalized", {name: t.num_rows for name, t in rows.items()})
    report.redactions = {name: _redaction_counts(rows[name]) for name in ("interactions", "feedback_events")}

    summary = {"continuum.segments": str(len(batch)), "continuum.first-segment": batch[0],
               "continuum.last-segment": batch[-1]}
    if run_id:
        summary["continuum.dagster-run-id"] = run_id
    for name in INGEST_TABLES:
        report.commits[name] = _commit_exactly_once(lake, name, rows[name], landing, summary, emit, ledger_grace,
                                                    rows["interactions"])

    if report.commits["interactions"].forgotten_rows:
        _tombstone_dropped(lake, rows["interactions"], batch[0])

    archive = landing / ARCHIVE_DIR
    archive.mkdir(parents=True, exist_ok=True)
    failed = set(report.failed_segments)
    if failed:
        (landing / FAILED_DIR).mkdir(exist_ok=True)
    # Only segments whose bytes held PII (normalize replaced something in their rows or quarantined lines) or rows
    # of forgotten subjects need a rewritten archive copy; the rest (everything our SDK and server write, already
    # redacted) is moved as it is: rewriting every segment cost ingest 5x its throughput.
    tombstones = load_tombstones(lake)
    forgotten = _segments_with_forgotten(tombstones, rows) if tombstones else set()
    for name in batch:
        # Gone: a concurrent run archived it after committing the same rows (we skipped them). Also in the
        # archive: it was dropped into landing again, so the copy replaces the identical archived one.
        # A failed segment goes to landing/failed/ instead: its quarantine row says why, and it is not retried.
        if name in failed:
            with contextlib.suppress(FileNotFoundError):
                os.replace(landing / name, landing / FAILED_DIR / name)
        else:
            archive_segment(landing, name, tombstones, scrub=name in forgotten or name in normalized.redacted)
    emit("archived", {"segments": len(batch)})
    report.seconds = time.perf_counter() - started
    return report


def _read_segment(path: Path, max_bytes: int) -> bytes:
    """A segment's bytes; a *.jsonl.gz one decompressed, refused past `max_bytes` (a gzip bomb must not take the run)."""
    if path.name.endswith(".gz"):
        with gzip.open(path) as f:
            data = f.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise ValueError(f"decompresses to more than {max_bytes} bytes: split it into smaller segments")
        return data
    return path.read_bytes()


def _commit_exactly_once(lake: Lake, name: str, rows: pa.Table, landing: Path, summary: dict[str, str],
                         emit: Progress, grace: timedelta, interactions: pa.Table | None = None) -> TableCommit:
    from pyiceberg.exceptions import CommitFailedException

    result = TableCommit(name)
    segments = set(pc.unique(rows["segment"]).to_pylist()) if rows.num_rows else set()
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        table = lake.table(name)  # the commit below is conditional on this snapshot, so on this ledger
        ledger = read_ledger(table)
        new = {s for s in segments - ledger.keys() if not _ingested_elsewhere(landing, s)}  # after reading it
        todo = rows if new == segments else rows.filter(pc.is_in(rows["segment"], pa.array(sorted(new), pa.string())))
        result.skipped_rows, result.skipped_segments = rows.num_rows - todo.num_rows, len(segments - new)
        # After loading the snapshot: a forget that committed its tombstones since then also moved that snapshot.
        todo, result.forgotten_rows = _without_forgotten(name, todo, load_tombstones(lake), interactions)
        if not new:
            emit(f"committed:{name}", {"rows": 0, "skipped": result.skipped_rows,
                                       "skipped_segments": result.skipped_segments})
            return result
        entries = _next_ledger(ledger, new, set(list_segments(landing)), time.time(), grace.total_seconds())
        txn = table.transaction()
        txn.append(todo, snapshot_properties=summary)
        txn.set_properties({LEDGER_PROPERTY: json.dumps(entries, separators=(",", ":"))})
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
        emit(f"committed:{name}", {"rows": result.rows, "skipped": result.skipped_rows, "snapshot_id": result.snapshot_id,
                                   "forgotten": result.forgotten_rows})
        return result
    raise RuntimeError(f"could not commit to lake table {name!r} after {COMMIT_ATTEMPTS} attempts: other writers kept "
                       "committing first; rerun the ingest (nothing was lost or doubled)")


def _ingested_elsewhere(landing: Path, segment: str) -> bool:
    """A segment missing from the ledger just read was ingested by another run if it left landing (archiving
    follows every commit) or is in the archive (dropped into landing again)."""
    return not (landing / segment).exists() or (landing / ARCHIVE_DIR / segment).exists()


def _next_ledger(ledger: dict[str, float | None], new: set[str], in_landing: set[str], now: float,
                 grace: float) -> dict[str, float | None]:
    """The ledger to commit: `new` added; an entry stays while its segment is in landing (listed after the
    ledger was read) and for `grace` seconds after a commit first found it gone."""
    entries: dict[str, float | None] = {}
    for segment, gone in sorted(ledger.items()):
        if segment in in_landing:
            entries[segment] = None
            continue
        gone = int(now) if gone is None else gone  # first found gone: the grace starts
        if now - gone < grace:
            entries[segment] = gone
    return entries | dict.fromkeys(sorted(new))


def _without_forgotten(name: str, rows: pa.Table, tombstones: Tombstones,
                       interactions: pa.Table | None) -> tuple[pa.Table, int]:
    """The rows less those of forgotten subjects (and feedback on this batch's interactions so dropped)."""
    drop = _forgotten_mask(name, rows, tombstones, interactions)
    if drop is None:
        return rows, 0
    return rows.filter(pc.invert(drop)), pc.sum(drop).as_py()


def _forgotten_mask(name: str, rows: pa.Table, tombstones: Tombstones,
                    interactions: pa.Table | None) -> pa.Array | pa.ChunkedArray | None:
    """Which rows belong to forgotten subjects; None when none do."""
    if not tombstones or not rows.num_rows:
        return None
    if name == "quarantine":
        drop = pa.array(tombstones.quarantine_mask(rows))
    else:
        drop = tombstones.mask(rows)
        if name == "feedback_events" and interactions is not None and interactions.num_rows:
            gone = interactions.filter(tombstones.mask(interactions))["interaction_id"]
            if len(gone):
                drop = pc.or_(drop, pc.fill_null(pc.is_in(rows["interaction_id"], value_set=gone.combine_chunks()),
                                                 False))
    return drop if pc.sum(drop).as_py() else None


def _segments_with_forgotten(tombstones: Tombstones, rows: dict[str, pa.Table]) -> set[str]:
    """Segments holding lines of forgotten subjects (whether this run or an earlier one committed the rest)."""
    found: set[str] = set()
    for name, table in rows.items():
        drop = _forgotten_mask(name, table, tombstones, rows["interactions"])
        if drop is not None:
            found |= set(pc.unique(table.filter(drop)["segment"]).to_pylist())
    return found


def _tombstone_dropped(lake: Lake, interactions: pa.Table, segment: str) -> None:
    """Interactions dropped as a forgotten subject's get tombstones of their own (same forget time), so that their
    feedback, arriving later and keyed by interaction id only, is dropped too."""
    tombstones = load_tombstones(lake)
    dropped = interactions.filter(tombstones.mask(interactions))
    by_cutoff: dict[datetime, list[str]] = {}
    columns = [c for c in ("interaction_id", "user_id", "session_id") if c in dropped.column_names]
    for r in dropped.select(columns).to_pylist():
        cutoff = tombstones.record_cutoff(r)
        if cutoff is not None and r.get("interaction_id"):
            by_cutoff.setdefault(cutoff, []).append(r["interaction_id"])
    for cutoff, ids in by_cutoff.items():
        add_tombstones(lake, f"ingest:{segment}", [("interaction", i) for i in ids], cutoff)


def archive_segment(landing: Path, name: str, tombstones: Tombstones | None = None, scrub: bool = True) -> bool:
    """Move a landing segment into landing/archive/ — with `scrub`, as a redacted copy without forgotten subjects'
    lines (see the module docstring). False when it was gone already (a concurrent run archived it)."""
    path = landing / name
    if not scrub:
        try:
            os.replace(path, landing / ARCHIVE_DIR / name)
        except FileNotFoundError:
            return False
        return True
    try:  # ingest has read it within its byte limit already (a bigger one went to landing/failed/)
        data = gzip.decompress(path.read_bytes()) if name.endswith(".gz") else path.read_bytes()
    except FileNotFoundError:
        return False
    clean = scrub_lines(data, tombstones)
    write_segment_atomically(landing, landing / ARCHIVE_DIR / name, clean)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(landing / name)
    return True


def scrub_lines(data: bytes, tombstones: Tombstones | None = None) -> bytes:
    """Each line redacted as normalize redacts its rows (an interaction with its task's redactor; feedback and
    anything unparseable with the strictest, `task_redactors()(None)`): a JSON object through `redact_record`,
    anything else as text; lines of forgotten subjects left out. Lines the strictest redactor's pre-filter passes
    are kept as they are, unless tombstones exist (then each line is parsed)."""
    import numpy as np

    from continuum_pipeline.lake.normalize import task_redactors

    redactors = task_redactors()
    red = redactors(None)
    lines = data.split(b"\n")
    trailing = lines and lines[-1] == b""
    if trailing:
        lines.pop()
    texts = [line.decode("utf-8", "replace") for line in lines]
    flagged = np.asarray(red.flags(pa.array(texts, pa.string()))) if texts else np.zeros(0, bool)
    out: list[str] = []
    for text, flag in zip(texts, flagged, strict=True):
        if not flag and not tombstones:
            out.append(text)
            continue
        try:
            record = json.loads(text)
        except (ValueError, RecursionError):  # hostile lines (deep nesting): redacted as text below
            record = None
        if isinstance(record, dict):
            if tombstones and tombstones.record_forgotten(record):
                continue
            if flag:
                try:
                    task = record.get("task") if record.get("kind", "interaction") == "interaction" else None
                    redactors.get(task if isinstance(task, str) else None).redact_record(record)
                    # ASCII escapes: a lone surrogate from a \ud800 escape stays valid JSON and encodable
                    text = json.dumps(record, separators=(",", ":"))
                except (ValueError, TypeError, RecursionError):
                    text = red.redact(text)[0]
        elif flag:
            text = red.redact(text)[0]
        out.append(text)
    return "".join(t + "\n" for t in out).encode()


def write_segment_atomically(landing: Path, target: Path, data: bytes) -> None:
    """Write `data` (plain bytes; gzip-compressed for a *.gz name) to `target` through landing/.tmp/ and a rename
    on the same filesystem: a reader sees the old content or the new, never a part."""
    tmp_dir = landing / TMP_DIR
    tmp_dir.mkdir(parents=True, exist_ok=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / f".{target.name}.{os.getpid()}.{time.monotonic_ns()}.partial"
    with open(tmp, "wb") as f:
        if target.name.endswith(".gz"):
            with gzip.GzipFile(fileobj=f, mode="wb", mtime=0) as z:
                z.write(data)
        else:
            f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)
