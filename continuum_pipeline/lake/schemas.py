"""Arrow schemas and partition layouts of the lake tables, derived from the landing record schema."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from continuum_pipeline.capture.record import FEEDBACK_FIELDS, INTERACTION_FIELDS, LandingField

TS = pa.timestamp("us", tz="UTC")
MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
ARROW_TYPES = {
    "string": pa.string(),
    "int": pa.int64(),
    "float": pa.float64(),
    "timestamp": TS,
    "messages": MESSAGES,
    "string_list": pa.list_(pa.string()),
}

# Added at ingest: where each row came from, so any row traces back to its raw landing bytes.
PROVENANCE = [
    pa.field("schema_version", pa.int32()),
    pa.field("segment", pa.string()),
    pa.field("segment_line", pa.int32()),
    pa.field("ingested_at", TS),
]


def _arrow(fields: tuple[LandingField, ...]) -> list[pa.Field]:
    return [pa.field(f.name, ARROW_TYPES[f.kind]) for f in fields]


INTERACTIONS = pa.schema(_arrow(INTERACTION_FIELDS) + PROVENANCE)
FEEDBACK_EVENTS = pa.schema(_arrow(FEEDBACK_FIELDS) + PROVENANCE)
QUARANTINE = pa.schema([
    pa.field("segment", pa.string()),
    pa.field("segment_line", pa.int32()),
    pa.field("kind", pa.string()),
    pa.field("error", pa.string()),
    pa.field("field", pa.string()),
    pa.field("reason", pa.string()),
    pa.field("raw", pa.binary()),
    pa.field("quarantined_at", TS),
])


@dataclass(frozen=True)
class TableLayout:
    name: str
    schema: pa.Schema
    partition: tuple[tuple[str, str], ...]  # (source column, transform: identity | day)
    doc: str


LAYOUTS = {
    "interactions": TableLayout("interactions", INTERACTIONS,
                                (("ts", "day"), ("model", "identity"), ("consent", "identity")),
                                "One row per captured model call."),
    "feedback_events": TableLayout("feedback_events", FEEDBACK_EVENTS, (("ts", "day"),),
                                   "Ratings, labels, implicit signals, edits and outcomes, keyed by interaction_id."),
    "quarantine": TableLayout("quarantine", QUARANTINE, (("quarantined_at", "day"),),
                              "Every landing line that could not be normalized, raw bytes kept, with the reason."),
}
INGEST_TABLES = tuple(LAYOUTS)

REWARD_LABELS = pa.schema([
    pa.field("interaction_id", pa.string()),
    pa.field("judge", pa.string()),
    pa.field("judge_version", pa.string()),
    pa.field("criterion", pa.string()),
    pa.field("score", pa.float64()),
    pa.field("weight", pa.float64()),
    pa.field("rationale", pa.string()),
    pa.field("judged_at", TS),
])
LEARNING_LAYOUTS = {
    "reward_labels": TableLayout("reward_labels", REWARD_LABELS, (("judge", "identity"),),
                                 "Judge scores per interaction × criterion, in [0, 1]; one set per judge version."),
}
