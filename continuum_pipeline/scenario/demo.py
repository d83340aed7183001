"""`continuum demo`: the whole flywheel on a CPU, through real Dagster runs in the persisted instance.

Simulated days (traffic carries its own timestamps, so quality_daily has a history):
  days 1–3  the teacher (the expensive production model) serves; users rate, agents edit, tickets reopen
  cycle 1   ingest → reward labels → SQL → curated dataset → LoRA SFT from the base → eval gate → v1 (champion)
  days 4–5  v1 serves
  day 6     the policy changes: some intents get new answers and more traffic
  days 6–7  v1 still serves: its stale answers show in ratings, edits and reopened tickets
  cycle 2   launched by the quality-drop sensor's own tick → v2, gated against v1, promoted to champion
Then every version answers the golden set: the learning curve, printed and written as JSON.

The demo drives a copy of the support desk's task (scenario/defs/support_desk/defs.yaml, with no cooldown: a week
passes in minutes) through the same jobs and sensors a user's task gets, as runs of the code location that the
UI lists under their jobs: `ingest_job`, `support_answer_training_job`, `support_answer_monitoring_job`, and the
sensors evaluated through Dagster's sensor-daemon tick (their ticks, cursors and run keys are in the UI).
`continuum demo` comes from this module through the `continuum.commands` entry point.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from continuum_pipeline.settings import Settings, get_settings
from continuum_pipeline.task.config import TaskConfig, load_task_config


@dataclass
class DemoSize:
    teacher_per_day: int = 250
    student_per_day: int = 150
    after_change_per_day: int = 250


@dataclass
class DemoReport:
    cycles: list[dict] = field(default_factory=list)
    curve: list[dict] = field(default_factory=list)
    gates: list[dict] = field(default_factory=list)  # the eval gate's verdict per training cycle
    targets: dict[str, bool] = field(default_factory=dict)
    seconds: float = 0.0
    phase: str = "before"  # the knowledge base the learning curve was measured against


def _say(text: str) -> None:
    print(text, flush=True)


def _gates(result, gates: list[dict]) -> None:
    """Keep the eval gate's verdict (its metadata) from a run's events."""
    for event in result.all_events:
        if event.event_type_value == "ASSET_CHECK_EVALUATION":
            check = event.event_specific_data
            meta = {k: getattr(v, "value", v) for k, v in check.metadata.items()}
            gates.append({"passed": check.passed, "champion": meta.get("champion"),
                          "candidate_accuracy": meta.get("accuracy_candidate"),
                          "champion_accuracy": meta.get("accuracy_champion"),
                          "failed_rows": meta.get("failed_slices"), "table": meta.get("slices")})


def _run(settings: Settings, job: str, tags: dict[str, str] | None = None, gates: list[dict] | None = None,
         run_config: dict | None = None) -> bool:
    """Run a job of the code location (listed under it in the UI); with `gates`, keep the eval gate's verdict."""
    from continuum_pipeline.cli import run_job

    started = time.perf_counter()
    result = run_job(job, tags={"continuum/source": "demo", **(tags or {})}, settings=settings, raise_on_error=False,
                     run_config=run_config)
    _say(f"    {job}: {'ok' if result.success else 'FAILED'} in {time.perf_counter() - started:.0f}s "
         f"(run {result.run_id[:8]})")
    if gates is not None:
        _gates(result, gates)
    return result.success


def _tick(settings: Settings, sensors: list[str], gates: list[dict] | None = None) -> list:
    """Evaluate sensors through the daemon's tick function, in this order (due now: the demo's clock runs faster
    than their 5-minute interval); execute the runs they requested."""
    import dagster as dg

    from continuum_pipeline import runs

    instance = dg.DagsterInstance.get()
    ticks = runs.tick_sensors(instance, sensors, due=True)
    for tick in ticks:
        what = (f"launched run {', '.join(r[:8] for r in tick.run_ids)}" if tick.run_ids else
                "skipped" if tick.status == "SKIPPED" else tick.status.lower())
        _say(f"    {tick.sensor}: {what} — {tick.reason or _run_reason(instance, tick.run_ids)}")
    requested = [r for tick in ticks for r in tick.run_ids]
    for run_id, result in runs.execute_queued(instance, requested, wait_seconds=settings.pool_wait_seconds).items():
        run = instance.get_run_by_id(run_id)
        also = [k.removeprefix("continuum/also/") for k in run.tags if k.startswith("continuum/also/")]
        _say(f"    {run.job_name} (run {run_id[:8]}, launched by {run.tags.get('dagster/sensor_name')}"
             + (f"; also wanted by {', '.join(also)}" if also else "") + f"): {'ok' if result.success else 'FAILED'}")
        if gates is not None:
            _gates(result, gates)
    return ticks


