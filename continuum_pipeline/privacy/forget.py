"""The right to be forgotten: delete a person's rows from every lake table, the landing folder and its archive,
and the local dataset copies; physically (no Parquet file keeps them); with a receipt; naming the model versions
that were trained or evaluated on them.

A request (`submit`) is persisted first under $CONTINUUM_HOME/privacy/pending/<receipt id>.json (0600: it holds
the raw ids until done) and `run_forget` works through it in steps, each idempotent, recording its progress in
that file, so a crash anywhere (an exception, SIGKILL) and a rerun (`finish_pending`: `continuum forget --resume`,
any later forget, the privacy upkeep) finish the job:

1. tombstones for the asked subjects (hashed; privacy/tombstones.py) — from here on ingest drops their rows;
2. resolve the subject's interaction ids (lake and landing lines), persist them, tombstone them too (their
   feedback may arrive later, keyed by interaction id only);
3. fence: one empty commit on every table that may hold the subject, so an ingest attempt that read the
   tombstones before step 1 can no longer commit (its snapshot is stale: it re-reads them);
4. the affected model versions (registry/lineage.py: the `model_lineage` table, written at registration and,
   for older versions, just before the fence), before any delete takes the rows out of it and of the snapshots,
   and the keys of the subject's texts in the embeddings cache;
5. per table, copy-on-write by whichever id columns it has (interaction_id, user_id, session_id; text_hash for
   the embeddings cache): the files holding the subject rewritten without those rows in one conditional commit;
   quarantine rows whose raw bytes hold an id;
6. landing, landing/archive and landing/failed: segments rewritten without the subject's lines (same name,
   write-then-rename: the ingest ledger goes by names, so nothing is ingested twice or lost);
7. local dataset copies (the training runs' train/validation JSONL);
8. physical, on every table whose rows or history held the subject: an empty "seal" commit (drops the manifests
   that list only the deleted files, with their min/max column bounds), every snapshot but the current one
   expired, the files only they used deleted, and unreferenced files that still hold the subject deleted; then
   every table is checked once more (a writer that read the lake before the fence may have committed since);
9. the MLflow versions tagged, the receipt appended to `deletion_receipts`, the pending file removed.

`sweep_tombstones` (on the privacy upkeep) forgets again whatever comes back later by a writer that read the
lake before a deletion; tables that never held the subject keep their history (model lineage reads it).

MLflow holds no dataset copy: training logs the adapter, params and metrics only (training/sft.py); the
version tags and `model_lineage` say which data it saw, which is what step 4 reads.
"""

from __future__ import annotations

import getpass
import gzip
import hashlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import pyarrow as pa
import pyarrow.compute as pc

from continuum_pipeline.capture.landing import ARCHIVE_DIR, FAILED_DIR, list_segments
from continuum_pipeline.lake.catalog import Lake
from continuum_pipeline.lake.schemas import TS, TableLayout
from continuum_pipeline.privacy.tombstones import (
    TOMBSTONES_TABLE,
    Tombstones,
    add_tombstones,
    load_tombstones,
    subject_hash,
)

log = logging.getLogger(__name__)

RECEIPTS_TABLE = "deletion_receipts"
PRIVACY_TABLES = frozenset({RECEIPTS_TABLE, TOMBSTONES_TABLE})
PENDING_DIR = Path("privacy") / "pending"
ID_COLUMNS = ("interaction_id", "user_id", "session_id")
COMMIT_ATTEMPTS = 10
TRAINED_ON_DELETED = "continuum.trained_on_deleted_data"
RECEIPT_TAG = "continuum.deletion_receipt"

RECEIPTS = pa.schema([
    pa.field("receipt_id", pa.string()),
    pa.field("reason", pa.string()),  # request | retention | sweep (rows that came back, forgotten again)
    pa.field("task", pa.string()),  # retention: the task whose policy deleted
    pa.field("requested_by", pa.string()),
    pa.field("requested_at", TS),
    pa.field("completed_at", TS),
    pa.field("subjects", pa.string()),  # JSON [{kind, subject_hash}] (retention: {cutoff, interactions})
    pa.field("interactions", pa.int64()),  # how many interactions the subjects had
    pa.field("tables", pa.string()),  # JSON {table: {rows_removed, files_rewritten, snapshot_before, snapshot_after}}
    pa.field("rows_removed", pa.int64()),
    pa.field("landing", pa.string()),  # JSON {folder: {segments_rewritten, lines_removed}}
    pa.field("local_files", pa.string()),  # JSON {path relative to home: lines_removed}
    pa.field("physical", pa.string()),  # JSON {table: {snapshots_expired, files_deleted, orphans_deleted}}
    pa.field("affected_versions", pa.string()),  # JSON [{model, version, aliases, via, unknown}]
    pa.field("champions_affected", pa.string()),  # JSON [model names whose champion is affected]
])
RECEIPTS_LAYOUT = TableLayout(RECEIPTS_TABLE, RECEIPTS, (),
                              "One row per completed deletion (forget or retention): who asked, when, what (hashed "
                              "ids only), rows removed and snapshots per table, affected model versions.")

