"""The rollout in Dagster: the `<task>/rollout` asset, `<task>_rollout_job` and `<task>_canary_sensor`.

Every change to the task's traffic is a run of `<task>_rollout_job` materializing `<task>/rollout`: the sensor's
start and looks, and a person's `continuum rollout promote|rollback|pause|resume` (config `action`). Each run applies
one action (rollout/act.py: the registry, the gateway's arms file, one row of the Iceberg log
`<task>__rollout_log`), records a promotion on the champion asset, and shows the per-arm table, the statistics,
the decision and a plot in its materialization metadata — so the UI's asset history is the rollout's history.

The canary sensor: when alias challenger names a version other than the champion and that version never had a
rollout, it requests a start; while the rollout is active it requests one look whenever the challenger gained a
quarter of a step's minimum interactions, or a step's minimum minutes passed, since the last row (log.look_due);
the run key names the version and the look number, so a look is requested once. A paused, rolled-back or promoted
rollout gets nothing; a rolled-back challenger is never rolled out again by the sensor.
"""

from datetime import UTC, datetime
from typing import Literal

import dagster as dg

from continuum_pipeline.defs.flywheel.keys import group, job_name, key
from continuum_pipeline.defs.metadata import column_schema, markdown_table, png_markdown
from continuum_pipeline.defs.resources import LakeResource, MLflowResource
from continuum_pipeline.task.config import TaskConfig

IN_FLIGHT = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
             dg.DagsterRunStatus.STARTED]
MAX_RETRIES = 2
Action = Literal["look", "start", "promote", "rollback", "pause", "resume"]  # rollout/act.py ACTIONS


class RolloutConfig(dg.Config):
    """`look` (the sensor's): decide at the current step; `start` a rollout of the challenger; a person's
    `promote` (the challenger now), `rollback` (all traffic to stable; after a promotion, the previous champion
    back), `pause` (hold the weights, no looks) or `resume`."""

    action: Action = "look"
    reason: str = ""
    by: str = "sensor"


def op_name(task: TaskConfig) -> str:
    return f"{task.name}__rollout"


def run_config(task: TaskConfig, action: str, reason: str = "", by: str = "sensor") -> dict:
    return {"ops": {op_name(task): {"config": {"action": action, "reason": reason, "by": by}}}}


def _now() -> datetime:
    return datetime.now(UTC)


def _history(rows: list[dict]) -> str:
    return markdown_table(
        ["decided at", "look", "action", "step", "challenger share", "n stable", "n challenger", "reward stable",
         "reward challenger", "by", "reason"],
        [[f"{r['decided_at']:%Y-%m-%d %H:%M:%S}", r["look"], r["action"], r["step_index"],
          f"{r['challenger_weight']:.0%}", r["n_stable"], r["n_challenger"], r["reward_stable"],
          r["reward_challenger"], r["by"], r["reason"]] for r in rows])


def rollout_asset(task: TaskConfig) -> dg.AssetsDefinition:
    from continuum_pipeline.rollout.log import COLUMN_DOCS, ROLLOUT_LOG

    @dg.asset(key=key(task, "rollout"), group_name=group(task, "rollout"), kinds={"iceberg"},
              metadata={"table": task.table("rollout_log"),
                        "dagster/column_schema": column_schema(ROLLOUT_LOG, COLUMN_DOCS)},
              deps=[key(task, "registered_model"), key(task, "interaction_rewards")],
              description=f"The challenger of `{task.registered_model_name}` reaching production "
                          f"({task.rollout.strategy}, challenger share per step {task.rollout.plan()}): one "
                          "materialization per decision (start, hold, advance, rollback, promote, a person's "
                          "pause/resume), with the per-arm table, the always-valid statistics and a plot; the "
                          f"state is the Iceberg table `{task.table('rollout_log')}`.")
    def _rollout(context: dg.AssetExecutionContext, config: RolloutConfig, lake: LakeResource,
                 mlflow: MLflowResource) -> dg.MaterializeResult:
        from continuum_pipeline.defs.flywheel.registry import record_promotion
        from continuum_pipeline.rollout.act import RolloutError, act
        from continuum_pipeline.rollout.plot import rollout_png
        from continuum_pipeline.settings import get_settings

        arms_path = get_settings().gateway_arms
        try:
            out = act(lake.lake(), task, mlflow.tracking_uri, arms_path, config.action, now=_now(),
                      reason=config.reason, by=config.by, run_id=context.run_id)
        except RolloutError as exc:
            raise dg.Failure(f"{task.name} rollout: {exc}") from None
        new, decision = out.row, out.decision
        if out.champion_change is not None:
            ref, previous = out.champion_change
            record_promotion(context, task, mlflow.tracking_uri, ref, previous, f"rollout: {new['reason']}")
        context.log.info(f"v{new['version']} {new['action']}: {new['reason']} → weights {out.weights}")
        metadata = {
            "version": new["version"], "stable_version": new["stable_version"], "action": new["action"],
            "reason": new["reason"], "look": new["look"], "step_index": new["step_index"],
            "plan": str(task.rollout.plan()), "challenger_weight": new["challenger_weight"],
            "shadow_sample_rate": new["shadow_sample_rate"], "by": new["by"],
            "weights": dg.MetadataValue.json(out.weights), "arms_file": dg.MetadataValue.path(str(arms_path)),
            "arms_entry": dg.MetadataValue.json(out.entry),
            "history": dg.MetadataValue.md(_history(out.history)),
            "plot": png_markdown(rollout_png(out.rows, out.history, f"{task.name}: v{new['version']} vs "
                                                                    f"v{new['stable_version']}"), "rollout"),
        }
        if decision is not None:
            metadata["decision"] = dg.MetadataValue.md(f"**{decision.action}** — {decision.reason}\n\n"
                                                       + decision.markdown())
            metadata["statistics"] = dg.MetadataValue.json({r.metric: {
                "delta": r.delta, "interval": [r.ci_low, r.ci_high], "p_worse": r.p_worse,
                "p_within": r.p_not_worse, "p_better": r.p_better, "verdict": r.verdict} for r in decision.rows})
            metadata["n_stable"], metadata["n_challenger"] = new["n_stable"], new["n_challenger"]
            if decision.guard:
                metadata["guard"] = decision.guard
        return dg.MaterializeResult(metadata=metadata)

    return _rollout


