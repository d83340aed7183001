"""`continuum`: run the flywheel on the embedded default, open the Dagster UI, inspect the lake."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
from pathlib import Path

from continuum_pipeline.run_guard import POOL_WAIT_EXIT_CODE, Interrupted, PoolWaitTimeout, watching_signals
from continuum_pipeline.settings import Settings, SettingsError, get_settings

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DAGSTER_YAML = """\
# Local Dagster instance: SQLite storage under $DAGSTER_HOME (Dagster's default).
telemetry:
  enabled: false
concurrency:
  pools:
    default_limit: 1
run_monitoring:
  enabled: true
  max_resume_run_attempts: 0
  free_slots_after_run_end_seconds: 30
"""


def prepare_home(settings: Settings) -> None:
    """Create CONTINUUM_HOME and an absolute DAGSTER_HOME inside it, with the instance config."""
    settings.dagster_home.mkdir(parents=True, exist_ok=True)
    settings.landing_dir.mkdir(parents=True, exist_ok=True)
    os.environ.update(settings.as_env())
    target = settings.dagster_home / "dagster.yaml"
    if not target.exists():
        template = REPO_ROOT / ("deploy/dagster.yaml" if settings.profile == "production" else "dagster.yaml")
        if template.exists():
            shutil.copyfile(template, target)
        else:
            target.write_text(DEFAULT_DAGSTER_YAML)


def _instance():
    import dagster as dg

    return dg.DagsterInstance.get()


def run_job(name: str, instance=None, tags: dict[str, str] | None = None, settings: Settings | None = None,
            raise_on_error: bool = True, run_config: dict | None = None):
    """Run one of the code location's jobs as a run of the code location (listed under its job in the UI; see
    runs.py), executed in this process and recorded in the persisted instance, printing through the compact console
    logger. Guarded (run_guard): runs left by dead processes are failed and their pool slots freed, a wait for a pool
    slot says what holds it and gives up after CONTINUUM_POOL_WAIT_SECONDS (PoolWaitTimeout), SIGTERM/SIGINT stop
    the run (Interrupted) and nothing is left holding a slot."""
    from continuum_pipeline import runs
    from continuum_pipeline.defs.loggers import COMPACT_RUN_CONFIG

    settings = settings or get_settings()
    return runs.execute_job(name, instance or _instance(), wait_seconds=settings.pool_wait_seconds,
                            run_config={**COMPACT_RUN_CONFIG, **(run_config or {})}, tags=tags,
                            raise_on_error=raise_on_error)


def print_table(headers: list[str], rows: list[list]) -> None:
    cells = [[("" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))


def cmd_lineage(args: argparse.Namespace) -> int:
    from continuum_pipeline.lake.catalog import Lake
    from continuum_pipeline.registry.lineage import version_lineage, versions_with_interaction

    settings = get_settings()
    lake = Lake.from_settings(settings)
    if args.interaction:
        names = [task.registered_model_name for task in configured_tasks(settings)]
        found = versions_with_interaction(lake, settings.mlflow_uri, names, args.interaction)
        if not found:
            print(f"no model version of {', '.join(names)} was trained on interaction {args.interaction}")
            return 1
        print_table(["model", "version", "aliases", "dataset snapshot"],
                    [[v.name, v.version, ", ".join(v.aliases), v.tags.get("continuum.dataset_snapshot_id")]
                     for v in found])
        return 0
    if not args.model or "@" not in args.model:
        print("continuum lineage: give MODEL@VERSION (e.g. continuum-support@2) or --interaction ID", file=sys.stderr)
        return 2
    name, version = args.model.split("@", 1)
    from mlflow.exceptions import MlflowException

    try:
        lineage = version_lineage(lake, settings.mlflow_uri, name, version)
    except MlflowException as exc:
        if unreachable(exc):
            raise  # main() says which server and which setting
        print(f"continuum lineage: no model version {name}@{version} in {settings.mlflow_uri}; "
              "`continuum tasks` and the MLflow UI list what is registered", file=sys.stderr)
        return 1
    ref = lineage.version
    print(f"{ref.name} v{ref.version}  aliases: {', '.join(ref.aliases) or '-'}")
    print_table(["link", "value"], [
        ["continued from", lineage.parent or "?"],
        ["MLflow run", ref.run_id],
        ["training Dagster run", ref.tags.get("continuum.training_dagster_run_id", "")],
        ["registering Dagster run", ref.tags.get("continuum.dagster_run_id", "")],
        ["task", ref.tags.get("continuum.task", "")],
        ["golden set versions", ref.tags.get("continuum.golden_set_versions", "")],
        ["judge versions", ref.tags.get("continuum.judge_versions", "")],
        ["sft_dataset snapshot", lineage.dataset_snapshot_id],
        ["interactions snapshot", ref.tags.get("continuum.interactions_snapshot_id", "")],
        ["interactions in the dataset", len(lineage.interaction_ids)],
        ["landing segments they came from", len(lineage.segments)],
    ])
    shown = lineage.interaction_ids if args.all else lineage.interaction_ids[:10]
    print("\ninteraction ids" + ("" if args.all else " (first 10; --all for every one)") + ":")
    for iid in shown:
        print(f"  {iid}")
    return 0


def show_lake(settings: Settings) -> None:
    from continuum_pipeline.capture.landing import FAILED_DIR, list_failed, list_ignored, list_segments
    from continuum_pipeline.lake.catalog import Lake

    lake = Lake.from_settings(settings)
    rows = []
    first = ["interactions", "feedback_events", "quarantine"]  # the raw tables, then the rest by name
    names = [] if not lake.catalog.namespace_exists(lake.namespace) else sorted(
        (ident[-1] for ident in lake.catalog.list_tables(lake.namespace)), key=lambda n: (n not in first, n))
    for name in names:
        if lake.table_exists(name):
            table = lake.table(name)
            snap = table.current_snapshot()
            total = int(snap.summary.additional_properties.get("total-records", 0)) if snap and snap.summary else 0
            rows.append([f"{lake.namespace}.{name}", total, len(table.snapshots()), snap.snapshot_id if snap else ""])
    print("What landed in the lake:")
    print_table(["table", "rows", "snapshots", "current snapshot"], rows)
    print(f"landing segments waiting: {len(list_segments(settings.landing_dir))}")
    failed = list_failed(settings.landing_dir)
    if failed:
        print(f"landing segments failed (set aside in landing/{FAILED_DIR}/, reason in the quarantine): {len(failed)}")
    ignored = list_ignored(settings.landing_dir)
    if ignored:  # never ingested: say so, or a misnamed export waits unseen forever
        shown = ", ".join(ignored[:20]) + (f", … ({len(ignored)} in all)" if len(ignored) > 20 else "")
        print(f"ignored files in landing (segments are *.jsonl or *.jsonl.gz): {shown}")
    if lake.table_exists("quarantine"):
        q = lake.read_arrow("quarantine")
        if q.num_rows:
            print("\nQuarantine (raw bytes kept in the table):")
            print_table(["segment", "line", "error", "reason"],
                        [[r["segment"][-36:], r["segment_line"], r["error"], r["reason"][:70]]
                         for r in q.select(["segment", "segment_line", "error", "reason"]).to_pylist()[:10]])
    if lake.table_exists("quality_daily"):
        qd = lake.read_arrow("quality_daily").to_pylist()
        print("\nquality_daily (every task):")
        print_table(["day", "task", "model", "interactions", "mean score", "neg. feedback rate", "p50 ms", "p95 ms",
                     "error rate"],
                    [[r["day"], r.get("task"), r["model"], r["interactions"], r["mean_score"],
                      r["negative_feedback_rate"], r["latency_p50_ms"], r["latency_p95_ms"], r["error_rate"]]
                     for r in qd[-10:]])
    try:
        tasks = configured_tasks(settings)
    except Exception as exc:  # a broken task YAML must not hide the lake's state; `continuum check` explains it
        print(f"\ntasks: cannot load them ({exc}); run `continuum check`")
        tasks = []
    for task in tasks:
        if lake.table_exists(task.table("quality_daily")):
            qd = lake.read_arrow(task.table("quality_daily")).to_pylist()
            print(f"\n{task.name}/quality_daily (its reward, what its sensors watch):")
            print_table(["day", "model", "version", "interactions", "mean reward", "neg. feedback rate"],
                        [[r["day"], r["model"], r["model_version"], r["interactions"], r["mean_reward"],
                          r["negative_feedback_rate"]] for r in qd[-10:]])
        if lake.table_exists(task.table("drift_daily")):
            dd = sorted(lake.read_arrow(task.table("drift_daily")).to_pylist(), key=lambda r: r["day"])
            print(f"\n{task.name}/drift_daily (the latest day's user turns vs the champion's training data):")
            print_table(["day", "champion", "slice PSI", "centroid dist.", "n today", "n trained", "fired"],
                        [[r["day"], r["champion_version"], r["psi"], r["centroid_distance"], r["n_today"],
                          r["n_trained"], r["fired"]] for r in dd[-10:]])


UI_GRACE_SECONDS = 6.0  # after SIGTERM/SIGINT, how long `dg dev` gets to stop its services before the group is killed


def cmd_ui(args: argparse.Namespace) -> int:
    settings = get_settings()
    prepare_home(settings)
    # `dg dev` is the supported successor of `dagster dev`; -m keeps the code location name of earlier homes
    dg_bin = Path(sys.executable).with_name("dg")
    cmd = [str(dg_bin) if dg_bin.exists() else shutil.which("dg") or "dg", "dev",
           "-m", "continuum_pipeline.definitions", "--host", args.host, "--port", str(args.port)]
    print(f"Dagster UI on http://{args.host}:{args.port}  (DAGSTER_HOME={settings.dagster_home})", flush=True)
    return supervise(cmd, UI_GRACE_SECONDS)


def supervise(cmd: list[str], grace: float) -> int:
    """Run `cmd` in its own process group until it exits or SIGTERM/SIGINT arrives; then forward SIGINT (Dagster
    shuts its webserver, daemon and code server down on it), wait `grace` seconds and kill whatever of the group,
    or of the child's descendants, is left: `dagster dev` alone waits a minute per stuck service."""
    import signal
    import subprocess

    import psutil

    received: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: received.append(signum))
                for s in (signal.SIGTERM, signal.SIGINT)}
    proc = subprocess.Popen(cmd, start_new_session=True)  # Ctrl-C reaches only us; we stop the group as one
    family: set[psutil.Process] = set()
    try:
        while proc.poll() is None and not received:
            with contextlib.suppress(psutil.Error):  # remember descendants: one may leave the group
                family.update(psutil.Process(proc.pid).children(recursive=True))
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.5)
        if received:
            print(f"continuum ui: {signal.Signals(received[0]).name}: stopping Dagster", file=sys.stderr, flush=True)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace)
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            for p in family:
                with contextlib.suppress(psutil.Error):
                    p.send_signal(sig)
            if proc.poll() is None:
                with contextlib.suppress(psutil.Error):
                    family.add(psutil.Process(proc.pid))
            _gone, alive = psutil.wait_procs(family, timeout=2)
            if not alive:
                break
        proc.wait()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 128 + received[0] if received else proc.returncode


