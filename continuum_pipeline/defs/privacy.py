"""Privacy in Dagster: the `forget_job` (run config: who to forget), the privacy upkeep on the upkeep schedule
(finishes pending deletions, applies each task's retention), the `deletion_receipts` asset events, and per task a
sensor that requests retraining when a deletion touched the champion (`privacy.retrain_on_forget`)."""

import json
from datetime import UTC, datetime

import dagster as dg

from continuum_pipeline.defs.metadata import markdown_table
from continuum_pipeline.defs.resources import FlywheelResource, LakeResource, LandingResource, MLflowResource
from continuum_pipeline.settings import task_yaml_files
from continuum_pipeline.task.config import TaskConfig

RECEIPTS_KEY = dg.AssetKey("deletion_receipts")


class ForgetConfig(dg.Config):
    users: list[str] = []
    sessions: list[str] = []
    interactions: list[str] = []
    requested_by: str | None = None  # default: the OS user running the job


def _receipt_event(receipt) -> dg.AssetMaterialization:
    tables = receipt.tables
    return dg.AssetMaterialization(
        asset_key=RECEIPTS_KEY, description=f"deletion {receipt.receipt_id} ({receipt.row['reason']})",
        metadata={
            "receipt_id": receipt.receipt_id,
            "reason": receipt.row["reason"],
            "rows_removed": receipt.rows_removed,
            "affected_versions": dg.MetadataValue.json([f"{a['model']}@{a['version']}" for a in receipt.affected]),
            "champions_affected": dg.MetadataValue.json(receipt.champions_affected),
            "tables": dg.MetadataValue.md(markdown_table(
                ["table", "rows removed", "files rewritten", "snapshot before", "snapshot after"],
                [(name, t["rows_removed"], t["files_rewritten"], t["snapshot_before"], t["snapshot_after"])
                 for name, t in sorted(tables.items())])),
        })


def _progress(context):
    def progress(event: str, info: dict) -> None:
        context.log.info(f"forget {event}: {info}")

    return progress


@dg.op(description="Deletes the subjects' rows from every lake table, the landing folder and its archive and the "
                   "local dataset copies, physically; writes a deletion receipt; tags affected model versions.")
def forget(context: dg.OpExecutionContext, config: ForgetConfig, lake: LakeResource, landing: LandingResource,
           mlflow: MLflowResource, flywheel: FlywheelResource) -> None:
    from continuum_pipeline.privacy.forget import ForgetRequestError, finish_pending, pending, submit

    home = flywheel.home
    if config.users or config.sessions or config.interactions:
        try:
            request = submit(home, users=config.users, sessions=config.sessions, interactions=config.interactions,
                             requested_by=config.requested_by)
        except ForgetRequestError as exc:
            raise dg.Failure(f"forget_job config: {exc}") from exc
        context.log.info(f"forget request {request.receipt_id} recorded")
    elif not pending(home):
        context.log.info("nothing to forget: no ids in the config and no pending request")
        return
    receipts = finish_pending(lake.lake(), home, landing.path, mlflow.tracking_uri, _progress(context))
    for receipt in receipts:
        versions = ", ".join(f"{a['model']}@{a['version']}" for a in receipt.affected) or "none"
        context.log.info(f"receipt {receipt.receipt_id}: {receipt.rows_removed} rows removed; model versions "
                         f"trained or evaluated on the data: {versions}")
        context.log_event(_receipt_event(receipt))


@dg.job(description="The right to be forgotten: run config `ops: {forget: {config: {users: [...], sessions: [...], "
                    "interactions: [...]}}}`; with no ids it finishes pending (interrupted) requests.")
def forget_job():
    forget()


@dg.op(description="Finishes interrupted deletions, forgets again rows of forgotten subjects that came back, and "
                   "applies each task's `privacy.retention_days`.")
