"""Latency the gateway adds: the same chat completion sent straight to a local upstream vs through `continuum serve`.

Three processes: the upstream (openai_server.py's OpenAI-protocol server, answering at once), `continuum serve`
(uvicorn, the real app, capture on, arms file with that one upstream) and this client. Clients are threads with
one keep-alive connection each (http.client: the lightest Python client, so its own cost hides little); at 1 and
8 concurrent clients, direct and gateway run in interleaved blocks so drift hits both alike.
Added latency = gateway − direct at p50 and p99. Targets: p50 ≤ 1 ms, p99 ≤ 5 ms added.
Writes bench/results/gateway_overhead.json.

    .venv/bin/python bench/gateway_overhead.py [--requests 2000] [--blocks 6]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-bench"
BODY = json.dumps({"model": "bench-model", "temperature": 0, "messages": [
    {"role": "system", "content": "You are the support assistant."},
    {"role": "user", "content": "Where is my refund for order #48213? It has been a week."}]}).encode()

UPSTREAM = """
import sys, time
sys.path.insert(0, {root!r})
from continuum_pipeline_tests.openai_server import OpenAIServer
with OpenAIServer(chat=lambda m: "Refunds reach your card within 5 business days.") as s:
    print(s.base_url, flush=True)
    while True:
        time.sleep(3600)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def worker(port: int, path: str, headers: dict, n: int, out: list[float], barrier: threading.Barrier) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    conn.connect()
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for _ in range(5):  # warm the connection (and the gateway's upstream pool)
        conn.request("POST", path, BODY, headers)
        conn.getresponse().read()
    barrier.wait()
    for _ in range(n):
        t0 = time.perf_counter_ns()
        conn.request("POST", path, BODY, headers)
        r = conn.getresponse()
        r.read()
        out.append((time.perf_counter_ns() - t0) / 1e3)
        if r.status != 200:
            raise SystemExit(f"{path} answered {r.status}")
    conn.close()


def run_block(port: int, path: str, headers: dict, clients: int, n: int) -> list[float]:
    outs: list[list[float]] = [[] for _ in range(clients)]
    barrier = threading.Barrier(clients)
    threads = [threading.Thread(target=worker, args=(port, path, headers, n // clients, outs[i], barrier))
               for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [x for o in outs for x in o]


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000, help="requests per block")
    ap.add_argument("--blocks", type=int, default=6)
    args = ap.parse_args()

    home = Path(tempfile.mkdtemp(prefix="continuum-gw-bench-"))
    env = {**os.environ, "CONTINUUM_HOME": str(home), "CONTINUUM_SERVE_API_KEYS": KEY, "OMP_NUM_THREADS": "1",
           "BENCH_UPSTREAM_KEY": "sk-upstream", "PYTHONPATH": str(ROOT)}
    procs = []
    try:
        up = subprocess.Popen([sys.executable, "-c", UPSTREAM.format(root=str(ROOT))], stdout=subprocess.PIPE,
                              text=True, env=env)
        procs.append(up)
        upstream_url = up.stdout.readline().strip()
        up_port = int(upstream_url.rsplit(":", 1)[1].split("/")[0])
        (home / "gateway").mkdir(parents=True)
        (home / "gateway" / "arms.json").write_text(json.dumps({"default_task": "support_answer", "tasks": {
            "support_answer": {"arms": [{"name": "teacher", "base_url": upstream_url, "model": "bench-model",
                                         "api_key_env": "BENCH_UPSTREAM_KEY", "weight": 1}]}}}))
        gw_port = free_port()
        gw = subprocess.Popen([sys.executable, "-c", (
            "from continuum_pipeline.settings import Settings\n"
            "from continuum_pipeline.server.app import create_app\n"
            "import uvicorn\n"
            f"uvicorn.run(create_app(Settings.from_env()), host='127.0.0.1', port={gw_port}, log_level='warning',"
            " access_log=False)\n")], env=env)
        procs.append(gw)
        wait_port(gw_port, gw)

        direct_headers = {"content-type": "application/json", "authorization": "Bearer sk-upstream"}
        gw_headers = {"content-type": "application/json", "authorization": f"Bearer {KEY}"}
        results: dict[str, dict] = {}
        for clients in (1, 8):
            lat: dict[str, list[float]] = {"direct": [], "gateway": []}
            for _ in range(args.blocks):
                lat["direct"] += run_block(up_port, "/v1/chat/completions", direct_headers, clients, args.requests)
                lat["gateway"] += run_block(gw_port, "/v1/chat/completions", gw_headers, clients, args.requests)
            row = {name: {"p50_us": pct(v, 0.50), "p99_us": pct(v, 0.99), "n": len(v)} for name, v in lat.items()}
            row["added_p50_ms"] = (row["gateway"]["p50_us"] - row["direct"]["p50_us"]) / 1e3
            row["added_p99_ms"] = (row["gateway"]["p99_us"] - row["direct"]["p99_us"]) / 1e3
            row["ratio_p50"] = row["gateway"]["p50_us"] / row["direct"]["p50_us"]
            results[f"clients_{clients}"] = row
            print(f"{clients} client(s): direct p50 {row['direct']['p50_us'] / 1e3:.3f} ms p99 "
                  f"{row['direct']['p99_us'] / 1e3:.3f} ms | gateway p50 {row['gateway']['p50_us'] / 1e3:.3f} ms "
                  f"p99 {row['gateway']['p99_us'] / 1e3:.3f} ms | added p50 {row['added_p50_ms']:.3f} ms "
                  f"p99 {row['added_p99_ms']:.3f} ms (×{row['ratio_p50']:.2f} at p50)", flush=True)
        conn = http.client.HTTPConnection("127.0.0.1", gw_port)
        conn.request("GET", "/healthz")
        capture_stats = json.loads(conn.getresponse().read()).get("capture")
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait(10)
    landed = sum(1 for f in (home / "landing").glob("*.jsonl") for _ in f.open())
    targets = {}
    for clients in (1, 8):
        row = results[f"clients_{clients}"]
        targets[f"p50_added<=1ms@{clients}"] = row["added_p50_ms"] <= 1.0
        targets[f"p99_added<=5ms@{clients}"] = row["added_p99_ms"] <= 5.0
    print("targets:", ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in targets.items()))
    print(f"captured interactions landed: {landed}; the gateway's writer before shutdown: {capture_stats}")
    out = ROOT / "bench" / "results" / "gateway_overhead.json"
    out.write_text(json.dumps({"results": results, "targets": targets, "landed": landed, "capture_stats": capture_stats,
                               "requests_per_block": args.requests, "blocks": args.blocks,
                               "cpus": os.cpu_count(), "python": platform.python_version()}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
