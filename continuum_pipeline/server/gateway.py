"""OpenAI-compatible gateway: `POST /v1/chat/completions` (streaming or not, tools passed through), `GET /v1/models`.

Each request is for a task (header `x-continuum-task`, else `metadata.continuum_task` / `metadata.task`, else
`user` written as `task:<name>`, else the arms file's `default_task`) and goes to one of the task's upstream arms,
drawn by weight, or by hash of the user / session id when the task is sticky (see server/arms.py for the file).
Every call, answered or failed, becomes an interaction with `source: "gateway"` through the SDK's own record
builder and landing writer; its id comes back in the `x-continuum-interaction-id` header for `feedback.record`.
Upstream errors are passed through with their status and body. The request path does as little as it can: one
JSON parse of the request, one dump of it with the arm's model, the upstream bytes forwarded untouched; parsing
the answer for usage, text and tool calls happens on the writer thread.

The interaction's `model_version` is the arm's `model_version`, else the version in the answer's model when it
reads `NAME@VERSION` (the local model server's champion:/challenger: mounts answer so). A task's `shadow` setting
copies a sampled share of its requests to another arm after the user's answer is produced (a background task,
bounded in number and time, never touching the user's response): see server/arms.py.

Optional request headers: `x-continuum-user` / `x-continuum-session` (else body `user` and
`metadata.session_id`), `x-continuum-consent` (granted | denied | unknown).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import weakref
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from time import perf_counter_ns, time_ns
from typing import Any

import httpx
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from continuum_pipeline.capture._decorator import new_id
from continuum_pipeline.capture.record import CONSENTS, ERROR_MESSAGE_BUILT_CHARS, interaction_record
from continuum_pipeline.capture.writer import RECORD_BYTES, WRITER
from continuum_pipeline.server import auth
from continuum_pipeline.server.arms import Arm, ArmsState, Shadow
from continuum_pipeline.server.body import BadRequest, read_body
from continuum_pipeline.settings import Settings

log = logging.getLogger("continuum.gateway")

ID_HEADER = "x-continuum-interaction-id"
ROUTE_HEADER = "x-continuum-route"
SHADOW_HEADER = "x-continuum-shadow"  # sent on shadow copies: the local model server serves real users first
SHADOW_DEADLINE_HEADER = "x-continuum-shadow-deadline"  # Unix seconds: when the gateway stops waiting for the copy
STREAM_KEEP_BYTES = 1 << 20  # how much of a streamed answer the record keeps (the client gets all of it)
_META_KEYS = ("continuum_task", "task", "session_id", "user_id", "consent")
# Response headers not copied from the upstream: hop-by-hop ones and those the server sets itself.
_DROP = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding",
                   "date", "server"})


def _error(status: int, message: str, kind: str = "invalid_request_error", **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": None}},
                        status_code=status, **extra)


@dataclass(frozen=True)
class _Spec:
    """What interaction_record reads from a @capture CallSpec, for one gateway call."""

    task: str
    model: str | None
    route: str
    consent: str | None
    metadata: dict[str, Any] | None
    model_version: str | None = None
    prompt_arg: str | None = "messages"
    signature: None = None


class UpstreamHTTPError(Exception):
    """The upstream answered with an error status; the message is its status and the start of its body."""


class ClientGone(Exception):
    """The client went away before the streamed answer ended."""


class ShadowTimeout(Exception):
    """The shadow arm did not answer within the shadow's timeout_s."""


@dataclass(frozen=True)
class _ShadowCopy:
    """What a shadow copy of one served request needs, taken on the request path (no work done there)."""

    shadow: Shadow
    body: dict[str, Any]  # the request as sent upstream; the copy swaps model and drops streaming
    requested_model: Any
    served_id: str
    served_stream: bool
    task: str
    sticky: str
    messages: Any
    ctx: dict[str, Any]
    consent: str | None
    size: int


class _HttpxUpstream:
    """Upstream calls with one pooled httpx.AsyncClient (always available)."""

    errors: tuple[type[BaseException], ...] = (httpx.HTTPError,)

    def __init__(self) -> None:
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=10.0, read=600.0, write=60.0, pool=60.0),
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=128, keepalive_expiry=60.0),
            follow_redirects=False, trust_env=False)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def post(self, url: str, payload: bytes, headers: dict[str, str]) -> tuple[int, list, Any]:
        response = await self.client.send(self.client.build_request("POST", url, content=payload, headers=headers),
                                          stream=True)
        return response.status_code, list(response.headers.items()), response

    async def read(self, response: Any) -> bytes:
        return await response.aread()

    def chunks(self, response: Any) -> Any:
        return response.aiter_bytes()  # decoded: the content-encoding header is not passed on

    async def close(self, response: Any) -> None:
        await response.aclose()


