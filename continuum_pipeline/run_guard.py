"""Runs the CLI executes in its own process: a dead run never wedges a pool, a run waiting for a pool slot says
what it waits for and gives up in time, and SIGTERM/SIGINT end the command within seconds.

Why this is needed with Dagster 1.13's `execute_in_process`:
- a step waits for its pool slot in a loop with no time limit that never sleeps (its next-check interval is
  never positive: half a core), and inside Dagster's `capture_interrupts` SIGINT/SIGTERM only set a flag that
  is read when a step starts, so a waiting run ignores both;
- a run whose process dies (SIGKILL, OOM) stays STARTED and keeps its slot. Run monitoring cannot see it: it
  health-checks only run workers a launcher can reach (never in-process runs, nor the default launcher's), and
  frees the slots only of runs that have *ended*.
So each run the CLI starts is tagged with its host and process; before and while a run waits, runs tagged by a
process of this host that no longer exists are marked failed and their slots freed. The slot wait itself
happens here (see `_SlotWait`), where it can time out, be interrupted and name the run holding the slot.

Stdlib at import time: `continuum settings` and friends must not pay for importing Dagster.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

HOST_TAG = "continuum/hostname"
PID_TAG = "continuum/pid"
# "<pid namespace>:<start time in clock ticks>" (Linux): tells a live process from a reused pid, and a pid of
# another container that shares the hostname from one of ours.
PROCESS_TAG = "continuum/process"

POLL_SECONDS = 1.0  # how often a waiting run asks for its slot again
REPEAT_SECONDS = 30.0  # how often a waiting run repeats what it waits for
GRACE_SECONDS = 10.0  # after SIGTERM/SIGINT, how long the run may take to stop before the process exits hard
POOL_WAIT_EXIT_CODE = 75  # EX_TEMPFAIL: nothing went wrong, try again later

Say = Callable[[str], None]


def _say(line: str) -> None:
    print(f"continuum: {line}", file=sys.stderr, flush=True)


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT ended the command; `detail` says what happened to the run."""

    def __init__(self, signum: int, detail: str = ""):
        super().__init__(signum)
        self.signum = signum
        self.detail = detail

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def __str__(self) -> str:
        return f"stopped by {signal.Signals(self.signum).name}" + (f": {self.detail}" if self.detail else "")


class PoolWaitTimeout(Exception):
    """A run waited longer than CONTINUUM_POOL_WAIT_SECONDS for a pool slot; the message names pool and holder."""


# --- who holds a run ---------------------------------------------------------------------------------------

def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time) of a Linux process, None when there is no such process."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    return fields[0], fields[19]


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def process_tags() -> dict[str, str]:
    """Run tags naming this process, so a later command can tell whether the run's process still exists."""
    pid = os.getpid()
    tags = {HOST_TAG: socket.gethostname(), PID_TAG: str(pid)}
    namespace, stat = _pid_namespace(), _proc_stat(pid)
    if namespace and stat:
        tags[PROCESS_TAG] = f"{namespace}:{stat[1]}"
    return tags


def holder_state(tags: Mapping[str, str]) -> str:
    """'alive', 'dead', or 'unknown' (not started by the CLI on this host: only its own host can tell)."""
    if tags.get(HOST_TAG) != socket.gethostname() or not tags.get(PID_TAG, "").isdigit():
        return "unknown"
    pid = int(tags[PID_TAG])
    namespace, key = _pid_namespace(), tags.get(PROCESS_TAG)
    if namespace and key:
        tagged_namespace, _, started = key.rpartition(":")
        if tagged_namespace != namespace:
            return "unknown"  # another container with the same hostname
        stat = _proc_stat(pid)
        return "alive" if stat and stat[0] not in ("Z", "X") and stat[1] == started else "dead"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "dead"
    except PermissionError:
        pass
    return "alive"


def _describe(run) -> str:
    if run.tags.get(PID_TAG):
        where = f"pid {run.tags[PID_TAG]} on {run.tags.get(HOST_TAG, '?')}, {holder_state(run.tags)}"
    else:
        where = "not started by the continuum CLI"
    return f"run {run.run_id} ({run.job_name}, {run.status.value}, {where})"


def reap_dead_runs(instance) -> list[str]:
    """Mark failed the unfinished runs that a process of this host started and that process no longer exists,
    and free the pool slots of every run that has ended (or was deleted). Returns what it did, one line each."""
    import dagster as dg

    done = []
    unfinished = [dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED,
                  dg.DagsterRunStatus.CANCELING]
    records = instance.get_run_records(filters=dg.RunsFilter(statuses=unfinished,
                                                             tags={HOST_TAG: socket.gethostname()}))
    for record in records:
        run = record.dagster_run
        if holder_state(run.tags) == "dead":
            message = (f"run {run.run_id} ({run.job_name}) was left {run.status.value} by process "
                       f"{run.tags[PID_TAG]} on {run.tags[HOST_TAG]}, which no longer exists: marked failed, "
                       "its pool slots freed")
            instance.report_run_failed(run, message)
            done.append(message)
    storage = instance.event_log_storage
    if storage.supports_global_concurrency_limits:
        holders = storage.get_concurrency_run_ids()
        if holders:
            # Dagster's daemon does this too, but only while it runs and free_slots_after_run_end_seconds later.
            unfinished_ids = {r.dagster_run.run_id for r in instance.get_run_records(
                filters=dg.RunsFilter(run_ids=list(holders))) if not r.dagster_run.is_finished}
            for run_id in holders - unfinished_ids:
                storage.free_concurrency_slots_for_run(run_id)
    return done


