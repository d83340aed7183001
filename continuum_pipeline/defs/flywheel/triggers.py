"""When the task trains again: sample count, quality drop, error rate, a schedule — once per cause, one at a time.

Once per cause. Quality drop and error rate look only at the days the current champion served (quality_daily rows
of its model_version; before any champion, all traffic). Sample count and the schedule count only eligible rows
the champion did not train on (its `model_lineage` rows). A decision's key names the serving version and the cause
(`quality-drop:v1:2026-11-20`, `samples:v1:360`); it is the run key, the sensor's cursor and the run's
`continuum/cause` tag, so the same cause never asks for a training twice.

One training per cause. Every trigger of a task (these sensors, the schedule, the forget sensor) asks through
`request_training`: while a training of the task is queued or running, a trigger whose condition holds requests
nothing and adds its reason to that run (tag `continuum/also/<trigger>`); the cooldown counts from the newest
training run's start (or creation), so two triggers in one tick make one run.

On by default, in a fresh home: ingest (landing_sensor) and automation (labels and SQL models follow ingest), the
training sensors and the periodic schedule (they fire once per cause and skip unchanged data), the forget sensor
(only with `privacy.retrain_on_forget`) and the nightly upkeep. Nothing here retrains on unchanged data.
"""

import json
from datetime import UTC, datetime, timedelta

import dagster as dg

from continuum_pipeline.defs.flywheel.keys import job_name, key
from continuum_pipeline.defs.metadata import latest_metadata
from continuum_pipeline.defs.resources import LakeResource, MLflowResource
from continuum_pipeline.task.config import TaskConfig

IN_FLIGHT = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
             dg.DagsterRunStatus.STARTED]
CAUSE_TAG = "continuum/cause"
ALSO_TAG = "continuum/also/"  # + trigger: the reason of a trigger that fired while this training was in flight


def jobs(task: TaskConfig) -> tuple:
    shared = dg.AssetSelection.groups("sql")  # the staging models the task models read
    training = dg.define_asset_job(job_name(task, "training"), selection=dg.AssetSelection.key_prefixes([task.name])
                                   - dg.AssetSelection.groups(f"{task.name}_rollout") | shared,
                                   description=f"{task.name}: label, curate, train a candidate, gate it, register it.")
    monitoring = dg.define_asset_job(
        job_name(task, "monitoring"),
        selection=dg.AssetSelection.assets(key(task, "reward_labels")) | dg.AssetSelection.groups(f"{task.name}_sql")
        | shared, description=f"{task.name}: refresh reward labels and the task's SQL models (quality_daily).")
    return training, monitoring


# --- what the triggers read --------------------------------------------------------------------------------------

def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _training_runs(instance: dg.DagsterInstance, task: TaskConfig, statuses=None, limit: int = 1):
    return instance.get_run_records(dg.RunsFilter(job_name=job_name(task, "training"), statuses=statuses),
                                    limit=limit)


def last_training(instance: dg.DagsterInstance, task: TaskConfig) -> datetime | None:
    """When the task last trained: the newest training run's start (its creation while it waits), or the newest
    candidate model materialized some other way (a CLI or test run of the asset), whichever is later."""
    moments = []
    for record in _training_runs(instance, task):
        moments.append(datetime.fromtimestamp(record.start_time, UTC) if record.start_time
                       else _utc(record.create_timestamp))
    event = instance.get_latest_materialization_event(key(task, "candidate_model"))
    if event:
        moments.append(datetime.fromtimestamp(event.timestamp, UTC))
    return max(moments, default=None)


def cooldown(instance: dg.DagsterInstance, task: TaskConfig):
    from continuum_pipeline.evaluation.triggers import cooling_down

    return cooling_down(last_training(instance, task), datetime.now(UTC),
                        timedelta(hours=task.triggers.cooldown_hours))


def champion(mlflow: MLflowResource | None, task: TaskConfig):
    """The task's champion version (ModelVersionRef), or None before the first registration."""
    from continuum_pipeline.registry import models
    from continuum_pipeline.settings import get_settings

    return models.champion(mlflow.tracking_uri if mlflow else get_settings().mlflow_uri, task.registered_model_name)


def daily_quality(lake: LakeResource, task: TaskConfig):
    from continuum_pipeline.evaluation.triggers import DailyQuality

    the_lake = lake.lake()
    table = task.table("quality_daily")
    if not the_lake.table_exists(table):
        return []
    return [DailyQuality(r["day"], r["interactions"], r["mean_reward"], r["negative_feedback_rate"],
                         r["interactions_with_feedback"], r.get("model_version") or "")
            for r in the_lake.read_arrow(table).to_pylist()]


