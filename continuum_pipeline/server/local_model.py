"""Local Hugging Face models served with the OpenAI chat API: the student (champion, challenger) as gateway arms.

`continuum serve --model-dir SPEC` (repeatable). SPEC is a Hugging Face folder, or `ALIAS:NAME`: the version of
the registered model NAME that holds the MLflow alias ALIAS (`champion`, `challenger`, `previous`), downloaded
once into `$CONTINUUM_HOME/models/serve` and re-checked every ALIAS_CHECK_SECONDS, so a moved alias is served
from the next call on, under the model name `NAME@<version>` (which the gateway records as `model_version`).
Each SPEC answers `POST /local/<ALIAS or folder name>/v1/chat/completions` (non-streaming, or streaming as one
content chunk — the generator has no token callback) and `GET .../models`; a single SPEC is also at `/local/v1`:

    continuum serve --model-dir champion:continuum-support --model-dir challenger:continuum-support
    # arms: http://127.0.0.1:4318/local/champion/v1 (stable), http://127.0.0.1:4318/local/challenger/v1

Same bearer key as the gateway (give the arm `api_key_env` naming a variable that holds it). Generation is greedy
(deterministic) and runs in a worker thread, ONE call at a time in the process whatever the model (they share the
CPU), with an explicit torch thread count; requests the gateway marks as shadow copies (`x-continuum-shadow`) wait
until no served request is waiting, so a shadow never queues ahead of a user, and are answered 504 without
generating when their deadline (`x-continuum-shadow-deadline`, Unix seconds) passes before their turn: the gateway
has stopped waiting for them.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from continuum_pipeline.server import auth
from continuum_pipeline.settings import Settings

ALIAS_CHECK_SECONDS = 30.0
_ALIAS_SPEC = re.compile(r"^([A-Za-z][\w-]*):(.+)$")
# Two aliases may name one version at once (at promotion): its download into the shared cache happens once.
_DOWNLOADS: dict[str, threading.Lock] = {}
_DOWNLOADS_GUARD = threading.Lock()


def default_threads() -> int:
    """CONTINUUM_SERVE_THREADS, else min(2, CPUs): generation must leave the gateway a core on a small box."""
    value = os.environ.get("CONTINUUM_SERVE_THREADS")
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"CONTINUUM_SERVE_THREADS must be a whole number ≥ 1, got {value!r}")
        return int(value)
    return max(1, min(2, os.cpu_count() or 1))


class ShadowExpired(TimeoutError):
    """A shadow copy's deadline passed while it waited for its turn."""


class GenerationTurn:
    """One generation at a time in the process; served requests go before waiting shadow copies."""

    def __init__(self, threads: int):
        if threads < 1:
            raise ValueError(f"threads must be ≥ 1 (torch threads for local generation), got {threads}")
        self.threads = threads
        self._cond = threading.Condition()
        self._busy = False
        self._served_waiting = 0

    @contextmanager
    def turn(self, shadow: bool, deadline: float | None = None) -> Iterator[None]:
        """Wait for the turn (a shadow copy no later than `deadline`, Unix seconds), then hold it."""
        with self._cond:
            if not shadow:
                self._served_waiting += 1
            try:
                while self._busy or (shadow and self._served_waiting):
                    if deadline is None:
                        self._cond.wait()
                    elif (left := deadline - time.time()) <= 0:
                        raise ShadowExpired("the shadow copy's deadline passed before its turn to generate")
                    else:
                        self._cond.wait(left)
            finally:
                if not shadow:
                    self._served_waiting -= 1
            self._busy = True
        try:
            import torch

            torch.set_num_threads(self.threads)  # process-wide; set per turn as other code may have changed it
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()


