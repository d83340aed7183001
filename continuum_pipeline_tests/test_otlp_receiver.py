"""The OTLP/HTTP trace receiver of `continuum serve`, driven by the real clients, unchanged: the official GenAI
instrumentation (opentelemetry-instrumentation-openai-v2) and OpenInference's, around the `openai` client calling a
local OpenAI-protocol server, exported with opentelemetry-exporter-otlp-proto-http (protobuf + gzip); and OTLP/JSON
and Langfuse-attribute bodies posted to the Langfuse path. Every export ends as rows in `interactions` (or, when
malformed, `quarantine`) after ingest."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import gzip
import json

import httpx
import openai
import pytest
from google.protobuf import json_format
from google.rpc.status_pb2 import Status
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from continuum_pipeline.capture.writer import WriterConfig
from continuum_pipeline.lake.ingest import ingest_landing
from continuum_pipeline.server import spans
from continuum_pipeline_tests.openai_server import OpenAIServer
from continuum_pipeline_tests.served import Served

API_KEY = "test-key-1"
# The langfuse SDK keeps one client per public key in a process: a key of its own, or a client from another
# test file (pointed at a server that is gone) would be reused.
LF_PUBLIC, LF_SECRET = "pk-lf-otlp-test", "sk-lf-otlp-test"
LIMIT = 256 << 10


@pytest.fixture
def serve(settings, sdk):
    """A real `continuum serve` (uvicorn) on a free 127.0.0.1 port; yields (base_url, settings)."""
    settings = dataclasses.replace(settings, serve_api_keys=(API_KEY,), langfuse_public_key=LF_PUBLIC,
                                   langfuse_secret_key=LF_SECRET, serve_max_body_bytes=LIMIT)
    with Served(settings) as server:
        yield server.url, settings


def rows(lake, table: str) -> list[dict]:
    return lake.read_arrow(table).to_pylist()


def by_id(lake) -> dict[str, dict]:
    return {r["interaction_id"]: r for r in rows(lake, "interactions")}


class UserSession(SpanProcessor):
    """What an app adds so its spans name the end user and session (the GenAI instrumentation has no API for it)."""

    def __init__(self, user: str, session: str) -> None:
        self.user, self.session = user, session

    def on_start(self, span, parent_context=None) -> None:
        span.set_attribute("user.id", self.user)
        span.set_attribute("session.id", self.session)


def provider(base: str, *extra: SpanProcessor, service: str = "support_answer", path: str = "/v1/traces",
             headers: dict | None = None) -> TracerProvider:
    tp = TracerProvider(resource=Resource.create({"service.name": service, "continuum.consent": "granted"}))
    for p in extra:
        tp.add_span_processor(p)
    exporter = OTLPSpanExporter(endpoint=base + path, headers=headers or {"Authorization": f"Bearer {API_KEY}"},
                                compression=Compression.Gzip, timeout=10)
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    return tp


def chat(server: OpenAIServer, question: str) -> str:
    client = openai.OpenAI(base_url=server.base_url, api_key="upstream-key", max_retries=0)
    reply = client.chat.completions.create(model="gpt-test", messages=[
        {"role": "system", "content": "be brief"}, {"role": "user", "content": question}])
    return reply.choices[0].message.content


def test_official_genai_instrumentation_protobuf_gzip(serve, lake, monkeypatch):
    base, settings = serve
    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "gen_ai_latest_experimental")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "span_only")
    from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor

    tp = provider(base, UserSession("u-42", "s-7"))
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(tracer_provider=tp)
    try:
        with OpenAIServer(chat=lambda messages: "the answer is four") as upstream:
            assert chat(upstream, "what is 2+2?") == "the answer is four"
            assert chat(upstream, "and 3+3?") == "the answer is four"
    finally:
        instrumentor.uninstrument()
        tp.shutdown()
    # The same instrumentation's spans as an OTLP/JSON body (gzip), encoded by the exporter's own encoder; OTLP/JSON
    # writes trace and span ids in hex where protobuf's JSON mapping would write base64.
    memory = InMemorySpanExporter()
    tp = TracerProvider(resource=Resource.create({"service.name": "support_answer"}))
    tp.add_span_processor(UserSession("u-43", "s-8"))
    tp.add_span_processor(SimpleSpanProcessor(memory))
    instrumentor.instrument(tracer_provider=tp)
    try:
        with OpenAIServer(chat=lambda messages: "eight") as upstream:
            assert chat(upstream, "and 4+4?") == "eight"
    finally:
        instrumentor.uninstrument()
    body = json_format.MessageToDict(encode_spans(memory.get_finished_spans()))
    for rs in body["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for span in ss["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = base64.b64decode(span[key]).hex()
    r = httpx.post(base + "/v1/traces", content=gzip.compress(json.dumps(body).encode()),
                   headers={"Content-Type": "application/json", "Content-Encoding": "gzip",
                            "Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 200 and r.json() == {}
    ctx = memory.get_finished_spans()[0].context
    json_key = f"otel-{ctx.trace_id:032x}-{ctx.span_id:016x}"

    report = ingest_landing(lake, settings.landing_dir)
    assert report.rows("quarantine") == 0 and report.rows("interactions") == 3
    got = [r for r in rows(lake, "interactions") if r["source"] == "otlp"]
    assert len(got) == 3
    j = next(r for r in got if r["interaction_id"] == json_key)
    assert (j["prompt"], j["response"], j["model"], j["user_id"], j["session_id"], j["consent"]) == (
        "and 4+4?", "eight", "gpt-test", "u-43", "s-8", "unknown")
    r = next(r for r in got if r["prompt"] == "what is 2+2?")
    assert r["interaction_id"] == f"otel-{r['trace_id']}-{r['span_id']}" and len(r["trace_id"]) == 32
    assert r["model"] == "gpt-test" and r["task"] == "support_answer" and r["consent"] == "granted"
    assert r["prompt_tokens"] == 5 and r["completion_tokens"] == 4  # the local server counts words
    assert [(m["role"], m["content"]) for m in r["messages"]] == [("system", "be brief"), ("user", "what is 2+2?")]
    assert r["response"] == "the answer is four" and r["status"] == "ok"
    assert r["user_id"] == "u-42" and r["session_id"] == "s-7" and r["latency_ms"] > 0
    meta = json.loads(r["metadata"])
    assert meta["provider"] == "openai" and meta["finish_reasons"] == ["stop"] and meta["response_id"]
    assert meta["otel"]["attributes"]["gen_ai.operation.name"] == "chat"


def test_openinference_with_rag_contexts_and_langfuse_path(serve, lake):
    base, settings = serve
    from openinference.instrumentation import using_attributes
    from openinference.instrumentation.openai import OpenAIInstrumentor

    basic = base64.b64encode(f"{LF_PUBLIC}:{LF_SECRET}".encode()).decode()
    tp = provider(base, path="/api/public/otel/v1/traces", headers={"Authorization": f"Basic {basic}"},
                  service="rag_answer")
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(tracer_provider=tp)
    tracer = tp.get_tracer("app")
    try:
        with OpenAIServer(chat=lambda messages: "Paris") as upstream, \
                using_attributes(session_id="sess-1", user_id="user-1", tags=["geo"]), \
                tracer.start_as_current_span("rag") as root:
            with tracer.start_as_current_span("retrieve") as retrieval:
                retrieval.set_attribute("openinference.span.kind", "RETRIEVER")
                retrieval.set_attribute("retrieval.documents.0.document.content", "Paris is the capital of France.")
                retrieval.set_attribute("retrieval.documents.1.document.content", "France is in Europe.")
            assert chat(upstream, "capital of France?") == "Paris"
            root.set_attribute("openinference.span.kind", "CHAIN")
    finally:
        instrumentor.uninstrument()
        tp.shutdown()
    ingest_landing(lake, settings.landing_dir)
    got = [r for r in rows(lake, "interactions") if r["source"] == "otlp"]
    assert len(got) == 1  # the chain and retriever spans are skipped
    r = got[0]
    assert r["model"] == "gpt-test" and r["task"] == "rag_answer" and r["prompt"] == "capital of France?"
    assert r["messages"][-1] == {"role": "user", "content": "capital of France?"} and r["response"] == "Paris"
    assert r["prompt_tokens"] == 5 and r["completion_tokens"] == 1
    assert r["user_id"] == "user-1" and r["session_id"] == "sess-1"
    assert list(r["contexts"]) == ["Paris is the capital of France.", "France is in Europe."]
    assert json.loads(r["metadata"])["tags"] == ["geo"]


def test_langfuse_sdk_generation(serve, lake):
    """The `langfuse` SDK (v5) sends its OTel spans to /api/public/otel/v1/traces with Basic auth."""
    from langfuse import Langfuse, propagate_attributes

    base, settings = serve
    lf = Langfuse(public_key=LF_PUBLIC, secret_key=LF_SECRET, base_url=base, tracer_provider=TracerProvider(),
                  flush_interval=0.1)
    try:
        with propagate_attributes(user_id="lf-u", session_id="lf-s", tags=["t1"], metadata={"tier": "gold"},
                                  trace_name="support_answer"), \
                lf.start_as_current_observation(
                    as_type="generation", name="gen", model="gpt-test", version="v9",
                    input=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "How do I reset?"}],
                    output={"role": "assistant", "content": "Hold the button."}, metadata={"feature": "faq"},
                    usage_details={"input": 12, "output": 4}, cost_details={"total": 0.0021}) as gen:
            key = f"otel-{gen.trace_id}-{gen.id}"
            with lf.start_as_current_observation(as_type="span", name="not a generation"):
                pass
        lf.flush()
    finally:
        lf.shutdown()
    ingest_landing(lake, settings.landing_dir)
    got = by_id(lake)
    assert list(got) == [key]  # the plain span is skipped
    r = got[key]
    assert (r["model"], r["task"], r["user_id"], r["session_id"]) == ("gpt-test", "support_answer", "lf-u", "lf-s")
    assert r["prompt"] == "How do I reset?" and r["response"] == "Hold the button." and len(r["messages"]) == 2
    assert (r["prompt_tokens"], r["completion_tokens"], r["cost_usd"]) == (12, 4, 0.0021)
    meta = json.loads(r["metadata"])
    assert meta["metadata"] == {"feature": "faq"} and meta["trace_metadata"] == {"tier": "gold"}
    assert meta["tags"] == ["t1"] and meta["version"] == "v9"


def _kv(key, value):
    if isinstance(value, bool):
        return {"key": key, "value": {"boolValue": value}}
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}
    if isinstance(value, list):
        return {"key": key, "value": {"arrayValue": {"values": [{"stringValue": v} for v in value]}}}
    return {"key": key, "value": {"stringValue": value}}


def _span(trace: str, span: str, name: str, attrs: dict, parent: str = "", start: int = 1_763_700_000_000_000_000,
          status: dict | None = None) -> dict:
    return {"traceId": trace, "spanId": span, "parentSpanId": parent, "name": name, "kind": 3,
            "startTimeUnixNano": str(start), "endTimeUnixNano": str(start + 250_000_000),
            "attributes": [_kv(k, v) for k, v in attrs.items()], "status": status or {}}


def test_otlp_json_langfuse_attributes_precedence_partial_success_and_quarantine(serve, lake):
    base, settings = serve
    trace = "5b8efff798038103d269b633813fc60c"
    lf = {"langfuse.observation.type": "generation", "langfuse.observation.model.name": "lf-model",
          "gen_ai.request.model": "genai-model", "llm.model_name": "oi-model",
          "langfuse.observation.input": json.dumps([{"role": "user", "content": "hello"}]),
          "langfuse.observation.output": json.dumps({"role": "assistant", "content": "hi there"}),
          "langfuse.observation.usage_details": json.dumps({"input": 11, "output": 5}),
          "gen_ai.usage.input_tokens": 99, "llm.token_count.prompt": 98,
          "langfuse.observation.cost_details": json.dumps({"input": 0.001, "output": 0.002}),
          "langfuse.observation.metadata.team": "search", "langfuse.observation.prompt.name": "greet",
          "langfuse.observation.prompt.version": 3, "langfuse.trace.name": "greeting",
          "langfuse.trace.tags": ["a", "b"], "langfuse.trace.metadata.tier": "gold", "user.id": "lf-user",
          "session.id": "lf-session", "langfuse.release": "r1", "continuum.task": "greet_user"}
    old = {"gen_ai.system": "openai", "gen_ai.request.model": "old-model", "gen_ai.usage.prompt_tokens": 7,
           "gen_ai.usage.completion_tokens": 2, "enduser.id": "old-user", "error.type": "timeout"}
    body = {"resourceSpans": [{
        "resource": {"attributes": [_kv("service.name", "svc")]},
        "scopeSpans": [{"scope": {"name": "manual"}, "spans": [
            _span(trace, "eee19b7ec3c1b174", "generation", lf),
            dict(_span(trace, "eee19b7ec3c1b175", "old chat", old, status={"code": 2, "message": "upstream timed out"}),
                 events=[{"name": "gen_ai.content.prompt", "timeUnixNano": "1",
                          "attributes": [_kv("gen_ai.prompt", json.dumps([{"role": "user", "content": "old q"}]))]},
                         {"name": "gen_ai.content.completion", "timeUnixNano": "2",
                          "attributes": [_kv("gen_ai.completion", "old a")]}]),
            _span(trace, "eee19b7ec3c1b176", "http GET", {"http.method": "GET"}),  # not an LLM span: skipped
            _span(trace, "eee19b7ec3c1b177", "no model", {"gen_ai.operation.name": "chat"}),  # → quarantine
            _span(trace, "", "no id", {"gen_ai.operation.name": "chat", "gen_ai.request.model": "m"}),  # rejected
        ]}]}]}
    basic = base64.b64encode(f"{LF_PUBLIC}:{LF_SECRET}".encode()).decode()
    resp = httpx.post(base + "/api/public/otel/v1/traces", content=json.dumps(body),
                      headers={"Content-Type": "application/json", "Authorization": f"Basic {basic}"})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("application/json")
    partial = resp.json()["partialSuccess"]
    assert partial["rejectedSpans"] == "1" and "trace_id/span_id" in partial["errorMessage"]

    report = ingest_landing(lake, settings.landing_dir)
    got = by_id(lake)
    r = got[f"otel-{trace}-eee19b7ec3c1b174"]
    assert r["model"] == "lf-model" and r["prompt_tokens"] == 11 and r["completion_tokens"] == 5  # langfuse wins
    assert r["task"] == "greet_user" and r["user_id"] == "lf-user" and r["session_id"] == "lf-session"
    assert r["prompt"] == "hello" and r["response"] == "hi there" and r["cost_usd"] == pytest.approx(0.003)
    assert r["trace_id"] == trace and r["span_id"] == "eee19b7ec3c1b174" and r["latency_ms"] == 250.0
    meta = json.loads(r["metadata"])
    assert meta["metadata"] == {"team": "search"} and meta["trace_metadata"] == {"tier": "gold"}
    assert meta["prompt_name"] == "greet" and meta["prompt_version"] == 3 and meta["tags"] == ["a", "b"]
    assert meta["release"] == "r1" and meta["otel"]["resource"] == {"service.name": "svc"}

    o = got[f"otel-{trace}-eee19b7ec3c1b175"]
    assert o["model"] == "old-model" and o["prompt_tokens"] == 7 and o["completion_tokens"] == 2
    assert o["prompt"] == "old q" and o["response"] == "old a" and o["user_id"] == "old-user"
    assert o["task"] == "svc" and o["status"] == "error" and o["error_type"] == "timeout"
    assert o["error_message"] == "upstream timed out"
    assert len(got) == 2
    quarantined = rows(lake, "quarantine")
    assert len(quarantined) == 1 and "model" in quarantined[0]["reason"]
    assert json.loads(quarantined[0]["raw"])["interaction_id"] == f"otel-{trace}-eee19b7ec3c1b177"
    assert report.quarantine_reasons


def _protobuf_body(n: int = 1, trace: bytes = b"\x01" * 16) -> bytes:
    req = ExportTraceServiceRequest()
    ss = req.resource_spans.add().scope_spans.add()
    for i in range(n):
        span = ss.spans.add(trace_id=trace, span_id=(i + 1).to_bytes(8, "big"), name="chat",
                            start_time_unix_nano=1_763_700_000_000_000_000 + i,
                            end_time_unix_nano=1_763_700_000_100_000_000)
        for key, value in (("gen_ai.operation.name", "chat"), ("gen_ai.request.model", "m"),
                           ("continuum.task", "t"), ("gen_ai.input.messages", json.dumps(
                               [{"role": "user", "parts": [{"type": "text", "content": f"q{i}"}]}]))):
            kv = span.attributes.add(key=key)
            kv.value.string_value = value
    return req.SerializeToString()


def test_bad_requests_get_the_right_status_and_nothing_is_lost(serve, lake, sdk):
    base, settings = serve
    url = base + "/v1/traces"
    proto = {"Content-Type": "application/x-protobuf", "Authorization": f"Bearer {API_KEY}"}
    good = _protobuf_body(3, trace=b"\x02" * 16)
    with httpx.Client(timeout=10) as http:
        r = http.post(url, content=good[:-7], headers=proto)  # truncated protobuf: a google.rpc.Status, as OTLP says
        assert r.status_code == 400 and r.headers["content-type"] == "application/x-protobuf"
        status = Status.FromString(r.content)
        assert status.code == 3 and "protobuf" in status.message
        assert http.post(url, content=gzip.compress(good)[:-9],
                         headers={**proto, "Content-Encoding": "gzip"}).status_code == 400  # truncated gzip
        r = http.post(url, content=good, headers={**proto, "Content-Type": "text/plain"})
        assert r.status_code == 400 and "Content-Type" in r.json()["message"]
        assert http.post(url, content=b"{not json", headers={**proto, "Content-Type": "application/json"}
                         ).status_code == 400
        assert http.post(url, content=b"\0" * (LIMIT + 1), headers=proto).status_code == 413
        bomb = gzip.compress(b"\0" * (LIMIT * 4))  # small on the wire, over the limit once inflated
        assert http.post(url, content=bomb, headers={**proto, "Content-Encoding": "gzip"}).status_code == 413
        assert http.post(url, content=good, headers={**proto, "Authorization": "Bearer nope"}).status_code == 401
        assert http.post(url, content=good, headers={"Content-Type": "application/x-protobuf"}).status_code == 401
        lf_wrong = base64.b64encode(LF_PUBLIC.encode() + b":wrong").decode()
        assert http.post(base + "/api/public/otel/v1/traces", content=good,
                         headers={**proto, "Authorization": f"Basic {lf_wrong}"}).status_code == 401
        assert http.post(base + "/api/public/otel/v1/traces", content=good, headers=proto).status_code == 401

        # saturated writer: 503 + Retry-After, nothing queued; the exporter's retry then lands everything once
        sdk.configure(WriterConfig(settings.landing_dir, queue_size=2, segment_records=5_000, flush_seconds=0.05))
        r = http.post(url, content=good, headers=proto)
        assert r.status_code == 503 and r.headers["Retry-After"] == "1"
        sdk.configure(WriterConfig(settings.landing_dir, queue_size=100_000, segment_records=5_000,
                                   flush_seconds=0.05))
        r = http.post(url, content=good, headers=proto)
        assert r.status_code == 200 and r.headers["content-type"] == "application/x-protobuf"
        parsed = ExportTraceServiceResponse()
        parsed.ParseFromString(r.content)
        assert not parsed.HasField("partial_success")
        # only a health check sees the writer: nothing dropped
        health = http.get(base + "/healthz").json()["capture"]
        assert all(v == 0 for k, v in health.items() if k.startswith("dropped"))
    ingest_landing(lake, settings.landing_dir)
    got = by_id(lake)
    assert sorted(r["prompt"] for r in got.values()) == ["q0", "q1", "q2"]
    assert rows(lake, "quarantine") == []


def test_configurable_task_and_consent_attributes():
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    kv = rs.resource.attributes.add(key="service.name")
    kv.value.string_value = "svc"
    span = rs.scope_spans.add().spans.add(trace_id=b"\x03" * 16, span_id=b"\x04" * 8, start_time_unix_nano=1)
    for key, value in (("openinference.span.kind", "LLM"), ("llm.model_name", "m"), ("app.feature", "summarize"),
                       ("app.consent", True)):
        kv = span.attributes.add(key=key)
        if isinstance(value, bool):
            kv.value.bool_value = value
        else:
            kv.value.string_value = value
    default = spans.map_request(req).records[0]
    assert default["task"] == "svc" and default["consent"] == "unknown"
    custom = spans.map_request(req, task_attributes=("app.feature",), consent_attribute="app.consent").records[0]
    assert custom["task"] == "summarize" and custom["consent"] == "granted"
    assert custom["interaction_id"] == "otel-" + "03" * 16 + "-" + "04" * 8
    with contextlib.suppress(KeyError):
        assert spans.map_request(req).skipped_spans == 0
