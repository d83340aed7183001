"""OTLP spans → landing interaction records. Pure functions: no Starlette, no I/O.

One record per LLM generation span, recognised by any of:
  * Langfuse: `langfuse.observation.type = generation`
  * OTel GenAI semantic conventions: `gen_ai.operation.name` in chat / text_completion / generate_content, or
    (older instrumentations) no operation name but a `gen_ai.request.model` / `gen_ai.system` / usage attribute
  * OpenInference: `openinference.span.kind = LLM`
Where the conventions overlap, langfuse.* wins over gen_ai.*, which wins over OpenInference. OpenInference
RETRIEVER spans are not records: their documents become the `contexts` of the LLM spans that share their parent
(within one export request, or a recent one: RecentContexts). Every other span is counted and skipped.

The interaction id is `otel-<trace_id_hex>-<span_id_hex>`, so the Langfuse score endpoint (traceId +
observationId) finds it. trace/span/parent ids and the raw span and resource attributes are kept in metadata
under "otel".

A malformed LLM span is never dropped silently: when it has no model name, no start time or no task, or an
unknown consent value, it is still written as a landing line with that field missing or wrong, so ingest puts it
in quarantine with the reason (and the raw bytes). A span whose trace or span id is not 16/8 bytes has no
interaction id to write: it is rejected and counted in the OTLP response's `partial_success`.
"""

from __future__ import annotations

import collections
import json
import re
import threading
from dataclasses import dataclass, field
from typing import Any

from continuum_pipeline.capture.record import ERROR_MESSAGE_BUILT_CHARS, SCHEMA_VERSION, iso_utc, to_json_text

try:  # metadata holds every raw attribute: orjson encodes it ~5x faster than json when it is installed
    import orjson

    _loads = orjson.loads

    def _dumps(value: Any) -> str:
        try:
            return orjson.dumps(value, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()
        except (TypeError, orjson.JSONEncodeError):
            return to_json_text(value)
except ImportError:  # pragma: no cover - orjson comes with the pipeline's dependencies
    _dumps = to_json_text
    _loads = json.loads

DEFAULT_TASK_ATTRIBUTES = ("continuum.task", "langfuse.trace.name", "service.name")
DEFAULT_CONSENT_ATTRIBUTE = "continuum.consent"
GENERATION_OPERATIONS = frozenset({"chat", "text_completion", "generate_content", "completion", "generation"})
NON_GENERATION_OPERATIONS = frozenset({"embeddings", "execute_tool", "create_agent", "invoke_agent"})
STATUS_CODE_ERROR = 2
_OI_MESSAGE = re.compile(r"^llm\.(input|output)_messages\.(\d+)\.message\.(.+)$")
_OI_DOCUMENT = re.compile(r"^retrieval\.documents\.(\d+)\.document\.content$")
_FLAT_PROMPT = re.compile(r"^gen_ai\.(prompt|completion)\.(\d+)\.(role|content)$")


@dataclass
class MapResult:
    """What one export request became: records to land, and the counts the response and the logs report."""

    records: list[dict[str, Any]] = field(default_factory=list)
    llm_spans: int = 0
    skipped_spans: int = 0  # non-LLM spans (and retrieval spans, which feed contexts)
    rejected_spans: int = 0  # LLM spans with no usable id: reported in partial_success
    errors: list[str] = field(default_factory=list)

    @property
    def total_spans(self) -> int:
        return self.llm_spans + self.skipped_spans + self.rejected_spans


# --- OTLP values ------------------------------------------------------------------------------------------

def any_value(v: Any) -> Any:
    """An OTLP AnyValue as a plain Python value."""
    which = v.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    if which == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, which)


def attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in kvs}


def _json(value: Any) -> Any:
    """A JSON attribute (strings holding JSON, as most instrumentations write them) decoded; else as given."""
    if isinstance(value, str):
        text = value.strip()
        if text[:1] in ("[", "{", '"'):
            try:
                return _loads(text)
            except ValueError:  # orjson.JSONDecodeError is a ValueError too
                return value
    return value


