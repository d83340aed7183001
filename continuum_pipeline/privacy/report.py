"""What privacy did, per task and day: interactions carrying each PII kind, the consent mix, what each exclusion
rule matched, and the deletions performed — for `continuum privacy report` and the sft_dataset's metadata.

Read from the lake only: the `redactions` column (PII kind → count, written by the redactor; an interaction
carries a kind if it or one of its feedback events had it redacted), `consent`, the task's rules evaluated
as in curation, and the `deletion_receipts` table when `forget` / retention have written one (a missing table
is a note, not an error). Counts are interactions (a redelivered call counts once), never values: a report holds no personal data.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from continuum_pipeline.privacy.rules import NamedRule, check_rules, rule_sql, rules_for
from continuum_pipeline.task.config import TaskConfig, sql_literal


@dataclass
class PrivacyReport:
    days: list[dict] = field(default_factory=list)  # task, day, interactions, consent_*, pii{kind: n}, excluded{rule: n}
    deletions: list[dict] = field(default_factory=list)  # day, task, receipts, rows_removed, what
    notes: list[str] = field(default_factory=list)

    def kinds(self) -> list[str]:
        return sorted({k for d in self.days for k in d["pii"]})

    def rules(self) -> list[str]:
        return list(dict.fromkeys(r for d in self.days for r in d["excluded"]))

    def table(self) -> tuple[list[str], list[list]]:
        kinds, rules = self.kinds(), self.rules()
        headers = ["task", "day", "interactions", "consent granted", "denied", "unknown",
                   *(f"PII {k}" for k in kinds), *(f"excluded: {r}" for r in rules)]
        rows = [[d["task"], d["day"].isoformat(), d["interactions"], d["consent_granted"], d["consent_denied"],
                 d["consent_unknown"], *(d["pii"].get(k, 0) for k in kinds), *(d["excluded"].get(r, "") for r in rules)]
                for d in self.days]
        return headers, rows

    def deletions_table(self) -> tuple[list[str], list[list]]:
        return (["day", "task", "receipts", "rows removed", "what was asked", "model versions touched"],
                [[d["day"].isoformat(), d["task"] or "(all)", d["receipts"], d["rows_removed"], d["what"],
                  d["versions"]] for d in self.deletions])

    def markdown(self) -> str:
        parts = [_markdown(*self.table())]
        if self.deletions:
            parts.append("**Deletions**\n\n" + _markdown(*self.deletions_table()))
        parts += [f"_{n}_" for n in self.notes]
        return "\n\n".join(parts)


def _markdown(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    # Domain code has no dagster (defs.metadata.markdown_table): the same pipe table, written here.
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join("" if v is None else str(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


@dataclass(frozen=True)
class _Unit:
    name: str
    selection: str  # DuckDB condition over interactions
    rules: tuple[NamedRule, ...] = ()


def _units(con, tasks: Sequence[TaskConfig], rules: dict[str, list[NamedRule]], only: str | None) -> list[_Unit]:
    if tasks:
        units = [_Unit(t.name, t.selection_sql(), tuple(rules[t.name])) for t in tasks]
    else:  # no task instances configured: the captured task names, without rules
        names = [n for (n,) in con.execute("select distinct task from interactions where task is not null "
                                           "order by task").fetchall()]
        units = [_Unit(n, f"task = {sql_literal(n)}") for n in names]
    return [u for u in units if only is None or u.name == only]


def privacy_report(lake, tasks: Sequence[TaskConfig] = (), task: str | None = None, days: int | None = None,
                   today: date | None = None) -> PrivacyReport:
    """The report over the lake: per configured task (or, with none, per captured task name) and UTC day;
    `task` keeps one, `days` the last N days (today included)."""
    import duckdb

    report = PrivacyReport()
    today = today or datetime.now(UTC).date()
    since = today - timedelta(days=days - 1) if days else None
    if tasks and task is not None and task not in {t.name for t in tasks}:
        raise ValueError(f"--task {task}: no such task instance; the configured tasks are "
                         f"{', '.join(t.name for t in tasks)}")
    rules = {t.name: rules_for(t) for t in tasks}
    for named in rules.values():
        check_rules(named)  # a bad rule is named before any query
    if lake.table_exists("interactions"):
        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        lake.register_duckdb(con, "interactions", "interactions_raw")
        # a redelivered call counts once (as in stg_interactions)
        con.execute("create view interactions as select * from interactions_raw qualify row_number() over "
                    "(partition by interaction_id order by ingested_at, segment, segment_line) = 1")
        columns = {c for (c, *_) in con.execute("describe interactions").fetchall()}
        has_feedback = lake.table_exists("feedback_events")
        if has_feedback:
            lake.register_duckdb(con, "feedback_events", "feedback_events")
            has_feedback = "redactions" in {c for (c, *_) in con.execute("describe feedback_events").fetchall()}
        if "redactions" not in columns:
            report.notes.append("the interactions table has no `redactions` column yet (ingested before redaction): "
                                "no PII counts")
        window = f"cast(ts as date) >= {sql_literal(since.isoformat())}::date" if since else "true"
        for unit in _units(con, tasks, rules, task):
            report.days += _unit_days(con, unit, window, "redactions" in columns, has_feedback)
    else:
        report.notes.append("the lake has no interactions yet")
    report.days.sort(key=lambda d: (d["task"], d["day"]))
    report.deletions, note = _deletions(lake, task, since)
    if note:
        report.notes.append(note)
    return report


def _unit_days(con, unit: _Unit, window: str, pii: bool, feedback_pii: bool) -> list[dict]:
    where = f"({unit.selection}) and {window}"
    rules = "".join(f", count(*) filter (where {rule_sql(r.rule)}) as \"rule_{i}\"" for i, r in enumerate(unit.rules))
    rows = con.execute(f"""
        select cast(ts as date) as day, count(*) as interactions,
               count(*) filter (where consent = 'granted') as granted,
               count(*) filter (where consent = 'denied') as denied,
               count(*) filter (where consent is null or consent not in ('granted', 'denied')) as unknown{rules}
        from interactions where {where} group by 1 order by 1""").fetchall()
    days = {r[0]: {"task": unit.name, "day": r[0], "interactions": r[1], "consent_granted": r[2],
                   "consent_denied": r[3], "consent_unknown": r[4], "pii": {},
                   "excluded": {rule.name: r[5 + i] for i, rule in enumerate(unit.rules)}} for r in rows}
    if pii and days:
        sources = [f"select interaction_id, cast(ts as date) as day, redactions from interactions where {where} "
                   "and redactions is not null"]
        if feedback_pii:
            sources.append(f"select f.interaction_id, cast(i.ts as date) as day, f.redactions from feedback_events f "
                           f"join (select * from interactions where {where}) i using (interaction_id) "
                           "where f.redactions is not null")
        found = con.execute(f"""
            select day, interaction_id, redactions from ({' union all '.join(sources)})
            where redactions not in ('', '{{}}')""").fetchall()
        carried: dict[tuple[date, str], set[str]] = {}
        for day, interaction_id, text in found:
            for kind, count in _counts(text).items():
                if count > 0:
                    carried.setdefault((day, kind), set()).add(interaction_id)
        for (day, kind), ids in carried.items():
            days[day]["pii"][kind] = len(ids)
    return list(days.values())


def _counts(text: str) -> dict[str, int]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return {str(k): int(v) for k, v in value.items() if isinstance(v, int | float)} if isinstance(value, dict) else {}


def _json_list(value: Any) -> list:
    try:
        parsed = json.loads(value) if isinstance(value, str) else value
    except ValueError:
        return []
    return parsed if isinstance(parsed, list) else []


def _deletions(lake, task: str | None, since: date | None) -> tuple[list[dict], str | None]:
    from continuum_pipeline.privacy.forget import RECEIPTS_TABLE, read_receipts

    if not lake.table_exists(RECEIPTS_TABLE):
        return [], f"no deletions recorded (no {RECEIPTS_TABLE} table)"
    grouped: dict[tuple[date, str | None], dict] = {}
    for r in read_receipts(lake):
        day, owner = r["completed_at"].date(), r["task"]
        if since and day < since or task is not None and owner not in (None, task):
            continue
        entry = grouped.setdefault((day, owner), {"day": day, "task": owner, "receipts": 0, "rows_removed": 0,
                                                  "what": set(), "versions": set()})
        entry["receipts"] += 1
        entry["rows_removed"] += r["rows_removed"] or 0
        reason = r["reason"] or ""
        kinds = sorted({s["kind"] for s in _json_list(r["subjects"]) if isinstance(s, dict) and s.get("kind")})
        if reason or kinds:
            entry["what"].add(f"{reason} ({', '.join(kinds)})" if reason and kinds else reason or ", ".join(kinds))
        for v in _json_list(r["affected_versions"]):
            if isinstance(v, dict) and v.get("model") is not None:
                entry["versions"].add(f"{v['model']}@{v.get('version')}")
    out = [{**entry, "what": ", ".join(sorted(entry["what"])), "versions": ", ".join(sorted(entry["versions"]))}
           for entry in sorted(grouped.values(), key=lambda e: (e["day"], e["task"] or ""))]
    return out, None
