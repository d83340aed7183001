"""Overlapping ingest runs, interleaved deterministically at their progress events: exactly once holds
for any order. Each run is a thread that waits at chosen progress events until the test steps it, so
only one run moves at a time and every interleaving is reproducible (no timing races)."""

from __future__ import annotations

import itertools
import shutil
import threading
from datetime import timedelta

import pyarrow.compute as pc
import pytest

from continuum_pipeline.capture.landing import list_segments
from continuum_pipeline.lake.catalog import Lake
from continuum_pipeline.lake.ingest import LEDGER_PROPERTY, ingest_landing, read_ledger

from .conftest import feedback, interaction, write_segment

TABLES = ("interactions", "feedback_events", "quarantine")


class Crash(Exception):
    pass


class Interleaving:
    """Ingest runs in threads, one moving at a time: a run waits at each event in `pause_at` until stepped."""

    def __init__(self, settings, pause_at: set[str], **ingest_kwargs):
        self.settings, self.pause_at, self.kwargs = settings, pause_at, ingest_kwargs
        self.reports, self.errors, self.crash_at, self.run_kwargs = {}, {}, {}, {}
        self._go: dict[str, threading.Semaphore] = {}
        self._paused = threading.Semaphore(0)

    def step(self, run: str) -> None:
        """Start `run` (it lists landing) or let it go on; return once it waits at its next pause or has ended."""
        if self.ended(run):
            return
        if run in self._go:
            self._go[run].release()
        else:
            self._go[run] = threading.Semaphore(0)
            threading.Thread(target=self._run, args=(run,), daemon=True).start()
        assert self._paused.acquire(timeout=120), f"run {run} neither paused nor ended"

    def finish(self, *runs: str) -> None:
        for run in runs:
            while not self.ended(run):
                self.step(run)

    def ended(self, run: str) -> bool:
        return run in self.reports or run in self.errors

    def _run(self, run: str) -> None:
        def progress(event: str, info: dict) -> None:
            if event == self.crash_at.get(run):
                raise Crash(event)
            if event in self.pause_at:
                self._paused.release()
                self._go[run].acquire()

        try:
            self.reports[run] = ingest_landing(Lake.from_settings(self.settings), self.settings.landing_dir,
                                               progress=progress, **self.kwargs, **self.run_kwargs.get(run, {}))
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.errors[run] = exc
        finally:
            self._paused.release()


def counts(lake: Lake) -> dict[str, int]:
    return {t: lake.read_arrow(t).num_rows for t in TABLES}


def assert_exactly_once(lake: Lake, expected: dict[str, int]) -> None:
    assert counts(lake) == expected
    assert pc.count_distinct(lake.read_arrow("interactions")["interaction_id"]).as_py() == expected["interactions"]
    assert pc.count_distinct(lake.read_arrow("feedback_events")["feedback_id"]).as_py() == expected["feedback_events"]


# The ledger has two guards (see ingest.py); grace 0 turns the time-bounded one off to show the other holds alone.
@pytest.fixture(params=["default_grace", "zero_grace"])
def grace(request) -> dict:
    return {} if request.param == "default_grace" else {"ledger_grace": timedelta(0)}


def issue_segment(landing, n: int, ids: range) -> None:
    """Issue #7's data: S1–S14 hold 2,000 interactions and 667 feedback events, S15 100 and 33."""
    write_segment(landing, f"20261120T0000{n:02d}Z-S{n}",
                  [interaction(i) for i in ids] + [feedback(i, f"i{i:06d}") for i in ids if i % 3 == 0])


ISSUE_TOTAL = {"interactions": 2100, "feedback_events": 700, "quarantine": 0}


