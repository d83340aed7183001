"""`continuum serve`: one ASGI service for the trace receiver and the gateway.

Starlette + uvicorn: both already come with dagster-webserver, small, and what FastAPI itself stands on.
Everything the service accepts becomes landing records through the SDK's own writer (capture.writer.WRITER),
so ingest, quarantine and exactly-once are the same as for `@capture`; the writer redacts each record before it
is written, here with the redactor of the record's task (its YAML's `privacy.redaction`), which the service loads
at start (a broken task YAML stops it: it cannot redact as that task asks).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from continuum_pipeline.settings import Settings


def create_app(settings: Settings, model_dir: str | Sequence[str] | None = None,
               threads: int | None = None) -> Starlette:
    """`model_dir`: one or more local models to serve as upstream arms (see server/local_model.py); `threads`:
    the torch threads their generation uses (default CONTINUUM_SERVE_THREADS, else min(2, CPUs))."""
    from continuum_pipeline.capture.writer import WRITER
    from continuum_pipeline.privacy.redact import task_redactors
    from continuum_pipeline.server import gateway, langfuse, otlp

    redactors = task_redactors(settings.tasks)
    redactors.refresh()
    gw = gateway.Gateway(settings)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "capture": WRITER.stats(), "gateway": gw.stats()})

    routes = [Route("/healthz", healthz, methods=["GET"])]
    routes += otlp.routes(settings)
    routes += langfuse.routes(settings)
    routes += gateway.routes(settings, model_dir, threads, gw)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        previous, WRITER.redactor_for = WRITER.redactor_for, redactors
        try:
            yield
            await gateway.aclose()  # the gateway's pooled upstream connections
            # uvicorn re-raises SIGTERM/SIGINT after shutdown, so atexit never runs: land what is queued now.
            WRITER.flush()
        finally:  # the process's own @capture calls go back to the settings' redactor
            WRITER.redactor_for = previous

    return Starlette(routes=routes, lifespan=lifespan)


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 4318,
          model_dir: str | Sequence[str] | None = None, threads: int | None = None) -> None:
    import uvicorn

    uvicorn.run(create_app(settings, model_dir, threads), host=host, port=port, log_level="info")