Progress = Callable[[str, dict], None]
T = TypeVar("T")


class ForgetRequestError(ValueError):
    """A forget request Continuum cannot act on; the message names the field and the fix."""


@dataclass
class ForgetRequest:
    receipt_id: str
    users: list[str] = field(default_factory=list)
    sessions: list[str] = field(default_factory=list)
    interactions: list[str] = field(default_factory=list)
    requested_by: str = ""
    requested_at: str = ""  # ISO-8601 UTC: the tombstones' forget time
    reason: str = "request"  # request | retention | sweep
    task: str | None = None
    retention: dict = field(default_factory=dict)  # retention: {"days", "cutoff"}
    state: dict = field(default_factory=dict)  # the steps done so far (see the module docstring)

    @property
    def at(self) -> datetime:
        return datetime.fromisoformat(self.requested_at)

    def subjects(self) -> list[tuple[str, str]]:
        return ([("user", u) for u in self.users] + [("session", s) for s in self.sessions]
                + [("interaction", i) for i in self.interactions])


# --- the pending requests ----------------------------------------------------------------------------------

def pending_dir(home: Path) -> Path:
    return Path(home) / PENDING_DIR


def submit(home: Path, *, users: Iterable[str] = (), sessions: Iterable[str] = (), interactions: Iterable[str] = (),
           requested_by: str | None = None, reason: str = "request", task: str | None = None,
           retention: dict | None = None, now: datetime | None = None) -> ForgetRequest:
    """Validate and persist a request (0600) before anything is deleted; returns it."""
    lists = {"users": users, "sessions": sessions, "interactions": interactions}
    clean: dict[str, list[str]] = {}
    for name, values in lists.items():
        values = [values] if isinstance(values, str) else list(values)
        bad = [v for v in values if not isinstance(v, str) or not v.strip()]
        if bad:
            raise ForgetRequestError(f"{name}: {bad!r} is not an id; give each id as a non-empty string")
        clean[name] = sorted(set(values))
    if not any(clean.values()):
        raise ForgetRequestError("nothing to forget: give at least one --user, --session or --interaction id")
    request = ForgetRequest(receipt_id=str(uuid.uuid4()), **clean, requested_by=requested_by or _os_user(),
                            requested_at=(now or datetime.now(UTC)).isoformat(), reason=reason, task=task,
                            retention=retention or {})
    save(home, request)
    return request


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (containers): still say something true
        return f"uid:{os.getuid()}"


def save(home: Path, request: ForgetRequest) -> None:
    """Write the request's file atomically, readable by its owner only (it holds raw ids)."""
    folder = pending_dir(home)
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    target = folder / f"{request.receipt_id}.json"
    tmp = folder / f".{request.receipt_id}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(request), f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)


def pending(home: Path) -> list[ForgetRequest]:
    """Requests not finished yet, oldest first."""
    folder = pending_dir(home)
    if not folder.exists():
        return []
    found = []
    for path in folder.glob("*.json"):
        try:
            found.append(ForgetRequest(**json.loads(path.read_text())))
        except (ValueError, TypeError) as exc:
            raise ForgetRequestError(f"{path} is not a readable forget request ({exc}); fix or remove it") from exc
    return sorted(found, key=lambda r: r.requested_at)


# --- the run -----------------------------------------------------------------------------------------------

@dataclass
class Receipt:
    receipt_id: str
    row: dict
    affected: list[dict]
    champions_affected: list[str]

    @property
    def rows_removed(self) -> int:
        return self.row["rows_removed"]

    @property
    def tables(self) -> dict:
        return json.loads(self.row["tables"])


