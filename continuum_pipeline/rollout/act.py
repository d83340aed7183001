"""One action on a task's rollout, applied: the registry's aliases, the gateway's arms file and the rollout log.

`act` is what every run of `<task>_rollout_job` does (the Dagster asset only records the outcome): the canary
sensor's `start` and `look`, and a person's `promote`, `rollback`, `pause`, `resume`.

    start     the challenger (alias challenger ≠ champion, never rolled out) gets the plan's first step
    look      decide() on the per-arm sums since the rollout began, with the state the last look left; its
              weights are applied (promote: alias champion moves, the old champion is kept as `previous`)
    promote   now, whatever the step: the challenger becomes champion and takes all traffic
    rollback  all traffic to stable (the challenger keeps its alias, the rollout is over); after a promotion,
              the blue-green switch-back: `previous` is champion again and serves everything
    pause     the weights stay, the sensor stops looking; resume undoes it

Pure (registry, lake, arms file); no Dagster.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from continuum_pipeline.rollout import log
from continuum_pipeline.rollout.decide import CHALLENGER, STABLE, Decision, decide, step_setting
from continuum_pipeline.task.config import TaskConfig

ACTIONS = ("look", "start", "promote", "rollback", "pause", "resume")


class RolloutError(ValueError):
    """The action cannot be taken now; the message says why and what to do."""


@dataclass(frozen=True)
class Outcome:
    row: dict[str, Any]  # the rollout log row appended
    weights: dict[str, float]  # arm → traffic share written to the arms file
    entry: dict[str, Any]  # the task's arms file entry as written
    history: list[dict[str, Any]]  # the log rows of this rollout, oldest first, this one last
    rows: Any  # the per-arm interactions since the rollout began (observe.arm_rows)
    decision: Decision | None = None  # a look's
    champion_change: tuple[Any, Any] | None = None  # (new champion ref, the one it replaced) when aliases moved


def _weights(challenger_weight: float) -> dict[str, float]:
    return {STABLE: round(1 - challenger_weight, 6), CHALLENGER: challenger_weight}


def act(lake, task: TaskConfig, tracking_uri: str, arms_path: Path, action: str, *, now: datetime,
        reason: str = "", by: str = "sensor", run_id: str = "") -> Outcome:
    from continuum_pipeline.registry import models
    from continuum_pipeline.rollout.arms_file import write_weights
    from continuum_pipeline.rollout.observe import arm_rows, observe

    if action not in ACTIONS:
        raise RolloutError(f"action {action!r}: use one of {', '.join(ACTIONS)}")
    name, spec = task.registered_model_name, task.rollout
    champion = models.champion(tracking_uri, name)
    challenger = models.by_alias(tracking_uri, name, models.CHALLENGER)
    rows = log.read(lake, task)
    waiting = challenger is not None and (champion is None or challenger.version != champion.version)
    current = log.current(rows, challenger.version) if waiting else None
    decision, change, data = None, None, None

    def row(r: log.Rollout, act_as: str, why: str, **changes) -> dict:
        return {"version": r.version, "stable_version": r.stable_version, "look": r.looks + 1, "action": act_as,
                "reason": why, "step_index": r.step_index, "challenger_weight": r.challenger_weight,
                "shadow_sample_rate": r.shadow_sample_rate, "state_json": r.state_json,
                "started_at": r.started_at, "step_started_at": r.step_started_at, "decided_at": now,
                "n_stable": 0, "n_challenger": 0, "reward_stable": None, "reward_challenger": None, "by": by,
                "run_id": run_id, **changes}

    def promote(r: log.Rollout) -> tuple:
        return models.promote(tracking_uri, name, r.version), champion

    if action == "start":
        if not waiting:
            raise RolloutError("there is no challenger to roll out (alias challenger is unset or is the champion): "
                               "register a new version first")
        if champion is None:
            raise RolloutError(f"there is no champion to compare v{challenger.version} with: promote a version "
                               f"first (`{task.name}_promotion_job`)")
        if current is not None:
            raise RolloutError(f"v{challenger.version} already had a rollout ({current.phase}); a rolled-back "
                               "version is not rolled out again: register a new one")
        weight, rate = step_setting(spec, 0)
        new = {"version": challenger.version, "stable_version": champion.version, "look": 0, "action": "start",
               "reason": reason or f"challenger v{challenger.version} registered: {spec.strategy} rollout "
                                   f"against champion v{champion.version}",
               "step_index": 0, "challenger_weight": weight, "shadow_sample_rate": rate, "state_json": "{}",
               "started_at": now, "step_started_at": now, "decided_at": now, "n_stable": 0, "n_challenger": 0,
               "reward_stable": None, "reward_challenger": None, "by": by, "run_id": run_id}
        weights = _weights(weight)
    else:
        target = current  # the challenger's rollout, or (a rollback) the one that promoted the champion
        if action == "rollback" and (target is None or target.phase not in ("active", "paused")) \
                and champion is not None:
            promoted = log.current(rows, champion.version)
            if promoted is not None and promoted.phase == "promoted":
                target = promoted
        if target is None:
            raise RolloutError(f"no rollout to act on: {task.name}_canary_sensor starts one when a challenger is "
                               "registered (or run action start)")
        if action == "look":
            if not target.active:
                raise RolloutError(f"the rollout of v{target.version} is {target.phase}: nothing to decide")
            data = arm_rows(lake, task, target.started_at, {STABLE: target.stable_version,
                                                            CHALLENGER: target.version})
            seen = observe(data, list(spec.metrics), target.step_started_at)
            decision = decide(spec, step_index=target.step_index, stable=seen.stable, challenger=seen.challenger,
                              state=target.state_json or None,
                              minutes_at_step=(now - target.step_started_at).total_seconds() / 60)
            reward = "reward" in spec.metrics
            new = row(target, decision.action, decision.reason, step_index=decision.step_index,
                      challenger_weight=decision.challenger_weight, shadow_sample_rate=decision.shadow_sample_rate,
                      state_json=decision.state_json(),
                      step_started_at=now if decision.step_index != target.step_index else target.step_started_at,
                      n_stable=seen.interactions[STABLE], n_challenger=seen.interactions[CHALLENGER],
                      reward_stable=seen.stable.metrics["reward"].mean if reward else None,
                      reward_challenger=seen.challenger.metrics["reward"].mean if reward else None)
            weights = decision.weights
            if decision.action == "promote":
                change = promote(target)
        elif action == "promote":
            if target.phase in ("promoted", "rolled_back"):
                raise RolloutError(f"the rollout of v{target.version} is over ({target.phase}); register a new "
                                   "challenger")
            new = row(target, "promote", reason or f"promoted by hand at {target.challenger_weight:.0%}",
                      challenger_weight=1.0, shadow_sample_rate=0.0)
            weights = _weights(1.0)
            change = promote(target)
        elif action == "rollback":
            if target.phase == "rolled_back":
                raise RolloutError(f"the rollout of v{target.version} is already rolled back")
            if target.phase == "promoted":  # blue-green switch-back: the previous champion serves again
                try:
                    change = models.rollback(tracking_uri, name), champion
                except models.PromotionError as exc:
                    raise RolloutError(str(exc)) from None
                new = row(target, "rollback", reason or f"v{target.version} rolled back by hand after its "
                                                        "promotion", stable_version=change[0].version,
                          challenger_weight=0.0, shadow_sample_rate=0.0)
            else:
                new = row(target, "rollback", reason or f"rolled back by hand at {target.challenger_weight:.0%}",
                          challenger_weight=0.0, shadow_sample_rate=0.0)
            weights = _weights(0.0)
        elif action == "pause":
            if not target.active:
                raise RolloutError(f"the rollout of v{target.version} is {target.phase}: only an active one pauses")
            new = row(target, "pause", reason or "paused by hand: weights held, no looks", look=target.looks)
            weights = _weights(target.challenger_weight)
        else:  # resume
            if target.phase != "paused":
                raise RolloutError(f"the rollout of v{target.version} is {target.phase}, not paused")
            new = row(target, "resume", reason or "resumed by hand", look=target.looks)
            weights = _weights(target.challenger_weight)

    entry = write_weights(arms_path, task, stable_version=new["stable_version"], challenger_version=new["version"],
                          weights=weights, shadow_sample_rate=new["shadow_sample_rate"])
    log.append(lake, task, new)
    history = [r for r in log.read(lake, task) if r["version"] == new["version"]]
    if data is None:
        data = arm_rows(lake, task, new["started_at"], {STABLE: new["stable_version"], CHALLENGER: new["version"]})
    return Outcome(new, weights, entry, history, data, decision, change)
