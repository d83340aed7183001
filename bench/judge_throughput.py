"""LLM-judge labelling throughput against an OpenAI-protocol server that answers after 50 ms.

2,000 interactions through the `llm_rubric` judge (built from its YAML spec, labelled by `judge_items`, as
the reward_labels asset does) at concurrency 16. The ceiling is concurrency / latency = 320 items/s;
the peers send the same requests from 16 threads with the bare openai SDK, and with http.client (the
least a Python client can spend per request: what this machine and server allow right now). A second
run with the verdict cache must send nothing and cost nothing. The server runs in its own process, so
its threads and the judge's do not share one interpreter lock. Each path runs in every round (the judge
on a fresh cache); the best round of each is reported, as other work on a shared 2-core machine slows
some rounds. Writes bench/results/judge_throughput.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from continuum_pipeline.judge import JudgeCache, JudgeEnvironment, JudgeInput, LLMRubricSpec  # noqa: E402
from continuum_pipeline.judge.labeling import judge_items  # noqa: E402

VERDICT = json.dumps({"criteria": {"correct": {"reason": "states the refund date", "score": 5},
                                   "helpful": {"reason": "says what happens next", "score": 4}}})


def serve(latency_s: float, ready, stop) -> None:  # type: ignore[no-untyped-def]
    from continuum_pipeline_tests.openai_server import OpenAIServer, Reply

    with OpenAIServer(handler=lambda request: Reply(VERDICT, delay=latency_s)) as server:
        ready.send(server.base_url)
        stop.wait()


def interactions(n: int) -> list[JudgeInput]:
    return [JudgeInput(f"i{i}", prompt=f"Where is my refund for order #{10000 + i}?",
                       messages=[{"role": "system", "content": "You are the support desk."},
                                 {"role": "user", "content": f"Where is my refund for order #{10000 + i}?"}],
                       response=f"Refund for order #{10000 + i} was issued on May 2; it reaches your card in "
                                f"5 business days.", metadata={}) for i in range(n)]


def spec(base_url: str, concurrency: int) -> LLMRubricSpec:
    return LLMRubricSpec.model_validate({
        "kind": "llm_rubric", "name": "support_quality", "base_url": base_url, "model": "judge-8b",
        "max_concurrency": concurrency, "prices": {"input_per_1m_tokens": 0.2, "output_per_1m_tokens": 0.6},
        "criteria": [{"name": "correct", "description": "States the right facts for the customer.", "weight": 2},
                     {"name": "helpful", "description": "Says what happens next, briefly and politely."}]})


def labelling_run(base_url: str, items: list[JudgeInput], concurrency: int, cache_path: Path) -> dict:
    judge = spec(base_url, concurrency).build(JudgeEnvironment(environ={}, cache=JudgeCache(cache_path)))
    t = time.perf_counter()
    run = judge_items(judge, items)
    seconds = time.perf_counter() - t
    assert len(run.verdicts) == len(items), (run.failed, run.over_budget)
    return {"seconds": seconds, "items_per_s": len(items) / seconds, "requests": run.requests,
            "cache_hits": run.cache_hits, "cost_usd": run.spent_usd}


def bare_sdk_run(base_url: str, items: list[JudgeInput], concurrency: int) -> dict:
    """The peer: the same chat requests straight from the SDK, no judge around them."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="x", max_retries=0)
    judge = spec(base_url, concurrency).build(JudgeEnvironment(environ={}))
    messages = [[{"role": "system", "content": judge.system_prompt},  # type: ignore[attr-defined]
                 {"role": "user", "content": judge._user_message(it)}] for it in items]  # type: ignore[attr-defined]
    t = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda m: client.chat.completions.create(model="judge-8b", messages=m, temperature=0.0,
                                                               response_format={"type": "json_object"}), messages))
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "items_per_s": len(items) / seconds}


