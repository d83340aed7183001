"""Lake upkeep keeps every row and exactly-once, while files and snapshots shrink."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

from continuum_pipeline.lake.ingest import ingest_landing
from continuum_pipeline.lake.maintenance import MaintenancePolicy, maintain

from .conftest import interaction, write_segment

EAGER = MaintenancePolicy(snapshot_retention=timedelta(0), retain_last=1, compact_min_files=3,
                          orphan_min_age=timedelta(0))


def soon() -> datetime:
    """A moment after every snapshot made so far, so a zero retention expires them all."""
    return datetime.now(UTC) + timedelta(seconds=5)


def ingest_in_small_commits(lake, settings, commits=6, rows=20):
    for c in range(commits):
        write_segment(settings.landing_dir, f"2026112{c}T000000Z-c{c}", [interaction(c * 100 + i) for i in range(rows)])
        ingest_landing(lake, settings.landing_dir)
    return commits * rows


def data_files(table) -> int:
    return len(list(table.scan().plan_files()))


def test_compaction_and_expiry_keep_every_row(lake, settings):
    n = ingest_in_small_commits(lake, settings)
    before = lake.read_arrow("interactions").sort_by("interaction_id")
    assert data_files(lake.table("interactions")) == 6 and len(lake.table("interactions").snapshots()) == 6

    (report,) = maintain(lake, ["interactions"], EAGER, now=soon())
    after = lake.read_arrow("interactions").sort_by("interaction_id")
    assert after.num_rows == n and after.equals(before.select(after.column_names))
    assert (report.files_before, report.files_after, report.partitions_compacted) == (6, 1, 1)
    assert report.snapshots_expired >= 6 and report.snapshots_left == 1
    assert report.files_deleted > 6  # the old data files, manifests and manifest lists are gone from disk
    parquet = list((settings.home / "lake" / "warehouse").rglob("interactions/data/**/*.parquet"))
    assert len(parquet) == 1


def test_ingest_stays_exactly_once_across_maintenance(lake, settings):
    n = ingest_in_small_commits(lake, settings, commits=4)
    # a crash after commit left this segment in landing although its rows are in the lake
    seg = write_segment(settings.landing_dir, "20261201T000000Z-crashed", [interaction(9000 + i) for i in range(7)])
    ingest_landing(lake, settings.landing_dir)
    os.replace(settings.landing_dir / "archive" / seg.name, seg)  # put it back: as if archiving never happened
    maintain(lake, ["interactions"], EAGER, now=soon())
    report = ingest_landing(lake, settings.landing_dir)
    assert report.rows("interactions") == 0 and report.commits["interactions"].skipped_rows == 7
    assert lake.read_arrow("interactions").num_rows == n + 7


def test_orphan_files_from_crashed_writes_are_deleted(lake, settings):
    ingest_in_small_commits(lake, settings, commits=1)
    data_dir = next((settings.home / "lake" / "warehouse").rglob("interactions/data"))
    orphan = data_dir / "00000-crashed-write.parquet"
    orphan.write_bytes(b"PAR1 half a file")
    young = MaintenancePolicy(orphan_min_age=timedelta(hours=1))
    (report,) = maintain(lake, ["interactions"], young)
    assert orphan.exists() and report.orphans_deleted == 0  # a writer might still commit it
    os.utime(orphan, (0, 0))
    (report,) = maintain(lake, ["interactions"], young)
    assert not orphan.exists() and report.orphans_deleted == 1
    assert lake.read_arrow("interactions").num_rows == 20
