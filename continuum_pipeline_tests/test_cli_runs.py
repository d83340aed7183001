"""CLI runs with real processes and signals: a killed run never wedges its pool, a run waiting for a pool slot
stops on SIGTERM and gives up in time, saying which pool and which run hold it.

To hold a run at an exact point, the CLI runs with a test-only `sitecustomize.py` on PYTHONPATH (written below,
no production code involved): with CONTINUUM_TEST_HOLD_AT=<ingest progress event> the ingest sleeps at that
event, after its log line and while it holds the `continuum_ingest` slot, until the process is signalled.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest

from continuum_pipeline.capture.landing import list_segments
from continuum_pipeline.lake.catalog import Lake

from .conftest import REPO_ROOT, feedback, interaction, write_segment

CLI = REPO_ROOT / ".venv" / "bin" / "continuum"
HOOK = '''\
import os

if os.environ.get("CONTINUUM_TEST_HOLD_AT"):
    import time

    import continuum_pipeline.lake.ingest as ingest

    real = ingest.ingest_landing

    def holding(*args, progress, **kwargs):
        def hold(event, info):
            progress(event, info)
            if event == os.environ["CONTINUUM_TEST_HOLD_AT"]:
                time.sleep(600)

        return real(*args, progress=hold, **kwargs)

    ingest.ingest_landing = holding
'''
SEGMENTS, PER_SEGMENT = 3, 40
# SIGTERM → exit: well under a second of work, plus an interpreter teardown of 1-2 s (more on a busy machine)
STOP_SECONDS = 8.0

pytestmark = pytest.mark.skipif(not CLI.exists(), reason="needs the installed `continuum` command (make install)")


class Cli:
    """`continuum ingest` in a subprocess; stdout and stderr go to a file (a pipe could fill and block it)."""

    def __init__(self, tmp: Path, name: str, env: dict[str, str]):
        self.log = tmp / f"{name}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen([str(CLI), "ingest"], env=env, stdout=out, stderr=subprocess.STDOUT)

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            assert self.proc.poll() is None, f"exited with {self.proc.returncode} before {text!r}:\n{self.output}"
            assert time.monotonic() < deadline, f"no {text!r} after {timeout:g}s:\n{self.output}"
            time.sleep(0.1)

    def finish(self, timeout: float) -> tuple[int, float]:
        """(exit code, seconds it took); fails, killing the process, if it runs past `timeout`."""
        started = time.monotonic()
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"still running after {timeout:g}s:\n{self.output}")
        return code, time.monotonic() - started

    def signal(self, signum: int, timeout: float) -> tuple[int, float]:
        self.proc.send_signal(signum)
        return self.finish(timeout)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture
def cli(settings, tmp_path):
    """Start `continuum ingest` processes on this test's home, with landing segments waiting; kills leftovers."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOOK)
    for s in range(SEGMENTS):
        ids = range(s * 1000, s * 1000 + PER_SEGMENT)
        write_segment(settings.landing_dir, f"2026112{s}T000000Z-seg{s}",
                      [interaction(i) for i in ids] + [feedback(i, f"i{i:06d}") for i in ids])
    started: list[Cli] = []

    def start(name: str, hold: bool = False, **env: str) -> Cli:
        path = os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH")) if p)
        full = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **env}
        full.pop("CONTINUUM_TEST_HOLD_AT", None)
        if hold:
            full["CONTINUUM_TEST_HOLD_AT"] = "listed"
        started.append(Cli(tmp_path, name, full))
        return started[-1]

    yield start
    for c in started:
        if c.proc.poll() is None:
            c.proc.kill()
            c.proc.wait()


def assert_ingested_exactly_once(settings) -> None:
    lake = Lake.from_settings(settings)
    for table in ("interactions", "feedback_events"):
        rows = lake.read_arrow(table)
        key = "interaction_id" if table == "interactions" else "feedback_id"
        assert rows.num_rows == SEGMENTS * PER_SEGMENT, table
        assert pc.count_distinct(rows[key]).as_py() == rows.num_rows, table
    assert list_segments(settings.landing_dir) == []