def raw_http_run(base_url: str, items: list[JudgeInput], concurrency: int) -> dict:
    """The floor: the same JSON bodies over kept-alive http.client connections, one per thread."""
    url, local = urlparse(base_url), threading.local()
    judge = spec(base_url, concurrency).build(JudgeEnvironment(environ={}))
    bodies = [json.dumps({"model": "judge-8b", "temperature": 0.0, "response_format": {"type": "json_object"},
                          "messages": [{"role": "system", "content": judge.system_prompt},  # type: ignore[attr-defined]
                                       {"role": "user", "content": judge._user_message(it)}]}).encode()  # type: ignore[attr-defined]
              for it in items]

    def post(body: bytes) -> None:
        if not hasattr(local, "conn"):
            local.conn = http.client.HTTPConnection(url.hostname, url.port)
        local.conn.request("POST", f"{url.path}/chat/completions", body, {"Content-Type": "application/json"})
        json.loads(local.conn.getresponse().read())

    t = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(post, bodies))
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "items_per_s": len(items) / seconds}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    ceiling = args.concurrency / (args.latency_ms / 1000)

    ready_recv, ready_send = mp.Pipe(duplex=False)
    stop = mp.Event()
    server = mp.Process(target=serve, args=(args.latency_ms / 1000, ready_send, stop), daemon=True)
    server.start()
    try:
        base_url = ready_recv.recv()
        items = interactions(args.items)
        with tempfile.TemporaryDirectory(prefix="continuum-judge-bench-") as tmp:
            labelling_run(base_url, interactions(64), args.concurrency, Path(tmp) / "warmup.sqlite")  # imports, pools
            rounds = []
            for i in range(args.rounds):
                cache_path = Path(tmp) / f"judges-{i}.sqlite"
                rounds.append({"floor": raw_http_run(base_url, items, args.concurrency),
                               "peer": bare_sdk_run(base_url, items, args.concurrency),
                               "first": labelling_run(base_url, items, args.concurrency, cache_path)})
            cached = labelling_run(base_url, items, args.concurrency, cache_path)
    finally:
        stop.set()
        server.join(timeout=10)

    floor, peer, first = (max((r[k] for r in rounds), key=lambda r: r["items_per_s"]) for k in ("floor", "peer", "first"))
    share, vs_peer = first["items_per_s"] / ceiling, first["items_per_s"] / peer["items_per_s"]
    print(f"{args.items:,} interactions, llm_rubric judge, concurrency {args.concurrency}, server latency "
          f"{args.latency_ms:g} ms → ceiling {ceiling:,.0f} items/s; best of {args.rounds} rounds")
    print(f"{'run':<30}{'seconds':>9}{'items/s':>10}{'requests':>10}{'cache hits':>12}{'cost':>12}")
    for label, r in (("http.client (floor)", floor), ("bare openai SDK (peer)", peer)):
        print(f"{label:<30}{r['seconds']:>9.2f}{r['items_per_s']:>10.1f}{args.items:>10,}{'—':>12}{'—':>12}")
    for label, r in (("judge, cold cache", first), ("judge, re-run (cached)", cached)):
        print(f"{label:<30}{r['seconds']:>9.2f}{r['items_per_s']:>10.1f}{r['requests']:>10,}{r['cache_hits']:>12,}"
              f"{'$' + format(r['cost_usd'], '.6f'):>12}")
    print(f"\njudge / ceiling: {share:.2f}   judge / bare SDK: {vs_peer:.2f}x   http.client floor / ceiling: "
          f"{floor['items_per_s'] / ceiling:.2f}")
    targets = {">=0.9_of_ceiling": share >= 0.9, "cached_rerun_0_requests": cached["requests"] == 0}
    print("targets:", ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in targets.items()))
    out = Path(__file__).parent / "results" / "judge_throughput.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"items": args.items, "concurrency": args.concurrency, "latency_ms": args.latency_ms,
                               "ceiling_items_per_s": ceiling, "floor_http_client": floor, "peer_bare_sdk": peer, "first_run": first,
                               "cached_run": cached, "rounds": rounds, "share_of_ceiling": share, "ratio_vs_bare_sdk": vs_peer,
                               "targets": targets}, indent=2))


if __name__ == "__main__":
    main()
