"""The golden set: held-out questions with known answers, versioned by content, grouped in slices."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa

from continuum_pipeline.evaluation.gate import GoldenExample, success
from continuum_pipeline.lake.schemas import MESSAGES

GOLDEN_SET = pa.schema([
    pa.field("golden_id", pa.string()),
    pa.field("intent", pa.string()),
    pa.field("slices", pa.list_(pa.string())),
    pa.field("messages", MESSAGES),
    pa.field("expected", pa.string()),
    pa.field("metadata", pa.string()),  # JSON: what the check needs (intent, slots, phase)
])


def golden_table(desk, phase: str) -> pa.Table:
    """The golden set for the knowledge base at `phase`: changed intents are asked for their current answers."""
    rows = []
    for item in desk.golden_set():
        changed = item.intent in desk.changed_intents
        if (changed and item.phase != phase) or (not changed and item.phase != "before"):
            continue
        group = "changed_intents" if changed else "unchanged_intents"
        rows.append({"golden_id": item.golden_id, "intent": item.intent, "slices": [item.intent, group, "all"],
                     "messages": item.messages, "expected": item.expected,
                     "metadata": json.dumps({"intent": item.intent, "slots": item.slots, "phase": item.phase},
                                            sort_keys=True)})
    return pa.Table.from_pylist(rows, schema=GOLDEN_SET)


def version(table: pa.Table) -> str:
    payload = json.dumps(table.to_pylist(), sort_keys=True, default=str).encode()
    return hashlib.sha256(payload).hexdigest()[:12]


def examples(table: pa.Table) -> list[GoldenExample]:
    return [GoldenExample(r["golden_id"], tuple(r["slices"]), r["messages"], json.loads(r["metadata"]))
            for r in table.to_pylist()]


def answer(model_dir: str | Path, items: Sequence[GoldenExample]) -> list[str]:
    from continuum_pipeline.serving.generate import Generator

    return Generator.from_pretrained(model_dir).generate([ex.messages for ex in items])


def evaluate(model_dir: str | Path, items: Sequence[GoldenExample], check) -> list[bool]:
    """Which golden examples a model answers correctly (greedy decoding, the scenario's check)."""
    return success(answer(model_dir, items), items, check)
