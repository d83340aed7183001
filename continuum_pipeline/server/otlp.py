"""OTLP/HTTP trace receiver: `POST /v1/traces` (bearer key) and Langfuse's `POST /api/public/otel/v1/traces`
(Basic public:secret), protobuf or JSON bodies, gzip or not.

What exporters get back (the OTLP/HTTP spec):
  * 200 with an ExportTraceServiceResponse in the request's content type; `partial_success` carries the count
    of LLM spans that could not be mapped (no valid trace/span id) and why. Non-LLM spans are skipped, not
    rejected: the exporter has nothing to retry.
  * 400 for a body that does not decode (truncated protobuf, bad JSON, bad gzip) or a content type other than
    protobuf / JSON; 413 over `serve_max_body_bytes` (compressed or not); 401 without the right key.
  * 503 with `Retry-After` when the landing writer has no room for the request's records: nothing of the
    request is queued, so the exporter's retry loses and duplicates nothing.
Accepted records are queued on the SDK's writer (capture.writer.WRITER) and flushed to a landing segment
before the 200, so a 200 means the spans are on disk, and ingest right after sees them.
"""

from __future__ import annotations

import base64
import json
import logging
import zlib
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from continuum_pipeline.server import auth, spans
from continuum_pipeline.server.body import BadRequest, read_body
from continuum_pipeline.settings import Settings

log = logging.getLogger("continuum.serve.otlp")

PROTOBUF_TYPES = ("application/x-protobuf", "application/protobuf")
JSON_TYPES = ("application/json",)
RETRY_AFTER_SECONDS = 1
HEADROOM = 0.9  # refuse a request that would fill the writer past this share of its bounds


# --- decoding ------------------------------------------------------------------------------------------------

def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise BadRequest(400, f"unsupported Content-Encoding {encoding!r}: send gzip or none")
    d = zlib.decompressobj(wbits=47 if encoding == "gzip" else 15)  # 47: gzip or zlib header
    try:
        out = d.decompress(body, limit + 1)
        if len(out) > limit or d.unconsumed_tail:
            raise BadRequest(413, f"decompressed body is over the limit of {limit} bytes "
                                  "(CONTINUUM_SERVE_MAX_BODY_BYTES): send smaller batches")
        out += d.flush()
    except zlib.error as exc:
        raise BadRequest(400, f"body is not valid {encoding}: {exc}") from exc
    if not d.eof:
        raise BadRequest(400, f"body is not valid {encoding}: truncated stream")
    return out


def _hex_to_b64(value: Any, size: int) -> Any:
    """OTLP/JSON writes trace/span ids as hex (not protobuf-JSON's base64): convert so json_format reads them."""
    if isinstance(value, str) and len(value) in (size * 2, 0):
        try:
            return base64.b64encode(bytes.fromhex(value)).decode()
        except ValueError:
            return value
    return value


def _fix_ids(obj: dict) -> None:
    for key, size in (("traceId", 16), ("spanId", 8), ("parentSpanId", 8)):
        if key in obj:
            obj[key] = _hex_to_b64(obj[key], size)