def rollout_job(task: TaskConfig):
    return dg.define_asset_job(job_name(task, "rollout"), selection=[key(task, "rollout")],
                               tags={"continuum/task": task.name},
                               description=f"{task.name}: one rollout decision (config action: look, start, "
                                           "promote, rollback, pause, resume) applied to the gateway's arms.")


def canary_sensor(task: TaskConfig, job) -> dg.SensorDefinition:
    @dg.sensor(name=f"{task.name}_canary_sensor", job=job, minimum_interval_seconds=60,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description=f"{task.name}: start a rollout when a challenger is registered; request a decision "
                           "(a look) as its traffic grows or a step's minimum time passes.")
    def _sensor(context: dg.SensorEvaluationContext, lake: LakeResource, mlflow: MLflowResource):
        from continuum_pipeline.registry import models
        from continuum_pipeline.rollout import log
        from continuum_pipeline.rollout.observe import arm_rows, count_since

        flying = context.instance.get_run_records(dg.RunsFilter(job_name=job_name(task, "rollout"),
                                                                statuses=IN_FLIGHT), limit=1)
        if flying:
            return dg.SkipReason(f"rollout run {flying[0].dagster_run.run_id[:8]} is "
                                 f"{flying[0].dagster_run.status.value}: one decision at a time")
        uri, name = mlflow.tracking_uri, task.registered_model_name
        champion, challenger = models.champion(uri, name), models.by_alias(uri, name, models.CHALLENGER)
        if challenger is None or champion is None or challenger.version == champion.version:
            return dg.SkipReason(f"no challenger waiting ({'champion v' + champion.version if champion else 'no champion'}"
                                 f"{', challenger v' + challenger.version if challenger else ''})")
        the_lake = lake.lake()
        current = log.current(log.read(the_lake, task), challenger.version)
        tags = {"continuum/task": task.name, "continuum/rollout_version": challenger.version}
        if current is None:
            return dg.RunRequest(run_key=f"{task.name}:rollout:v{challenger.version}:start",
                                 run_config=run_config(task, "start"), tags={**tags, "continuum/rollout_look": "0"})
        if not current.active:
            return dg.SkipReason(f"the rollout of v{challenger.version} is {current.phase}: {current.reason}")
        rows = arm_rows(the_lake, task, current.last_decided_at, {"challenger": challenger.version})
        new = count_since(rows, "challenger", current.last_decided_at)
        due = log.look_due(current, new, _now(), task.rollout.min_interactions_per_step,
                           task.rollout.min_minutes_per_step)
        if due is None:
            return dg.SkipReason(f"v{challenger.version} at {current.challenger_weight:.0%}: {new} new challenger "
                                 f"interactions since the last look; next look at "
                                 f"{log.look_size(task.rollout.min_interactions_per_step)}")
        look = current.looks + 1
        # a failed decision run is requested again (a new run key), at most MAX_RETRIES times per look
        failed = context.instance.get_run_records(dg.RunsFilter(
            job_name=job_name(task, "rollout"), statuses=[dg.DagsterRunStatus.FAILURE],
            tags={"continuum/rollout_version": challenger.version, "continuum/rollout_look": str(look)}))
        if len(failed) > MAX_RETRIES:
            return dg.SkipReason(f"look {look} of v{challenger.version} failed {len(failed)} times (last run "
                                 f"{failed[0].dagster_run.run_id[:8]}): fix the cause and re-execute that run, or "
                                 f"`continuum rollout rollback|promote {task.name}`")
        retry = f":retry{len(failed)}" if failed else ""
        return dg.RunRequest(run_key=f"{task.name}:rollout:v{challenger.version}:look{look}{retry}",
                             run_config=run_config(task, "look"),
                             tags={**tags, "continuum/rollout_look": str(look), "continuum/reason": due})

    return _sensor


def definitions(task: TaskConfig) -> tuple:
    """(asset, job, sensor) of the task's rollout."""
    job = rollout_job(task)
    return rollout_asset(task), job, canary_sensor(task, job)