def finish_pending(lake: Lake, home: Path, landing: Path, tracking_uri: str | None = None,
                   progress: Progress | None = None) -> list[Receipt]:
    """Run every pending request to its end (the one just submitted, and any a crash left)."""
    return [run_forget(lake, r, home=home, landing=landing, tracking_uri=tracking_uri, progress=progress)
            for r in pending(home)]


def run_forget(lake: Lake, request: ForgetRequest, *, home: Path, landing: Path, tracking_uri: str | None = None,
               progress: Progress | None = None) -> Receipt:
    emit = progress or (lambda event, info: None)
    home, landing = Path(home), Path(landing)
    st = request.state
    at = request.at

    def done(step: str, **info) -> None:
        st[step] = info or True
        save(home, request)
        emit(step, info)

    if "tombstoned_subjects" not in st:
        add_tombstones(lake, request.receipt_id, request.subjects(), at)
        done("tombstoned_subjects", subjects=len(request.subjects()))
    if "resolved" not in st:
        st["interaction_ids"] = resolve_interactions(lake, landing, request)
        done("resolved", interactions=len(st["interaction_ids"]))
    ids = st["interaction_ids"]
    if "tombstoned_interactions" not in st:
        add_tombstones(lake, request.receipt_id, [("interaction", i) for i in ids], at)
        done("tombstoned_interactions", interactions=len(ids))
    if "lineage_recorded" not in st and tracking_uri:
        # Versions registered before `model_lineage` existed get their rows while their snapshots exist (the purge
        # expires them); before the fence, so the table is among those the delete visits.
        from continuum_pipeline.registry.lineage import record_missing_lineage

        done("lineage_recorded", versions=len(record_missing_lineage(lake, tracking_uri)))
    targets = st.setdefault("tables", {})
    if "fenced" not in st:
        for name in _personal_tables(lake):
            targets.setdefault(name, {"snapshot_before": lake.current_snapshot_id(name), "rows_removed": 0,
                                      "files_rewritten": 0})
            _fence(lake, name, request.receipt_id)
        done("fenced", tables=len(targets))
    if "affected" not in st:
        st["affected_versions"] = _affected(lake, tracking_uri, ids)
        st["copy_lines"] = _dataset_line_hashes(lake, ids)  # sha256 of the JSONL lines training wrote
        st["text_hashes"] = _embedded_text_hashes(lake, ids)
        done("affected", versions=len(st["affected_versions"]))
    matcher = SubjectMatcher(request.users, request.sessions, set(request.interactions) | set(ids), at,
                             set(st.get("text_hashes", [])))
    for name, info in targets.items():
        if info.get("deleted"):
            continue
        removed, rewritten = delete_from_table(lake, name, matcher, request.receipt_id)
        info.update(rows_removed=info["rows_removed"] + removed, files_rewritten=info["files_rewritten"] + rewritten,
                    deleted=True)
        done(f"deleted:{name}", rows=removed, files=rewritten)
    if "landing" not in st:
        st["landing_result"] = scrub_landing(landing, matcher)
        done("landing", **{k: v["lines_removed"] for k, v in st["landing_result"].items()})
    if "local_files" not in st:
        st["local_result"] = scrub_dataset_copies(home, set(st["copy_lines"]))
        done("local_files", files=len(st["local_result"]))
    physical = st.setdefault("physical", {})
    for name, info in targets.items():
        if name in physical:
            continue
        if info["rows_removed"] or _history_holds(lake, name, matcher):
            physical[name] = purge_table(lake, name, matcher, request.receipt_id)
        else:  # never held the subject: its time travel (model lineage reads dataset snapshots) is kept
            physical[name] = {"snapshots_expired": 0, "files_deleted": 0, "orphans_deleted": 0}
        done(f"purged:{name}", **physical[name])
    # A writer that read the lake before the fence (a SQL model, a dataset) may have committed since: check again.
    for name, info in targets.items():
        removed, rewritten = delete_from_table(lake, name, matcher, request.receipt_id)
        if removed:
            info.update(rows_removed=info["rows_removed"] + removed,
                        files_rewritten=info["files_rewritten"] + rewritten)
            more = purge_table(lake, name, matcher, request.receipt_id)
            physical[name] = {k: physical[name].get(k, 0) + v for k, v in more.items()}
            log.warning("forget %s: %d rows of the subject reappeared in %s (a concurrent writer) and were deleted",
                        request.receipt_id, removed, name)
    for name, info in targets.items():
        info["snapshot_after"] = lake.current_snapshot_id(name)
    if "tagged" not in st:
        _tag_versions(tracking_uri, st["affected_versions"], request.receipt_id)
        done("tagged", versions=len(st["affected_versions"]))
    receipt = _write_receipt(lake, request)
    (pending_dir(home) / f"{request.receipt_id}.json").unlink(missing_ok=True)
    emit("receipt", {"receipt_id": request.receipt_id, "rows_removed": receipt.rows_removed})
    return receipt


