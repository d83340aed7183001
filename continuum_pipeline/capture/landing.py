"""The landing folder's layout, shared by the SDK's writer, the ingest and the landing sensor.

<landing>/<segment>.jsonl      complete segments, ready to ingest
<landing>/<segment>.jsonl.gz   the same, gzip-compressed (a natural export format)
<landing>/.tmp/                segments being written (renamed into place when complete)
<landing>/archive/             segments already in the lake (raw bytes kept for replay and audit)
<landing>/failed/              segments that could not be read or normalized (the reason is in the quarantine table)
Anything else in the landing folder is not ingested, and is reported as ignored (`list_ignored`), never silently.
"""

from __future__ import annotations

import os
from pathlib import Path

SEGMENT_SUFFIX = ".jsonl"
SEGMENT_SUFFIXES = (".jsonl", ".jsonl.gz")
TMP_DIR = ".tmp"
ARCHIVE_DIR = "archive"
FAILED_DIR = "failed"
_OWN_DIRS = frozenset({TMP_DIR, ARCHIVE_DIR, FAILED_DIR})


def is_segment_name(name: str) -> bool:
    return name.endswith(SEGMENT_SUFFIXES)


def list_segments(landing: Path) -> list[str]:
    """Complete landing segments, oldest name first."""
    try:
        with os.scandir(landing) as entries:
            return sorted(e.name for e in entries if is_segment_name(e.name) and e.is_file())
    except FileNotFoundError:
        return []


def list_ignored(landing: Path) -> list[str]:
    """What sits in the landing folder but is no segment (`notes.txt`, `export.json`, `SEGMENT.JSONL`, a folder):
    the ingest never reads it, so it is reported instead. Folders end with a slash."""
    try:
        with os.scandir(landing) as entries:
            return sorted(e.name + ("/" if e.is_dir() else "") for e in entries
                          if not (e.is_file() and is_segment_name(e.name)) and not (e.name in _OWN_DIRS and e.is_dir()))
    except FileNotFoundError:
        return []


def list_failed(landing: Path) -> list[str]:
    """Segments set aside in landing/failed/ (their reason is in the quarantine table)."""
    try:
        with os.scandir(landing / FAILED_DIR) as entries:
            return sorted(e.name for e in entries if e.is_file())
    except (FileNotFoundError, NotADirectoryError):
        return []
