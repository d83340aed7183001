"""A content cache for judge verdicts, so that re-judging what was already judged costs nothing.

Keys are sha256 digests of (judge version, exactly what the judge was asked); a new judge version
(a changed rubric, model or metric) misses every entry by construction, so nothing is ever invalidated.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from continuum_pipeline.judge.base import CriterionScore


@runtime_checkable
class VerdictCache(Protocol):
    def get(self, key: str) -> str | None: ...

    def put(self, key: str, value: str) -> None: ...


def cache_key(version: str, payload: Any) -> str:
    """Digest of the judge version and the exact request content (messages, metric inputs)."""
    text = json.dumps([version, payload], sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def dump_criteria(criteria: tuple[CriterionScore, ...]) -> str:
    return json.dumps([[c.criterion, c.score, c.weight, c.rationale] for c in criteria], ensure_ascii=False)


def load_criteria(value: str) -> tuple[CriterionScore, ...] | None:
    """None for an entry this code cannot read (e.g. written by another layout): treated as a miss."""
    try:
        return tuple(CriterionScore(str(n), float(s), float(w), None if r is None else str(r))
                     for n, s, w, r in json.loads(value))
    except (ValueError, TypeError):
        return None


class JudgeCache:
    """SQLite file shared by threads and processes (WAL: readers never wait for the writer).

    One connection behind a lock: a lookup is microseconds, far below a judge request, so the lock is
    never what a labelling run waits on; other processes are serialized by SQLite's own locking.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # isolation_level=None: each statement commits on its own, so a crash loses at most one entry.
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
        self._db.execute("CREATE TABLE IF NOT EXISTS verdicts "
                         "(key TEXT PRIMARY KEY, value TEXT NOT NULL, created_at REAL NOT NULL)")

    def get(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM verdicts WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def put(self, key: str, value: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO verdicts (key, value, created_at) VALUES (?, ?, ?)",
                             (key, value, time.time()))

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM verdicts").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> JudgeCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"JudgeCache({str(self.path)!r})"