# --- the subject -------------------------------------------------------------------------------------------

@dataclass
class SubjectMatcher:
    """Which rows, landing lines and raw bytes belong to the subject (raw ids: only while the request runs)."""

    users: list[str]
    sessions: list[str]
    interactions: set[str]
    forgotten_at: datetime
    text_hashes: set[str] = field(default_factory=set)  # embeddings cache rows: keyed by the text's hash only

    def __post_init__(self) -> None:
        self._users, self._sessions = set(self.users), set(self.sessions)
        needles = sorted(self._users | self._sessions | self.interactions, key=len, reverse=True)
        # An id inside raw bytes, not inside a longer id: `u1` must not match `u10`.
        self._raw = re.compile(rb"(?<![A-Za-z0-9_.\-])(?:" + b"|".join(re.escape(n.encode()) for n in needles)
                               + rb")(?![A-Za-z0-9_.\-])") if needles else None

    def _columns(self) -> tuple:
        return (("user_id", self._users), ("session_id", self._sessions), ("interaction_id", self.interactions),
                ("text_hash", self.text_hashes))

    def arrow_mask(self, rows: pa.Table) -> pa.Array:
        mask = pa.array([False] * rows.num_rows)
        for column, values in self._columns():
            if column in rows.column_names and values:
                hit = pc.fill_null(pc.is_in(rows[column], value_set=pa.array(sorted(values), pa.string())), False)
                mask = pc.or_(mask, hit)
        return mask

    def raw_holds(self, raw: bytes | None) -> bool:
        return bool(raw and self._raw is not None and self._raw.search(raw))

    def record(self, record: dict) -> bool:
        return (_str(record, "user_id") in self._users or _str(record, "session_id") in self._sessions
                or _str(record, "interaction_id") in self.interactions)

    def line(self, line: bytes) -> bool:
        """A landing line of the subject: a record naming one of the ids; an unparseable line holding one."""
        if not line.strip():
            return False
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            return self.raw_holds(line)
        return self.record(record) if isinstance(record, dict) else self.raw_holds(line)


def _str(record: dict, key: str) -> str | None:
    """A record's id field when it is a string (a hostile line may hold a list there, which no set can hash)."""
    value = record.get(key)
    return value if isinstance(value, str) else None


def resolve_interactions(lake: Lake, landing: Path, request: ForgetRequest) -> list[str]:
    """The subject's interaction ids: in the interactions table and in landing lines (not ingested yet)."""
    from pyiceberg.expressions import In, Or

    ids = set(request.interactions)
    clauses = [In(c, v) for c, v in (("user_id", request.users), ("session_id", request.sessions)) if v]
    if clauses and lake.table_exists("interactions"):
        row_filter = clauses[0] if len(clauses) == 1 else Or(*clauses)
        rows = lake.table("interactions").scan(row_filter=row_filter, selected_fields=("interaction_id",)).to_arrow()
        ids |= {i for i in rows["interaction_id"].to_pylist() if i}
    if clauses:
        users, sessions = set(request.users), set(request.sessions)
        for path in _landing_files(landing):
            for line in _read_lines(path):
                try:
                    record = json.loads(line)
                except (ValueError, RecursionError):
                    continue
                if (isinstance(record, dict) and record.get("kind", "interaction") == "interaction"
                        and isinstance(record.get("interaction_id"), str)
                        and (_str(record, "user_id") in users or _str(record, "session_id") in sessions)):
                    ids.add(record["interaction_id"])
    return sorted(ids)


# --- the lake ----------------------------------------------------------------------------------------------

def _personal_tables(lake: Lake) -> list[str]:
    """Every lake table that can hold a subject's rows: id columns, or the quarantine's raw bytes."""
    if not lake.catalog.namespace_exists(lake.namespace):
        return []
    found = []
    for ident in sorted(lake.catalog.list_tables(lake.namespace)):
        name = ident[-1]
        if name in PRIVACY_TABLES:
            continue
        columns = set(lake.table(name).schema().column_names)
        if columns & {*ID_COLUMNS, "text_hash"} or name == "quarantine":
            found.append(name)
    return found