def _trained_on(the_lake, ref) -> set[str] | None:
    """The interaction ids the version trained or validated on (its `model_lineage` rows); None when the table
    or the version's rows were never written (registered before the table existed)."""
    from pyiceberg.expressions import And, EqualTo

    from continuum_pipeline.registry.lineage import DATASET_ROLES, LINEAGE_ROWS_TAG, LINEAGE_TABLE

    if LINEAGE_ROWS_TAG not in ref.tags or not the_lake.table_exists(LINEAGE_TABLE):
        return None
    rows = the_lake.table(LINEAGE_TABLE).scan(row_filter=And(EqualTo("model", ref.name), EqualTo("version", ref.version)),
                                              selected_fields=("interaction_id", "role")).to_arrow()
    return {i for i, role in zip(rows["interaction_id"].to_pylist(), rows["role"].to_pylist(), strict=True)
            if role in DATASET_ROLES}


def _count(value) -> int:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return 0


def eligible_counts(instance, lake: LakeResource, task: TaskConfig, ref) -> tuple[int, int]:
    """(eligible rows now, how many of them the champion already trained on): the candidates curated by the very
    policy sft_dataset applies (consent, status, reward, held-out, dedup). Without lineage rows, the champion's
    `eligible_rows` tag; before any champion, the last training's dataset size. A training from this champion
    whose candidate did not become champion (rejected, or a challenger) saw its data too: not new either."""
    from continuum_pipeline.curation.dataset import curate_sft
    from continuum_pipeline.defs.flywheel.curation import curation_policy
    from continuum_pipeline.registry.models import TAG

    the_lake = lake.lake()
    table = task.table("sft_candidates")
    if not the_lake.table_exists(table):
        return 0, 0
    ids = curate_sft(the_lake.read_arrow(table), curation_policy(the_lake, task)).table["interaction_id"].to_pylist()
    last = latest_metadata(instance, key(task, "candidate_model"))
    if ref is None:
        return len(ids), _count(last.get("eligible_rows"))
    trained = _trained_on(the_lake, ref)
    seen = sum(1 for i in ids if i in trained) if trained is not None else _count(ref.tags.get(f"{TAG}eligible_rows"))
    if str(last.get("parent_version", "")) == ref.version:
        seen = max(seen, _count(last.get("eligible_rows")))
    return len(ids), seen


# --- the decisions -----------------------------------------------------------------------------------------------

def sample_count_decision(instance, lake: LakeResource, task: TaskConfig, mlflow: MLflowResource | None = None):
    from continuum_pipeline.evaluation.triggers import sample_count

    ref = champion(mlflow, task)
    eligible, seen = eligible_counts(instance, lake, task, ref)
    return sample_count(eligible, seen, task.triggers.min_new_samples, ref.version if ref else None)


def new_data_decision(instance, lake: LakeResource, task: TaskConfig, mlflow: MLflowResource | None = None):
    from continuum_pipeline.evaluation.triggers import new_data

    ref = champion(mlflow, task)
    eligible, seen = eligible_counts(instance, lake, task, ref)
    return new_data(eligible, seen, ref.version if ref else None)


def quality_drop_decision(lake: LakeResource, task: TaskConfig, mlflow: MLflowResource | None = None):
    from continuum_pipeline.evaluation.triggers import quality_drop

    ref = champion(mlflow, task)
    return quality_drop(daily_quality(lake, task), task.triggers.window_days, task.triggers.quality_drop,
                        champion=ref.version if ref else None)


def error_rate_decision(lake: LakeResource, task: TaskConfig, mlflow: MLflowResource | None = None):
    from continuum_pipeline.evaluation.triggers import error_rate

    ref = champion(mlflow, task)
    return error_rate(daily_quality(lake, task), task.triggers.max_negative_rate, champion=ref.version if ref else None)


# --- one training per cause ------------------------------------------------------------------------------------

def read_cursor(context) -> dict:
    """A trigger's JSON cursor ({} for none; a bare timestamp, the forget sensor's old cursor, as `receipts_until`)."""
    raw = getattr(context, "cursor", None)
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {"receipts_until": raw}
    return value if isinstance(value, dict) else {}


def write_cursor(context, **values) -> None:
    if hasattr(context, "update_cursor"):  # a schedule has none: its memory is the runs' cause tag
        context.update_cursor(json.dumps({**read_cursor(context), **values}))


