"""The capture SDK: what the app sees is unchanged, and what it did lands in complete segments."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from continuum_pipeline import capture, feedback
from continuum_pipeline.capture.landing import list_segments

from .conftest import REPO_ROOT


def landed(landing: Path) -> list[dict]:
    capture.flush()
    return [json.loads(line) for name in list_segments(landing) for line in (landing / name).read_text().splitlines()]


def test_sync_call_is_recorded_and_result_unchanged(sdk, settings):
    sentinel = object()

    @capture(task="support_answer", model="m1", model_version="3")
    def answer(messages, temperature=0.0):
        return {"choices": [{"message": {"content": "Reset it in Settings."}}],
                "usage": {"prompt_tokens": 11, "completion_tokens": 5}, "obj": sentinel}

    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "How do I reset?"}]
    with capture.context(session_id="s1", user_id="u1", consent="granted"):
        result = answer(msgs, temperature=0.2)
    iid = capture.last_interaction_id()
    assert result["obj"] is sentinel
    msgs.append({"role": "assistant", "content": "appended after the call"})  # must not leak into the record

    (rec,) = landed(settings.landing_dir)
    assert rec["interaction_id"] == iid
    assert rec["kind"] == "interaction" and rec["v"] == 1 and rec["source"] == "sdk"
    assert (rec["task"], rec["model"], rec["model_version"]) == ("support_answer", "m1", "3")
    assert (rec["session_id"], rec["user_id"], rec["consent"]) == ("s1", "u1", "granted")
    assert rec["prompt"] == "How do I reset?"
    assert [m["role"] for m in rec["messages"]] == ["system", "user"]
    assert rec["response"] == "Reset it in Settings."
    assert (rec["prompt_tokens"], rec["completion_tokens"]) == (11, 5)
    assert rec["status"] == "ok" and "error_type" not in rec  # null fields are left out of the line
    assert rec["latency_ms"] >= 0 and len(rec["content_hash"]) == 64


def test_async_call_and_exception_reraised_unchanged(sdk, settings):
    class QuotaExceeded(Exception):
        pass

    error = QuotaExceeded("over quota")

    @capture(task="t", model="m")
    async def ask(prompt: str) -> str:
        await asyncio.sleep(0.01)
        if prompt == "fail":
            raise error
        return prompt.upper()

    assert asyncio.run(ask("hello")) == "HELLO"
    with pytest.raises(QuotaExceeded) as raised:
        asyncio.run(ask("fail"))
    assert raised.value is error

    ok, failed = landed(settings.landing_dir)
    assert ok["response"] == "HELLO" and ok["status"] == "ok" and ok["latency_ms"] >= 10
    assert failed["status"] == "error" and failed["error_type"] == "test_async_call_and_exception_reraised_unchanged.<locals>.QuotaExceeded"
    assert failed["error_message"] == "over quota" and failed.get("response") is None


def test_bare_decorator_annotations_and_id_inside_call(sdk, settings):
    seen = {}

    @capture
    def summarize(text):
        seen["id"] = capture.last_interaction_id()
        capture.annotate(cost_usd=0.002, prompt_tokens=40, contexts=["kb-1", "kb-2"], route="challenger", ticket="T-9")
        return "short"

    assert summarize("a long text") == "short"
    (rec,) = landed(settings.landing_dir)
    assert rec["interaction_id"] == seen["id"] == capture.last_interaction_id()
    assert rec["task"].endswith("summarize") and rec["model"] == "unknown"
    assert rec["cost_usd"] == 0.002 and rec["prompt_tokens"] == 40 and rec["route"] == "challenger"
    assert rec["contexts"] == ["kb-1", "kb-2"]
    assert json.loads(rec["metadata"]) == {"ticket": "T-9"}


def test_feedback_sync_and_async(sdk, settings):
    @capture(task="t", model="m")
    def f(prompt):
        return "x"

    f("q")
    iid = capture.last_interaction_id()
    fid = feedback.record(iid, score=0.0, label="thumbs_down", comment="wrong plan")
    fid2 = asyncio.run(feedback.arecord(iid, correction="the right answer"))
    records = landed(settings.landing_dir)
    by_kind = {r.get("feedback_id"): r for r in records if r["kind"] == "feedback"}
    assert by_kind[fid]["interaction_id"] == iid and by_kind[fid]["score"] == 0.0
    assert by_kind[fid]["label"] == "thumbs_down" and by_kind[fid]["comment"] == "wrong plan"
    assert by_kind[fid2]["correction"] == "the right answer"


@pytest.mark.parametrize("kwargs, message", [
    ({"interaction_id": "", "score": 1.0}, "needs the id"),
    ({"interaction_id": "i1", "score": "great"}, "score must be a finite number"),
    ({"interaction_id": "i1", "score": 3.0}, "between 0 and 1"),
    ({"interaction_id": "i1"}, "at least one of"),
])
def test_feedback_rejects_what_can_never_be_valid(sdk, kwargs, message):
    with pytest.raises(ValueError, match=message):
        feedback.record(**kwargs)


def test_full_queue_drops_counts_and_logs_once(sdk, settings, caplog):
    capture.configure(settings.landing_dir, queue_size=5, flush_seconds=3600)
    sdk.flush()

    @capture(task="t", model="m")
    def f(prompt):
        return prompt

    with caplog.at_level(logging.WARNING, logger="continuum.capture"):
        sdk._io_lock.acquire()  # hold the writer so the buffer cannot drain during the burst
        try:
            results = [f(f"q{i}") for i in range(20)]
        finally:
            sdk._io_lock.release()
    assert results == [f"q{i}" for i in range(20)]
    stats = capture.stats()
    assert stats["dropped_queue_full"] == 15
    assert len([r for r in caplog.records if "buffer is full" in r.getMessage()]) == 1
    assert len(landed(settings.landing_dir)) == 5


def test_disk_error_never_reaches_the_app(sdk, tmp_path, caplog):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the landing folder should be")
    capture.configure(blocker / "landing", flush_seconds=0.01)

    @capture(task="t", model="m")
    def f(prompt):
        return "fine"

    with caplog.at_level(logging.WARNING, logger="continuum.capture"):
        assert [f("a"), f("b")] == ["fine", "fine"]
        capture.flush()
        f("c")
        capture.flush()
    assert capture.stats()["dropped_write_error"] == 3
    assert len([r for r in caplog.records if "could not write" in r.getMessage()]) == 1


def test_segments_appear_only_complete(sdk, settings):
    """A reader polling the landing folder never sees a partial segment."""
    capture.configure(settings.landing_dir, segment_records=50, flush_seconds=0.001)

    @capture(task="t", model="m")
    def f(prompt):
        return "x" * 2000

    stop, torn = threading.Event(), []

    def reader():
        while not stop.is_set():
            for name in list_segments(settings.landing_dir):
                data = (settings.landing_dir / name).read_bytes()
                if not data.endswith(b"\n") or any(not line for line in data.split(b"\n")[:-1]):
                    torn.append(name)
                for line in data.splitlines():
                    json.loads(line)

    t = threading.Thread(target=reader)
    t.start()
    for i in range(2000):
        f(f"q{i}")
    capture.flush()
    stop.set()
    t.join()
    assert torn == []
    assert len(landed(settings.landing_dir)) == 2000


def test_crash_mid_write_leaves_only_complete_segments(tmp_path):
    """A process killed while capturing leaves complete segments plus tmp files that ingest ignores."""
    landing = tmp_path / "landing"
    script = f"""