def _retrying(commit: Callable[[], T], failure: str) -> T:
    """`commit()` (which re-reads the table) until no concurrent commit wins, backing off; else RuntimeError."""
    from pyiceberg.exceptions import CommitFailedException

    for attempt in range(COMMIT_ATTEMPTS):
        try:
            return commit()
        except CommitFailedException:
            time.sleep(0.02 * 2 ** min(attempt, 5))
    raise RuntimeError(failure)


def _fence(lake: Lake, name: str, receipt_id: str) -> None:
    """An empty commit: the table's head moves, so a commit prepared on an older head fails and re-reads."""

    def commit() -> None:
        with lake.table(name).transaction() as txn, txn.update_snapshot(
                snapshot_properties={"continuum.forget": receipt_id}).fast_append():
            pass

    _retrying(commit, f"forget: could not commit to {name!r} after {COMMIT_ATTEMPTS} attempts; rerun "
                      "`continuum forget --resume`")


def delete_from_table(lake: Lake, name: str, matcher: SubjectMatcher, receipt_id: str) -> tuple[int, int]:
    """Delete the subject's rows, copy-on-write; (rows removed, data files rewritten or dropped). Retries when a
    concurrent commit (an ingest) wins: the retry deletes what that commit added too.

    By hand rather than pyiceberg's `Table.delete`: that binds an `In` filter per manifest and file, which takes
    ~40 s for a retention of 10k ids over 20k rows, and it keeps a row when any column of an OR-ed filter is null.
    Here each data file's id columns are read, the files with a match are rewritten without those rows (pyarrow
    `is_in`, nulls never match), and one overwrite commit swaps them, conditional on the snapshot read."""
    if not lake.table_exists(name):
        return 0, 0

    def commit() -> tuple[int, int]:
        table = lake.table(name)
        if table.current_snapshot() is None:
            return 0, 0
        return _rewrite_without(table, name, matcher, receipt_id)

    return _retrying(commit, f"forget: could not delete from {name!r} after {COMMIT_ATTEMPTS} attempts (other "
                             "writers kept committing first); rerun `continuum forget --resume`")


def _subject_mask(rows: pa.Table, name: str, matcher: SubjectMatcher):
    if name == "quarantine":
        return pa.array([matcher.raw_holds(r) for r in rows["raw"].to_pylist()], pa.bool_())
    return matcher.arrow_mask(rows)


def _rewrite_without(table, name: str, matcher: SubjectMatcher, receipt_id: str) -> tuple[int, int]:
    import itertools

    from pyiceberg.expressions import AlwaysTrue
    from pyiceberg.io.pyarrow import ArrowScan, _dataframe_to_data_files

    columns = ["raw"] if name == "quarantine" else [
        c for c, values in matcher._columns() if values and c in table.schema().column_names]
    if not columns:
        return 0, 0
    hits = [task for task in table.scan().plan_files() if _file_holds_subject(task.file.file_path, name, matcher)]
    if not hits:
        return 0, 0
    commit_uuid, counter = uuid.uuid4(), itertools.count(0)
    scan = ArrowScan(table_metadata=table.metadata, io=table.io, projected_schema=table.schema(), row_filter=AlwaysTrue())
    removed, replaced = 0, []
    for task in hits:
        rows = scan.to_table(tasks=[task])
        kept = rows.filter(pc.invert(pc.fill_null(_subject_mask(rows, name, matcher), False)))
        removed += rows.num_rows - kept.num_rows
        replaced.append((task.file, list(_dataframe_to_data_files(table.metadata, kept, table.io, commit_uuid, counter))
                         if kept.num_rows else []))
    with table.transaction() as txn, txn.update_snapshot(
            snapshot_properties={"continuum.forget": receipt_id}).overwrite(commit_uuid) as overwrite:
        for old, new in replaced:
            overwrite.delete_data_file(old)
            for data_file in new:
                overwrite.append_data_file(data_file)
    return removed, len(replaced)