def _reap(instance, say: Say) -> None:
    """reap_dead_runs, best effort: a failed check must not stop the run that asked for it."""
    try:
        for line in reap_dead_runs(instance):
            say(line)
    except Exception as exc:
        say(f"could not check for runs left by dead processes: {exc!r}")


def settle_run(instance, run_id: str, message: str) -> None:
    """Leave nothing that blocks the next run: an unfinished run is marked failed (canceled if a cancel was
    asked for), and the run's pool slots and queue places are freed."""
    import dagster as dg

    run = instance.get_run_by_id(run_id)
    if run is not None and not run.is_finished:
        if run.status == dg.DagsterRunStatus.CANCELING:
            instance.report_run_canceled(run, message)
        else:
            instance.report_run_failed(run, message)
    if instance.event_log_storage.supports_global_concurrency_limits:
        instance.event_log_storage.free_concurrency_slots_for_run(run_id)


# --- signals -----------------------------------------------------------------------------------------------

class SignalWatch:
    """SIGTERM/SIGINT for a whole command, whoever's Python handler is installed at the moment (Dagster's only
    sets a flag during a run). The C-level wakeup fd reports every signal to a watcher thread, which wakes a run
    waiting for a slot and, if the main thread has not ended GRACE_SECONDS later (a step stuck in native code)
    or on a second signal, settles the current run and exits the process. Outside a run, the signal raises
    `Interrupted` in the main thread."""

    def __init__(self):
        self.signum: int | None = None
        self.event = threading.Event()
        self.instance = None  # the run to settle if the process has to be ended hard
        self.run_id: str | None = None
        self._closed = False

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True as soon as a signal has arrived."""
        return self.event.wait(seconds)

    def _raise(self, signum: int, frame) -> None:
        raise Interrupted(signum)

    def start(self) -> None:
        self._reader, self._writer = socket.socketpair()
        self._writer.setblocking(False)
        self._old_fd = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        # a signal the parent set to be ignored (a background job's SIGINT) stays ignored
        self._old = {s: signal.signal(s, self._raise) for s in (signal.SIGTERM, signal.SIGINT)
                     if signal.getsignal(s) is not signal.SIG_IGN}
        self._thread = threading.Thread(target=self._watch, name="continuum-signals", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._closed = True
        signal.set_wakeup_fd(self._old_fd)
        for signum, handler in self._old.items():
            if handler is not None:
                signal.signal(signum, handler)
        with contextlib.suppress(OSError):
            self._writer.send(b"\0")  # wake the watcher so that it sees _closed
        self._thread.join(1.0)
        self._writer.close()
        self._reader.close()

    def _watch(self) -> None:
        while True:
            try:
                data = self._reader.recv(64)
            except OSError:
                return
            if self._closed or not data:
                return
            for signum in data:
                if signum not in (signal.SIGTERM, signal.SIGINT):
                    continue
                if self.signum is None:
                    self.signum = signum
                    self.event.set()
                    timer = threading.Timer(GRACE_SECONDS, self._force, (f"still busy {GRACE_SECONDS:g}s after it",))
                    timer.daemon = True
                    timer.start()
                else:
                    self._force("signalled again")

    def _force(self, why: str) -> None:
        if self._closed:
            return
        name = signal.Signals(self.signum).name
        run = ""
        if self.instance is not None and self.run_id:
            run = f"; run {self.run_id} marked failed, its pool slots freed"
            with contextlib.suppress(Exception):
                settle_run(self.instance, self.run_id, f"{name}: the process was ended before the run stopped")
        sys.stderr.write(f"continuum: stopped by {name}: {why}, exiting now{run}\n")
        sys.stderr.flush()
        os._exit(128 + self.signum)


_ACTIVE: SignalWatch | None = None


@contextlib.contextmanager
def watching_signals() -> Iterator[SignalWatch | None]:
    """The command's SignalWatch: started here unless one is active (None off the main thread)."""
    global _ACTIVE
    if _ACTIVE is not None or threading.current_thread() is not threading.main_thread():
        yield _ACTIVE
        return
    watch = SignalWatch()
    watch.start()
    _ACTIVE = watch
    try:
        yield watch
    finally:
        _ACTIVE = None
        watch.stop()


# --- the slot wait and the run -----------------------------------------------------------------------------