class LocalModel:
    """One served model: a folder, or the version holding an alias of a registered model."""

    def __init__(self, settings: Settings, spec: str | Path, turn: GenerationTurn,
                 siblings: list[LocalModel] | None = None):
        self.settings = settings
        self.turn = turn
        self.siblings = siblings if siblings is not None else []
        text = str(spec)
        match = None if Path(text).exists() else _ALIAS_SPEC.match(text)
        self.alias, self.registered = (match.group(1), match.group(2)) if match else (None, None)
        self.model_dir = None if match else Path(text)
        if self.model_dir is not None and not self.model_dir.is_dir():
            raise ValueError(f"--model-dir {text!r}: no such folder; give a Hugging Face model folder or "
                             "ALIAS:REGISTERED_MODEL (e.g. champion:continuum-support)")
        self.mount = self.alias or self.model_dir.name  # type: ignore[union-attr]
        self.name = self.registered or self.mount
        self._generator: Any = None
        self._folder: Path | None = None
        self._version: str | None = None
        self._checked = 0.0
        self._load_lock = threading.Lock()
        self._ids = 0

    def _alias_dir(self) -> tuple[Path, str] | None:
        """The alias's folder and version when it moved since the last look (at most every ALIAS_CHECK_SECONDS)."""
        from continuum_pipeline.registry import models as registry

        if self._generator is not None and time.monotonic() - self._checked < ALIAS_CHECK_SECONDS:
            return None
        self._checked = time.monotonic()
        ref = registry.by_alias(self.settings.mlflow_uri, self.registered, self.alias)
        if ref is None:
            if self._generator is None:
                raise LookupError(f"the registry has no {self.alias} for {self.registered!r} yet")
            return None  # the alias was removed: keep serving what it last named
        if ref.version == self._version:
            return None
        with _DOWNLOADS_GUARD:
            download = _DOWNLOADS.setdefault(f"{self.registered}@{ref.version}", threading.Lock())
        with download:
            folder = registry.model_dir(self.settings.mlflow_uri, ref, self.settings.models_dir / "serve")
        return folder, ref.version

    def generator(self) -> tuple[Any, str]:
        """The generator in force and the name it answers under (read together: the alias may move)."""
        with self._load_lock:
            if self.alias:
                moved = self._alias_dir()
                folder, version = moved if moved else (None, None)
            else:
                folder, version = (self.model_dir, None) if self._generator is None else (None, None)
            if folder is not None:
                # Two aliases on one version (champion and challenger at promotion) share one loaded model.
                shared = next((m._generator for m in self.siblings
                               if m is not self and m._folder == folder and m._generator is not None), None)
                if shared is None:
                    from continuum_pipeline.serving.generate import Generator

                    shared = Generator.from_pretrained(folder, batch_size=1)
                self._generator, self._folder = shared, folder
                if version is not None:
                    self._version, self.name = version, f"{self.registered}@{version}"
            return self._generator, self.name

    def _answer(self, messages: list[dict], max_tokens: int | None, shadow: bool,
                deadline: float | None) -> tuple[str, int, int, str]:
        generator, name = self.generator()
        with self.turn.turn(shadow, deadline):
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
        return text, prompt_tokens, completion_tokens, name

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
        shadow = request.headers.get("x-continuum-shadow") == "1"
        try:
            deadline = float(request.headers["x-continuum-shadow-deadline"]) if shadow else None
        except (KeyError, ValueError):
            deadline = None
        try:
            text, prompt_tokens, completion_tokens, name = await asyncio.to_thread(
                self._answer, plain, max_tokens, shadow, deadline)
        except LookupError as exc:  # nothing holds the alias yet
            return JSONResponse({"error": {"message": str(exc), "type": "model_not_found"}}, status_code=503)
        except ShadowExpired as exc:
            return JSONResponse({"error": {"message": str(exc), "type": "timeout"}}, status_code=504)
        self._ids += 1
        base = {"id": f"chatcmpl-local-{self.mount}-{self._ids}", "created": int(time.time()), "model": name}
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


def _mount(prefix: str, model: LocalModel) -> list[Route]:
    return [Route(f"{prefix}/chat/completions", model.chat, methods=["POST"]),
            Route(f"{prefix}/models", model.models, methods=["GET"])]


def routes(settings: Settings, specs: str | Path | Sequence[str | Path], threads: int | None = None) -> list[Route]:
    """Routes for each model: `/local/<mount>/v1`, and `/local/v1` when there is one model."""
    specs = [specs] if isinstance(specs, str | Path) else list(specs)
    turn = GenerationTurn(default_threads() if threads is None else threads)
    models: list[LocalModel] = []
    for spec in specs:
        models.append(LocalModel(settings, spec, turn, models))
    mounts = [m.mount for m in models]
    if len(set(mounts)) != len(mounts):
        raise ValueError(f"--model-dir: two models would both be served at /local/<name>/v1 ({mounts}): give each "
                         "a different alias (champion:NAME, challenger:NAME) or folder name")
    out = [r for m in models for r in _mount(f"/local/{m.mount}/v1", m)]
    if len(models) == 1:
        out += _mount("/local/v1", models[0])
    return out
