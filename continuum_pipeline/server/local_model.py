"""A local Hugging Face model served with the OpenAI chat API at `/local/v1/...`: the student as a gateway arm.

`continuum serve --model-dir DIR` loads DIR with `Generator.from_pretrained` (greedy, deterministic) and answers
`POST /local/v1/chat/completions` (non-streaming, or streaming as one content chunk — the generator has no
token callback) and `GET /local/v1/models`. Point an arm at `http://HOST:PORT/local/v1` to route traffic to it
through the gateway (same bearer key as the gateway: give the arm `api_key_env` naming a variable that holds it).
Generation runs in a worker thread, one call at a time (the model is not shared between concurrent calls).

`--model-dir champion:NAME` serves the registry's champion of the registered model NAME instead (downloaded
once into `$CONTINUUM_HOME/models/serve`), re-checked every CHAMPION_CHECK_SECONDS: a promotion is served
from the next call on, under the model name `NAME@<version>`.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from continuum_pipeline.server import auth
from continuum_pipeline.settings import Settings

CHAMPION_CHECK_SECONDS = 30.0


class LocalModel:
    def __init__(self, settings: Settings, model_dir: str | Path):
        self.settings = settings
        spec = str(model_dir)
        self.champion_of = spec.removeprefix("champion:") if spec.startswith("champion:") else None
        self.model_dir = None if self.champion_of else Path(model_dir)
        self.name = self.champion_of or Path(model_dir).name
        self._generator: Any = None
        self._version: str | None = None
        self._checked = 0.0
        self._load_lock = threading.Lock()
        self._run_lock = threading.Lock()
        self._ids = 0

    def _champion_dir(self) -> Path | None:
        """The champion's folder when it changed since the last look (at most every CHAMPION_CHECK_SECONDS)."""
        from continuum_pipeline.registry import models as registry

        if self._generator is not None and time.monotonic() - self._checked < CHAMPION_CHECK_SECONDS:
            return None
        self._checked = time.monotonic()
        ref = registry.champion(self.settings.mlflow_uri, self.champion_of)
        if ref is None:
            if self._generator is None:
                raise LookupError(f"the registry has no champion for {self.champion_of!r} yet")
            return None
        if ref.version == self._version:
            return None
        self._version = ref.version
        self.name = f"{self.champion_of}@{ref.version}"
        return registry.model_dir(self.settings.mlflow_uri, ref, self.settings.models_dir / "serve")

    def generator(self) -> Any:
        with self._load_lock:
            folder = self._champion_dir() if self.champion_of else (
                self.model_dir if self._generator is None else None)
            if folder is not None:
                from continuum_pipeline.serving.generate import Generator

                self._generator = Generator.from_pretrained(folder, batch_size=1)
            return self._generator

    def _answer(self, messages: list[dict], max_tokens: int | None) -> tuple[str, int, int]:
        generator = self.generator()
        with self._run_lock:
            default = generator.max_new_tokens
            if max_tokens:
                generator.max_new_tokens = max_tokens
            try:
                text = generator.generate([messages])[0]
            finally:
                generator.max_new_tokens = default
            tok = generator.tokenizer
            prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            prompt_tokens = len(tok(prompt, add_special_tokens=False)["input_ids"])
            completion_tokens = len(tok(text, add_special_tokens=False)["input_ids"])
        return text, prompt_tokens, completion_tokens

    async def models(self, request: Request) -> Response:
        if (denied := auth.check_bearer(self.settings, request)) is not None:
            return denied
        return JSONResponse({"object": "list", "data": [{"id": self.name, "object": "model", "created": 0,
                                                         "owned_by": "continuum-local"}]})

    async def chat(self, request: Request) -> Response:
        if (denied := auth.check_bearer(self.settings, request)) is not None:
            return denied
        raw = await request.body()
        if len(raw) > self.settings.serve_max_body_bytes:
            return JSONResponse({"error": {"message": "request body over the limit", "type":
                                           "invalid_request_error"}}, status_code=413)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
            return JSONResponse({"error": {"message": "a JSON object with non-empty \"messages\" is required",
                                           "type": "invalid_request_error"}}, status_code=400)
        # The chat template wants text content: parts lists are flattened to their text.
        plain = [{"role": m["role"], "content": m["content"] if isinstance(m.get("content"), str) else
                  "".join(p.get("text", "") for p in m.get("content") or [] if isinstance(p, dict))}
                 for m in messages]
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        max_tokens = max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else None
        try:
            text, prompt_tokens, completion_tokens = await asyncio.to_thread(self._answer, plain, max_tokens)
        except LookupError as exc:  # no champion to serve yet
            return JSONResponse({"error": {"message": str(exc), "type": "model_not_found"}}, status_code=503)
        self._ids += 1
        base = {"id": f"chatcmpl-local-{self._ids}", "created": int(time.time()), "model": self.name}
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}
        if not body.get("stream"):
            return JSONResponse({**base, "object": "chat.completion", "usage": usage, "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop",
                 "logprobs": None}]})
        chunk = {**base, "object": "chat.completion.chunk"}
        deltas = [{"role": "assistant", "content": ""}, {"content": text}]
        chunks = [{**chunk, "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
        chunks.append({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            chunks.append({**chunk, "choices": [], "usage": usage})
        events = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
        return Response(events.encode(), media_type="text/event-stream")


def routes(settings: Settings, model_dir: str | Path) -> list[Route]:
    model = LocalModel(settings, model_dir)
    return [Route("/local/v1/chat/completions", model.chat, methods=["POST"]),
            Route("/local/v1/models", model.models, methods=["GET"])]
