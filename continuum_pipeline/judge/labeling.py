"""Label interactions with every judge, incrementally: only (interaction, judge version) pairs not yet labelled.

Rerun-safe by construction: labels land in one append per run, and the next run skips what is there.
A new judge version (e.g. the knowledge base changed) relabels everything under that version.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from continuum_pipeline.judge.base import BudgetExhausted, Judge, JudgeError, JudgeInput, Verdict
from continuum_pipeline.lake.schemas import LEARNING_LAYOUTS, REWARD_LABELS

if TYPE_CHECKING:
    from continuum_pipeline.lake.catalog import Lake

log = logging.getLogger(__name__)
CHUNK = 64  # items per chunk at least: progress and failure isolation without one call per row
# A concurrent judge gets this many items per worker in a chunk: its workers idle while a chunk's last
# requests finish, so chunks are long enough for that tail to be a few percent of the chunk.
ITEMS_PER_WORKER = 64


@dataclass
class LabelReport:
    """Per judge name: what this run did. Failed and over-budget interactions stay unlabelled and are
    judged again next run; spend, requests and cache hits count this run only."""

    labelled: dict[str, int] = field(default_factory=dict)  # interactions labelled this run
    failed: dict[str, int] = field(default_factory=dict)  # the judge could not score them (JudgeError)
    over_budget: dict[str, int] = field(default_factory=dict)  # not judged: the cost budget was spent
    already_labelled: dict[str, int] = field(default_factory=dict)
    mean_score: dict[str, float] = field(default_factory=dict)
    spent_usd: dict[str, float] = field(default_factory=dict)
    requests: dict[str, int] = field(default_factory=dict)  # HTTP requests sent, retries included
    cache_hits: dict[str, int] = field(default_factory=dict)  # verdicts served from the cache, free
    budget_stop: dict[str, str] = field(default_factory=dict)  # why a judge stopped early, when it did
    interactions_snapshot_id: int | None = None
    snapshot_id: int | None = None


@dataclass
class JudgeRun:
    """One judge over a list of items: its verdicts, and what it left for the next run."""

    verdicts: list[Verdict] = field(default_factory=list)
    failed: int = 0
    over_budget: int = 0
    budget_stop: str | None = None
    spent_usd: float = 0.0
    requests: int = 0
    cache_hits: int = 0


def label_interactions(lake: Lake, judges: Sequence[Judge], *, limit: int | None = None,
                       progress: Callable[[str, dict], None] | None = None, labels_table: str = "reward_labels",
                       where: str | None = None) -> LabelReport:
    """Label the interactions matching `where` (a DuckDB condition over the interactions table: a task's
    selection) into `labels_table` (a task's own `<task>__reward_labels`)."""
    emit = progress or (lambda event, info: None)
    lake.ensure_table(dataclasses.replace(LEARNING_LAYOUTS["reward_labels"], name=labels_table))
    report = LabelReport(interactions_snapshot_id=lake.current_snapshot_id("interactions"))
    if report.interactions_snapshot_id is None:
        return report
    interactions = lake.table("interactions").scan(
        snapshot_id=report.interactions_snapshot_id,
        selected_fields=("interaction_id", "prompt", "messages", "response", "metadata", "contexts", "status",
                         "task", "model", "model_version", "route", "consent", "source"),
    ).to_arrow()
    interactions = interactions.filter(pc.equal(interactions["status"], "ok"))  # a failed call has no answer to judge
    if where:
        interactions = _select(interactions, where)
    labels = lake.table(labels_table).scan(selected_fields=("interaction_id", "judge", "judge_version")).to_arrow()

    rows: list[dict] = []
    now = datetime.now(UTC)
    for judge in judges:
        mine = labels.filter(pc.and_(pc.equal(labels["judge"], judge.name), pc.equal(labels["judge_version"], judge.version)))
        done = pc.is_in(interactions["interaction_id"], mine["interaction_id"].unique())
        todo = interactions.filter(pc.invert(done))
        if limit is not None:
            todo = todo.slice(0, limit)
        report.already_labelled[judge.name] = interactions.num_rows - todo.num_rows
        run = judge_items(judge, [_as_input(r) for r in todo.to_pylist()], emit)
        verdicts = run.verdicts
        report.labelled[judge.name], report.failed[judge.name] = len(verdicts), run.failed
        report.over_budget[judge.name] = run.over_budget
        report.spent_usd[judge.name], report.requests[judge.name] = run.spent_usd, run.requests
        report.cache_hits[judge.name] = run.cache_hits
        if run.budget_stop:
            report.budget_stop[judge.name] = run.budget_stop
        if verdicts:
            report.mean_score[judge.name] = sum(v.score for v in verdicts) / len(verdicts)
        rows += [{"interaction_id": v.interaction_id, "judge": v.judge, "judge_version": v.judge_version,
                  "criterion": c.criterion, "score": c.score, "weight": c.weight, "rationale": c.rationale,
                  "judged_at": now} for v in verdicts for c in v.criteria]
    if rows:
        report.snapshot_id = lake.append_rows(
            labels_table, pa.Table.from_pylist(rows, schema=REWARD_LABELS),
            {"continuum.interactions-snapshot-id": str(report.interactions_snapshot_id)})
    emit("committed", {"rows": len(rows), "snapshot_id": report.snapshot_id})
    return report


def _select(interactions: pa.Table, where: str) -> pa.Table:
    import duckdb

    con = duckdb.connect()
    con.register("interactions", interactions.select(["interaction_id", "task", "model", "model_version", "route",
                                                      "consent", "source", "metadata"]))
    ids = [r[0] for r in con.execute(f"select interaction_id from interactions where {where}").fetchall()]
    return interactions.filter(pc.is_in(interactions["interaction_id"], pa.array(ids, pa.string())))


def _as_input(row: dict) -> JudgeInput:
    try:
        metadata = json.loads(row["metadata"]) if row["metadata"] else {}
    except ValueError:
        metadata = {}
    metadata = metadata if isinstance(metadata, dict) else {}
    # An app that knows the right answer captures it as metadata["reference"] (one answer or a list).
    reference = metadata.get("reference")
    if not (isinstance(reference, str) or (isinstance(reference, list) and all(isinstance(r, str) for r in reference))):
        reference = None
    return JudgeInput(interaction_id=row["interaction_id"], prompt=row["prompt"], messages=row["messages"],
                      response=row["response"], metadata=metadata, contexts=row["contexts"],
                      reference=reference or None)


def judge_items(judge: Judge, items: Sequence[JudgeInput],
                emit: Callable[[str, dict], None] | None = None) -> JudgeRun:
    """Judge every item, in chunks (one "judged" progress event each). An item the judge cannot score is
    counted as failed and skipped; once the judge's cost budget is spent it is not called again, and
    every item not yet judged is counted as over budget."""
    emit = emit or (lambda event, info: None)
    items = list(items)
    before = _counters(judge)
    run = JudgeRun()
    size = max(CHUNK, ITEMS_PER_WORKER * int(getattr(judge, "max_concurrency", 1)))
    for start in range(0, len(items), size):
        chunk = items[start:start + size]
        if getattr(judge, "budget_exhausted", False):
            run.over_budget += len(items) - start
            break
        for item, outcome in zip(chunk, _outcomes(judge, chunk), strict=True):
            if isinstance(outcome, BudgetExhausted):
                run.over_budget += 1
                run.budget_stop = str(outcome)
            elif isinstance(outcome, JudgeError):
                run.failed += 1
                log.warning("judge %s could not label %s: %s", judge.name, item.interaction_id, outcome)
            else:
                run.verdicts.append(outcome)
        emit("judged", {"judge": judge.name, "done": start + len(chunk), "total": len(items)})
        if run.budget_stop:
            run.over_budget += len(items) - start - len(chunk)
            break
    if run.over_budget and run.budget_stop is None:
        run.budget_stop = f"judge {judge.name!r}: cost budget reached; the rest are labelled next run"
    if run.budget_stop:
        log.warning("%s (%d interactions left)", run.budget_stop, run.over_budget)
    after = _counters(judge)
    run.spent_usd, run.requests, run.cache_hits = (a - b for a, b in zip(after, before, strict=True))
    return run


def _counters(judge: Judge) -> tuple[float, int, int]:
    return (float(getattr(judge, "spent_usd", 0.0)), int(getattr(judge, "requests", 0)),
            int(getattr(judge, "cache_hits", 0)))


def _outcomes(judge: Judge, chunk: list[JudgeInput]) -> list[Verdict | JudgeError]:
    """One outcome per item: `judge_each` where the judge has it, else the batch, then item by item."""
    each = getattr(judge, "judge_each", None)
    if each is not None:
        return each(chunk)
    try:
        return list(judge.judge(chunk))
    except JudgeError:
        pass
    # One unusable verdict must not sink the chunk: judge its items one by one (failures stay unlabelled).
    out: list[Verdict | JudgeError] = []
    for item in chunk:
        if out and isinstance(out[-1], BudgetExhausted):
            out.append(out[-1])  # no new request once the budget is spent
            continue
        try:
            out += judge.judge([item])
        except JudgeError as exc:
            out.append(exc)
    return out