def request_training(context, task: TaskConfig, trigger: str, decision, *, respect_cooldown: bool = True,
                     covers_after: datetime | None = None, cursor: dict | None = None) -> dg.RunRequest | dg.SkipReason:
    """Ask for one training of the task for this cause, or say why not. `trigger` names the sensor or schedule
    (`quality_drop`, `periodic`, ...). In order: the condition does not hold; the cause was already acted on (the
    cursor, or a training run tagged with it); a training is in flight (it takes this reason as a tag instead:
    one training, every reason); the cooldown. `covers_after`: an in-flight training created before this moment
    does not cover the cause (it read the data before a deletion): wait for it. `cursor`: more cursor values to
    record once the cause is acted on."""
    instance = context.instance
    if not decision.fire:
        return dg.SkipReason(decision.reason)
    if read_cursor(context).get("last_key") == decision.key or instance.get_run_ids(
            dg.RunsFilter(job_name=job_name(task, "training"), tags={CAUSE_TAG: decision.key}), limit=1):
        return dg.SkipReason(f"already requested a training for {decision.key}")
    acted = {"last_key": decision.key, "at": datetime.now(UTC).isoformat(), **(cursor or {})}
    for record in _training_runs(instance, task, IN_FLIGHT):
        run = record.dagster_run
        if covers_after is not None and _utc(record.create_timestamp) < covers_after:
            return dg.SkipReason(f"{decision.reason}; waiting for training run {run.run_id[:8]} ({run.status.value}), "
                                 "which read the data before this cause")
        instance.add_run_tags(run.run_id, {f"{ALSO_TAG}{trigger}": decision.reason[:200]})
        write_cursor(context, **acted, joined=run.run_id)
        return dg.SkipReason(f"{decision.reason}; training run {run.run_id[:8]} is already {run.status.value}: "
                             f"the reason is added to it as {ALSO_TAG}{trigger}")
    if respect_cooldown:
        cooling = cooldown(instance, task)
        if cooling.fire:
            return dg.SkipReason(f"{decision.reason}; {cooling.reason}")
    write_cursor(context, **acted)
    from continuum_pipeline.defs.loggers import COMPACT_RUN_CONFIG

    # the compact logger keeps the console of whoever executes the run (the demo, a run worker) to one line per
    # message; the full log is in the instance either way
    return dg.RunRequest(run_key=f"{task.name}:{trigger}:{decision.key}", run_config=COMPACT_RUN_CONFIG,
                         tags={"continuum/task": task.name, "continuum/trigger": f"{task.name}:{trigger}",
                               "continuum/reason": decision.reason[:200], CAUSE_TAG: decision.key})


def sensors(task: TaskConfig, training_job) -> list[dg.SensorDefinition]:
    def make(kind: str, description: str, decide) -> dg.SensorDefinition:
        @dg.sensor(name=f"{task.name}_{kind}_sensor", job=training_job, minimum_interval_seconds=300,
                   description=f"{task.name}: {description} Once per cause; one training at a time.",
                   default_status=dg.DefaultSensorStatus.RUNNING)
        def _evaluate(context: dg.SensorEvaluationContext, lake: LakeResource, mlflow: MLflowResource):
            return request_training(context, task, kind, decide(context.instance, lake, mlflow))

        return _evaluate

    return [
        make("sample_count", f"trains when {task.triggers.min_new_samples} dataset-eligible interactions the champion "
                             "did not train on arrived.",
             lambda instance, lake, mlflow: sample_count_decision(instance, lake, task, mlflow)),
        make("quality_drop", f"trains when the champion's mean reward falls {task.triggers.quality_drop:.0%} below its "
                             f"{task.triggers.window_days}-day trailing mean.",
             lambda instance, lake, mlflow: quality_drop_decision(lake, task, mlflow)),
        make("error_rate", f"trains when the negative-feedback rate on the champion's answers passes "
                           f"{task.triggers.max_negative_rate:.0%}.",
             lambda instance, lake, mlflow: error_rate_decision(lake, task, mlflow)),
    ]


def schedules(task: TaskConfig, training_job) -> list[dg.ScheduleDefinition]:
    if not task.triggers.schedule:
        return []

    @dg.schedule(name=f"{task.name}_periodic_training", job=training_job, cron_schedule=task.triggers.schedule,
                 default_status=dg.DefaultScheduleStatus.RUNNING,
                 description=f"{task.name}: retrain on `{task.triggers.schedule}` when there is eligible data the "
                             "champion did not train on, unless a training is in flight or ran within the cooldown.")
    def _periodic(context: dg.ScheduleEvaluationContext, lake: LakeResource, mlflow: MLflowResource):
        return request_training(context, task, "periodic", new_data_decision(context.instance, lake, task, mlflow))

    return [_periodic]
