"""The landing record schema (version 1) and the builders that turn a captured call into a JSON line.

Stdlib only. The lake derives its Arrow and Iceberg schemas from LANDING_FIELDS, so the SDK and the
ingest agree by construction. Anything that writes landing segments (SDK, gateway, importers) writes
one JSON object per line with "v" (schema version) and "kind" ("interaction" or "feedback").
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = frozenset({1})
KINDS = ("interaction", "feedback")


@dataclass(frozen=True)
class LandingField:
    name: str
    kind: str  # string | int | float | timestamp | messages | string_list
    required: bool = False
    doc: str = ""


# Fields shared by every record: the envelope.
ENVELOPE = (
    LandingField("v", "int", True, "landing schema version"),
    LandingField("kind", "string", True, "interaction | feedback"),
)

INTERACTION_FIELDS = (
    LandingField("interaction_id", "string", True, "unique id of this model call"),
    LandingField("ts", "timestamp", True, "when the call started, ISO-8601 UTC"),
    LandingField("trace_id", "string"),
    LandingField("span_id", "string"),
    LandingField("session_id", "string"),
    LandingField("user_id", "string"),
    LandingField("task", "string", True, "what the call is for, e.g. support_answer"),
    LandingField("model", "string", True, "model name that served the call"),
    LandingField("model_version", "string"),
    LandingField("route", "string", doc="champion | challenger | … (rollout arm)"),
    LandingField("consent", "string", True, "granted | denied | unknown"),
    LandingField("prompt", "string", doc="the prompt text (last user message for chats)"),
    LandingField("messages", "messages", doc="chat messages [{role, content}]"),
    LandingField("response", "string"),
    LandingField("tool_calls", "string", doc="JSON-encoded tool calls"),
    LandingField("contexts", "string_list", doc="RAG contexts"),
    LandingField("latency_ms", "float"),
    LandingField("ttft_ms", "float"),
    LandingField("prompt_tokens", "int"),
    LandingField("completion_tokens", "int"),
    LandingField("cost_usd", "float"),
    LandingField("status", "string", True, "ok | error"),
    LandingField("error_type", "string"),
    LandingField("error_message", "string"),
    LandingField("metadata", "string", doc="JSON-encoded object"),
    LandingField("source", "string", True, "sdk | otlp | gateway | import"),
    LandingField("content_hash", "string", doc="sha256 of prompt/messages + response (filled at ingest when absent)"),
    LandingField("redactions", "string", doc="JSON object: PII kind → how many were redacted (never the values)"),
)

FEEDBACK_FIELDS = (
    LandingField("feedback_id", "string", True),
    LandingField("interaction_id", "string", True, "the interaction this feedback is about"),
    LandingField("ts", "timestamp", True),
    LandingField("score", "float", doc="explicit rating in [0, 1], 1 = best"),
    LandingField("label", "string", doc="e.g. thumbs_up, thumbs_down, wrong_answer"),
    LandingField("comment", "string"),
    LandingField("signal", "string", doc="implicit signal: copy | share | retry | dismiss | engage"),
    LandingField("correction", "string", doc="an edited, corrected response"),
    LandingField("outcome", "string", doc="downstream outcome, e.g. ticket_reopened"),
    LandingField("preferred_over", "string", doc="interaction id this one was preferred over"),
    LandingField("user_id", "string"),
    LandingField("metadata", "string", doc="JSON-encoded object"),
    LandingField("source", "string", True),
    LandingField("redactions", "string", doc="JSON object: PII kind → how many were redacted (never the values)"),
)

FIELDS_BY_KIND = {"interaction": ENVELOPE + INTERACTION_FIELDS, "feedback": ENVELOPE + FEEDBACK_FIELDS}
STATUSES = ("ok", "error")
# error_message is clipped to this many characters by the writer, after redaction: clipped first, a secret cut in two
# would no longer be recognised and its first half would reach the disk. Builders keep up to 8× as much.
ERROR_MESSAGE_CHARS = 2000
ERROR_MESSAGE_BUILT_CHARS = 8 * ERROR_MESSAGE_CHARS
CONSENTS = ("granted", "denied", "unknown")
FEEDBACK_SIGNALS = ("score", "label", "comment", "signal", "correction", "outcome", "preferred_over")


def iso_utc(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def content_hash(prompt: str | None, messages: list[dict] | None, response: str | None) -> str:
    """Exact-dedup key: the same conversation and answer hash the same wherever they were captured."""
    payload = json.dumps([messages if messages else prompt, response], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8", "replace")).hexdigest()


def to_json_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=repr, separators=(",", ":"))


# --- extracting prompt and response from whatever the app's function takes and returns ----------

_PROMPT_ARG_NAMES = ("messages", "prompt", "question", "query", "input", "text", "message")
_RESPONSE_KEYS = ("response", "content", "text", "answer", "output", "completion")


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def _content_text(content: Any) -> str | None:
    """OpenAI content may be a string or a list of parts; keep the text parts."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(_get(p, "text") or "") for p in content if _get(p, "type") in (None, "text"))
    return str(content)


