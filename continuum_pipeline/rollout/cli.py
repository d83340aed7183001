"""`continuum rollout status|promote|rollback|pause|resume TASK`: a person reads or steers a task's rollout.

`status` reads the registry, the arms file and the rollout log. Every intervention is a run of `<task>_rollout_job`
(config `action`), the same job the canary sensor's decisions run, so it shows in the UI's history beside them:
promote (the challenger becomes champion now, all traffic to it), rollback (all traffic to stable; after a
promotion, the previous champion back), pause (weights held, the sensor stops looking), resume.

    add_parser(sub)            # in cli.main, beside the other commands
"""

from __future__ import annotations

import argparse
import getpass

ACTIONS = ("status", "promote", "rollback", "pause", "resume")


def add_parser(sub) -> None:
    rollout = sub.add_parser("rollout", help="a task's rollout: status, or promote / rollback / pause / resume it "
                                             "(each a run of <task>_rollout_job)")
    rollout.add_argument("action", choices=ACTIONS)
    rollout.add_argument("task", help="the task instance's name (`continuum tasks`)")
    rollout.add_argument("--reason", default="", help="recorded with the decision (default: what was done, by hand)")
    rollout.set_defaults(fn=cmd_rollout)


def _task(settings, name: str):
    from continuum_pipeline.cli import configured_tasks

    tasks = configured_tasks(settings)
    for task in tasks:
        if task.name == name:
            return task
    raise SystemExit(f"continuum rollout: no task instance {name!r}; configured: "
                     f"{', '.join(t.name for t in tasks) or 'none (set CONTINUUM_TASKS)'}")


def status(settings, task) -> None:
    from continuum_pipeline.cli import print_table
    from continuum_pipeline.lake.catalog import Lake
    from continuum_pipeline.registry import models
    from continuum_pipeline.rollout import log
    from continuum_pipeline.rollout.arms_file import gateway_task, read_raw

    name = task.registered_model_name
    held = models.aliases(settings.mlflow_uri, name)
    print(f"{task.name}: {name} " + (", ".join(f"{a}=v{v}" for a, v in sorted(held.items())) or "(no versions)"))
    rows = log.read(Lake.from_settings(settings), task)
    if not rows:
        print(f"no rollout yet: {task.name}_canary_sensor starts one when a challenger is registered")
    else:
        r = log.current(rows, rows[-1]["version"])
        print(f"rollout of v{r.version} against v{r.stable_version}: {r.phase}, step {r.step_index} of "
              f"{task.rollout.plan()}, challenger share {r.challenger_weight:.0%}"
              + (f", shadow {r.shadow_sample_rate:.0%}" if r.shadow_sample_rate else "") + f" — {r.reason}")
    entry = read_raw(settings.gateway_arms).get("tasks", {}).get(gateway_task(task))
    if entry:
        print(f"\narms ({settings.gateway_arms}):")
        print_table(["arm", "version", "weight", "base_url"],
                    [[a.get("name"), a.get("model_version", ""), a.get("weight"), a.get("base_url")]
                     for a in entry.get("arms", [])])
    if rows:
        print("\nhistory:")
        print_table(["decided at", "version", "look", "action", "share", "n stable", "n challenger", "reward stable",
                     "reward challenger", "by", "reason"],
                    [[f"{r['decided_at']:%Y-%m-%d %H:%M:%S}", f"v{r['version']}", r["look"], r["action"],
                      f"{r['challenger_weight']:.0%}", r["n_stable"], r["n_challenger"], r["reward_stable"],
                      r["reward_challenger"], r["by"], r["reason"]] for r in rows])


def cmd_rollout(args: argparse.Namespace) -> int:
    from continuum_pipeline.settings import get_settings

    settings = get_settings()
    task = _task(settings, args.task)
    if args.action == "status":
        status(settings, task)
        return 0
    from continuum_pipeline.cli import prepare_home, run_job
    from continuum_pipeline.defs.flywheel.keys import job_name
    from continuum_pipeline.defs.flywheel.rollout import run_config

    prepare_home(settings)
    result = run_job(job_name(task, "rollout"), settings=settings, raise_on_error=False,
                     run_config=run_config(task, args.action, args.reason, by=f"person:{getpass.getuser()}"),
                     tags={"continuum/rollout_action": args.action})
    if not result.success:
        failures = [e.step_failure_data.error.message.strip() for e in result.all_events
                    if e.is_step_failure and e.step_failure_data.error]
        print(f"continuum rollout {args.action} {task.name}: " + ("; ".join(failures) or "the run failed"))
        return 1
    status(settings, task)
    return 0
