"""`continuum serve` as users start it: a real process that answers /healthz and ends on SIGTERM within seconds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from continuum_pipeline_tests.served import free_port


def test_continuum_serve_answers_and_ends_on_sigterm(settings):
    port = free_port()
    cli = Path(sys.executable).parent / "continuum"
    env = {**os.environ, "CONTINUUM_SERVE_ALLOW_NO_AUTH": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([str(cli), "serve", "--port", str(port)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "continuum serve did not answer within 60 s"
                time.sleep(0.2)
        assert health.status_code == 200 and health.json()["status"] == "ok"
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert proc.wait(timeout=10) is not None
        assert time.monotonic() - started < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
