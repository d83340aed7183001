"""OTLP receiver throughput: spans/s landed from batched OTLP/HTTP protobuf requests, against a plain parse.

The receiver is a real `continuum serve` (uvicorn, one process, started as a subprocess) with a landing folder of
its own; one client posts the batches one after another over a kept-alive connection (protobuf, uncompressed,
as an OTLP BatchSpanProcessor sends them) and waits for each 200. A 200 means the batch is mapped and flushed to a
landing segment, so the wall time covers HTTP, decode, mapping, JSON lines and fsync. The ceiling is
`ExportTraceServiceRequest.ParseFromString` of the same payloads in this process (upb, C). For reference it also
reports the in-process pipeline without HTTP (decode + map + land) and a parse that reads every attribute into
Python (what any receiver written in Python pays before mapping). Best of the rounds; writes
bench/results/otlp_receiver.json.

Spans are GenAI semantic-convention chat spans (current form: messages as JSON parts, usage, response ids) with one
non-LLM HTTP span for every four LLM spans, as an instrumented app emits them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest  # noqa: E402

from continuum_pipeline.capture.landing import list_segments  # noqa: E402
from continuum_pipeline.server import spans  # noqa: E402

QUESTIONS = ["How do I reset my password?", "Where is my refund for order #{n}?", "Can I upgrade to the Team plan?",
             "When will order #{n} arrive?", "Please cancel my subscription."]
ANSWER = "Open Settings → Security → Reset password; a link is emailed to you within 5 minutes."
SERVER = """
import sys, uvicorn
from continuum_pipeline.capture.writer import WRITER, WriterConfig
from continuum_pipeline.server.app import create_app
from continuum_pipeline.settings import Settings
settings = Settings.from_env()
WRITER.configure(WriterConfig(settings.landing_dir, queue_size=1_000_000, segment_records=50_000, flush_seconds=5.0,
                              max_bytes=1 << 30))
