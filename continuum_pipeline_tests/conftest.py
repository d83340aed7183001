"""Shared fixtures: every test gets its own CONTINUUM_HOME with a real SQLite Iceberg catalog."""

from __future__ import annotations

import os

# Two xdist workers on two cores: one torch/OpenMP thread each, or spinning threads oversubscribe the CPU.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from continuum_pipeline.capture import WRITER
from continuum_pipeline.capture.writer import WriterConfig
from continuum_pipeline.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for var in ("CONTINUUM_PROFILE", "CONTINUUM_CATALOG_URI", "CONTINUUM_WAREHOUSE", "CONTINUUM_LANDING_DIR",
                "CONTINUUM_MLFLOW_URI", "MLFLOW_TRACKING_URI", "CONTINUUM_NAMESPACE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CONTINUUM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home" / "dagster"))
    (tmp_path / "home" / "dagster").mkdir(parents=True)
    return Settings.from_env()


@pytest.fixture
def lake(settings: Settings):
    from continuum_pipeline.lake.catalog import Lake

    the_lake = Lake.from_settings(settings)
    the_lake.ensure_tables()
    return the_lake


@pytest.fixture
def sdk(settings: Settings):
    """The capture SDK pointed at this test's landing folder; restored afterwards."""
    previous = WRITER._config
    WRITER.configure(WriterConfig(settings.landing_dir, queue_size=100_000, segment_records=5_000, flush_seconds=0.05))
    WRITER.counts.clear()
    WRITER._warned.clear()
    yield WRITER
    WRITER.flush()
    if previous is not None:
        WRITER.configure(previous)


def interaction(i: int, **overrides) -> dict:
    """A valid landing interaction record."""
    ts = datetime(2026, 11, 20, 12, 0, tzinfo=UTC) + timedelta(minutes=i)
    record = {
        "v": 1, "kind": "interaction", "interaction_id": f"i{i:06d}", "ts": ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "task": "support_answer", "model": "m1", "consent": "granted", "status": "ok", "source": "sdk",
        "prompt": f"question {i}", "messages": [{"role": "user", "content": f"question {i}"}],
        "response": f"answer {i}", "latency_ms": float(i), "metadata": json.dumps({"i": i}),
    }
    record.update(overrides)
    return record


def feedback(i: int, interaction_id: str, **overrides) -> dict:
    record = {"v": 1, "kind": "feedback", "feedback_id": f"f{i:06d}", "interaction_id": interaction_id,
              "ts": "2026-11-20T13:00:00Z", "score": 1.0, "source": "sdk"}
    record.update(overrides)
    return record


def write_segment(landing: Path, name: str, lines: list[dict | bytes]) -> Path:
    landing.mkdir(parents=True, exist_ok=True)
    body = b"".join((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines)
    path = landing / f"{name}.jsonl"
    path.write_bytes(body)
    return path
