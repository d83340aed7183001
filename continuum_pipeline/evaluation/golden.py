"""Golden sets: evaluation examples with reference answers, sliced by fields the task names.

A golden set comes from a file the team writes (JSONL or Parquet) or from production: a held-out sample of
high-reward interactions that the task's privacy policy allows (consent, exclusion rules, sampling), frozen
(items are never changed, only topped up to the configured size, and dropped only when the privacy policy
now keeps them out) and excluded from every training set by interaction id. Each version is an Iceberg snapshot; `version()` is
a content hash so an unchanged set keeps its version.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from continuum_pipeline.lake.schemas import MESSAGES
from continuum_pipeline.privacy.rules import PrivacyPolicy

GOLDEN_SET = pa.schema([
    pa.field("golden_id", pa.string()),
    pa.field("slices", pa.list_(pa.string())),  # e.g. ["intent=refund_status", "group=changed", "all"]
    pa.field("messages", MESSAGES),  # the conversation up to the answer to evaluate
    pa.field("reference", pa.list_(pa.string())),  # accepted answers (may be empty: judges without a reference)
    pa.field("metadata", pa.string()),  # JSON object: what judges need (e.g. intent and slots)
    pa.field("interaction_id", pa.string()),  # production holdouts: the interaction it came from
])


class GoldenSetError(ValueError):
    """A golden file is unusable; the message names the file, the line and the field."""


@dataclass(frozen=True)
class GoldenItem:
    golden_id: str
    slices: tuple[str, ...]
    messages: list[dict]
    reference: tuple[str, ...]
    metadata: dict


def _lookup(row: dict, path: str) -> Any:
    value: Any = row
    for part in path.split("."):
        if isinstance(value, str) and part and value.startswith("{"):
            try:
                value = json.loads(value)
            except ValueError:
                return None
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def slice_names(row: dict, slices: Sequence[str]) -> list[str]:
    """`<last path segment>=<value>` for each slice field the row has, then `all`."""
    names = []
    for path in slices:
        value = _lookup(row, path)
        if value is not None and value != "":
            names.append(f"{path.split('.')[-1]}={value}")
    return [*names, "all"]


def _messages(row: dict, where: str) -> list[dict]:
    if row.get("messages") is not None:
        messages = row["messages"]
        if not (isinstance(messages, list) and messages and all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages)):
            raise GoldenSetError(f"{where}: messages: expected a non-empty list of {{role, content}} strings")
        return [{"role": m["role"], "content": m["content"]} for m in messages]
    if isinstance(row.get("prompt"), str) and row["prompt"]:
        system = [{"role": "system", "content": row["system"]}] if isinstance(row.get("system"), str) else []
        return [*system, {"role": "user", "content": row["prompt"]}]
    raise GoldenSetError(f"{where}: needs `messages` (a list of {{role, content}}) or `prompt` (a string)")


def _reference(row: dict, where: str) -> list[str]:
    value = row.get("reference")
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise GoldenSetError(f"{where}: reference: expected a string or a list of strings, got {type(value).__name__}")


def _metadata(row: dict, where: str) -> dict:
    value = row.get("metadata")
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise GoldenSetError(f"{where}: metadata: a string must hold a JSON object") from None
    if not isinstance(value, dict):
        raise GoldenSetError(f"{where}: metadata: expected an object, got {type(value).__name__}")
    return value


def _content_id(messages: list[dict], reference: list[str]) -> str:
    return hashlib.sha256(json.dumps([messages, reference], sort_keys=True).encode()).hexdigest()[:16]


def read_golden_file(path: Path, slices: Sequence[str]) -> pa.Table:
    """A golden file as a GOLDEN_SET table: each row needs `messages` or `prompt`; `id`, `reference`,
    `metadata` and top-level slice fields are optional."""
    path = Path(path)
    if not path.exists():
        raise GoldenSetError(f"golden file {path} does not exist: write it, or fix `golden_sets[].file`")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        raw = [(f"{path} row {i + 1}", r) for i, r in enumerate(pq.read_table(path).to_pylist())]
    else:
        raw = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                raw.append((f"{path}:{n}", json.loads(line)))
            except ValueError as exc:
                raise GoldenSetError(f"{path}:{n}: not valid JSON ({exc})") from None
    rows, seen = [], set()
    for where, row in raw:
        if not isinstance(row, dict):
            raise GoldenSetError(f"{where}: expected a JSON object per line")
        messages, reference, metadata = _messages(row, where), _reference(row, where), _metadata(row, where)
        golden_id = str(row.get("id") or _content_id(messages, reference))
        if golden_id in seen:
            raise GoldenSetError(f"{where}: id {golden_id!r} repeats; ids must be unique within a golden set")
        seen.add(golden_id)
        rows.append({"golden_id": golden_id, "slices": slice_names({**row, "metadata": metadata}, slices),
                     "messages": messages, "reference": reference,
                     "metadata": json.dumps(metadata, sort_keys=True), "interaction_id": None})
    if not rows:
        raise GoldenSetError(f"golden file {path} has no examples")
    return pa.Table.from_pylist(rows, schema=GOLDEN_SET)


def production_holdout(candidates: pa.Table, size: int, min_reward: float, seed: int, slices: Sequence[str],
                       existing: pa.Table | None, privacy: PrivacyPolicy, removed: dict[str, int] | None = None
                       ) -> pa.Table:
    """High-reward interactions held out for evaluation: the existing items stay as they are (a frozen set),
    and the set is topped up to `size` with a reproducible pseudo-random draw (sha256 of seed and id).

    `privacy` (consent, exclusion rules, sampling) is applied to the candidates first, each filter's removals
    counted into `removed`; an item of an earlier version that the policy now keeps out leaves the set (counted
    as `dropped from the frozen set`): freezing never keeps excluded data."""
    removed = removed if removed is not None else {}
    allowed = privacy.apply(candidates, removed)
    out = set(candidates["interaction_id"].to_pylist()) - set(allowed["interaction_id"].to_pylist())
    candidates = allowed
    kept = existing.to_pylist() if existing is not None else []
    before = len(kept)
    kept = [r for r in kept if r["interaction_id"] not in out]
    removed["dropped from the frozen set"] = before - len(kept)
    have = {r["interaction_id"] for r in kept}
    eligible = []
    for r in candidates.to_pylist():
        if (r["interaction_id"] in have or r["status"] != "ok"  # consent: privacy.apply kept the allowed only
                or r["reward"] is None or r["reward"] < min_reward or not r["target_response"] or not r["messages"]):
            continue
        eligible.append((hashlib.sha256(f"{seed}:{r['interaction_id']}".encode()).hexdigest(), r))
    for _, r in sorted(eligible, key=lambda e: e[0])[:max(0, size - len(kept))]:
        kept.append({"golden_id": r["interaction_id"], "slices": slice_names(r, slices), "messages": r["messages"],
                     "reference": [r["target_response"]], "metadata": r["metadata"] or "{}",
                     "interaction_id": r["interaction_id"]})
    return pa.Table.from_pylist(kept, schema=GOLDEN_SET)


def version(table: pa.Table) -> str:
    payload = json.dumps(table.to_pylist(), sort_keys=True, default=str).encode()
    return hashlib.sha256(payload).hexdigest()[:12]


def items(table: pa.Table, prefix: str = "") -> list[GoldenItem]:
    """The set's examples; `prefix` (the set's name) keeps slices apart when a task has several sets."""
    return [GoldenItem(r["golden_id"], tuple(f"{prefix}{s}" for s in r["slices"]), r["messages"],
                       tuple(r["reference"] or ()), json.loads(r["metadata"] or "{}")) for r in table.to_pylist()]


def answer(model_dir: str | Path, examples: Sequence[GoldenItem]) -> list[str]:
    """Greedy answers of the model in `model_dir` (a local folder or hub id) to every example."""
    from continuum_pipeline.serving.generate import Generator

    return Generator.from_pretrained(model_dir).generate([ex.messages for ex in examples])


def score(judge, examples: Sequence[GoldenItem], answers: Sequence[str]) -> list[float]:
    """One score in [0, 1] per answer from `judge`; a judge that cannot score an example fails the evaluation
    (a gate must not decide on missing scores)."""
    from continuum_pipeline.judge.base import JudgeInput

    inputs = [JudgeInput(interaction_id=ex.golden_id, prompt=None, messages=ex.messages, response=a,
                         metadata=ex.metadata, reference=list(ex.reference) or None)
              for ex, a in zip(examples, answers, strict=True)]
    return [v.score for v in judge.judge(inputs)]