uvicorn.run(create_app(settings), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
"""


def _attr(span, key: str, value) -> None:
    kv = span.attributes.add(key=key)
    if isinstance(value, int):
        kv.value.int_value = value
    else:
        kv.value.string_value = value


def make_payloads(requests: int, per_request: int) -> tuple[list[bytes], int, int]:
    """(bodies, LLM spans, all spans)."""
    bodies, llm, total = [], 0, 0
    t0 = 1_763_700_000 * 10**9
    n = 0
    for _ in range(requests):
        req = ExportTraceServiceRequest()
        rs = req.resource_spans.add()
        for key, value in (("service.name", "support_answer"), ("continuum.consent", "granted"),
                           ("telemetry.sdk.language", "python"), ("telemetry.sdk.version", "1.45.2")):
            _attr(rs.resource, key, value)
        ss = rs.scope_spans.add()
        ss.scope.name = "opentelemetry.instrumentation.openai_v2"
        for i in range(per_request):
            n += 1
            span = ss.spans.add(trace_id=(n // 4 + 1).to_bytes(16, "big"), span_id=n.to_bytes(8, "big"),
                                parent_span_id=(10**9 + n // 4).to_bytes(8, "big"),
                                start_time_unix_nano=t0 + n * 10**7, end_time_unix_nano=t0 + n * 10**7 + 8 * 10**8)
            total += 1
            if i % 5 == 4:
                span.name = "GET /orders"
                for key, value in (("http.request.method", "GET"), ("url.path", "/orders"),
                                   ("http.response.status_code", 200)):
                    _attr(span, key, value)
                continue
            llm += 1
            q = QUESTIONS[n % len(QUESTIONS)].format(n=n)
            span.name = "chat gpt-4o-mini"
            for key, value in (
                    ("gen_ai.operation.name", "chat"), ("gen_ai.provider.name", "openai"),
                    ("gen_ai.request.model", "gpt-4o-mini"), ("gen_ai.response.model", "gpt-4o-mini-2024-07-18"),
                    ("gen_ai.response.id", f"chatcmpl-{n}"), ("gen_ai.usage.input_tokens", 30 + n % 7),
                    ("gen_ai.usage.output_tokens", 25 + n % 5), ("user.id", f"u{n % 5000}"),
                    ("session.id", f"s{n // 4}"),
                    ("gen_ai.input.messages", json.dumps([
                        {"role": "system", "parts": [{"type": "text", "content": "You are a helpful support agent."}]},
                        {"role": "user", "parts": [{"type": "text", "content": q}]}])),
                    ("gen_ai.output.messages", json.dumps([
                        {"role": "assistant", "parts": [{"type": "text", "content": ANSWER}], "finish_reason": "stop"}],
                        ensure_ascii=False))):
                _attr(span, key, value)
            fr = span.attributes.add(key="gen_ai.response.finish_reasons")
            fr.value.array_value.values.add().string_value = "stop"
        bodies.append(req.SerializeToString())
    return bodies, llm, total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_round(bodies: list[bytes], llm: int, work: Path) -> float:
    import httpx

    if work.exists():
        shutil.rmtree(work)
    port = free_port()
    env = {**os.environ, "CONTINUUM_HOME": str(work), "CONTINUUM_SERVE_ALLOW_NO_AUTH": "1", "OMP_NUM_THREADS": "1",
           "CONTINUUM_SERVE_MAX_BODY_BYTES": str(64 << 20)}
    for var in ("CONTINUUM_LANDING_DIR", "CONTINUUM_PROFILE"):
        env.pop(var, None)
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], env=env,
                            cwd=Path(__file__).resolve().parents[1])
    try:
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(timeout=60) as client:
            deadline = time.monotonic() + 60
            while True:
                try:
                    client.get(url + "/healthz")
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline and proc.poll() is None, "continuum serve did not start"
                    time.sleep(0.1)
            client.post(url + "/v1/traces", content=bodies[0],  # warm-up: imports, first segment
                        headers={"Content-Type": "application/x-protobuf"}).raise_for_status()
            t = time.perf_counter()
            for body in bodies:
                r = client.post(url + "/v1/traces", content=body, headers={"Content-Type": "application/x-protobuf"})
                assert r.status_code == 200, (r.status_code, r.text[:300])
            seconds = time.perf_counter() - t
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    landing = work / "landing"
    lines = sum((landing / n).read_bytes().count(b"\n") for n in list_segments(landing))
    per_request = llm // len(bodies)
    assert lines == llm + per_request, (lines, llm)  # every LLM span landed (plus the warm-up batch)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--spans-per-request", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    bodies, llm, total = make_payloads(args.requests, args.spans_per_request)
    mb = sum(map(len, bodies)) / 1e6

    def best(fn) -> float:
        times = []
        for _ in range(args.rounds):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    def parse_only():
        for b in bodies:
            ExportTraceServiceRequest().ParseFromString(b)

    def parse_and_read():
        for b in bodies:
            req = ExportTraceServiceRequest()
            req.ParseFromString(b)
            for rs in req.resource_spans:
                spans.attributes(rs.resource.attributes)
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        spans.attributes(span.attributes)

    def map_only():
        for b in bodies:
            req = ExportTraceServiceRequest()
            req.ParseFromString(b)
            for record in spans.map_request(req).records:
                spans_dump(record)

    from continuum_pipeline.capture.record import dumps_line as spans_dump

    parse_s = best(parse_only)
    read_s = best(parse_and_read)
    map_s = best(map_only)
    work = Path(tempfile.mkdtemp(prefix="continuum-otlp-bench-"))
    http_s = min(http_round(bodies, llm, work / f"r{i}") for i in range(args.rounds))
    shutil.rmtree(work, ignore_errors=True)

    rate = {k: total / v for k, v in (("parse", parse_s), ("parse_read", read_s), ("map", map_s), ("http", http_s))}
    ratio = rate["http"] / rate["parse"]
    print(f"{args.requests} OTLP protobuf requests × {args.spans_per_request} spans = {total:,} spans "
          f"({llm:,} LLM spans landed, {total - llm:,} skipped), {mb:.1f} MB; best of {args.rounds} rounds")
    print(f"{'path':<58}{'seconds':>9}{'spans/s':>12}")
    for key, label in (("parse", "plain protobuf parse, ParseFromString (the ceiling)"),
                       ("parse_read", "parse + every attribute read into Python"),
                       ("map", "parse + map to landing lines, no HTTP, no disk"),
                       ("http", "continuum serve: HTTP → landed (flushed segments)")):
        seconds = {"parse": parse_s, "parse_read": read_s, "map": map_s, "http": http_s}[key]
        print(f"{label:<58}{seconds:>9.2f}{rate[key]:>12,.0f}")
    print(f"\nlanded / plain parse: {ratio:.3f}x   landed / (parse + read attributes): "
          f"{rate['http'] / rate['parse_read']:.2f}x")
    targets = {">=10k_spans_per_s": rate["http"] >= 10_000, ">=0.5x_plain_parse": ratio >= 0.5}
    print("targets:", ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in targets.items()))
    out = Path(__file__).parent / "results" / "otlp_receiver.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({
        "requests": args.requests, "spans_per_request": args.spans_per_request, "spans": total, "llm_spans": llm,
        "payload_mb": mb, "seconds": {"parse": parse_s, "parse_read": read_s, "map": map_s, "http_landed": http_s},
        "spans_per_s": rate, "ratio_landed_to_parse": ratio, "ratio_landed_to_parse_read": rate["http"] / rate["parse_read"],
        "targets": targets}, indent=2))


if __name__ == "__main__":
    main()
