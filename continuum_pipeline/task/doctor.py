"""What a team starting with its own data needs before anything runs: which tasks the lake has seen
(`continuum tasks`), and whether every task instance is complete and reachable (`continuum check`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from continuum_pipeline.task.config import TaskConfig, TaskConfigError, load_task_config


def tasks_in_lake(lake) -> list[dict]:
    """Per captured `task` name: interactions, feedback rate, models, consent, first and last seen."""
    import duckdb

    if not lake.table_exists("interactions"):
        return []
    con = duckdb.connect()
    lake.register_duckdb(con, "interactions", "interactions")
    lake.register_duckdb(con, "feedback_events", "feedback_events")
    cursor = con.execute("""
        with rated as (select distinct interaction_id from feedback_events)
        select coalesce(i.task, '(none)') as task, count(*) as interactions,
               count(r.interaction_id)::double / count(*) as feedback_rate,
               string_agg(distinct i.model, ', ' order by i.model) as models,
               count(*) filter (where i.consent = 'granted') as consent_granted,
               count(*) filter (where i.consent = 'unknown') as consent_unknown,
               min(i.ts) as first_seen, max(i.ts) as last_seen
        from interactions as i left join rated as r using (interaction_id)
        group by all order by interactions desc
    """)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


@dataclass
class Finding:
    level: str  # "error" | "warning" | "ok"
    where: str  # the YAML path, e.g. judges[0] (quality)
    message: str


@dataclass
class TaskCheck:
    source: Path
    task: TaskConfig | None = None
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(f.level == "error" for f in self.findings)

    def add(self, level: str, where: str, message: str) -> None:
        self.findings.append(Finding(level, where, message))


def check_tasks(files: Sequence[Path], lake=None, timeout: float = 3.0) -> list[TaskCheck]:
    """Validate every task instance and say what is missing, before anything runs."""
    results, names, models = [], {}, {}
    for path in files:
        result = TaskCheck(Path(path))
        results.append(result)
        try:
            task = result.task = load_task_config(path)
        except TaskConfigError as exc:
            for line in str(exc).splitlines():
                result.add("error", "yaml", line)
            continue
        for seen, value, what in ((names, task.name, "name"), (models, task.registered_model_name, "model_name")):
            if value in seen:
                result.add("error", what, f"{value!r} is also used by {seen[value]}; two tasks never share it")
            seen[value] = path
        _check_judges(result, task, timeout)
        _check_golden_sets(result, task)
        _check_base_model(result, task)
        _check_privacy_rules(result, task)
        if lake is not None:
            _check_traffic(result, task, lake)
    return results


def _check_judges(result: TaskCheck, task: TaskConfig, timeout: float) -> None:
    from continuum_pipeline.judge.specs import BASE_URL_ENV, JudgeEnvironment

    env = JudgeEnvironment()
    for i, spec in enumerate(task.judges):
        where = f"judges[{i}] ({spec.name})"
        if hasattr(spec, "base_url"):  # a model-based judge: its endpoint must answer
            base_url = spec.base_url or env.get(BASE_URL_ENV)
            if not base_url:
                result.add("error", where, f"no endpoint: set `base_url` or {BASE_URL_ENV} to an OpenAI-compatible "
                                           "server (vLLM, Ollama, OpenAI)")
                continue
            problem = _unreachable(base_url, timeout)
            if problem:
                result.add("error", where, f"endpoint {base_url} is unreachable ({problem}); start it or fix base_url")
                continue
        try:
            spec.build(env)
        except Exception as exc:  # any build failure is what the user must fix
            result.add("error", where, str(exc))
            continue
        result.add("ok", where, f"{spec.kind} judge ready, version {spec.version(env)}")


def _unreachable(base_url: str, timeout: float) -> str | None:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(base_url.rstrip("/") + "/models", timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None  # it answered: reachable (auth or routing is the judge's business)
    except (urllib.error.URLError, OSError) as exc:
        return str(getattr(exc, "reason", exc))


def _check_golden_sets(result: TaskCheck, task: TaskConfig) -> None:
    from continuum_pipeline.evaluation.golden import GoldenSetError, read_golden_file

    for i, spec in enumerate(task.golden_sets):
        where = f"golden_sets[{i}] ({spec.name})"
        if spec.from_production:
            result.add("ok", where, f"held out from production: {spec.from_production.size} interactions with "
                                    f"reward ≥ {spec.from_production.min_reward}")
            continue
        try:
            table = read_golden_file(task.path(spec.file), spec.slices)
        except GoldenSetError as exc:
            result.add("error", where, str(exc))
            continue
        slices = {s for row in table["slices"].to_pylist() for s in row} - {"all"}
        if spec.slices and not slices:
            result.add("warning", where, f"no example has the slice fields {spec.slices}")
        result.add("ok", where, f"{table.num_rows} examples, {len(slices)} slices")


def _check_base_model(result: TaskCheck, task: TaskConfig) -> None:
    spec = task.base_model
    if spec.builtin:
        result.add("ok", "base_model", "builtin:tiny, built locally on first training")
    elif Path(spec.id).exists():
        result.add("ok", "base_model", f"local model folder {spec.id}")
    else:
        result.add("warning", "base_model", f"{spec.id!r} is not a local folder: it will be fetched from the hub "
                                            "on first use (HF_HOME / HF_ENDPOINT must reach it)")


def _check_privacy_rules(result: TaskCheck, task: TaskConfig) -> None:
    from continuum_pipeline.privacy.rules import PrivacyRuleError, check_rules, rules_for

    try:
        rules = rules_for(task)
        check_rules(rules)
    except PrivacyRuleError as exc:
        result.add("error", "privacy.exclude", str(exc))
        return
    if rules:
        result.add("ok", "privacy.exclude", f"{len(rules)} exclusion rules run: {', '.join(r.name for r in rules)}")


def _check_traffic(result: TaskCheck, task: TaskConfig, lake) -> None:
    import duckdb

    if not lake.table_exists("interactions"):
        result.add("warning", "select", "the lake has no interactions yet: capture traffic and run `continuum ingest`")
        return
    con = duckdb.connect()
    lake.register_duckdb(con, "interactions", "interactions")
    (n,) = con.execute(f"select count(*) from interactions where {task.selection_sql()}").fetchone()
    if n == 0:
        result.add("warning", "select", f"no captured interaction matches this task's selection "
                                        f"({task.selection_sql()}); `continuum tasks` lists what the lake has")
    else:
        result.add("ok", "select", f"{n} captured interactions")