import os, time
from continuum_pipeline import capture
capture.configure({str(landing)!r}, segment_records=100, flush_seconds=0.001)
@capture(task='t', model='m')
def f(p): return p * 500
for i in range(3000):
    f(str(i))
    if i % 100 == 0:
        time.sleep(0.002)  # real traffic has gaps; the writer thread gets to write
    if i == 2500:
        os._exit(0)  # no atexit flush: what is on disk is what a crash leaves
"""
    subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO_ROOT)
    names = list_segments(landing)
    assert names, "some segments were complete before the crash"
    total = 0
    for name in names:
        data = (landing / name).read_bytes()
        assert data.endswith(b"\n")
        total += sum(1 for line in data.splitlines() if json.loads(line)["kind"] == "interaction")
    assert 0 < total <= 2501
    assert all(p.suffix == ".jsonl" for p in (landing / ".tmp").glob("*"))  # leftovers stay out of landing/


def test_atexit_flushes_what_was_queued(tmp_path):
    landing = tmp_path / "landing"
    script = f"""
from continuum_pipeline import capture
capture.configure({str(landing)!r}, flush_seconds=3600)
@capture(task='t', model='m')
def f(p): return p
for i in range(123): f(str(i))
"""
    subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO_ROOT)
    lines = [line for name in list_segments(landing) for line in (landing / name).read_text().splitlines()]
    assert len(lines) == 123


def test_import_is_light():
    code = ("import sys, continuum_pipeline\n"
            "from continuum_pipeline import capture, feedback\n"
            "import continuum_pipeline.capture\n"
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'dagster', 'torch', 'pyarrow', 'pyiceberg', "
            "'duckdb', 'numpy', 'mlflow', 'transformers'})\n"
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=REPO_ROOT)
    assert out.stdout.strip() == ""


def test_forked_child_captures_into_its_own_segments(sdk, settings):
    @capture(task="t", model="m")
    def f(p):
        return p

    f("parent")
    pid = os.fork()
    if pid == 0:  # child: its records must land even though the parent's writer thread is not here
        try:
            f("child")
            capture.flush()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    time.sleep(0.05)
    prompts = sorted(r["prompt"] for r in landed(settings.landing_dir))
    assert prompts == ["child", "parent"]
