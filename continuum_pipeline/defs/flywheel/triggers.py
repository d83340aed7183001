"""When the task trains again: sample count, quality drop, error rate, a schedule — behind a cooldown."""

import json
from datetime import UTC, datetime, timedelta

import dagster as dg

from continuum_pipeline.defs.flywheel.keys import job_name, key
from continuum_pipeline.defs.metadata import latest_metadata
from continuum_pipeline.defs.resources import LakeResource
from continuum_pipeline.task.config import TaskConfig


def jobs(task: TaskConfig) -> tuple:
    shared = dg.AssetSelection.groups("sql")  # the staging models the task models read
    training = dg.define_asset_job(job_name(task, "training"), selection=dg.AssetSelection.key_prefixes([task.name])
                                   | shared, description=f"{task.name}: label, curate, train a candidate, gate it, "
                                                         "register it.")
    monitoring = dg.define_asset_job(
        job_name(task, "monitoring"),
        selection=dg.AssetSelection.assets(key(task, "reward_labels")) | dg.AssetSelection.groups(f"{task.name}_sql")
        | shared, description=f"{task.name}: refresh reward labels and the task's SQL models (quality_daily).")
    return training, monitoring


def _last_training(instance: dg.DagsterInstance, task: TaskConfig) -> datetime | None:
    event = instance.get_latest_materialization_event(key(task, "candidate_model"))
    return datetime.fromtimestamp(event.timestamp, UTC) if event else None


def cooldown(instance: dg.DagsterInstance, task: TaskConfig):
    from continuum_pipeline.evaluation.triggers import cooling_down

    return cooling_down(_last_training(instance, task), datetime.now(UTC),
                        timedelta(hours=task.triggers.cooldown_hours))


def daily_quality(lake: LakeResource, task: TaskConfig):
    from continuum_pipeline.evaluation.triggers import DailyQuality

    the_lake = lake.lake()
    table = task.table("quality_daily")
    if not the_lake.table_exists(table):
        return []
    return [DailyQuality(r["day"], r["interactions"], r["mean_reward"], r["negative_feedback_rate"],
                         r["interactions_with_feedback"]) for r in the_lake.read_arrow(table).to_pylist()]


def sample_count_decision(instance, lake: LakeResource, task: TaskConfig):
    """New dataset rows since the last training: the candidates curated by the very policy sft_dataset applies
    (consent, status, reward, held-out, dedup), compared with the dataset size the last training recorded."""
    from continuum_pipeline.curation.dataset import curate_sft
    from continuum_pipeline.defs.flywheel.curation import curation_policy
    from continuum_pipeline.evaluation.triggers import sample_count

    the_lake = lake.lake()
    table = task.table("sft_candidates")
    if not the_lake.table_exists(table):
        return sample_count(0, 0, task.triggers.min_new_samples)
    eligible = curate_sft(the_lake.read_arrow(table), curation_policy(the_lake, task)).table.num_rows
    before = int(latest_metadata(instance, key(task, "candidate_model")).get("eligible_rows", 0) or 0)
    return sample_count(eligible, before, task.triggers.min_new_samples)


def quality_drop_decision(lake: LakeResource, task: TaskConfig):
    from continuum_pipeline.evaluation.triggers import quality_drop

    return quality_drop(daily_quality(lake, task), task.triggers.window_days, task.triggers.quality_drop)


def error_rate_decision(lake: LakeResource, task: TaskConfig):
    from continuum_pipeline.evaluation.triggers import error_rate

    return error_rate(daily_quality(lake, task), task.triggers.max_negative_rate)


def _request(context, trigger: str, decision) -> dg.RunRequest | dg.SkipReason:
    cursor = json.loads(context.cursor) if context.cursor else {}
    if not decision.fire:
        return dg.SkipReason(decision.reason)
    if cursor.get("last_key") == decision.key:
        return dg.SkipReason(f"already requested a training for {decision.key}")
    context.update_cursor(json.dumps({"last_key": decision.key, "at": datetime.now(UTC).isoformat()}))
    return dg.RunRequest(run_key=f"{trigger}:{decision.key}",
                         tags={"continuum/task": trigger.split(":")[0], "continuum/trigger": trigger,
                               "continuum/reason": decision.reason[:200]})


def sensors(task: TaskConfig, training_job) -> list[dg.SensorDefinition]:
    def make(kind: str, description: str, decide) -> dg.SensorDefinition:
        name = f"{task.name}_{kind}_sensor"

        @dg.sensor(name=name, job=training_job, minimum_interval_seconds=300, description=f"{task.name}: {description}",
                   default_status=dg.DefaultSensorStatus.RUNNING)
        def _evaluate(context: dg.SensorEvaluationContext, lake: LakeResource):
            cooling = cooldown(context.instance, task)
            if cooling.fire:
                return dg.SkipReason(cooling.reason)
            return _request(context, f"{task.name}:{kind}", decide(context.instance, lake))

        return _evaluate

    return [
        make("sample_count", f"trains when {task.triggers.min_new_samples} new dataset-eligible interactions arrived.",
             lambda instance, lake: sample_count_decision(instance, lake, task)),
        make("quality_drop", f"trains when the mean reward falls {task.triggers.quality_drop:.0%} below its "
                             f"{task.triggers.window_days}-day trailing mean.",
             lambda instance, lake: quality_drop_decision(lake, task)),
        make("error_rate", f"trains when the negative-feedback rate passes {task.triggers.max_negative_rate:.0%}.",
             lambda instance, lake: error_rate_decision(lake, task)),
    ]


def schedules(task: TaskConfig, training_job) -> list[dg.ScheduleDefinition]:
    if not task.triggers.schedule:
        return []

    @dg.schedule(name=f"{task.name}_periodic_training", job=training_job, cron_schedule=task.triggers.schedule,
                 default_status=dg.DefaultScheduleStatus.RUNNING,
                 description=f"{task.name}: retrain on `{task.triggers.schedule}`, unless a training ran within "
                             "the cooldown.")
    def _periodic(context: dg.ScheduleEvaluationContext):
        cooling = cooldown(context.instance, task)
        if cooling.fire:
            return dg.SkipReason(cooling.reason)
        return dg.RunRequest(run_key=f"{task.name}:periodic:{context.scheduled_execution_time:%Y-%m-%dT%H:%M}",
                             tags={"continuum/task": task.name, "continuum/trigger": "periodic_training"})

    return [_periodic]