def cmd_job(job: str):
    """A command that runs one job in the persisted instance, then shows the lake."""

    def run(args: argparse.Namespace) -> int:
        settings = get_settings()
        prepare_home(settings)
        run_job(job)
        show_lake(settings)
        return 0

    return run


def cmd_status(args: argparse.Namespace) -> int:
    show_lake(get_settings())
    return 0


def cmd_settings(args: argparse.Namespace) -> int:
    s = get_settings()
    print_table(["setting", "value"], [[k, v] for k, v in s.as_env().items()])
    return 0


def configured_tasks(settings: Settings) -> list:
    """The task instances of this code location (CONTINUUM_TASKS), validated."""
    from continuum_pipeline.definitions import task_yaml_files
    from continuum_pipeline.task.config import load_task_config

    return [load_task_config(f) for f in task_yaml_files(settings.tasks)]


def cmd_tasks(args: argparse.Namespace) -> int:
    from continuum_pipeline.lake.catalog import Lake
    from continuum_pipeline.task.doctor import tasks_in_lake

    settings = get_settings()
    seen = tasks_in_lake(Lake.from_settings(settings))
    if not seen:
        print("the lake has no interactions yet: capture traffic (@capture, the OTLP receiver, the gateway) and run "
              "`continuum ingest`")
        return 0
    instances = {task.select.task or task.name: task.name for task in configured_tasks(settings)}
    print_table(["task", "interactions", "feedback rate", "models", "consent granted", "consent unknown",
                 "first seen", "last seen", "instance"],
                [[r["task"], r["interactions"], f"{r['feedback_rate']:.0%}", r["models"], r["consent_granted"],
                  r["consent_unknown"], f"{r['first_seen']:%Y-%m-%d}", f"{r['last_seen']:%Y-%m-%d}",
                  instances.get(r["task"], f"none: continuum init {r['task']}")] for r in seen])
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    import re

    from continuum_pipeline.task.scaffold import render_template

    name = re.sub(r"[^a-z0-9_]+", "_", args.task.lower()).strip("_")
    if not name or not name[0].isalpha():
        name = f"task_{name}"
    folder = Path(args.into) / name
    target = folder / "defs.yaml"
    if target.exists():
        print(f"continuum init: {target} exists; edit it, or pick another --into folder", file=sys.stderr)
        return 1
    text = render_template(name, captured_task=args.task)
    folder.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    print(f"wrote {target}: fill in its judges, golden set and gate, then `CONTINUUM_TASKS={folder.parent} continuum "
          "check`. In a dg project: `dg scaffold defs continuum_pipeline.FlywheelComponent " + name + "`.")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from continuum_pipeline.definitions import task_yaml_files
    from continuum_pipeline.lake.catalog import Lake
    from continuum_pipeline.task.doctor import check_tasks

    settings = get_settings()
    files = task_yaml_files(tuple(Path(p).resolve() for p in args.paths) or settings.tasks)
    if not files:
        print("continuum check: no task YAML found; `continuum init TASK` writes one", file=sys.stderr)
        return 1
    lake = Lake.from_settings(settings)
    results = check_tasks(files, lake if lake.table_exists("interactions") else None)
    for result in results:
        name = result.task.name if result.task else "?"
        print(f"{result.source}  (task {name}): {'ok' if result.ok else 'NOT READY'}")
        for f in result.findings:
            print(f"  {f.level:<7} {f.where}: {f.message}")
    return 0 if all(r.ok for r in results) else 1


