"""Training triggers fire once per cause and request one training at a time: the decisions on hand-made rows, the
sensors on a real lake, MLflow registry and Dagster instance (through the sensor daemon's own tick function), and
after a cycle-2-like state (v2 champion, traffic only from v1) nothing retrains on unchanged data, however long the
sensors and the schedule keep evaluating."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import dagster as dg
import pytest

from continuum_pipeline import runs
from continuum_pipeline.curation.dataset import curate_sft
from continuum_pipeline.defs.flywheel import triggers
from continuum_pipeline.defs.flywheel.curation import curation_policy
from continuum_pipeline.defs.loggers import compact_console
from continuum_pipeline.defs.resources import resources_from_settings
from continuum_pipeline.evaluation.triggers import (
    DailyQuality,
    error_rate,
    new_data,
    quality_drop,
    sample_count,
)
from continuum_pipeline.lake.ingest import ingest_landing
from continuum_pipeline.registry import lineage
from continuum_pipeline.registry.models import get_version

from .conftest import feedback, interaction, label_task, run_task_sql, task_config, write_segment
from .test_forget import _register

JUDGES = [{"name": "kb", "kind": "python", "function": "continuum_pipeline_tests.test_triggers:right_answer"}]
TRIGGERS = {"min_new_samples": 20, "quality_drop": 0.15, "window_days": 3, "max_negative_rate": 0.3,
            "cooldown_hours": 0, "schedule": "0 4 * * 1"}
TASK = task_config(judges=JUDGES, triggers=TRIGGERS)
KINDS = ("sample_count", "quality_drop", "error_rate")

LOGGERS = {"compact_console": compact_console}  # the training job's default run config names it


@pytest.fixture
def home_instance(settings):
    """The home's instance (its run queue holds what a tick requests), entered: a code location loaded in this
    process reads its state storage from the instance in context, not from one a previous test left behind."""
    with dg.DagsterInstance.get() as instance:
        yield instance


# --- the decisions, on hand-made rows ---------------------------------------------------------------------------

def row(d: int, reward: float, version: str = "", negative: float | None = None, n: int = 100) -> DailyQuality:
    return DailyQuality(date(2026, 11, d), n, reward, negative, n if negative is not None else 0, version)


def test_quality_and_errors_count_only_the_days_the_champion_served():
    # the base served days 1-3 well, v1 days 4-6 and then badly; v2 has served nothing yet
    rows = [row(d, 0.9) for d in (1, 2, 3)] + [row(4, 0.9, "1"), row(5, 0.88, "1"), row(6, 0.5, "1", negative=0.5)]
    dropped = quality_drop(rows, 3, 0.15, champion="1")
    assert dropped.fire and dropped.key == "quality-drop:v1:2026-11-06" and dropped.reason.startswith("v1:")
    assert error_rate(rows, 0.3, champion="1").key == "error-rate:v1:2026-11-06"
    for decide in (lambda: quality_drop(rows, 3, 0.15, champion="2"), lambda: error_rate(rows, 0.3, champion="2")):
        quiet = decide()
        assert not quiet.fire and quiet.reason == "champion v2 has served no traffic yet"
    # a version tagged "v1" by an app's own serving counts as v1 too; the base's days never count for v1
    assert quality_drop([row(4, 0.9, "v1"), row(5, 0.5, "v1")], 3, 0.15, champion="1").fire
    assert not quality_drop([row(1, 0.9), row(2, 0.5), row(5, 0.9, "1")], 3, 0.15, champion="1").fire
    # before any champion every row counts, under the key `base`
    assert quality_drop([row(1, 0.9), row(2, 0.5, "7")], 3, 0.15).key == "quality-drop:base:2026-11-02"


def test_sample_count_and_the_schedule_count_only_data_the_champion_did_not_train_on():
    assert sample_count(360, 350, 20, champion="2").reason.startswith("10 new dataset-eligible interactions since "
                                                                      "champion v2's training")
    fired = sample_count(400, 350, 20, champion="2")
    assert fired.fire and fired.key == "samples:v2:400"
    assert sample_count(40, 0, 20).key == "samples:base:40"
    unchanged = new_data(350, 350, champion="2")
    assert not unchanged.fire and "nothing retrains on unchanged data" in unchanged.reason
    assert new_data(351, 350, champion="2").key == "periodic:v2:351"


# --- a lake, a registry, an instance ----------------------------------------------------------------------------

def fill(lake, settings, days: dict[int, tuple[float, str | None, float]], per_day: int = 40, segment: str = "a"):
    """Interactions on days of November: (share of right answers, the version that served, share of negative
    feedback); half the rest rated positive."""
    recs = []
    for d, (right, version, negative) in days.items():
        for k in range(per_day):
            i = d * 1000 + k
            recs.append(interaction(i, ts=f"2026-11-{d:02d}T10:{k % 60:02d}:00Z", model_version=version,
                                    metadata='{"right": %s}' % ("true" if k < right * per_day else "false")))
            if k >= per_day - negative * per_day:
                recs.append(feedback(i, f"i{i:06d}", score=0.0))
            elif k < per_day // 2:
                recs.append(feedback(i, f"i{i:06d}", score=1.0))
    write_segment(settings.landing_dir, f"20261130T000000Z-{segment}", recs)
    ingest_landing(lake, settings.landing_dir)
    label_task(lake, TASK, [spec.build() for spec in TASK.judges])
    run_task_sql(lake, TASK)


def eligible_ids(lake) -> list[str]:
    candidates = lake.read_arrow(TASK.table("sft_candidates"))
    return curate_sft(candidates, curation_policy(lake, TASK)).table["interaction_id"].to_pylist()


def register(settings, lake, ids: list[str], champion: bool = True) -> str:
    """A registered version that trained on `ids` (a dataset snapshot, its lineage rows), as registration leaves it."""
    import pyarrow as pa

    snapshot = lake.replace_table(TASK.table("sft_dataset"), pa.table({
        "interaction_id": pa.array(ids, pa.string()), "split": pa.array(["train"] * len(ids), pa.string())}))
    version = _register(settings.mlflow_uri, TASK.registered_model_name,
                        {"task": TASK.name, "dataset_snapshot_id": str(snapshot), "eligible_rows": str(len(ids))},
                        champion=champion)
    lineage.record_version_lineage(lake, settings.mlflow_uri, get_version(settings.mlflow_uri,
                                                                          TASK.registered_model_name, version))
    return version


def evaluate(settings, instance, kind: str, cursor: str | None = None):
    resources = resources_from_settings(settings)
    job, _ = triggers.jobs(TASK)
    (sensor,) = [s for s in triggers.sensors(TASK, job) if s.name == f"{TASK.name}_{kind}_sensor"]
    context = dg.build_sensor_context(instance=instance, cursor=cursor,
                                      resources={"lake": resources["lake"], "mlflow": resources["mlflow"]})
    return sensor(context), context.cursor


def evaluate_schedule(settings, instance, at: datetime):
    resources = resources_from_settings(settings)
    (schedule,) = triggers.schedules(TASK, triggers.jobs(TASK)[0])
    return schedule(dg.build_schedule_context(instance=instance, scheduled_execution_time=at,
                                              resources={"lake": resources["lake"], "mlflow": resources["mlflow"]}))


def v1_serving(settings, lake):
    """The base served days 1-3 (v1 trained on those); v1 served days 4-6, badly on day 6."""
    fill(lake, settings, {1: (0.9, None, 0.0), 2: (0.9, None, 0.0), 3: (0.9, None, 0.0)}, segment="a")
    v1_data = eligible_ids(lake)
    v1 = register(settings, lake, v1_data)
    fill(lake, settings, {4: (0.9, v1, 0.0), 5: (0.9, v1, 0.0), 6: (0.3, v1, 0.6)}, segment="b")
    return v1, v1_data


def test_sensors_read_the_champions_traffic_and_the_data_it_did_not_train_on(settings, lake):
    v1, v1_data = v1_serving(settings, lake)
    new = [i for i in eligible_ids(lake) if i not in set(v1_data)]
    assert v1_data and new
    with dg.instance_for_test() as instance:
        drop, cursor = evaluate(settings, instance, "quality_drop")
        assert isinstance(drop, dg.RunRequest) and drop.run_key == f"{TASK.name}:quality_drop:quality-drop:v{v1}:2026-11-06"
        assert drop.tags["continuum/cause"] == f"quality-drop:v{v1}:2026-11-06"
        assert json.loads(cursor)["last_key"] == f"quality-drop:v{v1}:2026-11-06"
        again, _ = evaluate(settings, instance, "quality_drop", cursor)
        assert isinstance(again, dg.SkipReason) and "already requested" in again.skip_message
        samples, _ = evaluate(settings, instance, "sample_count")
        assert isinstance(samples, dg.RunRequest)
        assert samples.tags["continuum/reason"].startswith(f"{len(new)} new dataset-eligible interactions since "
                                                           f"champion v{v1}'s training")


def test_one_tick_of_every_trigger_makes_one_training_with_every_reason(settings, lake, monkeypatch, tmp_path,
                                                                      home_instance):
    task_dir = tmp_path / "task"
    task_dir.mkdir()
    (task_dir / "defs.yaml").write_text(json.dumps(TASK.model_dump(mode="json", exclude={"source_dir"})))
    monkeypatch.setenv("CONTINUUM_TASKS", str(task_dir))
    v1, _ = v1_serving(settings, lake)
    instance = home_instance
    names = [f"{TASK.name}_{kind}_sensor" for kind in ("quality_drop", "error_rate", "sample_count")]
    first, second, third = runs.tick_sensors(instance, names)
    assert first.status == "SUCCESS" and len(first.run_ids) == 1, first
    run = instance.get_run_by_id(first.run_ids[0])
    assert run.status == dg.DagsterRunStatus.QUEUED and run.tags["continuum/trigger"] == f"{TASK.name}:quality_drop"
    for tick in (second, third):  # their conditions hold too, and the queued training takes their reasons
        assert tick.status == "SKIPPED" and f"training run {run.run_id[:8]} is already QUEUED" in tick.reason, tick
    tags = instance.get_run_by_id(run.run_id).tags
    assert tags["continuum/also/error_rate"].startswith(f"v{v1}: negative-feedback rate")
    assert "new dataset-eligible interactions" in tags["continuum/also/sample_count"]
    assert len(instance.get_runs(dg.RunsFilter(job_name=f"{TASK.name}_training_job"))) == 1

    # the next ticks: the causes were acted on; and the queued training counts for the cooldown
    for tick in runs.tick_sensors(instance, names, due=True):
        assert tick.status == "SKIPPED" and "already requested" in tick.reason, tick
    assert len(instance.get_runs(dg.RunsFilter(job_name=f"{TASK.name}_training_job"))) == 1


def test_an_in_flight_training_and_the_cooldown_count_from_the_run_not_the_candidate(settings, lake):
    fill(lake, settings, {1: (0.9, None, 0.0), 2: (0.9, None, 0.0), 3: (0.3, None, 0.0)})
    cooling = task_config(judges=JUDGES, triggers={**TRIGGERS, "cooldown_hours": 6})
    with dg.instance_for_test() as instance:
        defs = dg.Definitions(jobs=[triggers.jobs(cooling)[0]], loggers=LOGGERS)
        run = instance.create_run_for_job(defs.resolve_job_def(f"{TASK.name}_training_job"),
                                          status=dg.DagsterRunStatus.STARTED)
        joined, cursor = evaluate(settings, instance, "quality_drop")
        assert isinstance(joined, dg.SkipReason) and "is already STARTED" in joined.skip_message
        assert instance.get_run_by_id(run.run_id).tags["continuum/also/quality_drop"].startswith("base: mean reward")
        assert json.loads(cursor)["joined"] == run.run_id
        instance.report_run_canceled(run)  # it ended without a candidate: the cooldown still counts from it
        last = triggers.last_training(instance, cooling)
        assert last is not None and datetime.now(UTC) - last < timedelta(minutes=5)
        assert triggers.cooldown(instance, cooling).fire


def test_after_cycle_two_nothing_retrains_on_unchanged_data(settings, lake, monkeypatch, tmp_path, home_instance):
    """v2 trained on everything eligible and is champion; the only traffic is v1's, whose drop and error rate
    caused cycle 2. No cooldown at all (cooldown_hours 0: as if it had long passed): every training sensor and the
    schedule evaluate for two simulated days, hourly, then through the daemon's tick function: no training."""
    task_dir = tmp_path / "task"
    task_dir.mkdir()
    (task_dir / "defs.yaml").write_text(json.dumps(TASK.model_dump(mode="json", exclude={"source_dir"})))
    monkeypatch.setenv("CONTINUUM_TASKS", str(task_dir))
    v1_serving(settings, lake)
    v2 = register(settings, lake, eligible_ids(lake))  # cycle 2's candidate, promoted
    assert get_version(settings.mlflow_uri, TASK.registered_model_name, v2).aliases == ("champion",)
    instance = home_instance
    cursors: dict[str, str | None] = {}
    start = datetime(2026, 11, 30, 0, tzinfo=UTC)
    for hour in range(48):
        for kind in KINDS:
            result, cursors[kind] = evaluate(settings, instance, kind, cursors.get(kind))
            assert isinstance(result, dg.SkipReason), (hour, kind, result)
        assert isinstance(evaluate_schedule(settings, instance, start + timedelta(hours=hour)), dg.SkipReason)
    reasons = {kind: evaluate(settings, instance, kind)[0].skip_message for kind in KINDS}
    assert reasons["quality_drop"] == reasons["error_rate"] == f"champion v{v2} has served no traffic yet"
    assert reasons["sample_count"].startswith(f"0 new dataset-eligible interactions since champion v{v2}'s training")
    assert "nothing retrains on unchanged data" in evaluate_schedule(settings, instance, start).skip_message

    names = [f"{TASK.name}_{kind}_sensor" for kind in KINDS] + [f"{TASK.name}_retrain_on_forget_sensor"]
    for _ in range(3):
        for tick in runs.tick_sensors(instance, names, due=True):
            assert tick.status in ("SKIPPED", "NOT_EVALUATED") and not tick.run_ids, tick
    assert instance.get_runs(dg.RunsFilter(job_name=f"{TASK.name}_training_job")) == []


