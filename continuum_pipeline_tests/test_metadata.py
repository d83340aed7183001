"""Metadata a person can use: links to MLflow pages when MLflow is a server (and only then), folders as paths,
counts as ints, one timing field per meaning, and a described column schema on every table asset."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request

import dagster as dg
import pyarrow as pa
import pytest

from continuum_pipeline.definitions import build_definitions
from continuum_pipeline.defs.resources import resources_from_settings
from continuum_pipeline.registry import models
from continuum_pipeline.settings import Settings

from .conftest import interaction, task_config, write_segment

TIMING = ("seconds", "runtime", "duration")


@pytest.fixture
def mlflow_server(tmp_path):
    """A real MLflow tracking server on 127.0.0.1 (SQLite backend): its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (tmp_path / "mlflow-server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
         "--artifacts-destination", str(tmp_path / "mlflow-artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    log_text = (tmp_path / "mlflow-server.log").read_text()[-2000:]
                    raise RuntimeError(f"mlflow server did not start: {log_text}") from None
                time.sleep(1)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_mlflow_links_only_for_a_tracking_server():
    assert models.version_url("http://mlflow.internal:5000/", "continuum-support-answer", 3) == \
        "http://mlflow.internal:5000/#/models/continuum-support-answer/versions/3"
    for local in ("sqlite:////tmp/mlflow.db", "file:///tmp/mlruns", "/tmp/mlruns"):
        assert models.version_url(local, "m", 1) is None and models.run_url(local, "abc") is None


def test_candidate_and_registered_model_metadata_on_an_mlflow_server(settings, lake, tmp_path, monkeypatch,
                                                                     mlflow_server):
    """The candidate trains for real (tiny model, 2 steps, through Pipes) against an MLflow server; its metadata and
    the registered version's link to the MLflow pages, name folders as paths, count in ints and time once."""
    pytest.importorskip("trl")
    from continuum_pipeline.curation.dataset import SFT_DATASET
    from continuum_pipeline.defs.flywheel.keys import key
    from continuum_pipeline.defs.flywheel.registry import registered_model
    from continuum_pipeline.defs.flywheel.training import base_model, candidate_model
    from continuum_pipeline.training import base_model as bm
    from continuum_pipeline_tests.test_training import TINY, VOCAB, toy_conversations

    monkeypatch.setenv("CONTINUUM_MLFLOW_URI", mlflow_server)
    server_settings = Settings.from_env()
    base = bm.build_base_model(toy_conversations(8), VOCAB, tmp_path / "base", TINY)
    task = task_config(base_model={"id": str(base)})
    conversations = toy_conversations(6)
    lake.replace_table(task.table("sft_dataset"), pa.Table.from_pylist(
        [{"interaction_id": f"i{i}", "split": "validation" if i == 5 else "train", "messages": c, "reward": 1.0,
          "target_source": "response", "content_hash": str(i), "model": "m", "ts": None}
         for i, c in enumerate(conversations)], schema=SFT_DATASET))
    resources = resources_from_settings(server_settings)
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [base_model(task), candidate_model(task)], instance=instance, resources=resources,
            run_config={"ops": {"support_answer__candidate_model": {"config": {"max_steps": 2, "threads": 1}}}})
        assert result.success
        base_meta = result.asset_materializations_for_node("support_answer__base_model")[0].metadata
        assert isinstance(base_meta["path"], dg.PathMetadataValue) and base_meta["path"].value == str(base)
        meta = result.asset_materializations_for_node("support_answer__candidate_model")[0].metadata
        for folder in ("merged_dir", "adapter_dir", "run_dir", "start_model"):
            assert isinstance(meta[folder], dg.PathMetadataValue), folder
        assert meta["run_dir"].value.endswith(result.run_id)
        assert isinstance(meta["eligible_rows"], dg.IntMetadataValue) and meta["eligible_rows"].value == 6
        assert isinstance(meta["train_rows"], dg.IntMetadataValue) and meta["train_rows"].value == 5
        # one field per meaning: the trainer's loop, and the whole out-of-process job
        timings = sorted(k for k in meta if any(t in k for t in TIMING))
        assert timings == ["job_seconds", "train_seconds"]
        assert 0 < meta["train_seconds"].value <= meta["job_seconds"].value
        run_id = meta["mlflow_run_id"].value
        experiment_id = models.client(mlflow_server).get_run(run_id).info.experiment_id
        assert meta["mlflow_run_url"].value == f"{mlflow_server}/#/experiments/{experiment_id}/runs/{run_id}"
        assert isinstance(meta["mlflow_run_url"], dg.UrlMetadataValue)

        registered = dg.materialize([registered_model(task)], instance=instance, resources=resources)
        assert registered.success
        [reg] = [m.metadata for m in registered.asset_materializations_for_node("support_answer__registered_model")
                 if m.asset_key == key(task, "registered_model")]  # the step also records v1 as champion
        assert reg["mlflow_version_url"].value == (f"{mlflow_server}/#/models/{task.registered_model_name}/versions/"
                                                   f"{reg['version'].value}")
        assert reg["mlflow_run_url"].value == meta["mlflow_run_url"].value
        version = models.get_version(mlflow_server, task.registered_model_name, reg["version"].value)
        assert version.tags["continuum.eligible_rows"] == "6"  # MLflow's rule: tags are strings
        champion = instance.get_latest_materialization_event(key(task, "champion")).asset_materialization.metadata
        assert champion["mlflow_version_url"].value == reg["mlflow_version_url"].value


def test_every_table_asset_has_a_described_column_schema(settings):
    """Ingest, the SQL models and the task's monitoring job materialize; every Iceberg table asset then has a
    column schema (from its materialization, or declared from the lake contract before its first one) in
    which every column is described."""
    write_segment(settings.landing_dir, "20261121T000000Z-a", [interaction(i, cost_usd=0.001) for i in range(5)])
    defs = build_definitions(settings)
    graph = defs.resolve_asset_graph()
    with dg.instance_for_test() as instance:
        for job in ("ingest_job", "sql_models_job", "support_answer_monitoring_job"):
            assert defs.resolve_job_def(job).execute_in_process(instance=instance).success
        tables = [k for k in graph.get_all_asset_keys() if "iceberg" in graph.get(k).kinds]
        assert {"interactions", "quarantine", "quality_daily", "support_answer/reward_labels",
                "support_answer/learning_curve", "support_answer/golden/golden"} <= {k.to_user_string() for k in tables}
        materialized, declared = 0, 0
        for k in tables:
            event = instance.get_latest_materialization_event(k)
            reported = event.asset_materialization.metadata.get("dagster/column_schema") if event else None
            materialized += reported is not None
            declared += reported is None
            schema = reported.value if reported is not None else graph.get(k).metadata.get("dagster/column_schema")
            assert schema is not None and schema.columns, k.to_user_string()
            undescribed = [c.name for c in schema.columns if not c.description]
            assert not undescribed, f"{k.to_user_string()}: no description for {undescribed}"
        assert materialized >= 10  # ingest, shared and task SQL models report theirs
        assert declared >= 4  # golden set, dataset, embeddings, learning curve: declared before they run
        quality = instance.get_latest_materialization_event(dg.AssetKey(["support_answer", "quality_daily"]))
        columns = {c.name: c.description for c in quality.asset_materialization.metadata["dagster/column_schema"].value.columns}
        assert "milliseconds" in columns["latency_p50_ms"] and "US dollars" in columns["cost_usd"]