def _run_reason(instance, run_ids: list[str]) -> str:
    run = instance.get_run_by_id(run_ids[0]) if run_ids else None
    return run.tags.get("continuum/reason", "") if run else ""


def run_demo(scenario_path: str | None, json_out: Path | None, size: DemoSize | None = None) -> DemoReport:
    from continuum_pipeline import capture
    from continuum_pipeline.cli import prepare_home
    from continuum_pipeline.registry import models
    from continuum_pipeline.scenario import example, simulate_traffic
    from continuum_pipeline.serving.generate import Generator

    size = size or DemoSize()
    started = time.perf_counter()
    os.environ["CONTINUUM_SCENARIO_PHASE"] = "before"
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per model copy clutters the story
    if scenario_path:
        os.environ["CONTINUUM_SCENARIO"] = str(Path(scenario_path).resolve())
    # A copy of the packaged task with no cooldown between trainings: the demo's week passes in minutes.
    task_yaml = example.write_task(get_settings().home / "demo-task" / "support_desk",
                                   os.environ.get("CONTINUUM_SCENARIO"), triggers={"cooldown_hours": 0})
    os.environ["CONTINUUM_TASKS"] = str(task_yaml)
    settings = get_settings()
    prepare_home(settings)
    task = load_task_config(task_yaml)
    desk = example.desk()
    capture.configure(settings.landing_dir)
    report = DemoReport()
    day0 = datetime.now(UTC).replace(hour=9, minute=0, second=0, microsecond=0) - timedelta(days=7)
    _say(f"Continuum demo — scenario {desk.scenario.name!r}, home {settings.home}")

    def traffic(day: int, n: int, phase: str, serve, model: str, version: str | None, who: str):
        stats = simulate_traffic(desk, n, phase, serve, model=model, model_version=version, who=who,
                                 seed=desk.scenario.seed + day, start=day0 + timedelta(days=day - 1))
        capture.flush()
        _say(f"    day {day}: {stats.requests} requests served by {model}{' v' + version if version else ''}: "
             f"{stats.correct / max(stats.requests, 1):.0%} correct, {stats.feedback_events} feedback events")
        return stats

    # --- days 1-3: the teacher serves -------------------------------------------------------------
    _say("\nDays 1–3: the teacher model serves production traffic (captured with @capture + feedback.record)")
    for day in (1, 2, 3):
        traffic(day, size.teacher_per_day, "before", desk.teacher_serve("before", seed=day), "teacher", None, "teacher")
    bad = write_broken_producer_segment(settings.landing_dir)
    _say(f"    an importer also dropped a segment with {bad} malformed lines (they go to quarantine, kept)")

    # --- cycle 1 ----------------------------------------------------------------------------------
    _say("\nCycle 1: ingest → labels → SQL → curated dataset → base model → LoRA SFT → eval gate → registry")
    _run(settings, "ingest_job")
    ok = _run(settings, f"{task.name}_training_job", {"continuum/trigger": "demo: first distillation"},
              gates=report.gates)
    v1 = models.champion(settings.mlflow_uri, task.registered_model_name)
    if not ok or v1 is None:
        # The gate did its job: a student that is worse than the base on some slice is not registered.
        _say("    the candidate did not pass the eval gate against the base model: nothing was registered "
             "(the per-slice table is on the eval_gate check in `continuum ui`)")
        report.cycles.append({"cycle": 1, "trigger": "first distillation", "registered": None})
        return _finish(report, settings, task, desk, json_out, started)
    report.cycles.append({"cycle": 1, "trigger": "first distillation", "registered": v1.version})
    _say(f"    v{v1.version} passed the gate and is the champion")

    # --- days 4-5: v1 serves; the policy changes on day 6 -----------------------------------------
    cache = _task_dir(settings, task) / "registry"
    student = Generator.from_pretrained(models.model_dir(settings.mlflow_uri, v1, cache))
    _say(f"\nDays 4–5: v{v1.version} serves")
    for day in (4, 5):
        traffic(day, size.student_per_day, "before", student.generate, "student", v1.version, "student")
    # Production labels as it goes (landing sensor + eager reward_labels): v1's days are judged by the KB of their day.
    _run(settings, "ingest_job")
    _run(settings, f"{task.name}_monitoring_job")
    _say(f"\nDay 6: the policy changes for {', '.join(sorted(desk.changed_intents))}; traffic shifts toward them")
    os.environ["CONTINUUM_SCENARIO_PHASE"] = "after"
    settings = get_settings()
    for day in (6, 7):
        traffic(day, size.after_change_per_day, "after", student.generate, "student", v1.version, "student")

    # --- cycle 2, launched by the quality-drop sensor's tick ----------------------------------------
    _say("\nMonitoring: ingest → relabel under the new knowledge base → quality_daily")
    _run(settings, "ingest_job")
    _run(settings, f"{task.name}_monitoring_job")
    _say("\nThe training sensors tick (Dagster's sensor-daemon tick, as under `continuum ui`):")
    training_sensors = [f"{task.name}_{kind}_sensor" for kind in ("quality_drop", "error_rate", "sample_count")]
    ticks = _tick(settings, training_sensors, gates=report.gates)
    launched = next((t for t in ticks if t.run_ids), None)
    if launched is not None:
        latest = models.versions(settings.mlflow_uri, task.registered_model_name)[-1]
        if latest.version != v1.version:
            report.cycles.append({"cycle": 2, "trigger": f"{launched.sensor}: {launched.reason}",
                                  "registered": latest.version})
            if "challenger" in latest.aliases:
                _promote(settings, task, latest.version, f"cycle 2 passed the gate against v{v1.version}")
        else:
            report.cycles.append({"cycle": 2, "trigger": launched.sensor, "registered": None})
            _say("    the candidate failed the eval gate: nothing registered (see the check in the UI)")
        _say("\nThe same sensors again, with no new traffic: nothing retrains on unchanged data")
        _tick(settings, training_sensors)

    return _finish(report, settings, task, desk, json_out, started)


