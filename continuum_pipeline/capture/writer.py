"""Background writer: a bounded in-memory buffer drained into landing segments.

The app's thread only appends a tuple to a deque (no lock, no serialization, no I/O). A daemon
thread turns those into JSON lines and writes each segment to `<landing>/.tmp/` first, then
renames it into `<landing>/` — a segment is visible only when complete. A full buffer or a failing
disk drops records, counts them and logs once per cause: capture must never break the app.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from continuum_pipeline.capture.landing import SEGMENT_SUFFIX, TMP_DIR
from continuum_pipeline.capture.record import dumps_line

log = logging.getLogger("continuum.capture")

_DISABLED = object()  # stands in for the drain thread once capture has turned itself off


@dataclass
class WriterConfig:
    landing_dir: Path
    queue_size: int = 100_000
    segment_records: int = 5_000
    flush_seconds: float = 1.0

    @classmethod
    def from_settings(cls) -> WriterConfig:
        from continuum_pipeline.settings import get_settings

        s = get_settings()
        return cls(s.landing_dir, s.capture_queue_size, s.capture_segment_records, s.capture_flush_seconds)


class LandingWriter:
    """Owns the buffer, the drain thread and the drop counters of one process."""

    def __init__(self, config: WriterConfig | None = None) -> None:
        self._config = config
        self._buf: collections.deque = collections.deque()
        self._io_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | object | None = None
        self._seq = 0
        self._host = socket.gethostname().replace("-", "_")[:32] or "host"
        self._warned: set[str] = set()
        self.counts = collections.Counter()
        # Plain attributes read on the app's thread; the real values come from settings at first use.
        self._capacity = self._segment_records = 1 << 62
        self._disabled = False

    # --- the app's thread ------------------------------------------------------------------------
    def submit(self, item: tuple[Callable[..., dict[str, Any]], tuple]) -> None:
        """Queue (record builder, its positional arguments). Never raises, never blocks."""
        buf = self._buf
        if self._thread is None:
            self._start()
        n = len(buf)
        if n >= self._capacity:
            if self._disabled:
                self.counts["dropped_config_error"] += 1
                return
            self.counts["dropped_queue_full"] += 1
            self._warn_once("queue_full", "capture buffer is full (%d records): dropping records; "
                            "raise CONTINUUM_CAPTURE_QUEUE_SIZE or check the landing disk", self._capacity)
            return
        buf.append(item)
        if n >= self._segment_records:
            self._wake.set()

    # --- configuration ---------------------------------------------------------------------------
    @property
    def config(self) -> WriterConfig:
        if self._config is None:
            self._config = WriterConfig.from_settings()
        return self._config

    def configure(self, config: WriterConfig) -> None:
        """Point the writer elsewhere; what was queued so far is flushed to the old place first."""
        self.flush()
        self._config = config
        self._capacity, self._segment_records = config.queue_size, config.segment_records
        if self._disabled:
            self._disabled, self._thread = False, None

    # --- the drain thread ------------------------------------------------------------------------
    def _start(self) -> None:
        with self._start_lock:
            if self._thread is not None:
                return
            try:
                config = self.config
            except Exception as exc:  # bad settings must not break the app: capture turns itself off
                self._disabled, self._capacity, self._thread = True, 0, _DISABLED
                self._warn_once("config", "capture is off: its settings are unusable (%s)", exc)
                return
            self._capacity, self._segment_records = config.queue_size, config.segment_records
            self._stop.clear()
            thread = threading.Thread(target=self._run, name="continuum-capture-writer", daemon=True)
            thread.start()
            self._thread = thread

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.config.flush_seconds)
            self._wake.clear()
            self.flush()

    def flush(self) -> int:
        """Write everything queued so far; returns how many records were written. Safe from any thread."""
        written = 0
        with self._io_lock:
            while self._buf:
                batch = []
                limit = self.config.segment_records
                while self._buf and len(batch) < limit:
                    batch.append(self._buf.popleft())
                written += self._write_segment(batch)
        return written

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if isinstance(thread, threading.Thread) and thread is not threading.current_thread():
            thread.join(timeout=5)
        self.flush()

    def _write_segment(self, batch: list) -> int:
        lines = []
        for build, payload in batch:
            try:
                lines.append(dumps_line(build(*payload)))
            except Exception as exc:  # a record we cannot serialize must not stop the others
                self.counts["dropped_unserializable"] += 1
                self._warn_once("unserializable", "capture could not serialize a record (%r); dropped", exc)
        if not lines:
            return 0
        landing = self.config.landing_dir
        self._seq += 1
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        name = f"{stamp}-{self._host}-{os.getpid()}-{self._seq:06d}-{uuid.uuid4().hex[:8]}{SEGMENT_SUFFIX}"
        tmp = landing / TMP_DIR / name
        try:
            tmp.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(b"".join(lines))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, landing / name)  # atomic: readers see the whole segment or none of it
        except OSError as exc:
            self.counts["dropped_write_error"] += len(lines)
            self._warn_once("write_error", "capture could not write to %s (%s): dropping records", landing, exc)
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            return 0
        self.counts["written"] += len(lines)
        self.counts["segments"] += 1
        return len(lines)

    def _warn_once(self, cause: str, msg: str, *args: Any) -> None:
        if cause not in self._warned:
            self._warned.add(cause)
            log.warning(msg, *args)

    # --- process lifecycle -----------------------------------------------------------------------
    def _after_fork_in_child(self) -> None:
        # The parent's thread does not exist in the child, and its queued records are the parent's.
        self._buf = collections.deque()
        self._io_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = None
        self.counts = collections.Counter()

    def stats(self) -> dict[str, int]:
        return {
            "queued": len(self._buf),
            "written": self.counts["written"],
            "segments": self.counts["segments"],
            "dropped_queue_full": self.counts["dropped_queue_full"],
            "dropped_write_error": self.counts["dropped_write_error"],
            "dropped_unserializable": self.counts["dropped_unserializable"],
            "dropped_config_error": self.counts["dropped_config_error"],
        }


WRITER = LandingWriter()
atexit.register(WRITER.close)
os.register_at_fork(after_in_child=WRITER._after_fork_in_child)

