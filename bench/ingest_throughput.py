"""Landing → Iceberg ingest throughput for 200k interactions, against a raw pyiceberg append.

The peer is the floor any ingest pays: `table.append()` of the very Arrow table the ingest produced,
into an identical empty table (same schema, partitioning, properties). Ingest additionally reads the
segments, parses and validates every line, and commits its ledger. Both run in this process, fresh
lakes each round; the best of the rounds is reported. Writes bench/results/ingest_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from continuum_pipeline.capture.landing import list_segments  # noqa: E402
from continuum_pipeline.capture.record import content_hash, dumps_line, iso_utc  # noqa: E402
from continuum_pipeline.lake.catalog import Lake  # noqa: E402
from continuum_pipeline.lake.ingest import ingest_landing  # noqa: E402
from continuum_pipeline.lake.schemas import LAYOUTS  # noqa: E402

QUESTIONS = ["How do I reset my password?", "Where is my refund for order #{n}?", "Can I upgrade to the Team plan?",
             "When will order #{n} arrive?", "Please cancel my subscription."]
ANSWERS = ["Open Settings → Security → Reset password; a link is emailed to you within 5 minutes.",
           "Refunds reach your card 5–7 business days after we receive the return.",
           "Go to Billing → Plan, pick Team; the price difference is prorated today."]


def write_landing(landing: Path, rows: int, per_segment: int, seed: int = 1) -> int:
    """Segments exactly as the SDK writes them (same builders, same JSON)."""
    rng = random.Random(seed)
    landing.mkdir(parents=True, exist_ok=True)
    t0 = 1_763_700_000 * 10**9
    written = 0
    for seg in range(0, rows, per_segment):
        lines = []
        for i in range(seg, min(rows, seg + per_segment)):
            q = rng.choice(QUESTIONS).format(n=rng.randint(10000, 99999))
            a = rng.choice(ANSWERS)
            msgs = [{"role": "system", "content": "You are a helpful support agent."}, {"role": "user", "content": q}]
            lines.append(dumps_line({
                "v": 1, "kind": "interaction", "interaction_id": f"{seed:08x}{i:024x}", "ts": iso_utc(t0 + i * 10**7),
                "trace_id": None, "span_id": None, "session_id": f"s{i // 4}", "user_id": f"u{i % 5000}",
                "task": "support_answer", "model": rng.choice(["support-teacher", "support-student"]),
                "model_version": "3", "route": "champion", "consent": rng.choice(["granted", "granted", "denied"]),
                "prompt": q, "messages": msgs, "response": a, "tool_calls": None, "contexts": None,
                "latency_ms": rng.uniform(200, 2000), "ttft_ms": None, "prompt_tokens": 30, "completion_tokens": 25,
                "cost_usd": 0.0004, "status": "ok", "error_type": None, "error_message": None,
                "metadata": '{"intent":"x"}', "source": "sdk", "content_hash": content_hash(q, msgs, a)}))
        (landing / f"{seg:012d}-bench.jsonl").write_bytes(b"".join(lines))
        written += len(lines)
    return written


def one_round(work: Path, rows: int, per_segment: int) -> dict:
    if work.exists():
        shutil.rmtree(work)
    landing = work / "landing"
    write_landing(landing, rows, per_segment)
    mb = sum((landing / n).stat().st_size for n in list_segments(landing)) / 1e6
    lake = Lake(f"sqlite:///{work / 'catalog.db'}", (work / "warehouse").as_uri(), "bench")
    lake.ensure_tables()  # both sides start from existing empty tables: creation is not what is measured

    t = time.perf_counter()
    report = ingest_landing(lake, landing, max_segments=10_000)
    ingest_s = time.perf_counter() - t
    assert report.rows("interactions") == rows, report

    arrow = lake.read_arrow("interactions")
    raw_lake = Lake(f"sqlite:///{work / 'catalog_raw.db'}", (work / "warehouse_raw").as_uri(), "raw")
    raw_lake.ensure_tables([LAYOUTS["interactions"]])
    table = raw_lake.table("interactions")
    t = time.perf_counter()
    table.append(arrow)
    raw_s = time.perf_counter() - t
    return {"ingest_s": ingest_s, "raw_append_s": raw_s, "landing_mb": mb}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--per-segment", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="continuum-ingest-bench-"))
    results = [one_round(work / "r", args.rows, args.per_segment) for _ in range(args.rounds)]
    shutil.rmtree(work, ignore_errors=True)
    best_ingest = min(r["ingest_s"] for r in results)
    best_raw = min(r["raw_append_s"] for r in results)
    ingest_rps, raw_rps = args.rows / best_ingest, args.rows / best_raw
    ratio = ingest_rps / raw_rps
    print(f"{args.rows:,} interactions in {args.rows // args.per_segment} segments ({results[0]['landing_mb']:.0f} MB of JSON lines), "
          f"best of {args.rounds} rounds")
    print(f"{'path':<34}{'seconds':>10}{'rows/s':>14}")
    print(f"{'landing → Iceberg (ingest_landing)':<34}{best_ingest:>10.2f}{ingest_rps:>14,.0f}")
    print(f"{'raw pyiceberg append (same Arrow)':<34}{best_raw:>10.2f}{raw_rps:>14,.0f}")
    print(f"\ningest / raw append throughput: {ratio:.2f}x")
    targets = {">=150k_rows_per_s": ingest_rps >= 150_000, ">=0.7x_raw_append": ratio >= 0.7}
    print("targets:", ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in targets.items()))
    out = Path(__file__).parent / "results" / "ingest_throughput.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"rows": args.rows, "rounds": results, "ingest_rows_per_s": ingest_rps,
                               "raw_append_rows_per_s": raw_rps, "ratio": ratio, "targets": targets}, indent=2))


if __name__ == "__main__":
    main()