class _SlotWait:
    """Stands in for the event log storage's `claim_concurrency_slot` during one run. When the slot is taken it
    waits here, not in Dagster's loop: it asks again every POLL_SECONDS, frees slots of dead runs, says which
    run holds the slot, gives up after `wait_seconds` and stops on SIGTERM/SIGINT. Claims of other runs sharing
    this storage object pass straight through."""

    def __init__(self, instance, run_id: str, wait_seconds: float, watch: SignalWatch | None, say: Say):
        self.instance, self.run_id, self.wait_seconds, self.watch, self.say = instance, run_id, wait_seconds, watch, say
        self.claim = instance.event_log_storage.claim_concurrency_slot
        self.gave_up: PoolWaitTimeout | None = None

    def __call__(self, concurrency_key: str, run_id: str, step_key: str, priority: int | None = None):
        status = self.claim(concurrency_key, run_id, step_key, priority)
        if status.is_claimed or run_id != self.run_id:
            return status
        started, said, said_at = time.monotonic(), "", 0.0
        while True:
            _reap(self.instance, self.say)
            status = self.claim(concurrency_key, run_id, step_key, priority)
            waited = time.monotonic() - started
            if status.is_claimed:
                if said:
                    self.say(f"got a slot in pool {concurrency_key} after {waited:.0f}s")
                return status
            holders = self._holders(concurrency_key)
            if waited >= self.wait_seconds:
                self.gave_up = PoolWaitTimeout(
                    f"gave up after {waited:.0f}s waiting for a slot in pool {concurrency_key} for step {step_key}: "
                    f"{holders}. Let that run finish or stop it, or wait longer with "
                    f"CONTINUUM_POOL_WAIT_SECONDS (now {self.wait_seconds:g}).")
                raise self.gave_up
            if holders != said or time.monotonic() - said_at >= REPEAT_SECONDS:
                self.say(f"step {step_key} waits for a slot in pool {concurrency_key}: {holders}; "
                         + (f"waited {waited:.0f}s, " if said else "")
                         + f"gives up after {self.wait_seconds:g}s (CONTINUUM_POOL_WAIT_SECONDS)")
                if not said:
                    self._report(f"Waiting for a slot in pool {concurrency_key}: {holders}")
                said, said_at = holders, time.monotonic()
            if self.watch is None:
                time.sleep(POLL_SECONDS)
            elif self.watch.wait(POLL_SECONDS):
                self._interrupted(concurrency_key)

    def _holders(self, pool: str) -> str:
        info = self.instance.event_log_storage.get_concurrency_info(pool)
        run_ids = [s.run_id for s in info.claimed_slots] or [
            p.run_id for p in info.pending_steps if p.assigned_timestamp and p.run_id != self.run_id]
        held = ", ".join(_describe(run) if (run := self.instance.get_run_by_id(run_id)) else f"run {run_id} (deleted)"
                         for run_id in dict.fromkeys(run_ids))
        return f"limit {info.limit}, held by {held or 'no run (yet)'}"

    def _report(self, message: str) -> None:
        run = self.instance.get_run_by_id(self.run_id)
        if run is not None:  # shows in the run's log in the UI
            self.instance.report_engine_event(message, run)

    def _interrupted(self, pool: str):
        import dagster as dg

        name = signal.Signals(self.watch.signum).name
        run = self.instance.get_run_by_id(self.run_id)
        if run is not None:
            self.instance.report_run_canceling(run, f"{name} while waiting for a slot in pool {pool}")
        with contextlib.suppress(ImportError):
            # Dagster's handler noted the signal too: consumed here, or resource teardown would stop on it.
            from dagster._utils.interrupts import pop_captured_interrupt

            pop_captured_interrupt()
        raise dg.DagsterExecutionInterruptedError(f"{name} while waiting for a slot in pool {pool}")


def execute(instance, run_id: str, start: Callable[[str], Any], *, wait_seconds: float, say: Say = _say):
    """`start(run_id)` — the execution of an existing run of `instance` in this process — guarded as this module's
    docstring says. The run must carry process_tags()."""
    import dagster as dg

    with watching_signals() as watch:
        _reap(instance, say)
        storage = instance.event_log_storage
        slot_wait = _SlotWait(instance, run_id, wait_seconds, watch, say)
        storage.claim_concurrency_slot = slot_wait  # this storage object, for this run only
        if watch is not None:
            watch.instance, watch.run_id = instance, run_id
        try:
            result = start(run_id)
        except dg.DagsterExecutionInterruptedError as exc:
            if watch is not None and watch.signum is not None:
                raise Interrupted(watch.signum, _after(instance, run_id)) from exc
            raise
        finally:
            del storage.claim_concurrency_slot
            if watch is not None:
                watch.run_id = None
            try:
                settle_run(instance, run_id, "the CLI stopped before the run ended")
            except Exception as exc:  # never mask why the run ended
                say(f"could not settle run {run_id}: {exc!r}")
        if slot_wait.gave_up is not None:  # raise_on_error=False swallowed it
            raise slot_wait.gave_up
        if watch is not None and watch.signum is not None:  # arrived when no step could be interrupted
            raise Interrupted(watch.signum, _after(instance, run_id))
        return result


def _after(instance, run_id: str) -> str:
    run = instance.get_run_by_id(run_id)
    status = run.status.value if run else "unknown"
    return f"run {run_id} is {status}, its pool slots are free"