def _history_holds(lake: Lake, name: str, matcher: SubjectMatcher) -> bool:
    """Whether a data file only older snapshots reach holds the subject's rows (the current ones hold none)."""
    if not lake.table_exists(name):
        return False
    table = lake.table(name)
    current = table.current_snapshot()
    live = {t.file.file_path for t in table.scan().plan_files()} if current else set()
    older = {t.file.file_path: t for s in table.snapshots() if current is None or s.snapshot_id != current.snapshot_id
             for t in table.scan(snapshot_id=s.snapshot_id).plan_files()}
    return any(_file_holds_subject(path, name, matcher) for path in older.keys() - live)


def _file_holds_subject(uri: str, name: str, matcher: SubjectMatcher) -> bool:
    import pyarrow.parquet as pq
    from pyarrow import fs

    columns = ["raw"] if name == "quarantine" else [c for c, values in matcher._columns() if values]
    filesystem, path = fs.FileSystem.from_uri(uri)
    try:
        with filesystem.open_input_file(path) as f:
            parquet = pq.ParquetFile(f)
            present = [c for c in columns if c in parquet.schema_arrow.names]
            return bool(present) and bool(pc.any(_subject_mask(parquet.read(columns=present), name, matcher)).as_py())
    except FileNotFoundError:
        return False


def purge_table(lake: Lake, name: str, matcher: SubjectMatcher, receipt_id: str) -> dict[str, int]:
    """Make the deletion physical: seal, expire every older snapshot (their files go), then delete unreferenced
    data files that still hold the subject. Such a file belongs to a write that read the lake before the fence
    and can no longer commit, so it is safe at any age; other orphans wait for upkeep's age rule (a writer may be
    about to commit them). The seal is an empty append: it leaves out the manifests that only list the deleted
    files, whose column bounds (min/max user_id, …) would otherwise keep the ids in the current metadata."""
    from continuum_pipeline.lake.maintenance import expire_all_but_current, unreferenced_files

    _fence(lake, name, receipt_id)
    table = lake.table(name)
    expired, deleted = expire_all_but_current(table)
    table = lake.table(name)
    filesystem, orphans = unreferenced_files(table)
    removed = 0
    for path, _ in orphans:
        if path.endswith(".parquet") and _file_holds(filesystem, path, matcher, name):
            filesystem.delete_file(path)
            removed += 1
    return {"snapshots_expired": expired, "files_deleted": deleted, "orphans_deleted": removed}


def _file_holds(filesystem, path: str, matcher: SubjectMatcher, name: str) -> bool:
    import pyarrow.parquet as pq

    try:
        with filesystem.open_input_file(path) as f:
            rows = pq.read_table(f)
    except Exception:  # unreadable (half-written): nothing commits it; upkeep's age rule removes it
        return False
    mask = _subject_mask(rows, name, matcher)
    if "ts" in rows.column_names and rows.schema.field("ts").type == TS:  # a later row of a returning subject
        mask = pc.and_(mask, pc.fill_null(pc.less_equal(rows["ts"], pa.scalar(matcher.forgotten_at, TS)), True))
    return bool(pc.any(mask).as_py())


# --- landing and local copies ------------------------------------------------------------------------------

def _landing_files(landing: Path) -> list[Path]:
    return [folder / name for folder in (landing, landing / ARCHIVE_DIR, landing / FAILED_DIR)
            for name in list_segments(folder)]


def _read_lines(path: Path) -> list[bytes]:
    try:
        data = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    except FileNotFoundError:
        return []  # archived since it was listed: the next pass finds it in the archive
    return data.splitlines()


def scrub_landing(landing: Path, matcher: SubjectMatcher, passes: int = 5) -> dict[str, dict[str, int]]:
    """Rewrite every landing, archive and failed segment holding the subject's lines without them (same name).
    Repeats until a pass finds nothing: an ingest may archive a segment between our read and our rename."""
    from continuum_pipeline.lake.ingest import write_segment_atomically

    result: dict[str, dict[str, int]] = {}
    for _ in range(passes):
        changed = 0
        for path in _landing_files(landing):
            lines = _read_lines(path)
            kept = [line for line in lines if not matcher.line(line)]
            if len(kept) == len(lines):
                continue
            folder = "landing" if path.parent == landing else f"landing/{path.parent.name}"
            entry = result.setdefault(folder, {"segments_rewritten": 0, "lines_removed": 0})
            entry["segments_rewritten"] += 1
            entry["lines_removed"] += len(lines) - len(kept)
            write_segment_atomically(landing, path, b"".join(line + b"\n" for line in kept))
            changed += 1
        if not changed:
            return result
    log.warning("forget: landing segments kept changing under %d passes; `continuum forget --resume` checks again",
                passes)
    return result


