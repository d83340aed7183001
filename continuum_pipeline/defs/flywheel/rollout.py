"""The rollout in Dagster: the `<task>/rollout` asset, `<task>_rollout_job` and `<task>_canary_sensor`.

Every change to the task's traffic is a run of `<task>_rollout_job` materializing `<task>/rollout`: the sensor's
start and looks, and a person's `continuum rollout promote|rollback|pause|resume` (config `action`). Each run reads
the rollout's state from the Iceberg log `<task>__rollout_log` (rollout/log.py), applies one decision to the
gateway's arms file (rollout/arms_file.py), appends one log row, and shows the per-arm table, the statistics, the
decision and a plot in its materialization metadata — so the UI's asset history is the rollout's history.

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
Action = Literal["look", "start", "promote", "rollback", "pause", "resume"]


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
        from continuum_pipeline.registry import models
        from continuum_pipeline.rollout import decide, log, step_setting
        from continuum_pipeline.rollout.arms_file import write_weights
        from continuum_pipeline.rollout.observe import arm_rows, observe
        from continuum_pipeline.rollout.plot import rollout_png
        from continuum_pipeline.settings import get_settings

        the_lake, uri, name, spec = lake.lake(), mlflow.tracking_uri, task.registered_model_name, task.rollout
        arms_path = get_settings().gateway_arms
        champion = models.champion(uri, name)
        challenger = models.by_alias(uri, name, models.CHALLENGER)
        rows = log.read(the_lake, task)
        now = _now()
        waiting = challenger is not None and (champion is None or challenger.version != champion.version)
        current = log.current(rows, challenger.version) if waiting else None
        decision = None
        observed = None
        data_rows = None

        def fail(message: str):
            raise dg.Failure(f"{task.name} rollout: {message}")

        def row(r, action: str, reason: str, **changes) -> dict:
            base = {"version": r.version, "stable_version": r.stable_version, "look": r.looks + 1,
                    "action": action, "reason": reason, "step_index": r.step_index,
                    "challenger_weight": r.challenger_weight, "shadow_sample_rate": r.shadow_sample_rate,
                    "state_json": r.state_json, "started_at": r.started_at, "step_started_at": r.step_started_at,
                    "decided_at": now, "n_stable": 0, "n_challenger": 0, "reward_stable": None,
                    "reward_challenger": None, "by": config.by, "run_id": context.run_id}
            return {**base, **changes}

        def counts(obs) -> dict:
            return {"n_stable": obs.interactions["stable"], "n_challenger": obs.interactions["challenger"],
                    "reward_stable": obs.stable.metrics["reward"].mean if "reward" in obs.stable.metrics else None,
                    "reward_challenger": obs.challenger.metrics["reward"].mean
                    if "reward" in obs.challenger.metrics else None}

        def promote(r, reason: str) -> dict:
            ref = models.promote(uri, name, r.version)
            from continuum_pipeline.defs.flywheel.registry import record_promotion

            record_promotion(context, task, uri, ref, champion, f"rollout: {reason}")
            return {"stable": 0.0, "challenger": 1.0}

        action = config.action
        if action == "start":
            if not waiting:
                fail("there is no challenger to roll out (alias challenger is unset or is the champion): "
                     "register a new version first")
            if champion is None:
                fail(f"there is no champion to compare v{challenger.version} with: promote a version first "
                     f"(`{job_name(task, 'promotion')}`)")
            if current is not None:
                fail(f"v{challenger.version} already had a rollout ({current.phase}); a rolled-back version is not "
                     "rolled out again: register a new one")
            weight, rate = step_setting(spec, 0)
            new = {"version": challenger.version, "stable_version": champion.version, "look": 0, "action": "start",
                   "reason": config.reason or f"challenger v{challenger.version} registered: "
                                              f"{spec.strategy} rollout against champion v{champion.version}",
                   "step_index": 0, "challenger_weight": weight, "shadow_sample_rate": rate, "state_json": "{}",
                   "started_at": now, "step_started_at": now, "decided_at": now, "n_stable": 0, "n_challenger": 0,
                   "reward_stable": None, "reward_challenger": None, "by": config.by, "run_id": context.run_id}
            weights = {"stable": round(1 - weight, 6), "challenger": weight}
        else:
            # the rollout acted on: the challenger's, or (a person's rollback) the promoted champion's
            target = current
            if action == "rollback" and (target is None or not (target.active or target.phase == "paused")) \
                    and champion is not None:
                promoted = log.current(rows, champion.version)
                if promoted is not None and promoted.phase == "promoted":
                    target = promoted
            if target is None:
                fail("no rollout to act on: the sensor starts one when a challenger is registered "
                     f"(`{task.name}_canary_sensor`), or run action start")
            if action == "look":
                if not target.active:
                    fail(f"the rollout of v{target.version} is {target.phase}: nothing to decide")
                data_rows = arm_rows(the_lake, task, target.started_at,
                                     {"stable": target.stable_version, "challenger": target.version})
                observed = observe(data_rows, list(spec.metrics), target.step_started_at)
                decision = decide(spec, step_index=target.step_index, stable=observed.stable,
                                         challenger=observed.challenger, state=target.state_json or None,
                                         minutes_at_step=(now - target.step_started_at).total_seconds() / 60)
                stepped = decision.step_index != target.step_index
                new = row(target, decision.action, decision.reason, step_index=decision.step_index,
                          challenger_weight=decision.challenger_weight,
                          shadow_sample_rate=decision.shadow_sample_rate, state_json=decision.state_json(),
                          step_started_at=now if stepped else target.step_started_at, **counts(observed))
                weights = promote(target, decision.reason) if decision.action == "promote" else decision.weights
            elif action == "promote":
                if target.phase in ("promoted", "rolled_back"):
                    fail(f"the rollout of v{target.version} is over ({target.phase}); register a new challenger")
                reason = config.reason or f"promoted by hand at {target.challenger_weight:.0%}"
                weights = promote(target, reason)
                new = row(target, "promote", reason, challenger_weight=1.0, shadow_sample_rate=0.0)
            elif action == "rollback":
                if target.phase == "promoted":  # blue-green switch-back: the previous champion serves again
                    try:
                        ref = models.rollback(uri, name)
                    except models.PromotionError as exc:
                        fail(str(exc))
                    from continuum_pipeline.defs.flywheel.registry import record_promotion

                    reason = config.reason or f"v{target.version} rolled back by hand after its promotion"
                    record_promotion(context, task, uri, ref, champion, reason)
                    new = row(target, "rollback", reason, stable_version=ref.version, challenger_weight=0.0,
                              shadow_sample_rate=0.0)
                elif target.phase == "rolled_back":
                    fail(f"the rollout of v{target.version} is already rolled back")
                else:
                    new = row(target, "rollback", config.reason or
                              f"rolled back by hand at {target.challenger_weight:.0%}", challenger_weight=0.0,
                              shadow_sample_rate=0.0)
                weights = {"stable": 1.0, "challenger": 0.0}
            elif action == "pause":
                if not target.active:
                    fail(f"the rollout of v{target.version} is {target.phase}: only an active one pauses")
                new = row(target, "pause", config.reason or "paused by hand: weights held, no looks",
                          look=target.looks)
                weights = {"stable": round(1 - target.challenger_weight, 6), "challenger": target.challenger_weight}
            else:  # resume
                if target.phase != "paused":
                    fail(f"the rollout of v{target.version} is {target.phase}, not paused")
                new = row(target, "resume", config.reason or "resumed by hand", look=target.looks)
                weights = {"stable": round(1 - target.challenger_weight, 6), "challenger": target.challenger_weight}

        entry = write_weights(arms_path, task, stable_version=new["stable_version"],
                              challenger_version=new["version"], weights=weights,
                              shadow_sample_rate=new["shadow_sample_rate"])
        log.append(the_lake, task, new)
        history = [r for r in log.read(the_lake, task) if r["version"] == new["version"]]
        context.log.info(f"v{new['version']} {new['action']}: {new['reason']} → weights {weights}")
        if data_rows is None:
            data_rows = arm_rows(the_lake, task, new["started_at"],
                                 {"stable": new["stable_version"], "challenger": new["version"]})
        metadata = {
            "version": new["version"], "stable_version": new["stable_version"], "action": new["action"],
            "reason": new["reason"], "look": new["look"], "step_index": new["step_index"],
            "plan": str(spec.plan()), "challenger_weight": new["challenger_weight"],
            "shadow_sample_rate": new["shadow_sample_rate"], "by": new["by"],
            "weights": dg.MetadataValue.json(weights), "arms_file": dg.MetadataValue.path(str(arms_path)),
            "arms_entry": dg.MetadataValue.json(entry),
            "history": dg.MetadataValue.md(_history(history)),
            "plot": png_markdown(rollout_png(data_rows, history, f"{task.name}: v{new['version']} vs "
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