def test_the_forget_sensor_waits_for_a_training_that_read_the_deleted_data(settings, lake):
    from continuum_pipeline.defs.privacy import forget_job, retrain_on_forget_sensor

    from .test_forget import ALICE, build_world

    world = build_world(settings, lake)
    task = world["task"].model_copy(update={"privacy": world["task"].privacy.model_copy(
        update={"retrain_on_forget": True})})
    resources = resources_from_settings(settings)
    training_job = triggers.jobs(task)[0]
    sensor = retrain_on_forget_sensor(task, training_job)
    with dg.instance_for_test() as instance:
        before = instance.create_run_for_job(dg.Definitions(jobs=[training_job], loggers=LOGGERS).resolve_job_def(training_job.name),
                                             status=dg.DagsterRunStatus.STARTED)  # it read the lake before the deletion
        assert forget_job.execute_in_process(instance=instance, resources=resources, run_config={
            "ops": {"forget": {"config": {"users": [ALICE]}}}}).success

        def evaluate(cursor=None):
            context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"lake": resources["lake"]})
            return sensor(context), context.cursor

        waiting, cursor = evaluate()
        assert isinstance(waiting, dg.SkipReason) and f"waiting for training run {before.run_id[:8]}" in waiting.skip_message
        assert cursor is None  # the receipt is not consumed: it is acted on once that training is over
        assert not any(k.startswith("continuum/also/") for k in instance.get_run_by_id(before.run_id).tags)
        instance.report_run_failed(before)
        request, cursor = evaluate()
        assert isinstance(request, dg.RunRequest) and request.run_key.startswith(f"{task.name}:forget:deletion:")
        again, _ = evaluate(cursor)
        assert isinstance(again, dg.SkipReason) and "no new deletion receipt" in again.skip_message


