"""Lake upkeep: compact small files, expire old snapshots, delete files nothing references.

Commit cost in pyiceberg grows with the number of snapshots and manifests, so this runs on a schedule.
None of it touches the ingest ledger (a table property), and every rewrite is one optimistic commit
that fails rather than overwrite a concurrent ingest — so exactly-once survives maintenance.
Manifests are merged on every append (`commit.manifest-merge.enabled`); compaction shrinks them further.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from urllib.parse import urlparse

from continuum_pipeline.lake.catalog import Lake

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MaintenancePolicy:
    snapshot_retention: timedelta = timedelta(days=1)  # keep snapshots younger than this (time travel)
    retain_last: int = 10  # and always the newest N
    compact_min_files: int = 4  # a partition with at least this many small files is rewritten
    small_file_bytes: int = 32 << 20
    orphan_min_age: timedelta = timedelta(days=1)  # never touch files a running writer may still commit


@dataclass
class TableMaintenance:
    table: str
    files_before: int = 0
    files_after: int = 0
    partitions_compacted: int = 0
    snapshots_expired: int = 0
    files_deleted: int = 0
    orphans_deleted: int = 0
    manifests: int = 0
    snapshots_left: int = 0
    skipped: list[str] = field(default_factory=list)


def maintain(lake: Lake, tables: list[str], policy: MaintenancePolicy = MaintenancePolicy(),
             now: datetime | None = None) -> list[TableMaintenance]:
    now = now or datetime.now(UTC)
    return [maintain_table(lake, name, policy, now) for name in tables if lake.table_exists(name)]


def maintain_table(lake: Lake, name: str, policy: MaintenancePolicy, now: datetime) -> TableMaintenance:
    from pyiceberg.exceptions import CommitFailedException

    report = TableMaintenance(name)
    table = lake.table(name)
    report.files_before = len(list(table.scan().plan_files())) if table.current_snapshot() else 0
    try:
        report.partitions_compacted = compact(table, policy)
    except CommitFailedException as exc:
        report.skipped.append(f"compaction: a concurrent commit won ({exc}); it runs again next time")
    table = lake.table(name)
    report.snapshots_expired, report.files_deleted = expire_snapshots(table, policy, now)
    table = lake.table(name)
    report.orphans_deleted = delete_orphan_files(table, now - policy.orphan_min_age)
    table = lake.table(name)
    snapshot = table.current_snapshot()
    report.files_after = len(list(table.scan().plan_files())) if snapshot else 0
    report.manifests = len(snapshot.manifests(table.io)) if snapshot else 0
    report.snapshots_left = len(table.snapshots())
    return report


def compact(table, policy: MaintenancePolicy) -> int:
    """Rewrite each partition holding many small files as few files, in one commit."""
    from pyiceberg.expressions import Or

    if table.current_snapshot() is None:
        return 0
    groups: dict[tuple, list] = defaultdict(list)
    for task in table.scan().plan_files():
        if task.delete_files:
            continue  # rows with pending deletes are rewritten by the delete path, not here
        f = task.file
        if f.file_size_in_bytes < policy.small_file_bytes:
            groups[(f.spec_id, tuple(f.partition))].append(f)
    targets = [key for key, files in groups.items() if len(files) >= policy.compact_min_files]
    if not targets:
        return 0
    predicates = [_partition_predicate(table, spec_id, values) for spec_id, values in targets]
    predicate = predicates[0] if len(predicates) == 1 else Or(*predicates)
    rows = table.scan(row_filter=predicate).to_arrow()
    txn = table.transaction()
    txn.overwrite(rows, overwrite_filter=predicate, snapshot_properties={"continuum.maintenance": "compaction"})
    txn.commit_transaction()
    return len(targets)


def _partition_predicate(table, spec_id: int, values: tuple):
    """The row filter that selects exactly one partition (identity and day transforms)."""
    from pyiceberg.expressions import And, EqualTo, GreaterThanOrEqual, IsNull, LessThan
    from pyiceberg.transforms import DayTransform, IdentityTransform

    spec, schema = table.specs()[spec_id], table.schema()
    clauses = []
    for pfield, value in zip(spec.fields, values, strict=True):
        column = schema.find_column_name(pfield.source_id)
        if isinstance(pfield.transform, IdentityTransform):
            clauses.append(IsNull(column) if value is None else EqualTo(column, value))
        elif isinstance(pfield.transform, DayTransform):
            if value is None:
                clauses.append(IsNull(column))
            else:
                start = datetime.combine(date(1970, 1, 1) + timedelta(days=value), datetime.min.time(), UTC)
                clauses.append(GreaterThanOrEqual(column, start.isoformat()))
                clauses.append(LessThan(column, (start + timedelta(days=1)).isoformat()))
        else:
            raise ValueError(f"compaction does not know partition transform {pfield.transform} on {column}")
    return clauses[0] if len(clauses) == 1 else And(*clauses)


def _referenced_files(table, snapshots, live_only: bool = False) -> set[str]:
    """Manifest lists, manifests and data files of `snapshots`. `live_only`: leave out data files a manifest
    lists as DELETED (a file a snapshot removed is no part of it; once the snapshots that held it are expired it
    is garbage, and it may still hold deleted rows)."""
    files: set[str] = set()
    for snap in snapshots:
        files.add(snap.manifest_list)
        for manifest in snap.manifests(table.io):
            files.add(manifest.manifest_path)
            for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=live_only):
                files.add(entry.data_file.file_path)
    return files


def expire_snapshots(table, policy: MaintenancePolicy, now: datetime) -> tuple[int, int]:
    """Expire snapshots older than the retention (keeping the newest N), then delete the files only they used."""
    snapshots = sorted(table.snapshots(), key=lambda s: s.timestamp_ms)
    keep = {s.snapshot_id for s in snapshots[-policy.retain_last:]}
    cutoff_ms = int((now - policy.snapshot_retention).timestamp() * 1000)
    expired = [s for s in snapshots if s.snapshot_id not in keep and s.timestamp_ms < cutoff_ms]
    return _expire(table, expired)


def expire_all_but_current(table) -> tuple[int, int]:
    """Expire every snapshot but the current one, whatever the time-travel retention, and delete the files only
    they used: after a deletion (privacy/forget.py) no older snapshot may still reach the deleted rows."""
    current = table.current_snapshot()
    return _expire(table, [s for s in table.snapshots() if current is None or s.snapshot_id != current.snapshot_id])


def _expire(table, expired) -> tuple[int, int]:
    if not expired:
        return 0, 0
    before = _referenced_files(table, expired)
    table.maintenance.expire_snapshots().by_ids([s.snapshot_id for s in expired]).commit()
    table = table.refresh()
    still_used = _referenced_files(table, table.snapshots(), live_only=True)
    doomed = before - still_used
    for path in doomed:
        try:
            table.io.delete(path)
        except (FileNotFoundError, OSError) as exc:
            log.warning("could not delete expired file %s: %s", path, exc)
    return len(expired), len(doomed)


def delete_orphan_files(table, older_than: datetime) -> int:
    """Delete data and metadata files no snapshot references (left by crashed or conflicting writes)."""
    filesystem, orphans = unreferenced_files(table)
    cutoff = older_than.timestamp()
    removed = 0
    for path, mtime in orphans:
        if mtime is not None and mtime >= cutoff:
            continue
        filesystem.delete_file(path)
        removed += 1
    return removed


def unreferenced_files(table) -> tuple[object, list[tuple[str, float | None]]]:
    """(filesystem, [(path, mtime epoch s)]) of the data and metadata files under the table's location that no
    snapshot or metadata log entry references: crashed or conflicting writes, or a writer not yet committed."""
    from pyarrow import fs

    location = table.location()
    filesystem, root = fs.FileSystem.from_uri(location)
    try:
        infos = filesystem.get_file_info(fs.FileSelector(root, recursive=True, allow_not_found=True))
    except (OSError, NotImplementedError) as exc:
        log.warning("cannot list %s for orphan files: %s", location, exc)
        return filesystem, []
    used = {_path(p) for p in _referenced_files(table, table.snapshots(), live_only=True)}
    used.add(_path(table.metadata_location))
    used |= {_path(entry.metadata_file) for entry in table.metadata.metadata_log}
    return filesystem, [(info.path, info.mtime.timestamp() if info.mtime is not None else None) for info in infos
                        if info.type == fs.FileType.File and info.path not in used
                        and info.path.endswith((".parquet", ".avro", ".metadata.json"))]


def _path(uri: str) -> str:
    parsed = urlparse(uri)
    return parsed.path if parsed.scheme in ("", "file") else f"{parsed.netloc}{parsed.path}"
