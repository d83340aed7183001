"""Label interactions with every judge, incrementally: only (interaction, judge version) pairs not yet labelled.

Rerun-safe by construction: labels land in one append per run, and the next run skips what is there.
A new judge version (e.g. the knowledge base changed) relabels everything under that version.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc

from continuum_pipeline.judge.base import Judge, JudgeError, JudgeInput, Verdict
from continuum_pipeline.lake.catalog import Lake
from continuum_pipeline.lake.schemas import LEARNING_LAYOUTS, REWARD_LABELS

log = logging.getLogger(__name__)
CHUNK = 64  # judge calls per chunk: progress and failure isolation without one request per row


@dataclass
class LabelReport:
    labelled: dict[str, int] = field(default_factory=dict)  # judge → interactions labelled this run
    failed: dict[str, int] = field(default_factory=dict)  # judge → interactions left for the next run
    already_labelled: dict[str, int] = field(default_factory=dict)
    mean_score: dict[str, float] = field(default_factory=dict)
    interactions_snapshot_id: int | None = None
    snapshot_id: int | None = None


def label_interactions(lake: Lake, judges: Sequence[Judge], *, limit: int | None = None,
                       progress: Callable[[str, dict], None] | None = None) -> LabelReport:
    emit = progress or (lambda event, info: None)
    lake.ensure_table(LEARNING_LAYOUTS["reward_labels"])
    report = LabelReport(interactions_snapshot_id=lake.current_snapshot_id("interactions"))
    if report.interactions_snapshot_id is None:
        return report
    interactions = lake.table("interactions").scan(
        snapshot_id=report.interactions_snapshot_id,
        selected_fields=("interaction_id", "prompt", "messages", "response", "metadata", "contexts", "status"),
    ).to_arrow()
    interactions = interactions.filter(pc.equal(interactions["status"], "ok"))  # a failed call has no answer to judge
    labels = lake.table("reward_labels").scan(selected_fields=("interaction_id", "judge", "judge_version")).to_arrow()

    rows: list[dict] = []
    now = datetime.now(UTC)
    for judge in judges:
        mine = labels.filter(pc.and_(pc.equal(labels["judge"], judge.name), pc.equal(labels["judge_version"], judge.version)))
        done = pc.is_in(interactions["interaction_id"], mine["interaction_id"].unique())
        todo = interactions.filter(pc.invert(done))
        if limit is not None:
            todo = todo.slice(0, limit)
        report.already_labelled[judge.name] = interactions.num_rows - todo.num_rows
        verdicts, failed = _judge_all(judge, [_as_input(r) for r in todo.to_pylist()], emit)
        report.labelled[judge.name], report.failed[judge.name] = len(verdicts), failed
        if verdicts:
            report.mean_score[judge.name] = sum(v.score for v in verdicts) / len(verdicts)
        rows += [{"interaction_id": v.interaction_id, "judge": v.judge, "judge_version": v.judge_version,
                  "criterion": c.criterion, "score": c.score, "weight": c.weight, "rationale": c.rationale,
                  "judged_at": now} for v in verdicts for c in v.criteria]
    if rows:
        report.snapshot_id = lake.append_rows(
            "reward_labels", pa.Table.from_pylist(rows, schema=REWARD_LABELS),
            {"continuum.interactions-snapshot-id": str(report.interactions_snapshot_id)})
    emit("committed", {"rows": len(rows), "snapshot_id": report.snapshot_id})
    return report


def _as_input(row: dict) -> JudgeInput:
    try:
        metadata = json.loads(row["metadata"]) if row["metadata"] else {}
    except ValueError:
        metadata = {}
    return JudgeInput(interaction_id=row["interaction_id"], prompt=row["prompt"], messages=row["messages"],
                      response=row["response"], metadata=metadata if isinstance(metadata, dict) else {},
                      contexts=row["contexts"])


def _judge_all(judge: Judge, items: list[JudgeInput], emit: Callable[[str, dict], None]) -> tuple[list[Verdict], int]:
    verdicts: list[Verdict] = []
    failed = 0
    for start in range(0, len(items), CHUNK):
        chunk = items[start:start + CHUNK]
        try:
            verdicts += judge.judge(chunk)
        except JudgeError:
            # One unusable verdict must not sink the chunk: judge its items one by one, skip the failures
            # (they stay unlabelled, so the next run tries them again).
            for item in chunk:
                try:
                    verdicts += judge.judge([item])
                except JudgeError as exc:
                    failed += 1
                    log.warning("judge %s could not label %s: %s", judge.name, item.interaction_id, exc)
        emit("judged", {"judge": judge.name, "done": min(start + CHUNK, len(items)), "total": len(items)})
    return verdicts, failed