def test_what_counts_as_seen_without_lineage_rows_and_after_a_rejected_candidate(settings, lake):
    fill(lake, settings, {1: (1.0, None, 0.0), 2: (1.0, None, 0.0)})
    eligible = len(eligible_ids(lake))
    resources = resources_from_settings(settings)
    # registered before the lineage table existed: only its `eligible_rows` tag says how much it trained on
    version = _register(settings.mlflow_uri, TASK.registered_model_name, {"task": TASK.name, "eligible_rows": "25"},
                        champion=True)
    ref = get_version(settings.mlflow_uri, TASK.registered_model_name, version)
    with dg.instance_for_test() as instance:
        assert triggers.eligible_counts(instance, resources["lake"], TASK, ref) == (eligible, 25)
        # a training from this champion whose candidate was rejected saw its dataset: that is not new either
        instance.report_runless_asset_event(dg.AssetMaterialization(
            dg.AssetKey([TASK.name, "candidate_model"]), metadata={"eligible_rows": eligible - 3,
                                                                   "parent_version": version}))
        assert triggers.eligible_counts(instance, resources["lake"], TASK, ref) == (eligible, eligible - 3)
        decision, _ = evaluate(settings, instance, "sample_count")
        assert isinstance(decision, dg.SkipReason) and decision.skip_message.startswith("3 new")
        # a candidate from another parent (the version before) says nothing about this champion's data
        instance.report_runless_asset_event(dg.AssetMaterialization(
            dg.AssetKey([TASK.name, "candidate_model"]), metadata={"eligible_rows": eligible, "parent_version": "base"}))
        assert triggers.eligible_counts(instance, resources["lake"], TASK, ref) == (eligible, 25)
