"""The curated SFT dataset: candidates that pass every filter, in TRL's conversational `messages` format.

Filters run in a fixed order and each one's removals are counted, so a dataset version can say why it
is the size it is. Privacy first (privacy.rules.PrivacyPolicy): `denied` never trains, whatever its reward;
`unknown` (what the SDK records when the app says nothing) does not train either unless the task's
`curation.consent` lists it — a team has to say so, the default is safe; then every exclusion rule (one count
each) and the task's sampling rate. Interactions held out for evaluation (golden sets from production) never train.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from continuum_pipeline.lake.schemas import MESSAGES
from continuum_pipeline.privacy.rules import PrivacyPolicy

SFT_DATASET = pa.schema([
    pa.field("interaction_id", pa.string()),
    pa.field("split", pa.string()),  # train | validation
    pa.field("messages", MESSAGES),  # the conversation ending with the target assistant answer
    pa.field("reward", pa.float64()),
    pa.field("target_source", pa.string()),  # response | correction
    pa.field("content_hash", pa.string()),
    pa.field("model", pa.string()),
    pa.field("ts", pa.timestamp("us", tz="UTC")),
])


@dataclass(frozen=True)
class CurationPolicy:
    min_reward: float = 0.8
    validation_fraction: float = 0.1
    consent: tuple[str, ...] = ("granted",)  # consent values that may train; "denied" is dropped even if listed
    held_out: frozenset[str] = frozenset()  # interaction ids in evaluation sets: never training data
    excluded: Mapping[str, frozenset[str]] = field(default_factory=dict)  # exclusion rule → interaction ids
    sampling_rate: float = 1.0

    @property
    def privacy(self) -> PrivacyPolicy:
        return PrivacyPolicy(consent=self.consent, excluded=self.excluded, sampling_rate=self.sampling_rate)


@dataclass
class CuratedDataset:
    table: pa.Table
    removed: OrderedDict[str, int] = field(default_factory=OrderedDict)  # filter → rows it removed
    candidates: int = 0

    def count(self, split: str) -> int:
        return int(pc.sum(pc.equal(self.table["split"], split)).as_py() or 0)


def curate_sft(candidates: pa.Table, policy: CurationPolicy = CurationPolicy()) -> CuratedDataset:
    result = CuratedDataset(table=candidates, candidates=candidates.num_rows)

    def keep(name: str, mask: pa.ChunkedArray | pa.Array) -> None:
        before = result.table.num_rows
        result.table = result.table.filter(pc.fill_null(mask, False))
        result.removed[name] = before - result.table.num_rows

    result.table = policy.privacy.apply(result.table, result.removed)
    keep("call failed", pc.equal(result.table["status"], "ok"))
    if policy.held_out:
        keep("held out for evaluation", pc.invert(pc.is_in(result.table["interaction_id"],
                                                           pa.array(sorted(policy.held_out), pa.string()))))
    keep("no target answer", pc.and_(pc.invert(pc.is_null(result.table["target_response"])),
                                     pc.greater(pc.utf8_length(pc.fill_null(result.table["target_response"], "")), 0)))
    keep(f"reward below {policy.min_reward:g}", pc.greater_equal(result.table["reward"], policy.min_reward))
    keep("duplicate (same content hash)", _first_of_each_hash(result.table))
    result.table = _to_dataset(result.table, policy.validation_fraction)
    return result


def _first_of_each_hash(t: pa.Table) -> pa.Array:
    """Exact dedup: per content hash keep the highest reward, then the newest."""
    order = pc.sort_indices(t, sort_keys=[("content_hash", "ascending"), ("reward", "descending"), ("ts", "descending")])
    hashes = t["content_hash"].take(order).to_pylist()
    keep = [False] * t.num_rows
    previous = object()
    for position, h in zip(order.to_pylist(), hashes, strict=True):
        if h != previous:
            keep[position] = True
            previous = h
    return pa.array(keep)


def _split(content_hash: str, validation_fraction: float) -> str:
    # Deterministic from the content: a row keeps its split across dataset versions.
    bucket = int(hashlib.sha256(content_hash.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "validation" if bucket < validation_fraction else "train"


def _to_dataset(t: pa.Table, validation_fraction: float) -> pa.Table:
    # In capture order (ts, then id): the same rows make the same dataset (and, seeded, the same model) whatever
    # order the SQL engine's plan handed them over in.
    t = t.take(pc.sort_indices(t, sort_keys=[("ts", "ascending"), ("interaction_id", "ascending")]))
    rows = []
    for r in t.select(["interaction_id", "messages", "target_response", "reward", "target_source", "content_hash",
                       "model", "ts"]).to_pylist():
        prompt = list(r["messages"] or [])  # what the model was sent, earlier turns included
        rows.append({
            "interaction_id": r["interaction_id"],
            "split": _split(r["content_hash"], validation_fraction),
            "messages": prompt + [{"role": "assistant", "content": r["target_response"]}],
            "reward": r["reward"], "target_source": r["target_source"], "content_hash": r["content_hash"],
            "model": r["model"], "ts": r["ts"],
        })
    return pa.Table.from_pylist(rows, schema=SFT_DATASET)