def parse_json(body: bytes) -> ExportTraceServiceRequest:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(400, f"body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BadRequest(400, "OTLP/JSON body must be an object with resourceSpans")
    try:
        for rs in data.get("resourceSpans") or data.get("resource_spans") or []:
            for ss in rs.get("scopeSpans") or rs.get("scope_spans") or rs.get("instrumentationLibrarySpans") or []:
                for span in ss.get("spans") or []:
                    _fix_ids(span)
                    for link in span.get("links") or []:
                        _fix_ids(link)
        return json_format.ParseDict(data, ExportTraceServiceRequest(), ignore_unknown_fields=True)
    except (json_format.ParseError, AttributeError, TypeError, ValueError) as exc:
        raise BadRequest(400, f"body is not an OTLP/JSON ExportTraceServiceRequest: {exc}") from exc


def parse_protobuf(body: bytes) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    try:
        req.ParseFromString(body)
    except (DecodeError, ValueError) as exc:
        raise BadRequest(400, f"body is not a protobuf ExportTraceServiceRequest: {exc}") from exc
    return req


def decode(body: bytes, content_type: str, content_encoding: str, limit: int) -> tuple[ExportTraceServiceRequest, bool]:
    """(request, is_json) from the raw body and headers; BadRequest for anything that does not decode."""
    mime = content_type.split(";")[0].strip().lower()
    if mime not in PROTOBUF_TYPES + JSON_TYPES:
        raise BadRequest(400, f"unsupported Content-Type {mime or '(none)'!r}: send application/x-protobuf or "
                              "application/json")
    raw = decompress(body, content_encoding, limit)
    is_json = mime in JSON_TYPES
    return (parse_json(raw) if is_json else parse_protobuf(raw)), is_json


# --- landing -------------------------------------------------------------------------------------------------

def _identity(record: dict) -> dict:
    return record


def _size(record: dict) -> int:
    meta = record.get("metadata") or ""
    msgs = record.get("messages") or []
    return 640 + len(meta) + len(record.get("response") or "") + sum(len(m.get("content") or "") + 192 for m in msgs)


def writer_room(writer: Any, records: int, size: int) -> bool:
    config = writer.config
    stats = writer.stats()
    return (stats["queued"] + records <= config.queue_size * HEADROOM
            and stats["queued_bytes"] + size <= config.max_bytes * HEADROOM)


def land(settings: Settings, req: ExportTraceServiceRequest,
         recent: spans.RecentContexts | None = None) -> tuple[spans.MapResult, bool]:
    """Map and queue the records, then flush them to a landing segment. (result, False) when the writer is
    saturated and nothing was queued."""
    from continuum_pipeline.capture.writer import WRITER

    result = spans.map_request(req, task_attributes=settings.otlp_task_attributes,
                               consent_attribute=settings.otlp_consent_attribute, recent=recent)
    if not result.records:
        return result, True
    sizes = [_size(r) for r in result.records]
    if not writer_room(WRITER, len(result.records), sum(sizes)):
        return result, False
    for record, size in zip(result.records, sizes, strict=True):
        WRITER.submit(_identity, (record,), size)
    WRITER.flush()
    return result, True


def receive(settings: Settings, body: bytes, content_type: str, content_encoding: str,
            recent: spans.RecentContexts | None = None) -> tuple[spans.MapResult, bool, bool]:
    """Decode, map and land one export body (in a worker thread): (result, accepted, is_json)."""
    req, is_json = decode(body, content_type, content_encoding, settings.serve_max_body_bytes)
    result, accepted = land(settings, req, recent)
    return result, accepted, is_json


# --- responses -----------------------------------------------------------------------------------------------

def _export_response(result: spans.MapResult, is_json: bool) -> Response:
    resp = ExportTraceServiceResponse()
    if result.rejected_spans:
        resp.partial_success.rejected_spans = result.rejected_spans
        resp.partial_success.error_message = "; ".join(result.errors)
    if is_json:
        return Response(json_format.MessageToJson(resp, indent=None), media_type="application/json")
    return Response(resp.SerializeToString(), media_type="application/x-protobuf")


def _error(status: int, message: str, protobuf: bool, headers: dict | None = None) -> Response:
    """OTLP error responses carry a google.rpc.Status: protobuf for a protobuf request (when googleapis-common-protos,
    which the OTLP exporters bring, is installed), else JSON `{"code", "message"}`, which anyone can read."""
    code = {400: 3, 401: 16, 413: 8, 429: 8, 503: 14}.get(status, 2)  # INVALID_ARGUMENT, …, UNAVAILABLE
    if protobuf:
        try:
            from google.rpc.status_pb2 import Status
        except ImportError:  # pragma: no cover
            pass
        else:
            return Response(Status(code=code, message=message).SerializeToString(), status_code=status,
                            headers=headers, media_type="application/x-protobuf")
    return JSONResponse({"code": code, "message": message}, status_code=status, headers=headers)


def make_handler(settings: Settings, check, recent: spans.RecentContexts):
    async def receive_traces(request: Request) -> Response:
        denied = check(settings, request)
        if denied is not None:
            return denied
        content_type = request.headers.get("content-type", "")
        protobuf = content_type.split(";")[0].strip().lower() in PROTOBUF_TYPES
        try:
            body = await read_body(request, settings.serve_max_body_bytes)
            result, accepted, is_json = await run_in_threadpool(
                receive, settings, body, content_type, request.headers.get("content-encoding", ""), recent)
        except BadRequest as exc:
            return _error(exc.status, str(exc), protobuf)
        if not accepted:
            log.warning("landing writer is saturated: answering 503 to an export of %d spans", result.total_spans)
            return _error(503, "the landing writer is saturated: retry later", protobuf,
                          {"Retry-After": str(RETRY_AFTER_SECONDS)})
        if result.rejected_spans:  # the errors quote span names, and logs end up in files: redacted like records
            from continuum_pipeline.privacy.redact import task_redactors

            errors = task_redactors(settings.tasks)(None).redact("; ".join(result.errors))[0]
            log.warning("OTLP export: %d LLM span(s) rejected: %s", result.rejected_spans, errors)
        return _export_response(result, is_json)

    return receive_traces


def routes(settings: Settings) -> list[Route]:
    recent = spans.RecentContexts()  # shared by both paths: one app's spans may arrive on either
    return [
        Route("/v1/traces", make_handler(settings, auth.check_bearer, recent), methods=["POST"]),
        Route("/api/public/otel/v1/traces", make_handler(settings, auth.check_basic, recent), methods=["POST"]),
    ]