def normalize_messages(value: Any) -> list[dict[str, str | None]] | None:
    if not isinstance(value, list | tuple) or not value:
        return None
    out = []
    for m in value:
        role = _get(m, "role")
        if role is None:
            return None  # not a chat message list
        out.append({"role": str(role), "content": _content_text(_get(m, "content"))})
    return out


def extract_prompt(signature: inspect.Signature | None, prompt_arg: str | None, args: tuple, kwargs: dict):
    """(prompt text, messages) from the wrapped function's arguments."""
    named: dict[str, Any] = {}
    if signature is not None:
        try:
            named = dict(signature.bind_partial(*args, **kwargs).arguments)
        except TypeError:
            named = dict(kwargs)
    else:
        named = dict(kwargs)
    candidates = [named[prompt_arg]] if prompt_arg and prompt_arg in named else []
    candidates += [named[n] for n in _PROMPT_ARG_NAMES if n in named]
    candidates += [a for a in args if isinstance(a, str | list)]
    for value in candidates:
        messages = normalize_messages(value)
        if messages is not None:
            last_user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), None)
            return last_user, messages
        if isinstance(value, str):
            return value, None
    return None, None


def extract_response(result: Any) -> dict[str, Any]:
    """Response text, token usage, tool calls and model from a str, a dict or an OpenAI-style object."""
    out: dict[str, Any] = {}
    if result is None:
        return out
    if isinstance(result, str):
        out["response"] = result
        return out
    choices = _get(result, "choices")
    if choices:
        message = _get(choices[0], "message") or {}
        out["response"] = _content_text(_get(message, "content"))
        tool_calls = _get(message, "tool_calls")
        if tool_calls:
            out["tool_calls"] = [_as_plain(t) for t in tool_calls]
        usage = _get(result, "usage")
        if usage is not None:
            out["prompt_tokens"] = _get(usage, "prompt_tokens")
            out["completion_tokens"] = _get(usage, "completion_tokens")
        if _get(result, "model"):
            out["served_model"] = _get(result, "model")
        return out
    for key in _RESPONSE_KEYS:
        value = _get(result, key)
        if isinstance(value, str):
            out["response"] = value
            return out
    out["response"] = to_json_text(result) if isinstance(result, dict | list) else str(result)
    return out