def _int(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        try:
            return int(float(value))
        except (TypeError, ValueError):
            return None


def _float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if f == f and f not in (float("inf"), float("-inf")) else None


def _lazy_first(*thunks: Any) -> Any:
    for thunk in thunks:
        v = thunk()
        if v is not None and v != "" and v != []:
            return v
    return None


def _first(*values: Any) -> Any:
    for v in values:
        if v is not None and v != "" and v != []:
            return v
    return None


# --- messages in the several formats ------------------------------------------------------------------------

def _text_of(content: Any) -> str | None:
    """Text of a message content: a string, OpenAI parts ({type: text, text}) or GenAI parts ({type: text, content})."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for p in content:
            if isinstance(p, str):
                texts.append(p)
            elif isinstance(p, dict) and p.get("type") in (None, "text", "input_text", "output_text"):
                t = p.get("content", p.get("text"))
                if isinstance(t, str):
                    texts.append(t)
        return "".join(texts)
    if isinstance(content, dict):
        return _text_of([content])
    return str(content)


def _tool_calls_of(message: dict) -> list:
    calls = list(message.get("tool_calls") or [])
    for p in message.get("parts") or []:
        if isinstance(p, dict) and p.get("type") == "tool_call":
            calls.append({k: p[k] for k in ("id", "name", "arguments") if k in p})
    return calls


def messages_from(value: Any) -> list[dict[str, Any]] | None:
    """Chat messages [{role, content}] from an OpenAI-style list, a GenAI parts-format list or {messages: [...]}."""
    value = _json(value)
    if isinstance(value, dict) and isinstance(value.get("messages"), list):
        value = value["messages"]
    if not isinstance(value, list) or not value:
        return None
    out = []
    for m in value:
        if not isinstance(m, dict) or "role" not in m:
            return None
        content = m["parts"] if "parts" in m and "content" not in m else m.get("content")
        msg: dict[str, Any] = {"role": str(m["role"]), "content": _text_of(content)}
        out.append(msg)
    return out


def _system_messages(value: Any) -> list[dict[str, Any]]:
    value = _json(value)
    if value is None:
        return []
    text = _text_of(value if isinstance(value, list | str) else [value])
    return [{"role": "system", "content": text}] if text else []


def _indexed_messages(attrs: dict[str, Any], direction: str) -> list[dict[str, Any]] | None:
    """OpenInference flat messages: llm.input_messages.N.message.role|content|contents.M.message_content.text."""
    found: dict[int, dict[str, Any]] = {}
    for key, value in attrs.items():
        m = _OI_MESSAGE.match(key)
        if not m or m.group(1) != direction:
            continue
        msg = found.setdefault(int(m.group(2)), {})
        rest = m.group(3)
        if rest in ("role", "content", "name"):
            msg[rest] = value
        elif rest.startswith("contents.") and rest.endswith(".message_content.text"):
            msg.setdefault("_parts", []).append((int(rest.split(".")[1]), value))
        elif rest.startswith("tool_calls."):
            idx, _, leaf = rest[len("tool_calls."):].partition(".")
            if idx.isdigit():
                call = msg.setdefault("_calls", {}).setdefault(int(idx), {})
                call[leaf.removeprefix("tool_call.").replace("function.", "")] = value
    if not found:
        return None
    out = []
    for _, msg in sorted(found.items()):
        content = msg.get("content")
        if content is None and "_parts" in msg:
            content = "".join(str(t) for _, t in sorted(msg["_parts"]))
        entry: dict[str, Any] = {"role": str(msg.get("role") or ("assistant" if direction == "output" else "user")),
                                 "content": content}
        if "_calls" in msg:
            entry["tool_calls"] = [c for _, c in sorted(msg["_calls"].items())]
        out.append(entry)
    return out


def _flat_prompt(attrs: dict[str, Any], kind: str) -> list[dict[str, Any]] | None:
    """The older flat form some instrumentations write: gen_ai.prompt.N.role / gen_ai.completion.N.content."""
    found: dict[int, dict[str, Any]] = {}
    for key, value in attrs.items():
        m = _FLAT_PROMPT.match(key)
        if m and m.group(1) == kind:
            found.setdefault(int(m.group(2)), {})[m.group(3)] = value
    if not found:
        return None
    default = "assistant" if kind == "completion" else "user"
    return [{"role": str(m.get("role") or default), "content": _text_of(m.get("content"))} for _, m in sorted(found.items())]


def _event_messages(events: list[tuple[str, dict[str, Any]]]) -> tuple[list | None, list | None]:
    """The older GenAI span events: gen_ai.content.prompt / gen_ai.content.completion (attributes gen_ai.prompt /
    gen_ai.completion), or per-message events gen_ai.{system,user,assistant,tool}.message and gen_ai.choice."""
    inputs: list[dict[str, Any]] = []
    outputs: list[dict[str, Any]] = []
    for name, attrs in events:
        if name == "gen_ai.content.prompt" and "gen_ai.prompt" in attrs:
            msgs = messages_from(attrs["gen_ai.prompt"])
            inputs += msgs or [{"role": "user", "content": _text_of(_json(attrs["gen_ai.prompt"]))}]
        elif name == "gen_ai.content.completion" and "gen_ai.completion" in attrs:
            msgs = messages_from(attrs["gen_ai.completion"])
            outputs += msgs or [{"role": "assistant", "content": _text_of(_json(attrs["gen_ai.completion"]))}]
        elif name.startswith("gen_ai.") and name.endswith(".message"):
            role = name[len("gen_ai."):-len(".message")]
            inputs.append({"role": str(attrs.get("role") or role), "content": _text_of(_json(attrs.get("content")))})
        elif name == "gen_ai.choice":
            msg = _json(attrs.get("message"))
            content = msg.get("content") if isinstance(msg, dict) else attrs.get("content", msg)
            outputs.append({"role": "assistant", "content": _text_of(_json(content))})
    return inputs or None, outputs or None


# --- classification ------------------------------------------------------------------------------------------

def span_kind(attrs: dict[str, Any]) -> str:
    """"llm", "retrieval" or "other"."""
    lf = attrs.get("langfuse.observation.type")
    if lf is not None:
        return "llm" if str(lf).lower() == "generation" else "other"
    op = attrs.get("gen_ai.operation.name")
    if op is not None:
        op = str(op).lower()
        if op in GENERATION_OPERATIONS:
            return "llm"
        if op in NON_GENERATION_OPERATIONS:
            return "other"
    oi = attrs.get("openinference.span.kind")
    if oi is not None:
        oi = str(oi).upper()
        return "llm" if oi == "LLM" else "retrieval" if oi == "RETRIEVER" else "other"
    if op is None and any(k in attrs for k in ("gen_ai.request.model", "gen_ai.response.model", "gen_ai.system",
                                                "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens")):
        return "llm"
    return "other"


def retrieval_contexts(attrs: dict[str, Any]) -> list[str]:
    docs = {int(m.group(1)): v for k, v in attrs.items() if (m := _OI_DOCUMENT.match(k))}
    return [str(v) for _, v in sorted(docs.items()) if v is not None]


# --- one span ------------------------------------------------------------------------------------------------

def _prefixed(attrs: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix):]: _json(v) for k, v in attrs.items() if k.startswith(prefix)}


def _consent(value: Any) -> str:
    if value is None:
        return "unknown"
    if isinstance(value, bool):
        return "granted" if value else "denied"
    text = str(value).strip().lower()
    return {"true": "granted", "yes": "granted", "1": "granted", "false": "denied", "no": "denied",
            "0": "denied"}.get(text, text)  # anything else is kept: ingest quarantines it with the reason


def _usage(details: Any) -> tuple[int | None, int | None]:
    details = _json(details)
    if not isinstance(details, dict):
        return None, None
    inp = _first(details.get("input"), details.get("prompt_tokens"), details.get("input_tokens"))
    out = _first(details.get("output"), details.get("completion_tokens"), details.get("output_tokens"))
    return _int(inp), _int(out)


def _cost(details: Any) -> float | None:
    details = _json(details)
    if isinstance(details, dict):
        if "total" in details:
            return _float(details["total"])
        values = [_float(v) for v in details.values()]
        return sum(v for v in values if v is not None) if any(v is not None for v in values) else None
    return _float(details)


def map_span(span: Any, attrs: dict[str, Any], resource: dict[str, Any], scope: str, *,
             contexts: list[str] | None = None, task_attributes: tuple[str, ...] = DEFAULT_TASK_ATTRIBUTES,
             consent_attribute: str = DEFAULT_CONSENT_ATTRIBUTE) -> dict[str, Any]:
    """The landing record of one LLM span (the caller checked span_kind and the ids)."""
    trace_id, span_id = span.trace_id.hex(), span.span_id.hex()
    parent = span.parent_span_id.hex() or None
    a = attrs
    events = [(e.name, attributes(e.attributes)) for e in span.events]

    def lookup(name: str) -> Any:
        return a[name] if a.get(name) not in (None, "") else resource.get(name)

    # input / output: langfuse > gen_ai (current, then older events and flat form) > OpenInference
    # Which families of attributes the span has: one pass, so the fallbacks below cost nothing when absent.
    has_lf = has_oi = has_flat = False
    for k in a:
        c = k[0]
        if c == "l":
            if k.startswith("langfuse."):
                has_lf = True
            elif k.startswith(("llm.input_messages.", "llm.output_messages.")):
                has_oi = True
        elif c == "g" and k.startswith(("gen_ai.prompt.", "gen_ai.completion.")):
            has_flat = True
    lf_input = _json(a.get("langfuse.observation.input")) if has_lf else None
    lf_output = _json(a.get("langfuse.observation.output")) if has_lf else None
    ev_in, ev_out = _event_messages(events) if events else (None, None)
    gen_out_raw = _json(a.get("gen_ai.output.messages"))
    oi_out = _indexed_messages(a, "output") if has_oi else None

    def gen_in():
        msgs = messages_from(a.get("gen_ai.input.messages"))
        return None if msgs is None else _system_messages(a.get("gen_ai.system_instructions")) + msgs

    messages = _lazy_first(lambda: messages_from(lf_input), gen_in, lambda: ev_in,
                           lambda: _flat_prompt(a, "prompt") if has_flat else None,
                           lambda: _indexed_messages(a, "input") if has_oi else None,
                           lambda: messages_from(a.get("input.value")))
    outputs = _lazy_first(lambda: messages_from(lf_output), lambda: messages_from(gen_out_raw), lambda: ev_out,
                          lambda: _flat_prompt(a, "completion") if has_flat else None, lambda: oi_out,
                          lambda: messages_from(a.get("output.value")))
    if messages:
        prompt = next((m["content"] for m in reversed(messages) if m["role"] == "user"), None)
    else:
        raw_in = _first(lf_input, a.get("input.value"))
        prompt = raw_in if isinstance(raw_in, str) or raw_in is None else to_json_text(raw_in)
    if outputs:
        response = _first(*(m.get("content") for m in outputs if m.get("role") in ("assistant", "model", None)))
        if response is None:
            response = outputs[0].get("content")
    else:
        raw_output = _first(lf_output if not isinstance(lf_output, list) else None, a.get("output.value"))
        if isinstance(raw_output, dict):  # {"role": "assistant", "content": ...} or any object
            response = _text_of(raw_output.get("content")) if "content" in raw_output else to_json_text(raw_output)
        else:
            response = raw_output if raw_output is None or isinstance(raw_output, str) else to_json_text(raw_output)
    tool_calls = []
    for source in (lf_output, gen_out_raw, oi_out):
        if isinstance(source, dict):
            source = [source]
        if isinstance(source, list):
            tool_calls = [c for m in source if isinstance(m, dict) for c in _tool_calls_of(m)]
            if tool_calls:
                break

    lf_in_tokens, lf_out_tokens = _usage(a.get("langfuse.observation.usage_details"))
    prompt_tokens = _first(lf_in_tokens, _int(a.get("gen_ai.usage.input_tokens")),
                           _int(a.get("gen_ai.usage.prompt_tokens")), _int(a.get("llm.token_count.prompt")))
    completion_tokens = _first(lf_out_tokens, _int(a.get("gen_ai.usage.output_tokens")),
                               _int(a.get("gen_ai.usage.completion_tokens")), _int(a.get("llm.token_count.completion")))
    cost = _first(_cost(a.get("langfuse.observation.cost_details")), _float(a.get("llm.cost.total")))
    model = _first(a.get("langfuse.observation.model.name"), a.get("gen_ai.response.model"),
                   a.get("gen_ai.request.model"), a.get("llm.model_name"))

    error_type = a.get("error.type")
    error_message = span.status.message or None
    for name, ev in events:
        if name == "exception":
            error_type = error_type or ev.get("exception.type")
            error_message = error_message or ev.get("exception.message")
    failed = span.status.code == STATUS_CODE_ERROR or error_type is not None or \
        str(a.get("langfuse.observation.level", "")).upper() == "ERROR"
    if failed and error_message is None:
        error_message = a.get("langfuse.observation.status_message")

    task = None
    for name in task_attributes:
        task = lookup(name)
        if task not in (None, ""):
            break
    start, end = span.start_time_unix_nano, span.end_time_unix_nano
    finish = a.get("gen_ai.response.finish_reasons")

    metadata: dict[str, Any] = {
        "otel": {"trace_id": trace_id, "span_id": span_id, "parent_span_id": parent, "name": span.name,
                 "scope": scope or None, "attributes": a, "resource": resource},
    }
    extra = {
        "operation": a.get("gen_ai.operation.name"),
        "provider": _first(a.get("gen_ai.provider.name"), a.get("gen_ai.system"), a.get("llm.provider"),
                           a.get("llm.system")),
        "request_model": a.get("gen_ai.request.model"),
        "response_id": a.get("gen_ai.response.id"),
        "finish_reasons": list(finish) if isinstance(finish, list | tuple) else finish,
        "conversation_id": a.get("gen_ai.conversation.id"),
        "tags": _first(_json(a.get("langfuse.trace.tags")), _json(a.get("tag.tags"))),
        "metadata": _first(_prefixed(a, "langfuse.observation.metadata.") if has_lf else None,
                           _json(a.get("metadata"))),
        "trace_metadata": (_prefixed(a, "langfuse.trace.metadata.") or None) if has_lf else None,
        "trace_name": a.get("langfuse.trace.name"),
        "prompt_name": a.get("langfuse.observation.prompt.name"),
        "prompt_version": a.get("langfuse.observation.prompt.version"),
        "release": lookup("langfuse.release"),
        "version": lookup("langfuse.version"),
        "cost_details": _json(a.get("langfuse.observation.cost_details")),
        "usage_details": _json(a.get("langfuse.observation.usage_details")),
    }
    metadata.update({k: v for k, v in extra.items() if v is not None})

    record: dict[str, Any] = {
        "v": SCHEMA_VERSION,
        "kind": "interaction",
        "interaction_id": f"otel-{trace_id}-{span_id}",
        "ts": iso_utc(start) if start else None,
        "trace_id": trace_id,
        "span_id": span_id,
        "session_id": _str(_first(lookup("langfuse.session.id"), lookup("session.id"), a.get("gen_ai.conversation.id"))),
        "user_id": _str(_first(lookup("langfuse.user.id"), lookup("user.id"), lookup("enduser.id"))),
        "task": _str(task),
        "model": _str(model),
        "model_version": None,
        "route": None,
        "consent": _consent(lookup(consent_attribute)),
        "prompt": prompt if prompt is None or isinstance(prompt, str) else to_json_text(prompt),
        "messages": messages,
        "response": response if response is None or isinstance(response, str) else to_json_text(response),
        "tool_calls": to_json_text(tool_calls) if tool_calls else None,
        "contexts": contexts or None,
        "latency_ms": (end - start) / 1e6 if start and end >= start else None,
        "ttft_ms": None,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "cost_usd": cost,
        "status": "error" if failed else "ok",
        "error_type": _str(error_type) if failed else None,
        "error_message": str(error_message)[:ERROR_MESSAGE_BUILT_CHARS] if failed and error_message else None,
        "metadata": _dumps(metadata),
        "source": "otlp",
    }
    return record  # content_hash is left to ingest, which fills it when absent (the same function)


def _str(value: Any) -> str | None:
    return None if value is None else value if isinstance(value, str) else str(value)


# --- a whole export request ----------------------------------------------------------------------------------

class RecentContexts:
    """RAG contexts of recent retrieval spans by (trace_id, parent_span_id), bounded: exporters that send each
    span as it ends (SimpleSpanProcessor) put the retriever and its sibling LLM span in different requests."""

    MAX_DOCS = 64  # per (trace, parent): a runaway retriever cannot grow an entry without bound

    def __init__(self, max_entries: int = 2_000) -> None:
        self.max_entries = max_entries
        self._items: collections.OrderedDict[tuple[bytes, bytes], list[str]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def add(self, key: tuple[bytes, bytes], docs: list[str]) -> None:
        with self._lock:
            entry = self._items.setdefault(key, [])
            entry.extend(docs[:max(0, self.MAX_DOCS - len(entry))])
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)

    def get(self, key: tuple[bytes, bytes]) -> list[str] | None:
        with self._lock:
            return self._items.get(key)


def map_request(request: Any, *, task_attributes: tuple[str, ...] = DEFAULT_TASK_ATTRIBUTES,
                consent_attribute: str = DEFAULT_CONSENT_ATTRIBUTE,
                recent: RecentContexts | None = None) -> MapResult:
    """Every span of an ExportTraceServiceRequest: records for LLM spans, counts for the rest. `recent` carries
    retrieval contexts across requests (else only siblings within this request are joined)."""
    out = MapResult()
    llm: list[tuple[Any, dict, dict, str]] = []
    contexts = recent if recent is not None else RecentContexts()
    for rs in request.resource_spans:
        resource = attributes(rs.resource.attributes)
        for ss in rs.scope_spans:
            scope = ss.scope.name
            for span in ss.spans:
                attrs = attributes(span.attributes)
                kind = span_kind(attrs)
                if kind == "llm":
                    llm.append((span, attrs, resource, scope))
                    continue
                if kind == "retrieval":
                    docs = retrieval_contexts(attrs)
                    if docs:
                        contexts.add((span.trace_id, span.parent_span_id), docs)
                out.skipped_spans += 1
    for span, attrs, resource, scope in llm:
        if len(span.trace_id) != 16 or len(span.span_id) != 8 or not any(span.trace_id) or not any(span.span_id):
            out.rejected_spans += 1
            if len(out.errors) < 5:
                out.errors.append(f"LLM span {span.name!r} has no valid trace_id/span_id (16/8 bytes): no interaction "
                                  "id can be made for it")
            continue
        out.llm_spans += 1
        out.records.append(map_span(span, attrs, resource, scope,
                                    contexts=contexts.get((span.trace_id, span.parent_span_id)),
                                    task_attributes=task_attributes, consent_attribute=consent_attribute))
    return out
