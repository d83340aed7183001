"""The landing folder's layout, shared by the SDK's writer, the ingest and the landing sensor.

<landing>/<segment>.jsonl   complete segments, ready to ingest
<landing>/.tmp/             segments being written (renamed into place when complete)
<landing>/archive/          segments already in the lake (raw bytes kept for replay and audit)
"""

from __future__ import annotations

import os
from pathlib import Path

SEGMENT_SUFFIX = ".jsonl"
TMP_DIR = ".tmp"
ARCHIVE_DIR = "archive"


def list_segments(landing: Path) -> list[str]:
    """Complete landing segments, oldest name first."""
    try:
        with os.scandir(landing) as entries:
            return sorted(e.name for e in entries if e.name.endswith(SEGMENT_SUFFIX) and e.is_file())
    except FileNotFoundError:
        return []
