"""The capture SDK keeps memory bounded: dropped calls leave nothing behind, and the buffer is capped in bytes."""

from __future__ import annotations

import collections
import gc
import json
import logging
import os
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path

import pytest

from continuum_pipeline import capture
from continuum_pipeline.capture import _decorator
from continuum_pipeline.capture.landing import list_segments
from continuum_pipeline.settings import get_settings

from .conftest import REPO_ROOT


def per_call_containers() -> dict[str, int]:
    """Sizes of the decorator module's global containers: none may grow with the number of calls."""
    return {name: len(value) for name, value in vars(_decorator).items()
            if not name.startswith("__") and isinstance(value, dict | list | set | collections.deque)}


def landed(landing: Path) -> list[dict]:
    capture.flush()
    return [json.loads(line) for name in list_segments(landing) for line in (landing / name).read_text().splitlines()]


def test_annotated_calls_dropped_by_a_full_buffer_leave_nothing_behind(sdk, settings):
    capture.configure(settings.landing_dir, queue_size=50, flush_seconds=3600)

    @capture(task="t", model="m")
    def answer(prompt):
        capture.annotate(cost_usd=0.001, contexts=[prompt * 2])  # a fresh ~2 KB per call: a leak shows up
        return prompt

    for i in range(10):
        answer(f"warm-up {i}")
    capture.flush()
    containers = per_call_containers()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        sdk._io_lock.acquire()  # hold the writer so the buffer fills and the rest is dropped
        try:
            for i in range(3000):
                last = answer(f"{i:06d}" + "x" * 1000)
        finally:
            sdk._io_lock.release()
        capture.flush()
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert last.startswith("002999")
    assert per_call_containers() == containers
    assert grown < 256 * 1024, f"{grown:,} bytes still allocated after 2,950 dropped calls"
    stats = capture.stats()
    assert stats["dropped_queue_full"] == 3000 - 50 and stats["queued"] == 0 and stats["queued_bytes"] == 0


def test_annotate_after_the_call_is_ignored_and_leaves_nothing(sdk, settings):
    @capture(task="t", model="m")
    def answer(prompt):
        capture.annotate(ticket="T-1")
        return "ok"

    answer("q")
    capture.flush()  # the record is written: a late annotation has nowhere to go
    containers = per_call_containers()
    capture.annotate(late=True)
    assert per_call_containers() == containers
    (rec,) = landed(settings.landing_dir)
    assert json.loads(rec["metadata"]) == {"ticket": "T-1"}
    assert capture.last_interaction_id() == rec["interaction_id"]


def test_byte_bound_drops_and_counts_and_the_call_still_returns(sdk, settings, monkeypatch, caplog):
    assert get_settings().capture_max_bytes == 64 << 20
    monkeypatch.setenv("CONTINUUM_CAPTURE_MAX_BYTES", "20000")
    assert get_settings().capture_max_bytes == 20000
    capture.configure(settings.landing_dir, flush_seconds=3600)  # takes the bound from the environment

    @capture(task="t", model="m")
    def answer(prompt):
        return prompt.upper()

    prompts = [f"{i:04d}" + "q" * 1000 for i in range(40)]  # ≈2.7 KB each (prompt, response, overhead)
    with caplog.at_level(logging.WARNING, logger="continuum.capture"):
        sdk._io_lock.acquire()
        try:
            results = [answer(p) for p in prompts]
            assert answer("z" * 50_000) == "Z" * 50_000  # over the bound on its own: dropped, still returned
            stats = capture.stats()
        finally:
            sdk._io_lock.release()
    assert results == [p.upper() for p in prompts]
    assert 3 <= stats["queued"] <= 8 and stats["queued_bytes"] <= 20000
    assert stats["dropped_queue_bytes"] == 41 - stats["queued"] and stats["dropped_queue_full"] == 0
    assert len([r for r in caplog.records if "CONTINUUM_CAPTURE_MAX_BYTES" in r.getMessage()]) == 1
    assert [r["prompt"] for r in landed(settings.landing_dir)] == prompts[:stats["queued"]]
    after = capture.stats()
    assert after["queued"] == 0 and after["queued_bytes"] == 0  # released once written