def privacy_upkeep(context: dg.OpExecutionContext, lake: LakeResource, landing: LandingResource,
                   mlflow: MLflowResource, flywheel: FlywheelResource) -> None:
    from continuum_pipeline.privacy.forget import finish_pending, sweep_tombstones
    from continuum_pipeline.privacy.retention import apply_retention
    from continuum_pipeline.settings import get_settings
    from continuum_pipeline.task.config import load_task_config

    the_lake = lake.lake()
    for receipt in finish_pending(the_lake, flywheel.home, landing.path, mlflow.tracking_uri, _progress(context)):
        context.log_event(_receipt_event(receipt))
    swept = sweep_tombstones(the_lake, flywheel.home, landing.path, mlflow.tracking_uri, _progress(context))
    if swept is not None:
        context.log.warning(f"{swept.row['interactions']} interactions of forgotten subjects had come back (a writer "
                            f"that read the lake before a deletion) and were forgotten again: {swept.receipt_id}")
        context.log_event(_receipt_event(swept))
    for path in task_yaml_files(p for p in get_settings().tasks if p.exists()):
        task = load_task_config(path)
        result = apply_retention(the_lake, task, home=flywheel.home, landing=landing.path,
                                 tracking_uri=mlflow.tracking_uri, progress=_progress(context))
        if result.days:
            context.log.info(f"{task.name}: retention {result.days} days (before {result.cutoff:%Y-%m-%d %H:%M}): "
                             f"{result.interactions} interactions forgotten")
        if result.receipt is not None:
            context.log_event(_receipt_event(result.receipt))


@dg.job(description="Pending deletions and per-task retention.")
def privacy_upkeep_job():
    privacy_upkeep()
# Before the nightly lake upkeep (17 3 * * *), which then compacts what the deletions rewrote.
privacy_upkeep_schedule = dg.ScheduleDefinition(name="privacy_upkeep_schedule", job=privacy_upkeep_job,
                                                cron_schedule="7 3 * * *",
                                                default_status=dg.DefaultScheduleStatus.RUNNING,
                                                description="Nightly: finish pending deletions, apply retention.")


def retrain_on_forget_sensor(task: TaskConfig, training_job) -> dg.SensorDefinition:
    """Requests one training of the task for the deletion receipts that touched its champion, when the task's
    `privacy.retrain_on_forget` is true (run key: the newest receipt id). Through the same one-training-per-cause
    rule as every trigger, but not held back by the cooldown: the champion learned from deleted data. A training
    already running takes the reason only if it started after the deletion; otherwise this waits for it."""

    @dg.sensor(name=f"{task.name}_retrain_on_forget_sensor", job=training_job, minimum_interval_seconds=60,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description=f"{task.name}: retrains without deleted data when a deletion touched the champion "
                           f"(privacy.retrain_on_forget: {str(task.privacy.retrain_on_forget).lower()}).")
    def _sensor(context: dg.SensorEvaluationContext, lake: LakeResource):
        from continuum_pipeline.defs.flywheel.triggers import read_cursor, request_training, write_cursor
        from continuum_pipeline.evaluation.triggers import deletions
        from continuum_pipeline.privacy.forget import read_receipts

        if not task.privacy.retrain_on_forget:
            return dg.SkipReason("privacy.retrain_on_forget is false for this task")
        until = read_cursor(context).get("receipts_until")
        since = datetime.fromisoformat(until) if until else None
        receipts = sorted((r for r in read_receipts(lake.lake()) if since is None or r["completed_at"] > since),
                          key=lambda r: r["completed_at"])
        if not receipts:
            return dg.SkipReason("no new deletion receipt")
        newest = max(r["completed_at"] for r in receipts).astimezone(UTC).isoformat()
        touching = [r for r in receipts if task.registered_model_name in json.loads(r["champions_affected"] or "[]")]
        if not touching:
            write_cursor(context, receipts_until=newest)
            return dg.SkipReason(f"{len(receipts)} new receipts; none touched the champion")
        # the cursor moves past these receipts only once a training covers them (requested or joined)
        return request_training(context, task, "forget", deletions([r["receipt_id"] for r in touching]),
                                respect_cooldown=False, covers_after=touching[-1]["completed_at"].astimezone(UTC),
                                cursor={"receipts_until": newest})

    return _sensor
