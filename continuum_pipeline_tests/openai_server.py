"""A real local HTTP server speaking the OpenAI chat completions API, scriptable per test.

    with OpenAIServer(chat=lambda messages: "hi") as server:      # answers as a plain chat model
        server.push(Reply.error(500), Reply("{...}"))            # queued replies go first, in order
        client = openai.OpenAI(base_url=server.base_url, api_key="x")
        ...
        assert server.requests[-1].model == "my-model"

Each POST /v1/chat/completions is answered by the next queued reply, else by `handler(request)`, else by
`chat(messages)`; with none of them (or when one raises) it answers 500 with `x-should-retry: false`, so a
test fails fast instead of retrying, and the problem is kept in `.errors`. GET /v1/models lists `models`.
Streaming requests (`"stream": true`) get server-sent events. Every reply carries token `usage` (words
counted as tokens). JSON-mode requests (`response_format` json_object or json_schema) expose the schema
they ask for as `request.json_schema` (from `response_format`, or from the prompt where clients such as
instructor put it), so a handler can answer with a matching object (`example_for_schema` fills one in).
POST /v1/embeddings answers with `embed(text)` per input, by default a deterministic bag-of-words vector
(texts sharing words have a high cosine similarity).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Reply:
    """One scripted answer: assistant text, or an HTTP error, or a raw body; optionally after a delay."""

    content: str | None = None
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None  # sent as is (e.g. a broken JSON body), replacing the completion
    delay: float = 0.0  # seconds to wait before answering, to exercise client timeouts and concurrency
    finish_reason: str = "stop"

    @classmethod
    def error(cls, status: int = 500, message: str = "scripted failure", *,
              headers: Mapping[str, str] | None = None, delay: float = 0.0) -> Reply:
        kind = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                429: "rate_limit_exceeded"}.get(status, "server_error")
        body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": None}}).encode()
        return cls(status=status, headers=dict(headers or {}), body=body, delay=delay)

    @classmethod
    def rate_limited(cls, retry_after: float | str = 0) -> Reply:
        return cls.error(429, "rate limited", headers={"Retry-After": str(retry_after)})


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: Any  # the parsed JSON body, or None

    @property
    def model(self) -> str | None:
        return self.body.get("model") if isinstance(self.body, dict) else None

    @property
    def messages(self) -> list[dict]:
        return self.body.get("messages", []) if isinstance(self.body, dict) else []

    @property
    def text(self) -> str:
        """All message contents joined, for `"..." in request.text` assertions."""
        return "\n".join(m["content"] if isinstance(m.get("content"), str) else json.dumps(m.get("content"))
                         for m in self.messages)

    @property
    def response_format(self) -> dict | None:
        fmt = self.body.get("response_format") if isinstance(self.body, dict) else None
        return fmt if isinstance(fmt, dict) else None

    @property
    def json_mode(self) -> bool:
        return (self.response_format or {}).get("type") in ("json_object", "json_schema")

    @property
    def json_schema(self) -> dict | None:
        """The JSON schema the client asked for: `response_format.json_schema.schema`, else the first JSON
        object after "json_schema" in a message (instructor's JSON mode states it in the system prompt)."""
        fmt = self.response_format or {}
        if fmt.get("type") == "json_schema":
            return (fmt.get("json_schema") or {}).get("schema")
        if not self.json_mode:
            return None
        for message in self.messages:
            content = message.get("content")
            if isinstance(content, str) and (at := content.find("json_schema")) >= 0:
                start = content.find("{", at)
                try:
                    schema, _ = json.JSONDecoder().raw_decode(content, start)
                except ValueError:
                    continue
                if isinstance(schema, dict):
                    return schema
        return None


def example_for_schema(schema: dict, overrides: dict | None = None, *, root: dict | None = None) -> Any:
    """A minimal instance of a JSON schema (objects, arrays, scalars, enums, $ref/$defs, anyOf), with
    `overrides` replacing top-level properties: enough to answer a structured-output request."""
    root = root or schema
    if "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target[part]
        return example_for_schema(target, overrides, root=root)
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    if "default" in schema and not overrides:
        return schema["default"]
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            options = [o for o in schema[key] if o.get("type") != "null"] or schema[key]
            return example_for_schema(options[0], overrides, root=root)
    kind = schema.get("type", "object")
    if kind == "object":
        out = {name: example_for_schema(prop, root=root) for name, prop in schema.get("properties", {}).items()}
        return {**out, **(overrides or {})}
    if kind == "array":
        return [example_for_schema(schema["items"], root=root)] if schema.get("minItems") else []
    return {"string": "", "integer": 0, "number": 0.0, "boolean": False, "null": None}.get(kind)


def bag_of_words_embedding(text: str, dims: int = 64) -> list[float]:
    """Deterministic unit vector: each word adds to a hashed dimension."""
    vector = [0.0] * dims
    for word in re.findall(r"\w+", text.casefold()):
        vector[int(hashlib.md5(word.encode()).hexdigest(), 16) % dims] += 1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


class _HTTPServer(ThreadingHTTPServer):
    # socketserver's default backlog of 5 overflows when a 16-thread client opens its connections at once
    # while the machine is busy; the kernel then refuses or resets some of them.
    request_queue_size = 128


Chat = Callable[[list[dict]], "str | Reply"]
Handler = Callable[[RecordedRequest], "str | Reply"]
Embed = Callable[[str], list[float]]


class OpenAIServer:
    """Context manager running the server on 127.0.0.1 (a free port) in a background thread."""

    def __init__(self, chat: Chat | None = None, *, handler: Handler | None = None,
                 replies: Iterable[Reply | str] = (), models: Iterable[str] = ("test-model",),
                 embed: Embed = bag_of_words_embedding):
        self.chat, self.handler, self.models, self.embed = chat, handler, tuple(models), embed
        self._queue: deque[Reply | str] = deque(replies)
        self._requests: list[RecordedRequest] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()  # cuts scripted delays short at shutdown
        self._ids = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> OpenAIServer:
        self._httpd = _HTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.block_on_close = False  # don't wait for idle keep-alive connections or slow replies
        # A short poll interval keeps shutdown (and so each test) fast.
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="openai-server",
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._httpd is not None and self._thread is not None
        self._closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "use OpenAIServer as a context manager"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    @property
    def embedding_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/embeddings")]

    def push(self, *replies: Reply | str) -> None:
        """Queue replies for the next chat completion requests, in order."""
        with self._lock:
            self._queue.extend(replies)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _decide(self, request: RecordedRequest) -> Reply:
        with self._lock:
            queued = self._queue.popleft() if self._queue else None
        try:
            if queued is not None:
                reply = queued
            elif self.handler is not None:
                reply = self.handler(request)
            elif self.chat is not None:
                reply = self.chat(request.messages)
            else:
                raise LookupError("no scripted reply left and no chat/handler callable")
        except Exception as exc:
            message = f"OpenAIServer could not answer: {type(exc).__name__}: {exc}"
            with self._lock:
                self.errors.append(message)
            return Reply.error(500, message, headers={"x-should-retry": "false"})
        return Reply(reply) if isinstance(reply, str) else reply

    def _next_id(self) -> str:
        with self._lock:
            self._ids += 1
            return f"chatcmpl-{self._ids}"


def _completion(server: OpenAIServer, request: RecordedRequest, reply: Reply) -> tuple[bytes, str]:
    """The response body and its content type, streamed as server-sent events when asked."""
    model, content = request.model or server.models[0], reply.content or ""
    prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in request.messages)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(content.split()),
             "total_tokens": prompt_tokens + len(content.split())}
    base = {"id": server._next_id(), "created": int(time.time()), "model": model}
    if not request.body.get("stream"):
        choice = {"index": 0, "message": {"role": "assistant", "content": reply.content},
                  "finish_reason": reply.finish_reason, "logprobs": None}
        body = {**base, "object": "chat.completion", "usage": usage, "choices": [choice]}
        return json.dumps(body).encode(), "application/json"
    pieces = [content[i:i + 8] for i in range(0, len(content), 8)]
    deltas = [{"role": "assistant", "content": ""}] + [{"content": p} for p in pieces]
    chunk = {**base, "object": "chat.completion.chunk"}
    chunks = [{**chunk, "choices": [{"index": 0, "delta": d, "finish_reason": None, "logprobs": None}]}
              for d in deltas]
    chunks.append({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": reply.finish_reason,
                                         "logprobs": None}]})
    if (request.body.get("stream_options") or {}).get("include_usage"):
        chunks.append({**chunk, "choices": [], "usage": usage})
    events = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    return events.encode(), "text/event-stream"