def test_bytes_are_released_when_the_disk_refuses_the_records(sdk, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the landing folder should be")
    capture.configure(blocker / "landing", flush_seconds=3600)

    @capture(task="t", model="m")
    def answer(prompt):
        return prompt

    for i in range(100):
        answer("p" * 500 + str(i))
    assert capture.stats()["queued_bytes"] > 100 * 500
    capture.flush()
    stats = capture.stats()
    assert stats["dropped_write_error"] == 100 and stats["queued"] == 0 and stats["queued_bytes"] == 0


def test_byte_accounting_returns_to_zero_under_concurrent_load(sdk, settings, monkeypatch):
    """App threads charge while the writer releases: no update may be lost, or the bound drifts for good."""
    monkeypatch.setenv("CONTINUUM_CAPTURE_MAX_BYTES", str(200_000))
    capture.configure(settings.landing_dir, segment_records=50, flush_seconds=0.001)

    @capture(task="t", model="m")
    def answer(prompt):
        return prompt

    def burst(k):
        for i in range(3000):
            answer(f"{k}-{i}-" + "a" * (i % 700))

    threads = [threading.Thread(target=burst, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    capture.flush()
    stats = capture.stats()
    assert stats["queued"] == 0 and stats["queued_bytes"] == 0
    assert stats["written"] + stats["dropped_queue_bytes"] == 12_000 and stats["dropped_queue_full"] == 0


OUTAGE = """
import gc, json, os, sys
from continuum_pipeline import capture
from continuum_pipeline.capture import _decorator
from continuum_pipeline.capture.writer import WRITER

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

capture.configure(sys.argv[1], flush_seconds=0.05)

@capture(task="support_answer", model="m")
def answer(prompt):
    capture.annotate(cost_usd=0.001, ticket=prompt[:8])
    return prompt[-200:]

pad = "x" * 1000
for i in range(2000):  # warm-up: imports, the writer thread, the write-error path
    answer(f"{i:08d}" + pad)
capture.flush()
gc.collect()
start = rss()
WRITER._io_lock.acquire()  # first the writer is stalled (a hung disk) ...
for i in range(100_000):
    answer(f"{i:08d}" + pad)
stalled = rss()
WRITER._io_lock.release()  # ... then it runs against a landing folder that refuses every write
for i in range(100_000):
    answer(f"{i:08d}" + pad)
capture.flush()
gc.collect()
print(json.dumps({"start": start, "stalled": stalled, "end": rss(), "stats": capture.stats(),
                  "annotations": len(getattr(_decorator, "_annotations", {}))}))
"""


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads RSS from /proc")
def test_outage_keeps_memory_bounded_and_rss_returns(tmp_path):
    """200k annotated ~1 KB calls while the writer is stalled, then while the disk refuses writes."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the landing folder should be")
    env = {**os.environ, "CONTINUUM_CAPTURE_MAX_BYTES": str(2 << 20)}
    out = subprocess.run([sys.executable, "-c", OUTAGE, str(blocker / "landing")], check=True, capture_output=True,
                         text=True, cwd=REPO_ROOT, env=env, timeout=120)
    m = json.loads(out.stdout.strip().splitlines()[-1])
    mib = 1 << 20
    stats = m["stats"]
    assert m["annotations"] == 0
    assert stats["dropped_queue_bytes"] > 90_000 and stats["dropped_write_error"] > 2000
    assert stats["queued"] == 0 and stats["queued_bytes"] == 0
    assert (m["stalled"] - m["start"]) / mib < 20, f"RSS grew {(m['stalled'] - m['start']) / mib:.0f} MiB while stalled"
    assert (m["end"] - m["start"]) / mib < 20, f"RSS {(m['end'] - m['start']) / mib:.0f} MiB above the start"
