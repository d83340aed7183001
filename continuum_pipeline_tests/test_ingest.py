"""Ingest: landing → Iceberg exactly once, whatever crashes where."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta
from types import SimpleNamespace

import pyarrow.compute as pc
import pytest

from continuum_pipeline.capture.landing import list_segments
from continuum_pipeline.lake.catalog import Lake
from continuum_pipeline.lake.ingest import LEDGER_PROPERTY, _next_ledger, ingest_landing, read_ledger

from .conftest import REPO_ROOT, feedback, interaction, write_segment

TABLES = ("interactions", "feedback_events", "quarantine")


def fill_landing(landing, segments=4, per_segment=50):
    for s in range(segments):
        recs = [interaction(s * 1000 + i) for i in range(per_segment)]
        recs += [feedback(s * 1000 + i, f"i{s * 1000 + i:06d}") for i in range(0, per_segment, 5)]
        recs.append(b'{"v":1,"kind":"feedback","score":"broken"')
        write_segment(landing, f"2026112{s}T000000Z-seg{s}", recs)
    return segments * per_segment, segments * per_segment // 5, segments


def counts(lake: Lake) -> dict[str, int]:
    return {t: lake.read_arrow(t).num_rows for t in TABLES}


def test_ingest_lands_every_row_once_and_archives(lake, settings):
    n_i, n_f, n_q = fill_landing(settings.landing_dir)
    report = ingest_landing(lake, settings.landing_dir)
    assert counts(lake) == {"interactions": n_i, "feedback_events": n_f, "quarantine": n_q}
    assert report.quarantine_reasons == Counter({"invalid_json": n_q})
    assert list_segments(settings.landing_dir) == []
    assert len(list((settings.landing_dir / "archive").glob("*.jsonl"))) == 4
    ids = lake.read_arrow("interactions")["interaction_id"]
    assert pc.count_distinct(ids).as_py() == n_i
    # one commit per table per run, with the batch in the snapshot summary
    table = lake.table("interactions")
    assert len(table.snapshots()) == 1
    assert table.current_snapshot().summary.additional_properties["continuum.segments"] == "4"
    # nothing left: a rerun is a no-op
    again = ingest_landing(lake, settings.landing_dir)
    assert again.segments == [] and counts(lake)["interactions"] == n_i


def test_max_segments_leaves_the_rest_for_the_next_run(lake, settings):
    fill_landing(settings.landing_dir, segments=5, per_segment=10)
    first = ingest_landing(lake, settings.landing_dir, max_segments=2)
    assert len(first.segments) == 2 and first.remaining_segments == 3
    ingest_landing(lake, settings.landing_dir, max_segments=2)
    ingest_landing(lake, settings.landing_dir, max_segments=2)
    assert counts(lake)["interactions"] == 50


CRASH_SCRIPT = """
import os, sys
from pathlib import Path
from continuum_pipeline.lake.catalog import Lake
from continuum_pipeline.lake.ingest import ingest_landing
from continuum_pipeline.settings import get_settings
crash_at = sys.argv[1]
def progress(event, info):
    if event == crash_at:
        os._exit(17)  # a real crash: no cleanup, no finally
s = get_settings()
ingest_landing(Lake.from_settings(s), s.landing_dir, progress=progress)
"""


@pytest.mark.parametrize("crash_at", [
    "data_files_written:interactions",  # data files written, commit not made
    "committed:interactions",  # committed, nothing else done
    "data_files_written:feedback_events",  # one table committed, the next one's files written
    "committed:quarantine",  # every table committed, segments not archived
])
def test_crash_then_rerun_neither_loses_nor_doubles(lake, settings, crash_at):
    n_i, n_f, n_q = fill_landing(settings.landing_dir)
    crashed = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, crash_at], cwd=REPO_ROOT, capture_output=True, text=True)
    assert crashed.returncode == 17, crashed.stderr
    assert len(list_segments(settings.landing_dir)) == 4  # nothing archived before the crash
    ingest_landing(lake, settings.landing_dir)
    assert counts(lake) == {"interactions": n_i, "feedback_events": n_f, "quarantine": n_q}
    assert pc.count_distinct(lake.read_arrow("interactions")["interaction_id"]).as_py() == n_i
    assert list_segments(settings.landing_dir) == []
    ingest_landing(lake, settings.landing_dir)  # and once more, for good measure
    assert counts(lake) == {"interactions": n_i, "feedback_events": n_f, "quarantine": n_q}


def test_concurrent_ingest_commits_first_and_ours_retries_without_doubling(lake, settings):
    """Another run commits the same segments between our ledger read and our commit."""
    n_i, n_f, n_q = fill_landing(settings.landing_dir)
    other = Lake.from_settings(settings)
    raced = []

    def progress(event, info):
        if event == "data_files_written:interactions" and not raced:
            raced.append(ingest_landing(other, settings.landing_dir))  # the other run does everything first

    mine = ingest_landing(lake, settings.landing_dir, progress=progress)
    assert raced and raced[0].rows("interactions") == n_i
    assert mine.rows("interactions") == 0 and mine.commits["interactions"].skipped_rows == n_i
    assert counts(lake) == {"interactions": n_i, "feedback_events": n_f, "quarantine": n_q}


def test_ledger_keeps_archived_segments_for_the_grace_then_forgets_them(lake, settings):
    fill_landing(settings.landing_dir, segments=2, per_segment=5)
    ingest_landing(lake, settings.landing_dir)
    write_segment(settings.landing_dir, "20261130T000000Z-later", [interaction(77777)])
    ingest_landing(lake, settings.landing_dir)
    ledger = read_ledger(lake.table("interactions"))
    assert ledger["20261130T000000Z-later.jsonl"] is None  # in landing when committed
    assert ledger["20261120T000000Z-seg0.jsonl"] == pytest.approx(time.time(), abs=5)  # archived: gone since now
    write_segment(settings.landing_dir, "20261201T000000Z-last", [interaction(88888)])
    ingest_landing(lake, settings.landing_dir, ledger_grace=timedelta(0))  # as if the grace had passed
    assert read_ledger(lake.table("interactions")) == {"20261201T000000Z-last.jsonl": None}


def test_ledger_entry_outlives_its_segment_by_the_grace():
    ledger = {"stays": None, "leaves": None, "gone": 1000}
    ledger = _next_ledger(ledger, {"new"}, {"stays", "new"}, now=1899.5, grace=900)
    assert ledger == {"stays": None, "leaves": 1899, "gone": 1000, "new": None}  # "leaves" first found gone
    ledger = _next_ledger(ledger, {"newer"}, {"stays", "newer"}, now=1900.0, grace=900)
    assert ledger == {"stays": None, "leaves": 1899, "new": 1900, "newer": None}  # "gone" for 900 s: dropped
    assert read_ledger(SimpleNamespace(properties={LEDGER_PROPERTY: '["a"]'})) == {"a": None}  # the old format
