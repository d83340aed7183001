"""Background writer: a bounded in-memory buffer drained into landing segments.

The app's thread only appends a tuple to a deque (no lock, no serialization, no I/O). A daemon
thread turns those into JSON lines and writes each segment to `<landing>/.tmp/` first, then
renames it into `<landing>/` — a segment is visible only when complete. Each record is redacted on that
thread, between building and serializing it (privacy.redact), so no PII reaches the disk and the app's call
pays nothing for it; a record that cannot be redacted is dropped, never written raw. The buffer is bounded in
records and in estimated bytes, so a stalled writer or an unwritable disk cannot grow memory. A full
buffer or a failing disk drops records, counts them and logs once per cause: capture must never
break the app.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import copy
import itertools
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from continuum_pipeline.capture.landing import SEGMENT_SUFFIX, TMP_DIR
from continuum_pipeline.capture.record import ERROR_MESSAGE_CHARS, content_hash, dumps_line

log = logging.getLogger("continuum.capture")

_DISABLED = object()  # stands in for the drain thread once capture has turned itself off
DEFAULT_MAX_BYTES = 64 << 20

# Size estimates for the byte bound. They run on the app's thread, so they look at text lengths and at
# most one level of containers (a list of chat messages), never serialize or walk deep: an estimate of
# what a queued record keeps alive, not an exact count (non-ASCII text and SDK objects are approximate).
RECORD_BYTES = 640  # one queued call besides its text: tuples, id, ints, copied lists/dicts (≈580 B, tracemalloc)
ITEM_BYTES = 64  # a list item, dict entry or small value
MESSAGE_BYTES = 3 * ITEM_BYTES  # a chat message besides its content: the dict, its role
OBJECT_BYTES = 4096  # an object not looked into: an SDK response (an OpenAI reply of 1 KB is ≈4 KB), an exception
WALK = 64  # longer containers: the first WALK items are looked at and the total scaled up


def approx_bytes(value: Any) -> int:
    """Rough bytes `value` keeps alive: len() of text, chat messages' content, a flat charge for the rest."""
    cls = value.__class__
    if cls is str or cls is bytes:
        return len(value)
    if cls is list or cls is tuple:
        n = 0
        for item in value if len(value) <= WALK else value[:WALK]:
            cls = item.__class__
            if cls is str:
                n += ITEM_BYTES + len(item)
            elif cls is dict:  # a chat message: its text is under "content"
                text = item.get("content")
                n += MESSAGE_BYTES + (len(text) if text.__class__ is str else 0)
            else:
                n += ITEM_BYTES
        return n if len(value) <= WALK else n * len(value) // WALK
    if cls is dict:
        n = 0
        for item in value.values() if len(value) <= WALK else itertools.islice(value.values(), WALK):
            cls = item.__class__
            n += ITEM_BYTES + (len(item) if cls is str else approx_bytes(item) if cls is list or cls is tuple else 0)
        return n if len(value) <= WALK else n * len(value) // WALK
    if cls is int or cls is float or cls is bool or value is None:
        return 0
    return OBJECT_BYTES


def _env_max_bytes() -> int:
    from continuum_pipeline.settings import SettingsError, _int_env

    value = _int_env("CONTINUUM_CAPTURE_MAX_BYTES", DEFAULT_MAX_BYTES)
    if value <= 0:
        raise SettingsError(f"CONTINUUM_CAPTURE_MAX_BYTES must be positive, got {value}")
    return value


@dataclass
class WriterConfig:
    landing_dir: Path
    queue_size: int = 100_000
    segment_records: int = 5_000
    flush_seconds: float = 1.0
    # Left out (as capture.configure does), it is CONTINUUM_CAPTURE_MAX_BYTES, so the env var is honoured.
    max_bytes: int = field(default_factory=_env_max_bytes)

    @classmethod
    def from_settings(cls) -> WriterConfig:
        from continuum_pipeline.settings import get_settings

        s = get_settings()
        return cls(s.landing_dir, s.capture_queue_size, s.capture_segment_records, s.capture_flush_seconds,
                   s.capture_max_bytes)


def memoized(redactor: Any) -> Any:
    """A copy of the redactor whose redact() remembers one batch's texts: a chat's prompt is also its last message,
    and apps repeat texts; a record costs the exact redactor once per distinct text (halves PII-rich batches)."""
    memo = copy.copy(redactor)
    seen: dict[str, tuple[str, dict[str, int]]] = {}

    def redact(text: str) -> tuple[str, dict[str, int]]:  # callers only read the counts: one dict may be shared
        hit = seen.get(text)
        if hit is None:
            hit = redactor.redact(text)
            if hit[1]:  # only texts that held something: clean ones cost one scan anyway, and memory
                seen[text] = hit
        return hit

    memo.redact = redact
    return memo


