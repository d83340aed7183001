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
SQL_DIR = REPO_ROOT / "dbt_like_sql"


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


def task_config(**attributes):
    """A minimal valid task named `support_answer` (the task interaction() records) with one `python` judge `kb`;
    top-level attributes replace these defaults (the gate's metric names the first judge unless `gate` is given)."""
    from continuum_pipeline.task.config import parse_task_config

    data = {
        "name": "support_answer",
        "judges": [{"name": "kb", "kind": "python", "function": "continuum_pipeline_tests.judge_functions:plain_check"}],
        "golden_sets": [{"name": "golden", "file": "golden.jsonl"}],
        **attributes,
    }
    data.setdefault("gate", {"metrics": {"accuracy": {"judge": data["judges"][0]["name"]}}})
    return parse_task_config(data)


def run_task_sql(lake, task, sql_dir: Path = SQL_DIR) -> dict:
    """The shared SQL models, then the task's own copy of dbt_like_sql/task/ (what the task's assets run);
    the task models' results by name."""
    from continuum_pipeline.sql_models.project import SqlProject
    from continuum_pipeline.sql_models.runner import run_all, run_model
    from continuum_pipeline.task.sql import task_binding

    run_all(lake, SqlProject.load(sql_dir))
    project = SqlProject.load_task_models(sql_dir)
    binding = task_binding(task)
    return {name: run_model(lake, project, name, binding) for name in project.order()}


def label_task(lake, task, judges):
    """Label the task's interactions (its selection) into its own reward_labels table."""
    from continuum_pipeline.judge.labeling import label_interactions

    return label_interactions(lake, judges, labels_table=task.table("reward_labels"), where=task.selection_sql())