def _promote(settings: Settings, task: TaskConfig, version: str, reason: str) -> None:
    """Promotion is a Dagster run (the task's promotion job): its events state the aliases as they are."""
    ok = _run(settings, f"{task.name}_promotion_job", {"continuum/trigger": "demo: gate passed"},
              run_config={"ops": {f"{task.name}__promote": {"config": {"version": version, "reason": reason}}}})
    if ok:
        _say(f"    v{version} promoted to champion ({reason})")


def _task_dir(settings: Settings, task: TaskConfig) -> Path:
    return settings.home / "tasks" / task.name


def _finish(report: DemoReport, settings: Settings, task: TaskConfig, desk, json_out: Path | None,
            started: float) -> DemoReport:
    from continuum_pipeline.scenario import example

    report.curve = learning_curve(settings, task, desk)
    report.phase = example.phase()
    report.seconds = time.perf_counter() - started
    report.targets = targets(report.curve)
    print_curve(report)
    _print_curve_asset(settings, task)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps({"cycles": report.cycles, "curve": report.curve, "gates": report.gates,
                                        "targets": report.targets,
                                        "seconds": round(report.seconds, 1)}, indent=2, default=str))
        _say(f"\nwrote {json_out}")
    _say(f"\nSee the runs, assets, checks and lineage: CONTINUUM_HOME={settings.home} continuum ui   (or: make ui)")
    return report


def _print_curve_asset(settings: Settings, task: TaskConfig) -> None:
    """The task's learning_curve asset as the UI shows it (the gate's judges on its golden sets, per slice)."""
    from continuum_pipeline.cli import print_table
    from continuum_pipeline.defs.flywheel.curve import learning_curve_table
    from continuum_pipeline.evaluation.curve import slice_columns

    rows = learning_curve_table(settings, task, say=lambda *_: None)
    if not rows:
        return
    columns = [c for c in slice_columns(rows)
               if c in ("all", "intent_group=unchanged_intents", "intent_group=changed_intents")]
    _say(f"\n{task.name}/learning_curve (the asset in the UI, with per-slice and cost–quality plots), "
         "the golden set as the gate judges it:")
    print_table(["model", *columns, "prod. mean reward", "cost/query $"],
                [[r["model"], *[_pct(r.get(c)) for c in columns], r.get("production_mean_reward"),
                  r.get("cost_per_query_usd")] for r in rows])