@pytest.mark.parametrize("b_waits_at", ["normalized", "data_files_written:interactions"])
def test_run_that_listed_segments_others_ingested_and_forgot_skips_them(lake, settings, grace, b_waits_at):
    """Issue #7: B lists S1–S14 and stalls; A ingests and archives them; S15 arrives and C ingests it
    (its commit prunes the ledger); then B resumes. B must skip S1–S14, not append them again."""
    for s in range(14):
        issue_segment(settings.landing_dir, s + 1, range(s * 2000 // 14, (s + 1) * 2000 // 14))
    runs = Interleaving(settings, {b_waits_at}, **grace)
    runs.step("B")  # B lists S1–S14 and waits (normalized, or with its interactions commit staged)
    runs.finish("A")
    issue_segment(settings.landing_dir, 15, range(2000, 2100))
    runs.finish("C")
    runs.finish("B")

    assert runs.errors == {}
    a, b, c = runs.reports["A"], runs.reports["B"], runs.reports["C"]
    assert len(a.segments) == len(b.segments) == 14 and c.segments == ["20261120T000015Z-S15.jsonl"]
    assert (b.rows("interactions"), b.rows("feedback_events")) == (0, 0)
    assert b.commits["interactions"].skipped_rows == 2000 and b.commits["feedback_events"].skipped_rows == 667
    assert b.commits["interactions"].skipped_segments == 14
    assert_exactly_once(lake, ISSUE_TOTAL)
    assert list_segments(settings.landing_dir) == []


def schedules() -> list[str]:
    """Every order of three runs' two steps (list and normalize; commit and archive), up to renaming the
    runs — they run the same code — so the first steps come in order A, B, C: 15 orders."""
    words = {"".join(w) for w in itertools.permutations("AABBCC")}
    return sorted(w for w in words if "".join(dict.fromkeys(w)) == "ABC")


@pytest.mark.parametrize("schedule", schedules())
def test_every_interleaving_of_three_runs_ingests_exactly_once(lake, settings, schedule):
    """Whenever a run ends a new segment arrives, so later runs list other segments and prune the ledger.
    Grace 0: the ledger forgets archived segments at once, as before the fix, so the order alone must hold."""
    grace = {"ledger_grace": timedelta(0)}
    written = {"interactions": 0, "feedback_events": 0, "quarantine": 0}

    def arrive(n: int, rows: int) -> None:
        base = 1000 * n
        write_segment(settings.landing_dir, f"2026112{n}T000000Z-seg{n}",
                      [interaction(base + i) for i in range(rows)] + [feedback(base, f"i{base:06d}"), b"{broken"])
        written["interactions"] += rows
        written["feedback_events"] += 1
        written["quarantine"] += 1

    for n in range(3):
        arrive(n, 10)
    runs = Interleaving(settings, {"normalized"}, **grace)
    for run in schedule:
        was_running = not runs.ended(run)
        runs.step(run)
        if was_running and runs.ended(run):
            arrive(3 + len(runs.reports) + len(runs.errors), 3)
    assert runs.errors == {}

    last = ingest_landing(lake, settings.landing_dir, **grace)  # whatever arrived after the last run
    assert list_segments(settings.landing_dir) == []
    assert_exactly_once(lake, written)
    appended = sum(r.rows("interactions") for r in [*runs.reports.values(), last])
    assert appended == written["interactions"]


def test_segment_that_arrives_after_a_run_listed_keeps_its_ledger_entry(lake, settings, grace):
    """C lists; S arrives; A commits S and crashes before archiving; C commits. C's listing did not hold S
    but S is still in landing, so C must not prune S from the ledger: the rerun skips it."""
    write_segment(settings.landing_dir, "20261120T000000Z-first", [interaction(i) for i in range(5)])
    runs = Interleaving(settings, {"normalized"}, **grace)
    runs.step("C")  # C lists only "first"
    write_segment(settings.landing_dir, "20261119T000000Z-late", [interaction(100 + i) for i in range(7)])
    runs.crash_at["A"], runs.run_kwargs["A"] = "committed:quarantine", {"max_segments": 1}
    runs.finish("A")  # A commits "late" (it sorts first), then crashes before archiving
    assert isinstance(runs.errors.pop("A"), Crash)
    runs.finish("C")
    assert runs.errors == {}
    assert "late" in lake.table("interactions").properties[LEDGER_PROPERTY]

    rerun = ingest_landing(lake, settings.landing_dir, **grace)
    assert rerun.rows("interactions") == 0 and rerun.commits["interactions"].skipped_rows == 7
    assert_exactly_once(lake, {"interactions": 12, "feedback_events": 0, "quarantine": 0})


def test_archived_segment_dropped_into_landing_again_is_not_reingested(lake, settings, grace):
    seg = write_segment(settings.landing_dir, "20261120T000000Z-once", [interaction(i) for i in range(4)])
    ingest_landing(lake, settings.landing_dir, **grace)
    write_segment(settings.landing_dir, "20261121T000000Z-next", [interaction(10)])
    ingest_landing(lake, settings.landing_dir, **grace)  # a later commit: with grace 0 the ledger forgets "once"
    if grace:
        assert seg.name not in read_ledger(lake.table("interactions"))
    shutil.copy(settings.landing_dir / "archive" / seg.name, seg)  # re-dropped, same name

    again = ingest_landing(lake, settings.landing_dir, **grace)
    assert again.rows("interactions") == 0 and again.commits["interactions"].skipped_rows == 4
    assert list_segments(settings.landing_dir) == []
    assert_exactly_once(lake, {"interactions": 5, "feedback_events": 0, "quarantine": 0})
