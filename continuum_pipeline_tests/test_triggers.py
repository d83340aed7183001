"""A task's training sensors on a real lake and Dagster instance: each fires and skips when it should, reads only
its own task's tables and trainings, and names the task in its run key and tags."""

from __future__ import annotations

import dagster as dg

from continuum_pipeline.defs.flywheel import triggers
from continuum_pipeline.defs.resources import resources_from_settings
from continuum_pipeline.lake.ingest import ingest_landing

from .conftest import feedback, interaction, label_task, run_task_sql, task_config, write_segment

JUDGES = [{"name": "kb", "kind": "python", "function": "continuum_pipeline_tests.test_triggers:right_answer"}]


def right_answer(item):
    """The task's `python` judge: the interaction's metadata says whether the answer was right."""
    return (1.0 if item.metadata["right"] else 0.0), ""


def support_task(**triggers_settings):
    return task_config(judges=JUDGES, triggers={"min_new_samples": 200, "quality_drop": 0.15, "window_days": 3,
                                                "max_negative_rate": 0.3, "cooldown_hours": 6, **triggers_settings})


TASK = support_task()


def fill(lake, settings, days: dict[int, float], per_day: int = 40, negative_share: float = 0.0, task=TASK):
    """Interactions on given days of November with a share of right answers, plus some negative feedback."""
    recs = []
    for d, right in days.items():
        for k in range(per_day):
            i = d * 1000 + k
            recs.append(interaction(i, ts=f"2026-11-{d:02d}T10:{k % 60:02d}:00Z",
                                    metadata='{"right": %s}' % ("true" if k < right * per_day else "false")))
            if k < negative_share * per_day:
                recs.append(feedback(i, f"i{i:06d}", score=0.0))
            elif k < per_day // 2:
                recs.append(feedback(i, f"i{i:06d}", score=1.0))
    write_segment(settings.landing_dir, "20261130T000000Z-t", recs)
    ingest_landing(lake, settings.landing_dir)
    label_task(lake, task, [spec.build() for spec in task.judges])
    run_task_sql(lake, task)


def sensor(task, kind: str) -> dg.SensorDefinition:
    job, _ = triggers.jobs(task)
    (found,) = [s for s in triggers.sensors(task, job) if s.name == f"{task.name}_{kind}_sensor"]
    return found


def evaluate(task, kind: str, settings, instance, cursor=None):
    resources = resources_from_settings(settings)
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor,
                                  resources={"lake": resources["lake"], "mlflow": resources["mlflow"]})
    return sensor(task, kind)(ctx), ctx.cursor


def trained(instance, task, eligible_rows: int) -> None:
    """What a training run leaves behind: a materialization of the task's candidate model."""
    instance.report_runless_asset_event(dg.AssetMaterialization(dg.AssetKey([task.name, "candidate_model"]),
                                                                metadata={"eligible_rows": eligible_rows}))


def test_quality_drop_fires_once_and_respects_the_cooldown(lake, settings):
    fill(lake, settings, {1: 0.9, 2: 0.9, 3: 0.9, 4: 0.4})
    with dg.instance_for_test() as instance:
        first, cursor = evaluate(TASK, "quality_drop", settings, instance)
        assert isinstance(first, dg.RunRequest)
        assert first.run_key == "support_answer:quality_drop:quality-drop:base:2026-11-04"
        assert first.tags["continuum/trigger"] == "support_answer:quality_drop" and "drop" in first.tags["continuum/reason"]
        assert first.tags["continuum/task"] == "support_answer"
        again, _ = evaluate(TASK, "quality_drop", settings, instance, cursor)
        assert isinstance(again, dg.SkipReason) and "already requested" in again.skip_message

        trained(instance, task_config(name="other_task"), 0)  # another task's training: no cooldown here
        still, _ = evaluate(TASK, "quality_drop", settings, instance)
        assert isinstance(still, dg.RunRequest)
        trained(instance, TASK, 0)
        cooling, _ = evaluate(TASK, "quality_drop", settings, instance)
        assert isinstance(cooling, dg.SkipReason) and "cooling down" in cooling.skip_message

        fires, _ = evaluate(support_task(cooldown_hours=0), "quality_drop", settings, instance)
        assert isinstance(fires, dg.RunRequest)


def test_quality_drop_and_error_rate_stay_quiet_on_a_steady_lake(lake, settings):
    fill(lake, settings, {1: 0.9, 2: 0.9, 3: 0.88})
    with dg.instance_for_test() as instance:
        quiet, _ = evaluate(TASK, "quality_drop", settings, instance)
        assert isinstance(quiet, dg.SkipReason) and "drop" in quiet.skip_message
        calm, _ = evaluate(TASK, "error_rate", settings, instance)
        assert isinstance(calm, dg.SkipReason) and "negative-feedback rate" in calm.skip_message


def test_error_rate_fires_on_negative_feedback(lake, settings):
    fill(lake, settings, {1: 0.9, 2: 0.9}, negative_share=0.45)
    with dg.instance_for_test() as instance:
        fired, _ = evaluate(TASK, "error_rate", settings, instance)
        assert isinstance(fired, dg.RunRequest) and fired.run_key == "support_answer:error_rate:error-rate:base:2026-11-02"
        # the threshold is the task's: 18 of the 20 rated answers a day are negative (90%), under a 95% threshold
        calm, _ = evaluate(support_task(max_negative_rate=0.95), "error_rate", settings, instance)
        assert isinstance(calm, dg.SkipReason) and "negative-feedback rate" in calm.skip_message


def test_sample_count_counts_new_eligible_interactions_since_the_last_training(lake, settings):
    task = support_task(min_new_samples=30, cooldown_hours=0)
    fill(lake, settings, {1: 1.0}, per_day=40, task=task)  # 40 eligible (right answers, consent granted, ok)
    with dg.instance_for_test() as instance:
        fired, _ = evaluate(task, "sample_count", settings, instance)
        assert isinstance(fired, dg.RunRequest) and "40 new" in fired.tags["continuum/reason"]
        trained(instance, task, 20)
        skipped, _ = evaluate(task, "sample_count", settings, instance)
        assert isinstance(skipped, dg.SkipReason) and "20 new" in skipped.skip_message


def test_sample_count_follows_the_tasks_curation_settings(lake, settings):
    # 10 right and rated 1.0 (reward 1.0); 10 wrong but rated 1.0 (0.7·0 + 0.3·1 = 0.3); 20 wrong, unrated (0.0)
    fill(lake, settings, {1: 0.25}, per_day=40)
    with dg.instance_for_test() as instance:
        for min_reward, expected in ((0.8, 10), (0.25, 20), (0.0, 40)):
            task = task_config(judges=JUDGES, curation={"min_reward": min_reward},
                               triggers={"min_new_samples": 1000, "cooldown_hours": 0})
            skipped, _ = evaluate(task, "sample_count", settings, instance)
            assert isinstance(skipped, dg.SkipReason) and f"{expected} new" in skipped.skip_message, min_reward


def test_no_sensor_fires_before_the_tasks_tables_exist(lake, settings):
    with dg.instance_for_test() as instance:
        for kind in ("sample_count", "quality_drop", "error_rate"):
            result, _ = evaluate(TASK, kind, settings, instance)
            assert isinstance(result, dg.SkipReason), kind
