"""A real `continuum serve` (the app under uvicorn) on a free 127.0.0.1 port, in a background thread."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """`with Served(settings) as served:` serves until the block ends; `served.url` is its base URL."""

    def __init__(self, settings, model_dir: Path | str | list | None = None):
        import uvicorn

        from continuum_pipeline.server.app import create_app

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # model_dir: one model, or several (champion:NAME, challenger:NAME) each at /local/<alias>/v1
        dirs = [str(m) for m in model_dir] if isinstance(model_dir, list | tuple) else model_dir and str(model_dir)
        self.app = create_app(settings, dirs or None)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "continuum serve did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
