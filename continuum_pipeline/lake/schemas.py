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

# Column descriptions, one meaning per column name across the lake (contract tables, SQL models, learning-loop
# tables): every table asset's `dagster/column_schema` carries them. The landing record's own docs come first.
_DOCUMENTED = {f.name: f.doc for f in INTERACTION_FIELDS + FEEDBACK_FIELDS if f.doc}
COLUMN_DOCS: dict[str, str] = _DOCUMENTED | {
    # ids and provenance
    "interaction_id": "unique id of the model call (feedback and labels refer to it)",
    "feedback_id": "unique id of the feedback event",
    "trace_id": "OpenTelemetry trace id of the call, when it came from a trace",
    "span_id": "OpenTelemetry span id of the call",
    "session_id": "conversation / session the call belongs to",
    "user_id": "pseudonymous end-user id (never an email or name: redacted at capture)",
    "ts": "event time, UTC: when the call started, or when the feedback was given",
    "day": "UTC day of the interaction (ts)",
    "schema_version": "landing record schema version the row was written with",
    "segment": "landing segment the row came from",
    "segment_line": "line in that segment (1-based)",
    "ingested_at": "when the row entered the lake",
    "quarantined_at": "when the line was quarantined",
    "kind": "interaction | feedback: what the landing line claimed to be",
    "error": "why the line could not be normalized (error class)",
    "field": "the field that failed validation, when one did",
    "reason": "the validation message",
    "raw": "the landing line's raw bytes, kept as they arrived",
    # the call
    "task": "what the call is for (the task that learns from it)",
    "model": "model name that served the call",
    "model_version": "registered model version that served the call (null: not a registered version)",
    "response": "the model's answer (PII redacted)",
    "status": "ok | error",
    "is_error": "status = error",
    "error_type": "exception class or HTTP status of a failed call",
    "error_message": "the failure's message (redacted, clipped)",
    "latency_ms": "end-to-end latency of the call, milliseconds",
    "ttft_ms": "time to first token, milliseconds (streaming calls)",
    "prompt_tokens": "input tokens",
    "completion_tokens": "output tokens",
    "total_tokens": "prompt_tokens + completion_tokens",
    "cost_usd": "cost in US dollars (summed over the group in aggregates)",
    "metadata": "JSON-encoded object: application fields (slices and judges read them)",
    "source": "where the row was captured: sdk | otlp | langfuse | gateway | import",
    # feedback
    "score": "a score in [0, 1], 1 = best: the explicit rating in feedback events, the judge's score in reward labels",
    "is_negative": "the event counts as negative feedback (low score, negative label or signal, correction, outcome)",
    "is_positive": "the event counts as positive feedback",
    "feedback_events": "feedback events about the interaction",
    "mean_score": "mean explicit feedback score",
    "scores": "explicit feedback scores about the interaction",
    "negative_events": "negative feedback events about the interaction",
    "positive_events": "positive feedback events about the interaction",
    "has_correction": "a user edited the response",
    "latest_correction": "the latest edited response",
    "reopened": "a ticket_reopened outcome was reported",
    "last_feedback_at": "time of the latest feedback event",
    # quality_daily
    "interactions": "interactions in the group",
    "interactions_with_feedback": "interactions that got any feedback",
    "negative_feedback_rate": "share of interactions with feedback that got negative feedback",
    "latency_p50_ms": "median latency, milliseconds",
    "latency_p95_ms": "95th-percentile latency, milliseconds",
    "error_rate": "share of calls with status error",
    "tokens": "total tokens",
    "mean_reward": "mean response reward (the task's reward of what the model said)",
    # rewards and training data
    "judge": "judge name (the task's judges)",
    "judge_version": "judge version: a new version relabels",
    "criterion": "what the judge scored",
    "weight": "weight of the criterion in the judge's score",
    "rationale": "the judge's reason for the score",
    "judged_at": "when the judge scored it",
    "judge_score": "weighted judge score by the judges' latest versions",
    "first_judge_score": "weighted judge score by the first label of each judge (what monitoring sees)",
    "judges": "judges that scored the interaction",
    "feedback_score": "mean explicit feedback score",
    "implicit_score": "mean reward of implicit signals (copy, retry, …)",
    "outcome_reward": "reward of the worst reported outcome",
    "response_reward": "reward of what the model said, as judged when it happened",
    "target_reward": "reward of the training target (the edit, if any) by the latest judges",
    "correction": "the user's edited response, when it is the training target",
    "target_response": "the answer to train on: the response or the user's correction",
    "target_source": "response | correction: where the training target came from",
    "reward": "reward of the training target (target_reward)",
    "split": "train | validation",
    "text_hash": "sha256 of the embedded text",
    "embedder": "embedder name@version",
    "vector": "the embedding",
    # golden sets
    "golden_id": "golden example id",
    "slices": "slices the example belongs to (`field=value`, and all)",
    "reference": "accepted answers",
    # the learning curve
    "model_ref": "what was evaluated: <registered model>/<version>, or the base model's build hash or id",
    "golden_set_versions": "JSON {golden set: content version} the evaluation used",
    "metric": "the gate metric (its judge scores the answers)",
    "slice": "golden slice",
    "examples": "golden examples in the slice",
    "success": "mean judge score in [0, 1] on the slice",
    "evaluated_at": "when the model answered the golden set",
}
COLUMN_DOCS["comment"] = "free-text comment of the feedback (PII redacted)"
COLUMN_DOCS["messages"] = "chat messages [{role, content}] (training rows end with the target answer)"
COLUMN_DOCS["prompt"] = "the prompt text (last user message for chats)"