def _as_plain(value: Any) -> Any:
    if isinstance(value, dict | list | str | int | float | bool) or value is None:
        return value
    dump = getattr(value, "model_dump", None)
    return dump() if callable(dump) else repr(value)


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _int_or_none(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def interaction_record(
    *,
    interaction_id: str,
    wall_ns: int,
    elapsed_ns: int,
    spec: Any,
    args: tuple,
    kwargs: dict,
    result: Any,
    error: BaseException | None,
    context: dict[str, Any] | None,
    annotations: dict[str, Any] | None,
) -> dict[str, Any]:
    """The landing record for one captured call (runs on the writer thread, never in the app's call)."""
    ctx = dict(context or {})
    ann = dict(annotations or {})
    prompt, messages = extract_prompt(spec.signature, spec.prompt_arg, args, kwargs)
    resp = extract_response(result) if error is None else {}
    metadata = {**(spec.metadata or {}), **(ctx.get("metadata") or {}), **(ann.pop("metadata", None) or {})}
    response = ann.pop("response", resp.get("response"))
    ts = ann.pop("ts", None)  # replays and simulations carry their own time
    record = {
        "v": SCHEMA_VERSION,
        "kind": "interaction",
        "interaction_id": interaction_id,
        "ts": ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if isinstance(ts, datetime) else iso_utc(wall_ns),
        "trace_id": ann.pop("trace_id", ctx.get("trace_id")),
        "span_id": ann.pop("span_id", None),
        "session_id": ann.pop("session_id", ctx.get("session_id")),
        "user_id": ann.pop("user_id", ctx.get("user_id")),
        "task": spec.task,
        "model": ann.pop("model", None) or spec.model or resp.get("served_model") or "unknown",
        "model_version": ann.pop("model_version", None) or spec.model_version or ctx.get("model_version"),
        "route": ann.pop("route", None) or ctx.get("route") or spec.route,
        "consent": ann.pop("consent", None) or ctx.get("consent") or spec.consent or "unknown",
        "prompt": prompt,
        "messages": messages,
        "response": response,
        "tool_calls": to_json_text(ann.pop("tool_calls", resp.get("tool_calls"))),
        "contexts": [str(c) for c in ann.pop("contexts", None) or ctx.get("contexts") or []] or None,
        # measured around the call; a simulation or replay whose model ran elsewhere annotates its own
        "latency_ms": _finite(ann.pop("latency_ms", None)) if "latency_ms" in ann else elapsed_ns / 1e6,
        "ttft_ms": _finite(ann.pop("ttft_ms", None)),
        "prompt_tokens": _int_or_none(ann.pop("prompt_tokens", resp.get("prompt_tokens"))),
        "completion_tokens": _int_or_none(ann.pop("completion_tokens", resp.get("completion_tokens"))),
        "cost_usd": _finite(ann.pop("cost_usd", None)),
        "status": "ok" if error is None else "error",
        "error_type": None if error is None else type(error).__qualname__,
        "error_message": None if error is None else str(error)[:ERROR_MESSAGE_BUILT_CHARS],
        "metadata": to_json_text({**metadata, **ann}) if (metadata or ann) else None,
        "source": "sdk",
        "content_hash": None,
    }
    record["content_hash"] = content_hash(prompt, messages, response)
    return record


def feedback_record(
    *,
    feedback_id: str,
    interaction_id: str,
    wall_ns: int,
    score: float | None = None,
    label: str | None = None,
    comment: str | None = None,
    signal: str | None = None,
    correction: str | None = None,
    outcome: str | None = None,
    preferred_over: str | None = None,
    user_id: str | None = None,
    metadata: dict[str, Any] | None = None,
    source: str = "sdk",
) -> dict[str, Any]:
    return {
        "v": SCHEMA_VERSION,
        "kind": "feedback",
        "feedback_id": feedback_id,
        "interaction_id": interaction_id,
        "ts": iso_utc(wall_ns),
        "score": score,
        "label": label,
        "comment": comment,
        "signal": signal,
        "correction": correction,
        "outcome": outcome,
        "preferred_over": preferred_over,
        "user_id": user_id,
        "metadata": to_json_text(metadata) if metadata else None,
        "source": source,
    }


def dumps_line(record: dict[str, Any]) -> bytes:
    """One landing line. Null fields are left out (a missing key reads as null): a quarter fewer bytes to parse.
    allow_nan=False: NaN is not JSON and would be quarantined at ingest; the builders map it to null."""
    record = {k: v for k, v in record.items() if v is not None}
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode(
        "utf-8", "replace"
    ) + b"\n"