def _dataset_line_hashes(lake: Lake, ids: list[str]) -> list[str]:
    """sha256 of each JSONL line a training run wrote for the subject's dataset rows, over every snapshot of every
    task's sft_dataset (the training asset writes `{"messages": ...}` per row into its run folder)."""
    if not ids:
        return []
    value_set = pa.array(sorted(ids), pa.string())
    hashes: set[str] = set()
    for ident in (lake.catalog.list_tables(lake.namespace) if lake.catalog.namespace_exists(lake.namespace) else []):
        name = ident[-1]
        if not name.endswith("sft_dataset"):
            continue
        table = lake.table(name)
        if not {"interaction_id", "messages"} <= set(table.schema().column_names):
            continue
        for snapshot in table.snapshots():
            rows = table.scan(snapshot_id=snapshot.snapshot_id, selected_fields=("interaction_id", "messages")).to_arrow()
            rows = rows.filter(pc.fill_null(pc.is_in(rows["interaction_id"], value_set=value_set), False))
            for messages in rows["messages"].to_pylist():
                hashes.add(_line_hash(json.dumps({"messages": messages})))
    return sorted(hashes)


def _embedded_text_hashes(lake: Lake, ids: list[str]) -> list[str]:
    """The embeddings cache's keys (curation/embeddings.py: sha256 of the last user turn) of the subject's
    conversations, from every current table holding interaction ids and messages. A text another person also
    sent loses its cached vector too: it is recomputed, nothing else."""
    if not ids or not lake.catalog.namespace_exists(lake.namespace):
        return []
    from continuum_pipeline.curation.embeddings import text_hash, user_turn

    value_set = pa.array(sorted(ids), pa.string())
    hashes: set[str] = set()
    for ident in lake.catalog.list_tables(lake.namespace):
        table = lake.table(ident[-1])
        if not {"interaction_id", "messages"} <= set(table.schema().column_names) or table.current_snapshot() is None:
            continue
        rows = table.scan(selected_fields=("interaction_id", "messages")).to_arrow()
        rows = rows.filter(pc.fill_null(pc.is_in(rows["interaction_id"], value_set=value_set), False))
        hashes |= {text_hash(user_turn(m)) for m in rows["messages"].to_pylist()}
    return sorted(hashes)


def _line_hash(line: str | bytes) -> str:
    return hashlib.sha256(line.encode() if isinstance(line, str) else line).hexdigest()


def scrub_dataset_copies(home: Path, line_hashes: set[str]) -> dict[str, int]:
    """Rewrite the training runs' JSONL copies (<home>/tasks/*/runs/*/*.jsonl) without the subject's lines."""
    result: dict[str, int] = {}
    if not line_hashes:
        return result
    for path in sorted(Path(home).glob("tasks/*/runs/*/*.jsonl")):
        lines = path.read_bytes().splitlines()
        kept = [line for line in lines if _line_hash(line) not in line_hashes]
        if len(kept) == len(lines):
            continue
        tmp = path.with_name(f".{path.name}.forget.tmp")
        tmp.write_bytes(b"".join(line + b"\n" for line in kept))
        os.replace(tmp, path)
        result[str(path.relative_to(home))] = len(lines) - len(kept)
    return result


# --- registry and receipt ----------------------------------------------------------------------------------

def _affected(lake: Lake, tracking_uri: str | None, ids: list[str]) -> list[dict]:
    if not tracking_uri or not ids:
        return []
    from continuum_pipeline.registry.lineage import versions_trained_on

    return [{"model": a.version.name, "version": a.version.version, "aliases": list(a.version.aliases),
             "via": a.via, "unknown": a.unknown} for a in versions_trained_on(lake, tracking_uri, ids)]


def _tag_versions(tracking_uri: str | None, affected: list[dict], receipt_id: str) -> None:
    if not tracking_uri:
        return
    from continuum_pipeline.registry.models import tag_version

    for a in affected:
        if a["via"]:  # held the data for sure; `unknown` alone (expired snapshots) is reported, not tagged
            tag_version(tracking_uri, a["model"], a["version"], {TRAINED_ON_DELETED: "true", RECEIPT_TAG: receipt_id})


