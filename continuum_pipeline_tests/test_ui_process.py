"""`continuum ui` (dg dev) answers HTTP, and on SIGTERM exits within seconds leaving no process of its tree."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

CONTINUUM = Path(sys.executable).with_name("continuum")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def group_members(pgid: int) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except (ProcessLookupError, psutil.Error):
            pass
    return found


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_ui_serves_then_stops_its_whole_tree_on_a_signal(tmp_path, signum):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONTINUUM_", "DAGSTER_"))}
    env.update(CONTINUUM_HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1")
    log = (tmp_path / "ui.log").open("w")
    proc = subprocess.Popen([str(CONTINUUM), "ui", "--port", str(port)], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    tree: set[psutil.Process] = set()
    try:
        deadline = time.monotonic() + 180  # webserver + code server import Dagster and the definitions on 2 cores
        while not answers(f"http://127.0.0.1:{port}/server_info"):
            assert proc.poll() is None, f"continuum ui exited early: {(tmp_path / 'ui.log').read_text()[-3000:]}"
            assert time.monotonic() < deadline, (tmp_path / "ui.log").read_text()[-3000:]
            time.sleep(1)
        tree = set(psutil.Process(proc.pid).children(recursive=True))
        dg_dev = psutil.Process(proc.pid).children()[0].cmdline()
        assert Path(dg_dev[1]).name == "dg" and dg_dev[2] == "dev", dg_dev  # not the superseded `dagster dev`
        commands = " ".join(" ".join(p.cmdline()) for p in tree)
        assert "dagster_webserver" in commands and "dagster._daemon" in commands  # the real services
        sent = time.monotonic()
        proc.send_signal(signum)
        assert proc.wait(timeout=15) == 128 + signum
        elapsed = time.monotonic() - sent
        _gone, alive = psutil.wait_procs(tree, timeout=max(0.1, 15 - elapsed))
        assert alive == [], [p.cmdline() for p in alive]
        assert group_members(proc.pid) == []
        assert not answers(f"http://127.0.0.1:{port}/server_info")
        assert "superseded" not in (tmp_path / "ui.log").read_text()
        print(f"{signal.Signals(signum).name}: exited after {elapsed:.1f}s, {len(tree)} child processes gone")
    finally:
        for p in [*tree, *([psutil.Process(proc.pid)] if proc.poll() is None else [])]:
            with contextlib.suppress(psutil.Error):
                p.kill()
        proc.wait(timeout=10)
        log.close()