class LandingWriter:
    """Owns the buffer, the drain thread and the drop counters of one process."""

    def __init__(self, config: WriterConfig | None = None) -> None:
        self._config = config
        self._buf: collections.deque = collections.deque()  # (build, payload, estimated bytes)
        self._io_lock = threading.Lock()
        # Estimated bytes held by queued records and the batch being written = charged - released. Two
        # counters, one per side, so the writer never writes what app threads write (see submit).
        self._charged = self._released = 0
        self._start_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | object | None = None
        self._seq = 0
        self._host = socket.gethostname().replace("-", "_")[:32] or "host"
        self._warned: set[str] = set()
        self.counts = collections.Counter()
        # task name (None: unknown, e.g. feedback) → its redactor. None: the settings' redactor for every record
        # (the SDK follows CONTINUUM_REDACT_*); `continuum serve` sets one that applies each task's YAML.
        self.redactor_for: Callable[[str | None], Any] | None = None
        # Plain attributes read on the app's thread; the real values come from settings at first use.
        self._capacity = self._segment_records = self._max_bytes = 1 << 62
        self._disabled = False

    # --- the app's thread ------------------------------------------------------------------------
    def submit(self, build: Callable[..., dict[str, Any]], payload: tuple, size: int = RECORD_BYTES) -> None:
        """Queue a record builder, its positional arguments and their estimated size in bytes (see
        approx_bytes). Never raises, never blocks. A dropped record leaves nothing behind."""
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
        # No lock: a lock costs more than the rest of submit(). Under the GIL this read-add-store has no
        # point where another thread can run (no call, no loop); _released is written only under _io_lock.
        # Were an update ever lost (a free-threaded build), the bound loosens; capture never wedges shut.
        charged = self._charged + size
        if charged - self._released > self._max_bytes:
            self.counts["dropped_queue_bytes"] += 1
            self._warn_once("queue_bytes", "capture buffer is full (%d bytes): dropping records; "
                            "raise CONTINUUM_CAPTURE_MAX_BYTES or check the landing disk", self._max_bytes)
            return
        self._charged = charged
        buf.append((build, payload, size))
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
        self._max_bytes = config.max_bytes
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
            self._max_bytes = config.max_bytes
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
                try:
                    written += self._write_segment(batch)
                finally:  # written or dropped, the batch no longer counts against the byte bound
                    self._released += sum(item[2] for item in batch)
        return written

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if isinstance(thread, threading.Thread) and thread is not threading.current_thread():
            thread.join(timeout=5)
        self.flush()

    def _redactor(self, task: str | None) -> Any:
        if self.redactor_for is not None:
            return self.redactor_for(task)
        from continuum_pipeline.privacy.redact import redactor

        return redactor()

    def _write_segment(self, batch: list) -> int:
        lines = []
        redactors: dict[str | None, Any] = {}  # per batch: the settings are read once, not per record
        for build, payload, _size in batch:
            try:
                record = build(*payload)
            except Exception as exc:  # a record we cannot serialize must not stop the others
                self.counts["dropped_unserializable"] += 1
                self._warn_once("unserializable", "capture could not serialize a record (%r); dropped", exc)
                continue
            try:
                task = record.get("task") if isinstance(record.get("task"), str) else None
                if task not in redactors:
                    redactors[task] = memoized(self._redactor(task))
                found = redactors[task].redact_record(record)
                if not found and record.get("redactions") == "{}":
                    record["redactions"] = None  # nothing found: no field (as at ingest), not an empty object
                message = record.get("error_message")
                if isinstance(message, str) and len(message) > ERROR_MESSAGE_CHARS:
                    record["error_message"] = message[:ERROR_MESSAGE_CHARS]  # only now (see ERROR_MESSAGE_CHARS)
                if found and record.get("kind") == "interaction" and "content_hash" in record:
                    # The dedup key of what is stored: the same text hashes the same through every door.
                    record["content_hash"] = content_hash(record.get("prompt"), record.get("messages"),
                                                          record.get("response"))
            except Exception as exc:  # never write a record unredacted: drop it, count it, say why once
                from continuum_pipeline.settings import SettingsError

                self.counts["dropped_redaction_error"] += 1
                # A settings error names the variable and the fix; any other message might quote the record's text.
                why = str(exc) if isinstance(exc, SettingsError) else type(exc).__name__
                self._warn_once("redaction", "capture could not redact a record (%s); dropped", why)
                continue
            try:
                lines.append(dumps_line(record))
            except Exception as exc:
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
        self._charged = self._released = 0
        self._start_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = None
        self.counts = collections.Counter()

    def stats(self) -> dict[str, int]:
        return {
            "queued": len(self._buf),
            "queued_bytes": self._charged - self._released,
            "written": self.counts["written"],
            "segments": self.counts["segments"],
            "dropped_queue_full": self.counts["dropped_queue_full"],
            "dropped_queue_bytes": self.counts["dropped_queue_bytes"],
            "dropped_write_error": self.counts["dropped_write_error"],
            "dropped_unserializable": self.counts["dropped_unserializable"],
            "dropped_config_error": self.counts["dropped_config_error"],
            "dropped_redaction_error": self.counts["dropped_redaction_error"],
        }


WRITER = LandingWriter()
atexit.register(WRITER.close)
os.register_at_fork(after_in_child=WRITER._after_fork_in_child)