def _write_receipt(lake: Lake, request: ForgetRequest) -> Receipt:
    from pyiceberg.expressions import EqualTo

    st = request.state
    affected = st.get("affected_versions", [])
    champions = sorted({a["model"] for a in affected if a["via"] and "champion" in a["aliases"]})
    tables = {name: {k: v for k, v in info.items() if k != "deleted"} for name, info in st["tables"].items()}
    if request.reason == "sweep":
        subjects: object = {"interactions": len(st.get("interaction_ids", []))}
    elif request.reason == "retention":
        subjects = {"retention_days": request.retention.get("days"), "cutoff": request.retention.get("cutoff"),
                    "interactions": len(st.get("interaction_ids", []))}
    else:
        subjects = [{"kind": kind, "subject_hash": subject_hash(kind, value)} for kind, value in request.subjects()]
    row = {
        "receipt_id": request.receipt_id, "reason": request.reason, "task": request.task,
        "requested_by": request.requested_by, "requested_at": request.at,
        "completed_at": datetime.now(UTC),
        "subjects": json.dumps(subjects, sort_keys=True),
        "interactions": len(st.get("interaction_ids", [])),
        "tables": json.dumps(tables, sort_keys=True),
        "rows_removed": sum(t["rows_removed"] for t in tables.values()),
        "landing": json.dumps(st.get("landing_result", {}), sort_keys=True),
        "local_files": json.dumps(st.get("local_result", {}), sort_keys=True),
        "physical": json.dumps(st.get("physical", {}), sort_keys=True),
        "affected_versions": json.dumps(affected, sort_keys=True),
        "champions_affected": json.dumps(champions),
    }
    lake.ensure_table(RECEIPTS_LAYOUT)
    table = lake.table(RECEIPTS_TABLE)
    existing = table.scan(row_filter=EqualTo("receipt_id", request.receipt_id)).to_arrow()
    if existing.num_rows:  # a crash after the append, before the pending file went: the receipt stands
        row = existing.to_pylist()[0]
    else:
        rows = pa.Table.from_pylist([row], schema=RECEIPTS)
        _retrying(lambda: lake.table(RECEIPTS_TABLE).append(rows),
                  f"could not append to {RECEIPTS_TABLE!r}: other writers kept committing first; rerun")
    return Receipt(request.receipt_id, row, affected, champions)


def read_receipts(lake: Lake) -> list[dict]:
    if not lake.table_exists(RECEIPTS_TABLE):
        return []
    return sorted(lake.read_arrow(RECEIPTS_TABLE).to_pylist(), key=lambda r: r["completed_at"])


# --- the sweep ---------------------------------------------------------------------------------------------

def sweep_tombstones(lake: Lake, home: Path, landing: Path, tracking_uri: str | None = None,
                     progress: Progress | None = None) -> Receipt | None:
    """Forget again whatever came back: rows that match a tombstone in any table (a derived table written by a
    run that read the lake before a deletion, e.g. a SQL model or a dataset committing after forget ended).
    Tables with `ts` match every tombstone kind up to its forget time; tables without match interaction
    tombstones only (a returning user's later rows there cannot be told apart). Runs on the privacy upkeep."""
    from pyiceberg.types import TimestamptzType

    tombstones = load_tombstones(lake)
    if not tombstones:
        return None
    by_interaction = Tombstones({"interaction": tombstones.by_kind.get("interaction", {})})
    ids: set[str] = set()
    for name in _personal_tables(lake):
        table = lake.table(name)
        columns = table.schema().column_names
        if "interaction_id" not in columns or table.current_snapshot() is None:
            continue
        timed = "ts" in columns and isinstance(table.schema().find_field("ts").field_type, TimestamptzType)
        fields = tuple(c for c in ID_COLUMNS if c in columns) + (("ts",) if timed else ())
        rows = table.scan(selected_fields=fields).to_arrow()
        mask = tombstones.mask(rows) if timed else by_interaction.mask(rows)
        ids |= {i for i in rows.filter(mask)["interaction_id"].to_pylist() if i}
    if not ids:
        return None
    log.warning("tombstone sweep: %d interactions of forgotten subjects were back in the lake; forgetting them", len(ids))
    request = submit(home, interactions=sorted(ids), requested_by="tombstone sweep", reason="sweep")
    return run_forget(lake, request, home=home, landing=landing, tracking_uri=tracking_uri, progress=progress)