def write_broken_producer_segment(landing: Path) -> int:
    """A segment as a buggy producer might write it: good lines mixed with each kind of bad one."""
    good = ('{"v":1,"kind":"feedback","feedback_id":"import-1","interaction_id":"import-x","ts":"2026-01-01T00:00:00Z",'
            '"score":1.0,"source":"import"}')
    lines = [
        good.encode(),
        b'{"v":1,"kind":"interaction","interaction_id":"import-2","ts":"2026-01-01T00:00:00Z"}',  # missing fields
        b'{"v":1,"kind":"feedback","feedback_id":"import-3","interaction_id":"x","ts":"2026-01-01T00:00:00Z",'
        b'"score":"great","source":"import"}',  # wrong type
        b'{"v":1,"kind":"feedback", "feedback_id": oops}',  # invalid JSON
        b'{"v":7,"kind":"feedback"}',  # unknown schema version
        b'{"v":1,"kind":"feedback","feedback_id":"import-4","interaction_id":"\xff\xfe","ts":"2026-01-01T00:00:00Z",'
        b'"source":"import","score":0.5}',  # invalid UTF-8
    ]
    landing.mkdir(parents=True, exist_ok=True)
    name = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-import-broken-producer.jsonl"
    tmp = landing / f".{name}.tmp"
    tmp.write_bytes(b"\n".join(lines) + b"\n")
    tmp.replace(landing / name)
    return len(lines) - 1


def learning_curve(settings: Settings, task: TaskConfig, desk) -> list[dict]:
    """Golden-set success per slice for the teacher, the base model and every registered version."""
    from continuum_pipeline.evaluation import golden
    from continuum_pipeline.lake.catalog import Lake
    from continuum_pipeline.registry import models
    from continuum_pipeline.scenario import example

    phase = example.phase()
    items, expected_phase = [], []
    for item in desk.golden_set():
        changed = item.intent in desk.changed_intents
        if (changed and item.phase == phase) or (not changed and item.phase == "before"):
            group = "changed_intents" if changed else "unchanged_intents"
            items.append(golden.GoldenItem(item.golden_id, (item.intent, group, "all"), item.messages, (), {}))
            expected_phase.append((item, phase))
    scored = len(items)
    # After the change, the changed intents are also asked for their old answers: what v1 knew before it went stale.
    if phase == "after":
        for item in desk.golden_set():
            if item.intent in desk.changed_intents and item.phase == "before":
                items.append(golden.GoldenItem(item.golden_id, ("changed_intents_before",), item.messages, (), {}))
                expected_phase.append((item, "before"))
    rewards = _production(Lake.from_settings(settings), task)
    rows = []
    teacher = {p: desk.teacher_serve(p, seed=12345) for p in ("before", "after")}
    teacher_answers = [teacher[p]([item.messages])[0] for item, p in expected_phase]
    entries = [("teacher", None, teacher_answers), ("base", _task_dir(settings, task) / "base", None)]
    registered = models.versions(settings.mlflow_uri, task.registered_model_name) if _has_model(settings, task) else []
    for ref in registered:
        entries.append((f"v{ref.version}", models.model_dir(settings.mlflow_uri, ref, _task_dir(settings, task) / "registry"),
                        None))
    trained = sorted((_task_dir(settings, task) / "runs").glob("*/candidate/merged"), key=lambda p: p.stat().st_mtime)
    if trained and len(trained) > len(registered):  # the newest candidate was blocked by the gate
        entries.append(("candidate (rejected)", trained[-1], None))
    for name, path, answers in entries:
        answers = answers if answers is not None else golden.answer(path, items)
        rates = _success_rates(desk, items, expected_phase, answers)
        served = rewards.get("teacher" if name == "teacher" else name.removeprefix("v"), {})
        who = "teacher" if name == "teacher" else "student"
        tokens = sum(desk.estimated_tokens(m["content"]) for ex in items[:scored] for m in ex.messages) / scored
        out_tokens = sum(desk.estimated_tokens(a) for a in answers[:scored]) / scored
        rows.append({"model": name, "unchanged_intents": rates.get("unchanged_intents"),
                     "changed_intents": rates.get("changed_intents"),
                     "changed_intents_before": rates.get("changed_intents_before"), "all": rates.get("all"),
                     "production_mean_reward": served.get("mean_reward"),
                     "production_interactions": served.get("interactions", 0),
                     "cost_per_query_usd": desk.cost_usd(round(tokens), round(out_tokens), who),
                     "slices": rates})
    return rows