def cmd_privacy_report(args: argparse.Namespace) -> int:
    from continuum_pipeline.lake.catalog import Lake
    from continuum_pipeline.privacy.report import privacy_report
    from continuum_pipeline.privacy.rules import PrivacyRuleError

    settings = get_settings()
    try:
        report = privacy_report(Lake.from_settings(settings), configured_tasks(settings), args.task, args.days)
    except (PrivacyRuleError, ValueError) as exc:
        print(f"continuum privacy report: {exc}", file=sys.stderr)
        return 1
    print_table(*report.table())
    if report.deletions:
        print("\ndeletions")
        print_table(*report.deletions_table())
    for note in report.notes:
        print(f"note: {note}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from continuum_pipeline.server.app import serve

    settings = get_settings()
    prepare_home(settings)
    print(f"continuum serve on http://{args.host}:{args.port}  (OTLP /v1/traces, Langfuse /api/public/*, "
          f"gateway /v1/chat/completions; landing {settings.landing_dir})", flush=True)
    serve(settings, host=args.host, port=args.port, model_dir=args.model_dir, threads=args.threads)
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    """The forget_job as a supervised run (SIGTERM stops it; a rerun or --resume finishes it), then the receipts."""
    from datetime import UTC, datetime

    from continuum_pipeline.lake.catalog import Lake
    from continuum_pipeline.privacy.forget import read_receipts

    if not (args.user or args.session or args.interaction or args.resume):
        print("continuum forget: give --user, --session or --interaction ids (repeatable), or --resume to finish "
              "interrupted requests", file=sys.stderr)
        return 2
    settings = get_settings()
    prepare_home(settings)
    config = {"users": args.user, "sessions": args.session, "interactions": args.interaction,
              "requested_by": args.requested_by}
    started = datetime.now(UTC)
    result = run_job("forget_job", tags={"continuum/trigger": "cli:forget"}, settings=settings, raise_on_error=False,
                     run_config={"ops": {"forget": {"config": config}}})
    for receipt in [r for r in read_receipts(Lake.from_settings(settings)) if r["completed_at"] >= started]:
        print(f"deletion receipt {receipt['receipt_id']} ({receipt['rows_removed']} rows removed; requested by "
              f"{receipt['requested_by']})")
        tables = json.loads(receipt["tables"])
        print_table(["table", "rows removed", "files rewritten", "snapshot before", "snapshot after"],
                    [[n, t["rows_removed"], t["files_rewritten"], t["snapshot_before"], t["snapshot_after"]]
                     for n, t in sorted(tables.items()) if t["rows_removed"]])
        affected = json.loads(receipt["affected_versions"])
        print("model versions trained or evaluated on the deleted data (tagged continuum.trained_on_deleted_data): "
              + (", ".join(f"{a['model']}@{a['version']}" for a in affected) or "none"))
    return 0 if result.success else 1


def plugin_commands(sub) -> None:
    """Commands other packages add through `continuum.commands` entry points (the example app adds `demo`)."""
    from importlib.metadata import entry_points

    for entry in entry_points(group="continuum.commands"):
        entry.load()(sub)


def unreachable(exc: BaseException) -> bool:
    """Whether an error (or what caused it) is a refused / timed-out / unresolvable connection."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ConnectionError | TimeoutError) or type(exc).__name__ in (
                "ConnectError", "ConnectTimeout", "NewConnectionError", "MaxRetryError"):
            return True
        # MLflow's REST client folds the requests error into its message and drops the cause
        if type(exc).__name__ == "MlflowException" and any(
                m in str(exc) for m in ("Failed to establish a new connection", "Max retries exceeded",
                                        "Connection refused", "Read timed out")):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def error_line(exc: BaseException, command: str) -> str:
    """One readable line with the fix, for an error a command did not explain itself."""
    import re

    if unreachable(exc):
        url = re.search(r"https?://[^\s/'\"]+", str(exc))
        where = url.group(0) if url else "a server"
        text = str(exc).lower()
        settings_hint = ("the judge's base_url in the task YAML" if "judge" in text else
                         "CONTINUUM_MLFLOW_URI" if "mlflow" in text else "the endpoint in the settings")
        return (f"continuum {command}: cannot reach {where}: start that server, or point {settings_hint} at one "
                "that runs (`continuum settings` shows what is in effect)")
    while type(exc).__name__ == "DagsterExecutionStepExecutionError" and exc.__cause__ is not None:
        exc = exc.__cause__  # "Error occurred while executing op …": the op's own error says what to do
    if type(exc).__name__ == "Failure":  # dagster.Failure: written for a person already
        return f"continuum {command}: {' '.join(str(getattr(exc, 'description', '') or exc).split())}"
    message = " ".join(str(exc).split()) or type(exc).__name__
    return f"continuum {command}: {type(exc).__name__}: {message}  (--debug shows the traceback)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="continuum", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (default: one line)")
    sub = parser.add_subparsers(dest="command", required=True)
    plugin_commands(sub)
    from continuum_pipeline.rollout.cli import add_parser as add_rollout_parser

    add_rollout_parser(sub)
    sub.add_parser("tasks", help="the tasks the lake has seen: counts, feedback rate, models, instance").set_defaults(
        fn=cmd_tasks)
    init = sub.add_parser("init", help="write a commented task YAML (FlywheelComponent instance) for TASK")
    init.add_argument("task", help="a task name from `continuum tasks`")
    init.add_argument("--into", default="tasks", help="folder to write TASK/defs.yaml into (default ./tasks)")
    init.set_defaults(fn=cmd_init)
    check = sub.add_parser("check", help="validate every task instance and say what is missing, before running")
    check.add_argument("paths", nargs="*", help="task YAML files or folders (default: CONTINUUM_TASKS)")
    check.set_defaults(fn=cmd_check)
    lineage = sub.add_parser("lineage", help="MODEL@VERSION → its dataset and interactions; or --interaction ID")
    lineage.add_argument("model", nargs="?", help="e.g. continuum-support@2")
    lineage.add_argument("--interaction", help="list the model versions whose datasets held this interaction")
    lineage.add_argument("--all", action="store_true", help="print every interaction id")
    lineage.set_defaults(fn=cmd_lineage)
    serve = sub.add_parser("serve", help="the OTLP / Langfuse receiver and the OpenAI-compatible gateway")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=4318)
    serve.add_argument("--model-dir", action="append",
                       help="also serve a local model as an upstream arm (repeatable): a Hugging Face folder, or "
                            "ALIAS:MODEL_NAME for the registry version holding that alias (champion:NAME, "
                            "challenger:NAME), each at /local/<alias or folder name>/v1; a single one also at "
                            "/local/v1 (default: none)")
    serve.add_argument("--threads", type=int, default=None,
                       help="torch threads for local generation (default CONTINUUM_SERVE_THREADS, else min(2, CPUs))")
    serve.set_defaults(fn=cmd_serve)
    ui = sub.add_parser("ui", help="open the Dagster UI (and daemon: sensors, schedules) on this home")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=3000)
    ui.set_defaults(fn=cmd_ui)
    sub.add_parser("ingest", help="ingest waiting landing segments now").set_defaults(fn=cmd_job("ingest_job"))
    sub.add_parser("maintain", help="compact and expire the lake tables now").set_defaults(
        fn=cmd_job("lake_maintenance_job"))
    forget = sub.add_parser("forget", help="delete a person's data everywhere, physically, with a receipt")
    forget.add_argument("--user", action="append", default=[], help="a user_id to forget (repeatable)")
    forget.add_argument("--session", action="append", default=[], help="a session_id to forget (repeatable)")
    forget.add_argument("--interaction", action="append", default=[], help="an interaction_id (repeatable)")
    forget.add_argument("--requested-by", help="who asked, for the receipt (default: the OS user)")
    forget.add_argument("--resume", action="store_true", help="finish requests a crash or a stop left pending")
    forget.set_defaults(fn=cmd_forget)
    sub.add_parser("status", help="row counts, quarantine and quality_daily").set_defaults(fn=cmd_status)
    sub.add_parser("settings", help="the settings in effect").set_defaults(fn=cmd_settings)
    privacy = sub.add_parser("privacy", help="privacy reports").add_subparsers(dest="privacy_command", required=True)
    report = privacy.add_parser("report", help="per task and day: interactions carrying each PII kind, consent mix, "
                                               "what each exclusion rule matched, deletions performed")
    report.add_argument("--task", help="one task instance (default: all)")
    report.add_argument("--days", type=int, default=30, help="the last N days, today included (default 30)")
    report.set_defaults(fn=cmd_privacy_report)
    args = parser.parse_args(argv)
    try:
        if args.command == "ui":  # it handles the signals itself, for its children: see supervise()
            return args.fn(args)
        with watching_signals():  # SIGTERM/SIGINT end every command within seconds, runs included
            return args.fn(args)
    except SettingsError as exc:
        print(f"continuum: {exc}", file=sys.stderr)
        return 2
    except PoolWaitTimeout as exc:
        print(f"continuum: {exc}", file=sys.stderr)
        return POOL_WAIT_EXIT_CODE
    except Interrupted as exc:
        print(f"continuum: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:
        if args.debug:
            raise
        print(error_line(exc, args.command), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