def _embeddings(server: OpenAIServer, request: RecordedRequest) -> bytes:
    inputs = request.body.get("input")
    texts = [inputs] if isinstance(inputs, str) else list(inputs or [])
    if not all(isinstance(t, str) for t in texts):
        raise ValueError("this server embeds text inputs only, not token ids")
    data = [{"object": "embedding", "index": i, "embedding": server.embed(t)} for i, t in enumerate(texts)]
    tokens = sum(len(t.split()) for t in texts)
    return json.dumps({"object": "list", "data": data, "model": request.model or server.models[0],
                       "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}).encode()


def _make_handler(server: OpenAIServer) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's connection pool expects from real servers
        # A reply leaves in one write (headers and body buffered, then flushed): written separately with
        # Nagle's algorithm on, the body waited for the client's delayed ACK of the headers (~40 ms on
        # Linux), which nearly doubled a 50 ms scripted latency; and each send is a syscall saved.
        disable_nagle_algorithm = True
        wbufsize = 1 << 16

        def log_message(self, *args: Any) -> None:
            pass  # quiet test output

        def _request(self) -> RecordedRequest:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            headers = {k.lower(): v for k, v in self.headers.items()}
            request = RecordedRequest(self.command, self.path, headers, body)
            server._record(request)
            return request

        def _send(self, status: int, body: bytes, content_type: str = "application/json",
                  headers: Mapping[str, str] | None = None) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (its timeout): that is what a slow-reply test exercises

        def _not_found(self) -> None:
            self._send(404, json.dumps({"error": {"message": f"no route {self.command} {self.path}",
                                                  "type": "not_found_error"}}).encode())

        def do_GET(self) -> None:
            self._request()
            if self.path.rstrip("/") != "/v1/models":
                return self._not_found()
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "continuum-tests"}
                    for m in server.models]
            self._send(200, json.dumps({"object": "list", "data": data}).encode())

        def do_POST(self) -> None:
            request = self._request()
            path = self.path.rstrip("/")
            if path not in ("/v1/chat/completions", "/v1/embeddings"):
                return self._not_found()
            if not isinstance(request.body, dict):
                return self._send(400, json.dumps({"error": {"message": "body is not a JSON object",
                                                             "type": "invalid_request_error"}}).encode())
            if path == "/v1/embeddings":
                try:
                    return self._send(200, _embeddings(server, request))
                except Exception as exc:
                    message = f"OpenAIServer could not embed: {type(exc).__name__}: {exc}"
                    with server._lock:
                        server.errors.append(message)
                    return self._send(400, json.dumps({"error": {"message": message,
                                                                 "type": "invalid_request_error"}}).encode())
            reply = server._decide(request)
            if reply.delay:
                server._closing.wait(reply.delay)
            if reply.body is not None or reply.status != 200:
                return self._send(reply.status, reply.body or b"{}", headers=reply.headers)
            body, content_type = _completion(server, request, reply)
            self._send(200, body, content_type, reply.headers)

    return _Handler