def assert_no_run_in_progress() -> None:
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        unfinished = [r.dagster_run.run_id for r in instance.get_run_records() if not r.dagster_run.is_finished]
        assert unfinished == []
        assert instance.event_log_storage.get_concurrency_run_ids() == set()


def test_sigkilled_ingest_does_not_wedge_the_next_one(cli, settings):
    killed = cli("killed", hold=True)
    killed.wait_for("ingest listed")
    killed.signal(signal.SIGKILL, 10)

    rerun = cli("rerun")
    code, _ = rerun.finish(60)
    assert code == 0, rerun.output
    assert f"left STARTED by process {killed.proc.pid}" in rerun.output and "no longer exists" in rerun.output
    assert_ingested_exactly_once(settings)
    assert_no_run_in_progress()


def test_sigterm_stops_a_cli_waiting_for_a_pool_slot(cli, settings):
    holder = cli("holder", hold=True)
    holder.wait_for("ingest listed")
    waiting, rerun = cli("waiting"), cli("rerun")  # both queue for the slot the holder keeps
    waiting.wait_for("waits for a slot in pool continuum_ingest")
    rerun.wait_for("waits for a slot in pool continuum_ingest")
    cpu = waiting.cpu_seconds()
    time.sleep(1.5)
    assert waiting.cpu_seconds() - cpu < 0.5, "the wait should sleep, not spin"

    code, seconds = waiting.signal(signal.SIGTERM, 15)
    assert code == 128 + signal.SIGTERM and seconds < STOP_SECONDS, waiting.output
    assert "stopped by SIGTERM" in waiting.output and "CANCELED" in waiting.output
    assert "exiting now" not in waiting.output  # it stopped by itself, not through the watchdog's hard exit

    # the holder, inside its step, stops on SIGTERM too and frees its slot: the queued rerun gets it
    code, seconds = holder.signal(signal.SIGTERM, 15)
    assert code == 128 + signal.SIGTERM and seconds < STOP_SECONDS, holder.output
    assert "exiting now" not in holder.output
    code, _ = rerun.finish(60)
    assert code == 0, rerun.output
    assert "got a slot in pool continuum_ingest" in rerun.output
    assert_ingested_exactly_once(settings)
    assert_no_run_in_progress()


def test_waiting_cli_gives_up_naming_pool_and_holder(cli, settings):
    import dagster as dg

    from continuum_pipeline.cli import prepare_home
    from continuum_pipeline.run_guard import process_tags

    # The holder: a live run of this test process, holding the slot as a CLI run would (a CLI holder is above).
    prepare_home(settings)
    with dg.DagsterInstance.get() as instance:
        holder = instance.add_run(dg.DagsterRun(job_name="ingest_job", run_id="0" * 8 + "-holder",
                                                status=dg.DagsterRunStatus.STARTED, tags=process_tags()))
        instance.event_log_storage.initialize_concurrency_limit_to_default("continuum_ingest")
        assert instance.event_log_storage.claim_concurrency_slot(
            "continuum_ingest", holder.run_id, "ingest_landing_segments").is_claimed

        impatient = cli("impatient", CONTINUUM_POOL_WAIT_SECONDS="2")
        code, _ = impatient.finish(60)
        assert code == 75, impatient.output
        gave_up = next(line for line in impatient.output.splitlines() if line.startswith("continuum: gave up"))
        assert "pool continuum_ingest" in gave_up and "CONTINUUM_POOL_WAIT_SECONDS" in gave_up
        assert f"run {holder.run_id} (ingest_job, STARTED, pid {os.getpid()}" in gave_up
        # the live holder keeps its run and its slot; the impatient run failed and holds nothing
        assert instance.get_run_by_id(holder.run_id).status == dg.DagsterRunStatus.STARTED
        assert instance.event_log_storage.get_concurrency_run_ids() == {holder.run_id}
        runs = instance.get_run_records(filters=dg.RunsFilter(tags={"continuum/pid": str(impatient.proc.pid)}))
        assert [r.dagster_run.status for r in runs] == [dg.DagsterRunStatus.FAILURE]
