"""`continuum serve`: one ASGI service for the trace receiver and the gateway.

Starlette + uvicorn: both already come with dagster-webserver, small, and what FastAPI itself stands on.
Everything the service accepts becomes landing records through the SDK's own writer (capture.writer.WRITER),
so ingest, quarantine and exactly-once are the same as for `@capture`.
"""

from __future__ import annotations

import contextlib

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from continuum_pipeline.settings import Settings


async def healthz(request: Request) -> JSONResponse:
    from continuum_pipeline.capture.writer import WRITER

    return JSONResponse({"status": "ok", "capture": WRITER.stats()})


def create_app(settings: Settings, model_dir: str | None = None) -> Starlette:
    from continuum_pipeline.server import gateway, langfuse, otlp

    routes = [Route("/healthz", healthz, methods=["GET"])]
    routes += otlp.routes(settings)
    routes += langfuse.routes(settings)
    routes += gateway.routes(settings, model_dir)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        yield
        await gateway.aclose()  # the gateway's pooled upstream connections
        # uvicorn re-raises SIGTERM/SIGINT after shutdown, so atexit never runs: land what is queued now.
        from continuum_pipeline.capture.writer import WRITER

        WRITER.flush()

    return Starlette(routes=routes, lifespan=lifespan)


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 4318, model_dir: str | None = None) -> None:
    import uvicorn

    uvicorn.run(create_app(settings, model_dir), host=host, port=port, log_level="info")