class _AiohttpUpstream:
    """The same with one pooled aiohttp session: about 0.6 ms less per call than httpx (bench/gateway_overhead.py)."""

    def __init__(self) -> None:
        import aiohttp

        self.errors = (aiohttp.ClientError, TimeoutError)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=512, keepalive_timeout=60.0),
            timeout=aiohttp.ClientTimeout(total=None, connect=10.0, sock_read=600.0), trust_env=False,
            skip_auto_headers=("User-Agent",))

    async def aclose(self) -> None:
        await self.session.close()

    async def post(self, url: str, payload: bytes, headers: dict[str, str]) -> tuple[int, list, Any]:
        response = await self.session.post(url, data=payload, headers=headers, allow_redirects=False)
        return response.status, list(response.headers.items()), response

    async def read(self, response: Any) -> bytes:
        return await response.read()

    def chunks(self, response: Any) -> Any:
        return response.content.iter_any()

    async def close(self, response: Any) -> None:
        response.release()


def _upstream_client() -> Any:
    """aiohttp when it is installed (it comes with mlflow), else httpx; CONTINUUM_GATEWAY_HTTP=httpx forces httpx."""
    if os.environ.get("CONTINUUM_GATEWAY_HTTP", "").lower() != "httpx":
        try:
            return _AiohttpUpstream()
        except ImportError:
            pass
    return _HttpxUpstream()


def _sse_result(raw: bytes) -> dict[str, Any] | None:
    """A chat.completion-like dict rebuilt from streamed chunks: text, tool calls, usage, model."""
    text: list[str] = []
    tools: dict[int, dict[str, Any]] = {}
    usage = model = finish = None
    for line in raw.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if not data or data == b"[DONE]":
            continue
        try:
            chunk = json.loads(data)
        except ValueError:
            continue
        if not isinstance(chunk, dict):
            continue
        model = chunk.get("model") or model
        usage = chunk.get("usage") or usage
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            finish = choice.get("finish_reason") or finish
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str):
                text.append(delta["content"])
            for call in delta.get("tool_calls") or []:
                slot = tools.setdefault(call.get("index", 0), {"id": None, "type": "function",
                                                               "function": {"name": "", "arguments": ""}})
                slot["id"] = call.get("id") or slot["id"]
                fn = call.get("function") or {}
                slot["function"]["name"] += fn.get("name") or ""
                slot["function"]["arguments"] += fn.get("arguments") or ""
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text or not tools else None}
    if tools:
        message["tool_calls"] = [tools[i] for i in sorted(tools)]
    return {"model": model, "usage": usage, "choices": [{"message": message, "finish_reason": finish}]}


def _build(spec: _Spec, iid: str, wall: int, elapsed: int, messages: Any, answer: bytes | None, stream: bool,
           error: BaseException | None, ctx: dict[str, Any], ann: dict[str, Any], arm: Arm) -> dict[str, Any]:
    """The landing record (on the writer thread): the SDK's builder, then the gateway's own fields."""
    result = None
    if error is None and answer:
        if stream:
            result = _sse_result(answer)
        else:
            try:
                result = json.loads(answer)
            except ValueError:
                result = None
    if isinstance(result, dict):
        usage = result.get("usage") if isinstance(result.get("usage"), dict) else {}
        cost = arm.cost(usage.get("prompt_tokens"), usage.get("completion_tokens"))
        if cost is not None:
            ann["cost_usd"] = cost
        choices = result.get("choices")
        finish = choices[0].get("finish_reason") if choices and isinstance(choices[0], dict) else None
        if finish:
            ann["finish_reason"] = finish
        served = result.get("model")
        if spec.model_version is None and isinstance(served, str) and "@" in served:
            name, _, version = served.rpartition("@")  # NAME@VERSION: the registry version that answered
            if name and version.isdigit():  # not a tag such as org/model@main
                ann["model_version"] = version
    record = interaction_record(interaction_id=iid, wall_ns=wall, elapsed_ns=elapsed, spec=spec, args=(),
                                kwargs={"messages": messages}, result=result, error=error, context=ctx,
                                annotations=ann)
    record["source"] = "gateway"
    return record