def _success_rates(desk, items, expected_phase, answers) -> dict[str, float]:
    by_slice: dict[str, list[bool]] = {}
    for ex, (item, phase), answer in zip(items, expected_phase, answers, strict=True):
        ok = desk.check(answer, {"intent": item.intent, "slots": item.slots, "phase": phase})[0] >= 0.5
        for s in ex.slices:
            by_slice.setdefault(s, []).append(ok)
    return {s: sum(v) / len(v) for s, v in sorted(by_slice.items())}


def _has_model(settings: Settings, task: TaskConfig) -> bool:
    from continuum_pipeline.registry import models

    try:
        return bool(models.client(settings.mlflow_uri).search_registered_models(
            f"name = '{task.registered_model_name}'"))
    except Exception:  # no MLflow database yet
        return False


def _production(lake, task: TaskConfig) -> dict[str, dict]:
    """Mean response reward in production per served model version (the teacher has none)."""
    if not lake.table_exists(task.table("interaction_rewards")):
        return {}
    t = lake.read_arrow(task.table("interaction_rewards"))
    out: dict[str, dict] = {}
    for r in t.group_by(["model", "model_version"]).aggregate([("response_reward", "mean"),
                                                               ("interaction_id", "count")]).to_pylist():
        key = "teacher" if r["model"] == "teacher" else r["model_version"]
        out[key] = {"mean_reward": r["response_reward_mean"], "interactions": r["interaction_id_count"]}
    return out


def targets(curve: list[dict]) -> dict[str, bool]:
    by = {r["model"]: r for r in curve}
    versions = [r for r in curve if r["model"].startswith("v")]
    out = {"cycle 1 registered a student (passed the gate)": bool(versions)}
    if versions and by.get("teacher"):
        v1 = versions[0]
        out["v1 >= 90% of teacher on unchanged intents"] = (
            (v1["unchanged_intents"] or 0) >= 0.9 * (by["teacher"]["unchanged_intents"] or 0))
    if len(versions) >= 2:
        v1, v2 = versions[0], versions[-1]
        out["v2 >= 80% on changed intents"] = (v2["changed_intents"] or 0) >= 0.8
        out["v2 unchanged intents drop <= 3 points"] = (v2["unchanged_intents"] or 0) >= (v1["unchanged_intents"] or 0) - 0.03
    return out


def print_curve(report: DemoReport) -> None:
    from continuum_pipeline.cli import print_table

    _say(f"\nLearning curve — golden-set success rate (knowledge base {report.phase} the policy change):")
    print_table(["model", "unchanged intents", "changed intents", "changed, old answers", "all", "prod. mean reward",
                 "prod. interactions", "cost/query $"],
                [[r["model"], _pct(r["unchanged_intents"]), _pct(r["changed_intents"]),
                  _pct(r.get("changed_intents_before")), _pct(r["all"]),
                  r["production_mean_reward"], r["production_interactions"], f"{r['cost_per_query_usd']:.6f}"]
                 for r in report.curve])
    if report.gates:
        _say("\nEval gate per cycle (accuracy on the golden set; a slice fails on a significant regression, Holm):")
        print_table(["cycle", "champion", "champion acc.", "candidate acc.", "failing metric × slice rows", "verdict"],
                    [[i, g["champion"], _pct(g["champion_accuracy"]), _pct(g["candidate_accuracy"]), g["failed_rows"],
                      "pass: registered" if g["passed"] else "FAIL: blocked"] for i, g in enumerate(report.gates, 1)])
    _say("\nTargets: " + "; ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in report.targets.items()))
    _say(f"Demo took {report.seconds / 60:.1f} min")


def _pct(v: float | None) -> str:
    return "" if v is None else f"{v:.0%}"
