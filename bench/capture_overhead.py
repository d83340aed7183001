"""Per-call latency that @capture adds, against an OpenTelemetry SDK span with a no-op exporter.

Both wrap the same function and record the same facts (prompt, response, model, task); each
configuration runs in interleaved blocks so drift hits all alike. Added latency = wrapped − bare,
at p50 and p99. OpenTelemetry is measured with both of its span processors and the faster one is the peer.
Then the writer thread's side, where records are built, redacted and written: records drained per CPU
second, clean and PII-rich (the canary corpus), with redaction and with it switched off (the peer).
Writes bench/results/capture_overhead.json.
"""

from __future__ import annotations

import gc
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from continuum_pipeline import capture  # noqa: E402

CALLS_PER_BLOCK, BLOCKS = 20_000, 10
DRAIN_RECORDS, DRAIN_ROUNDS = 20_000, 2


class NoOpExporter(SpanExporter):
    def export(self, spans):
        return SpanExportResult.SUCCESS

    def shutdown(self):
        pass


def answer(messages, temperature=0.0):
    return "Open Settings → Security → Reset password."


def otel_wrapper(tracer):
    def wrapped(messages, temperature=0.0):
        with tracer.start_as_current_span("llm.answer") as span:
            span.set_attribute("gen_ai.request.model", "support-model")
            span.set_attribute("continuum.task", "support_answer")
            span.set_attribute("gen_ai.prompt", messages[-1]["content"])
            result = answer(messages, temperature)
            span.set_attribute("gen_ai.completion", result)
            return result
    return wrapped


class RedactionOff:
    """The writer with redaction switched off: the peer for what redaction costs the writer thread."""

    def redact_record(self, record):
        return {}


def drain_rates(landing: Path) -> dict[str, dict[str, float]]:
    """Records the writer thread builds, redacts and writes per CPU second (the app's thread is not involved)."""
    from continuum_pipeline.capture import WRITER
    from continuum_pipeline_tests.pii_canaries import canary_texts

    texts = [t for t, _, _ in canary_texts()]
    capture.configure(landing, queue_size=DRAIN_RECORDS * 2, segment_records=DRAIN_RECORDS * 2, flush_seconds=3600,
                      max_bytes=1 << 34)  # nothing drains until flush(), which is timed
    wrapped = capture(task="support_answer", model="support-model")(lambda messages: "Noted: " + messages[-1]["content"])
    off = RedactionOff()
    rates: dict[str, dict[str, list[float]]] = {}
    for _ in range(DRAIN_ROUNDS):
        for label, share in (("clean", 0.0), ("pii_10pct", 0.1), ("pii_all", 1.0)):
            for mode in ("redacted", "off"):
                WRITER.redactor_for = None if mode == "redacted" else (lambda task: off)
                rng = random.Random(7)
                for i in range(DRAIN_RECORDS):  # unique texts: no help from the writer's per-segment memo
                    q = (rng.choice(texts) if rng.random() < share else "How do I reset my password?") + f" [{i}]"
                    wrapped([{"role": "system", "content": "Be brief."}, {"role": "user", "content": q}])
                t = time.process_time()
                n = capture.flush()
                rates.setdefault(label, {}).setdefault(mode, []).append(n / (time.process_time() - t))
    WRITER.redactor_for = None
    return {label: {mode: max(v) for mode, v in modes.items()} for label, modes in rates.items()}


def timings(fn, n: int, msgs) -> list[int]:
    out = [0] * n
    pc = time.perf_counter_ns
    for i in range(n):
        t = pc()
        fn(msgs, temperature=0.2)
        out[i] = pc() - t
    return out


def pct(sorted_ns: list[int], q: float) -> float:
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1000


def main() -> None:
    landing = Path(tempfile.mkdtemp(prefix="continuum-bench-")) / "landing"
    capture.configure(landing)  # default queue, segment size and flush interval: the writer thread really runs
    providers = {}
    for name, processor in (("otel_simple", SimpleSpanProcessor), ("otel_batch", BatchSpanProcessor)):
        provider = TracerProvider()
        provider.add_span_processor(processor(NoOpExporter()))
        providers[name] = provider
    fns = {
        "bare": answer,
        "capture": capture(task="support_answer", model="support-model")(answer),
        "otel_simple": otel_wrapper(providers["otel_simple"].get_tracer("bench")),
        "otel_batch": otel_wrapper(providers["otel_batch"].get_tracer("bench")),
    }
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "How do I reset my password?"}]
    samples: dict[str, list[int]] = {k: [] for k in fns}
    for fn in fns.values():  # warm-up
        timings(fn, 2000, msgs)
    gc.disable()
    for _ in range(BLOCKS):
        for name, fn in fns.items():
            samples[name] += timings(fn, CALLS_PER_BLOCK, msgs)
    gc.enable()
    written = capture.flush()
    stats = capture.stats()
    for p in providers.values():
        p.shutdown()

    s = {k: sorted(v) for k, v in samples.items()}
    added = {k: {"p50_us": pct(s[k], 0.50) - pct(s["bare"], 0.50), "p99_us": pct(s[k], 0.99) - pct(s["bare"], 0.99)}
             for k in fns if k != "bare"}
    peer = min(("otel_simple", "otel_batch"), key=lambda k: added[k]["p50_us"])
    ratio_p50 = added[peer]["p50_us"] / added["capture"]["p50_us"]
    ratio_p99 = added[peer]["p99_us"] / added["capture"]["p99_us"]
    print(f"calls per configuration: {CALLS_PER_BLOCK * BLOCKS:,} (interleaved in {BLOCKS} blocks); "
          f"capture wrote {stats['written']:,} records, dropped {stats['dropped_queue_full'] + stats['dropped_queue_bytes']}")
    print(f"{'wrapper':<14}{'added p50 µs':>14}{'added p99 µs':>14}")
    for k, v in added.items():
        print(f"{k:<14}{v['p50_us']:>14.2f}{v['p99_us']:>14.2f}")
    print(f"\n@capture vs OpenTelemetry ({peer}, the faster OTel setup): "
          f"{ratio_p50:.1f}x lower at p50, {ratio_p99:.1f}x lower at p99")
    targets = {"p50<=3us": added["capture"]["p50_us"] <= 3, "p99<=15us": added["capture"]["p99_us"] <= 15,
               ">=6x_vs_otel_p50": ratio_p50 >= 6}
    print("targets:", ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in targets.items()))

    drain = drain_rates(landing.parent / "drain")
    print(f"\nwriter thread, records per CPU second ({DRAIN_RECORDS:,} queued calls, best of {DRAIN_ROUNDS})")
    print(f"{'prompts':<14}{'redacted':>12}{'no redaction':>14}{'ratio':>8}")
    for label, r in drain.items():
        print(f"{label:<14}{r['redacted']:>12,.0f}{r['off']:>14,.0f}{r['redacted'] / r['off']:>8.2f}")
    out = Path(__file__).parent / "results" / "capture_overhead.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"added_latency": added, "peer": peer, "ratio_p50": ratio_p50, "ratio_p99": ratio_p99,
                               "targets": targets, "records_written": written, "stats": stats,
                               "writer_drain_records_per_cpu_s": drain}, indent=2))


if __name__ == "__main__":
    main()