class Gateway:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.arms = ArmsState(settings.gateway_arms)
        self._client: Any = None
        self._loop: Any = None
        self._shadows: set[asyncio.Task] = set()  # copies under way (a reference keeps each task alive)
        self.shadow_counts: Counter[str] = Counter()

    def upstream(self) -> Any:
        """One pooled upstream client per event loop (an app served once has one loop: one client)."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client = _upstream_client()
            self._loop = loop
        return self._client

    async def aclose(self) -> None:
        """Cancel the shadow copies under way, close the upstream pool (the app's lifespan calls this at shutdown)."""
        shadows = [t for t in self._shadows if not t.done()]
        for t in shadows:
            t.cancel()
        await asyncio.gather(*shadows, return_exceptions=True)
        client, self._client = self._client, None
        if client is not None and self._loop is asyncio.get_running_loop():
            await client.aclose()

    async def _body(self, request: Request) -> bytes | Response:
        try:
            return await read_body(request, self.settings.serve_max_body_bytes)
        except BadRequest as exc:
            return _error(exc.status, exc.message)

    async def models(self, request: Request) -> Response:
        if (denied := auth.check_bearer(self.settings, request)) is not None:
            return denied
        config = self.arms.get()
        seen: dict[str, str] = {}
        for task in config.tasks.values():
            seen.setdefault(task.task, "continuum-task")
            for arm in task.arms:
                if arm.model:
                    seen.setdefault(arm.model, f"continuum-arm:{arm.name}")
        data = [{"id": m, "object": "model", "created": 0, "owned_by": owner} for m, owner in seen.items()]
        return JSONResponse({"object": "list", "data": data})

    async def chat(self, request: Request) -> Response:
        if (denied := auth.check_bearer(self.settings, request)) is not None:
            return denied
        raw = await self._body(request)
        if isinstance(raw, Response):
            return raw
        try:
            body = json.loads(raw)
        except ValueError as exc:
            return _error(400, f"the body is not valid JSON: {exc}")
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            return _error(400, "\"messages\" must be a non-empty list of message objects")
        headers = request.headers
        metadata = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
        user = body.get("user") if isinstance(body.get("user"), str) else None
        task_name = (headers.get("x-continuum-task") or metadata.get("continuum_task") or metadata.get("task")
                     or (user[5:] if user and user.startswith("task:") else None))
        config = self.arms.get()
        if not config.tasks:
            return _error(400, f"the gateway has no arms configured: write {self.settings.gateway_arms} "
                               "(see README, \"Through the gateway\") or set CONTINUUM_GATEWAY_ARMS")
        task_name = task_name or config.default_task
        if not task_name:
            return _error(400, "no task: send the `x-continuum-task` header or metadata.continuum_task "
                               "(the arms file has no default_task)")
        task = config.tasks.get(task_name)
        if task is None:
            return _error(400, f"unknown task {task_name!r}: the arms file has {', '.join(sorted(config.tasks))}")
        user_id = headers.get("x-continuum-user") or metadata.get("user_id") or (
            user if user and not user.startswith("task:") else None)
        session_id = headers.get("x-continuum-session") or metadata.get("session_id")
        consent = headers.get("x-continuum-consent") or metadata.get("consent")
        if consent is not None and consent not in CONSENTS:
            return _error(400, f"consent must be one of {', '.join(CONSENTS)}, got {consent!r}")
        arm = task.pick(str(user_id) if user_id else None, str(session_id) if session_id else None)

        # The upstream gets the request as sent, with the arm's model and without Continuum's own metadata.
        requested_model = body.get("model")
        if arm.model:
            body["model"] = arm.model
        if user and user.startswith("task:"):
            body.pop("user")
        if metadata and any(k in metadata for k in _META_KEYS):
            rest = {k: v for k, v in metadata.items() if k not in _META_KEYS}
            if rest:
                body["metadata"] = rest
            else:
                body.pop("metadata", None)
        stream = bool(body.get("stream"))
        out_headers = {"content-type": "application/json", "accept": "text/event-stream" if stream else
                       "application/json"}
        key = arm.api_key()
        if key:
            out_headers["authorization"] = f"Bearer {key}"
        payload = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()

        iid = new_id()
        ann: dict[str, Any] = {"route": arm.name, "metadata": {
            "gateway": {"arm": arm.name, "upstream": arm.public_url, "requested_model": requested_model,
                        "stream": stream, "sticky": task.sticky,
                        **({"tools": len(body["tools"])} if isinstance(body.get("tools"), list) else {})}}}
        ctx = {"user_id": None if user_id is None else str(user_id),
               "session_id": None if session_id is None else str(session_id)}
        spec = _Spec(task.task, arm.model or (requested_model if isinstance(requested_model, str) else None),
                     arm.name, consent, None, arm.model_version)
        size = RECORD_BYTES + len(raw)
        shadow = task.shadow
        copy = _ShadowCopy(shadow, body, requested_model, iid, stream, task.task, task.sticky, messages, ctx,
                           consent, size) if shadow is not None and shadow.arm.name != arm.name and \
            shadow.sample_rate > 0 and shadow.sampled() else None
        wall = time_ns()
        t0 = perf_counter_ns()
        up = self.upstream()
        try:
            status, up_headers, upstream = await up.post(arm.chat_url, payload, out_headers)
        except up.errors as exc:
            elapsed = perf_counter_ns() - t0
            ann["metadata"]["gateway"]["upstream_error"] = type(exc).__name__
            WRITER.submit(_build, (spec, iid, wall, elapsed, messages, None, stream, exc, ctx, ann, arm), size)
            log.warning("gateway: upstream %s for task %s unreachable: %s", arm.name, task.task, type(exc).__name__)
            return _error(502, f"upstream arm {arm.name!r} could not be reached ({type(exc).__name__})",
                          "upstream_error", headers={ID_HEADER: iid, ROUTE_HEADER: arm.name},
                          background=self._after(copy))
        ann["metadata"]["gateway"]["upstream_status"] = status
        passed = {k: v for k, v in up_headers if k.lower() not in _DROP}
        passed[ID_HEADER] = iid
        passed[ROUTE_HEADER] = arm.name
        content_type = next((v for k, v in up_headers if k.lower() == "content-type"), "")

        if status >= 400 or not stream or not content_type.startswith("text/event-stream"):
            try:
                answer = await up.read(upstream)
            except up.errors as exc:
                elapsed = perf_counter_ns() - t0
                WRITER.submit(_build, (spec, iid, wall, elapsed, messages, None, stream, exc, ctx, ann, arm), size)
                return _error(502, f"upstream arm {arm.name!r} broke off its answer ({type(exc).__name__})",
                              "upstream_error", headers={ID_HEADER: iid, ROUTE_HEADER: arm.name},
                              background=self._after(copy))
            finally:
                await up.close(upstream)
            elapsed = perf_counter_ns() - t0
            error = None
            if status >= 400:
                # Cut generously: the writer redacts, then clips to ERROR_MESSAGE_CHARS (a cut secret would slip by).
                body = answer[:ERROR_MESSAGE_BUILT_CHARS].decode("utf-8", "replace")
                error = UpstreamHTTPError(f"HTTP {status}: {body}")
            WRITER.submit(_build, (spec, iid, wall, elapsed, messages, answer, False, error, ctx, ann, arm),
                          size + len(answer))
            return Response(answer, status_code=status, headers=passed, background=self._after(copy))

        async def relay():
            kept: list[bytes] = []
            kept_bytes = 0
            error: BaseException | None = None
            try:
                async for chunk in up.chunks(upstream):
                    if "ttft_ms" not in ann:
                        ann["ttft_ms"] = (perf_counter_ns() - t0) / 1e6
                    if kept_bytes < STREAM_KEEP_BYTES:
                        kept.append(chunk)
                        kept_bytes += len(chunk)
                    yield chunk
            except up.errors as exc:
                error = exc
            except BaseException:  # the client went away (cancelled): still record what was answered
                error = ClientGone("the client closed the connection before the stream ended")
                raise
            finally:  # record first: a cancelled stream may be cancelled again at the close's first await
                elapsed = perf_counter_ns() - t0
                answer = b"".join(kept)
                WRITER.submit(_build, (spec, iid, wall, elapsed, messages, answer, True, error, ctx, ann, arm),
                              size + len(answer))
                if copy is not None:  # the stream has ended (or the client left): the user's answer is done
                    self._spawn_shadow(copy)
                await up.close(upstream)

        return StreamingResponse(relay(), status_code=status, headers=passed, media_type="text/event-stream")


    def _after(self, copy: _ShadowCopy | None) -> BackgroundTask | None:
        """Starlette runs this after the response's last byte is sent: only then does the copy start."""
        return None if copy is None else BackgroundTask(self._spawn_shadow_async, copy)

    async def _spawn_shadow_async(self, copy: _ShadowCopy) -> None:
        self._spawn_shadow(copy)  # async so that Starlette calls it on the loop, not in its thread pool

    def _spawn_shadow(self, copy: _ShadowCopy) -> None:
        """Start the copy in the background, or drop it (counted) when max_in_flight copies are under way."""
        self.shadow_counts["sampled"] += 1
        if len(self._shadows) >= copy.shadow.max_in_flight:
            self.shadow_counts["dropped_busy"] += 1
            return
        self.shadow_counts["sent"] += 1
        task = asyncio.get_running_loop().create_task(self._shadow(copy))
        self._shadows.add(task)
        task.add_done_callback(self._shadow_done)

    def _shadow_done(self, task: asyncio.Task) -> None:
        self._shadows.discard(task)
        if task.cancelled():
            self.shadow_counts["cancelled"] += 1
        elif (exc := task.exception()) is not None:  # a bug, not an upstream failure: say so, once per copy
            self.shadow_counts["failed"] += 1
            log.error("gateway: shadow copy failed: %r", exc)

    async def _shadow(self, copy: _ShadowCopy) -> None:
        """Send the copy to the shadow arm (non-streaming), record its answer as its own interaction."""
        arm = copy.shadow.arm
        body = dict(copy.body)
        body.pop("stream", None)
        body.pop("stream_options", None)
        requested = copy.requested_model if isinstance(copy.requested_model, str) else None
        model = arm.model or requested
        if model:
            body["model"] = model
        else:
            body.pop("model", None)
        wall = time_ns()
        headers = {"content-type": "application/json", "accept": "application/json", SHADOW_HEADER: "1",
                   SHADOW_DEADLINE_HEADER: f"{wall / 1e9 + copy.shadow.timeout_s:.3f}"}
        if key := arm.api_key():
            headers["authorization"] = f"Bearer {key}"
        payload = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        iid = new_id()
        gateway = {"arm": arm.name, "upstream": arm.public_url, "requested_model": copy.requested_model,
                   "stream": False, "sticky": copy.sticky, "served_stream": copy.served_stream}
        ann: dict[str, Any] = {"route": arm.name, "metadata": {"shadow": True, "shadow_of": copy.served_id,
                                                               "gateway": gateway}}
        spec = _Spec(copy.task, model, arm.name, copy.consent, None, arm.model_version)
        answer: bytes | None = None
        error: BaseException | None = None
        t0 = perf_counter_ns()
        up = self.upstream()
        response = None
        try:
            async with asyncio.timeout(copy.shadow.timeout_s):
                status, _, response = await up.post(arm.chat_url, payload, headers)
                gateway["upstream_status"] = status
                answer = await up.read(response)
            if status >= 400:
                error = UpstreamHTTPError(f"HTTP {status}: "
                                          f"{answer[:ERROR_MESSAGE_BUILT_CHARS].decode('utf-8', 'replace')}")
        except TimeoutError:  # asyncio.timeout's, or the client's own
            error = ShadowTimeout(f"the shadow arm {arm.name!r} did not answer within {copy.shadow.timeout_s:g} s")
        except up.errors as exc:
            error = exc
            gateway["upstream_error"] = type(exc).__name__
        finally:
            if response is not None:
                await up.close(response)
        elapsed = perf_counter_ns() - t0
        self.shadow_counts["timed_out" if isinstance(error, ShadowTimeout) else
                           "answered" if error is None else "failed"] += 1
        WRITER.submit(_build, (spec, iid, wall, elapsed, copy.messages, answer, False, error, copy.ctx, ann, arm),
                      copy.size + len(answer or b""))

    def stats(self) -> dict[str, Any]:
        """Shadow copies per outcome (for /healthz): sampled = sent + dropped_busy; sent ends as answered,
        failed, timed_out or cancelled (at shutdown)."""
        return {"shadow": {**self.shadow_counts, "in_flight": len(self._shadows)}}


_GATEWAYS: weakref.WeakSet[Gateway] = weakref.WeakSet()


async def aclose() -> None:
    """Close every gateway's upstream pool opened on this event loop (app shutdown)."""
    for gateway in list(_GATEWAYS):
        await gateway.aclose()


def routes(settings: Settings, model_dir: str | Sequence[str] | None = None, threads: int | None = None,
           gateway: Gateway | None = None) -> list[Route]:
    gateway = gateway or Gateway(settings)
    _GATEWAYS.add(gateway)
    out = [Route("/v1/chat/completions", gateway.chat, methods=["POST"]),
           Route("/v1/models", gateway.models, methods=["GET"])]
    specs = [model_dir] if isinstance(model_dir, str) else list(model_dir or ())
    if specs:
        from continuum_pipeline.server import local_model

        out += local_model.routes(settings, specs, threads)
    return out
