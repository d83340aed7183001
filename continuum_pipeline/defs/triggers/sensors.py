"""When the flywheel trains again: sample count, quality drop, error rate, a weekly schedule — and a cooldown."""

import json
from datetime import UTC, datetime, timedelta

import dagster as dg

from continuum_pipeline.defs.metadata import latest_metadata
from continuum_pipeline.defs.resources import FlywheelResource, LakeResource

TRAINING_SELECTION = dg.AssetSelection.assets("reward_labels", "sft_dataset", "golden_set", "base_model",
                                              "candidate_model", "registered_model") | dg.AssetSelection.groups("sql")
training_job = dg.define_asset_job("training_job", selection=TRAINING_SELECTION,
                                   description="Label, curate, train a candidate, gate it, register it.")
monitoring_job = dg.define_asset_job("monitoring_job", selection=dg.AssetSelection.assets("reward_labels")
                                     | dg.AssetSelection.groups("sql"),
                                     description="Refresh reward labels and the SQL models (quality_daily).")


def _last_training(instance: dg.DagsterInstance) -> datetime | None:
    event = instance.get_latest_materialization_event(dg.AssetKey("candidate_model"))
    return datetime.fromtimestamp(event.timestamp, UTC) if event else None


def _cooldown(instance, flywheel: FlywheelResource):
    from continuum_pipeline.evaluation.triggers import cooling_down

    return cooling_down(_last_training(instance), datetime.now(UTC), timedelta(hours=flywheel.cooldown_hours))


def _daily_quality(lake: LakeResource):
    from continuum_pipeline.evaluation.triggers import DailyQuality

    the_lake = lake.lake()
    if not the_lake.table_exists("quality_daily"):
        return []
    return [DailyQuality(r["day"], r["interactions"], r["mean_reward"], r["negative_feedback_rate"],
                         r["interactions_with_feedback"]) for r in the_lake.read_arrow("quality_daily").to_pylist()]


def _request(context, trigger: str, decision) -> dg.RunRequest | dg.SkipReason:
    cursor = json.loads(context.cursor) if context.cursor else {}
    if not decision.fire:
        return dg.SkipReason(decision.reason)
    if cursor.get("last_key") == decision.key:
        return dg.SkipReason(f"already requested a training for {decision.key}")
    context.update_cursor(json.dumps({"last_key": decision.key, "at": datetime.now(UTC).isoformat()}))
    return dg.RunRequest(run_key=f"{trigger}:{decision.key}",
                         tags={"continuum/trigger": trigger, "continuum/reason": decision.reason[:200]})


def sample_count_decision(instance, lake: LakeResource, flywheel: FlywheelResource):
    from continuum_pipeline.evaluation.triggers import sample_count

    the_lake = lake.lake()
    if not the_lake.table_exists("sft_candidates"):
        return sample_count(0, 0, flywheel.min_new_samples)
    import duckdb

    con = duckdb.connect()
    the_lake.register_duckdb(con, "sft_candidates", "sft_candidates")
    (eligible,) = con.execute("select count(*) from sft_candidates where consent <> 'denied' and status = 'ok' "
                              "and reward >= ?", [flywheel.min_reward]).fetchone()
    before = int(latest_metadata(instance, "candidate_model").get("eligible_rows", 0) or 0)
    return sample_count(eligible, before, flywheel.min_new_samples)


def quality_drop_decision(lake: LakeResource, flywheel: FlywheelResource):
    from continuum_pipeline.evaluation.triggers import quality_drop

    return quality_drop(_daily_quality(lake), flywheel.window_days, flywheel.quality_drop)


def error_rate_decision(lake: LakeResource, flywheel: FlywheelResource):
    from continuum_pipeline.evaluation.triggers import error_rate

    return error_rate(_daily_quality(lake), flywheel.max_negative_rate)


def _sensor(name: str, description: str, decide):
    @dg.sensor(name=name, job=training_job, minimum_interval_seconds=300, description=description,
               default_status=dg.DefaultSensorStatus.RUNNING)
    def _evaluate(context: dg.SensorEvaluationContext, lake: LakeResource, flywheel: FlywheelResource):
        cooling = _cooldown(context.instance, flywheel)
        if cooling.fire:
            return dg.SkipReason(cooling.reason)
        return _request(context, name, decide(context.instance, lake, flywheel))

    return _evaluate


sample_count_sensor = _sensor("sample_count_sensor", "Trains when enough new dataset-eligible interactions arrived.",
                              sample_count_decision)
quality_drop_sensor = _sensor("quality_drop_sensor", "Trains when the mean reward falls below its trailing window.",
                              lambda instance, lake, flywheel: quality_drop_decision(lake, flywheel))
error_rate_sensor = _sensor("error_rate_sensor", "Trains when the negative-feedback rate is too high.",
                            lambda instance, lake, flywheel: error_rate_decision(lake, flywheel))


@dg.schedule(job=training_job, cron_schedule="0 4 * * 1", default_status=dg.DefaultScheduleStatus.RUNNING,
             description="Weekly retraining (Monday 04:00), unless a training ran within the cooldown.")
def weekly_training(context: dg.ScheduleEvaluationContext, flywheel: FlywheelResource):
    cooling = _cooldown(context.instance, flywheel)
    if cooling.fire:
        return dg.SkipReason(cooling.reason)
    return dg.RunRequest(run_key=f"weekly:{context.scheduled_execution_time:%Y-%m-%d}",
                         tags={"continuum/trigger": "weekly_training"})
