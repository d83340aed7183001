"""Langfuse-compatible feedback: scores from the Langfuse SDKs become landing feedback records.

Routes (Basic auth with the configured public:secret pair, see server.auth.check_basic):

- `POST /api/public/scores` — one score object or a JSON array of them (the v3+ SDKs' score path).
  202 `{"message": "Accepted"}` when every score was taken; 207 `{"accepted", "rejected", "errors": [{"message"}]}`
  when some were not (each error names the item and the field). A single object that cannot be a score,
  an empty array or a body that is not JSON: 400.
- `POST /api/public/ingestion` — the older SDKs' batch `{"batch": [{"id", "type", "timestamp", "body"}]}`.
  `score-create` events become feedback; every other event type is answered as an error for that event
  (traces come in through OTLP, `/api/public/otel/v1/traces`). Answer: Langfuse's 207
  `{"successes": [{"id", "status": 201}], "errors": [{"id", "status", "message", "error"}]}`.
- `GET /api/public/projects` — the SDKs' auth check: one project, in Langfuse's shape.

Which interaction a score lands on (`interaction_id` of the feedback record):

- `traceId` + `observationId` → `otel-<traceId>-<observationId>`: the interaction the OTLP receiver lands for that
  generation span (ids are lowercased; OTel ids are hex).
- `traceId` only (a trace-level score) → `otel-<traceId>`: the *trace key*. It is not resolved when the score
  arrives (the score may come before the trace's spans, and from another process); it applies to every
  generation interaction of the trace, which is exactly the interactions whose id starts with `otel-<traceId>-`.
  In SQL: `interactions.interaction_id LIKE feedback_events.interaction_id || '-%'` (or
  `'otel-' || interactions.trace_id = feedback_events.interaction_id`). The metadata says `"scope": "trace"`.
- `metadata.continuum_interaction_id` (a string) wins over both: how an app scores an interaction that did not
  come from OTLP (an `@capture` call, a gateway call's `x-continuum-interaction-id`) with the Langfuse API.
- Session and dataset-run scores (no traceId) name no interaction and are rejected with that reason.

How a value maps onto the feedback schema (the raw score is always kept under `metadata.langfuse`):

- NUMERIC: a value in [0, 1] → `score`; outside [0, 1] (a 1–5 star rating, a latency) the scale is unknown, so
  `score` stays null and the value is only in metadata; `label` = the score's name in both cases.
- BOOLEAN: 0/1 (or true/false) → `score` 0.0/1.0, `label` = name.
- CATEGORICAL: the string value → `label` (e.g. `thumbs_down`); the name is in metadata.
- TEXT: the value → `comment`; CORRECTION: the value → `correction` (the corrected output); `label` = name.
- No dataType: inferred as Langfuse does (bool → BOOLEAN, number → NUMERIC, string → CATEGORICAL).
- `comment` → `comment` (after a TEXT value, separated by a blank line); the score's `id` → `feedback_id`,
  its `timestamp` → `ts`; `source` is `"langfuse"`.

No credential ever reaches a record or a log line: the Authorization header is read only by check_basic.
"""

from __future__ import annotations

import json
import logging
import math
import re
import zlib
from datetime import UTC, datetime
from time import time_ns
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from continuum_pipeline.server import auth
from continuum_pipeline.server.body import BadRequest, read_body
from continuum_pipeline.settings import Settings

log = logging.getLogger("continuum.serve.langfuse")

PROJECT_ID = "continuum"
DATA_TYPES = ("NUMERIC", "BOOLEAN", "CATEGORICAL", "TEXT", "CORRECTION")
MAX_TEXT = 100_000  # chars of a label, comment or correction value kept; longer is rejected, not cut
_HEX = re.compile(r"^[0-9a-fA-F]+$")


def _error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error"}, "message": message},
                        status_code=status, headers=headers or None)


# --- the request body ------------------------------------------------------------------------------------

async def _read_json(request: Request, limit: int) -> Any:
    """The body as JSON, at most `limit` bytes on the wire and after gunzip; BadRequest otherwise."""
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype and ctype != "application/json" and not ctype.endswith("+json"):
        raise BadRequest(415, f"Content-Type {ctype!r} is not supported: send application/json")
    body = await read_body(request, limit)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding == "gzip":
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            body = inflater.decompress(body, limit + 1)
        except zlib.error as exc:
            raise BadRequest(400, f"body is not valid gzip ({exc})") from None
        if len(body) > limit or inflater.unconsumed_tail:
            raise BadRequest(413, f"decompressed body is over the {limit}-byte limit (CONTINUUM_SERVE_MAX_BODY_BYTES)")
    elif encoding not in ("identity", ""):
        raise BadRequest(415, f"Content-Encoding {encoding!r} is not supported: send gzip or none")
    if not body.strip():
        raise BadRequest(400, "empty body: send a JSON score object or array")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(400, f"body is not valid JSON ({exc})") from None


# --- one score → one landing feedback record -------------------------------------------------------------

def _id(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"'{field}' must be a non-empty string")
    value = value.strip()
    return value.lower() if _HEX.match(value) else value


def _text(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"'{field}' must be a string")
    if len(value) > MAX_TEXT:
        raise ValueError(f"'{field}' is longer than {MAX_TEXT} characters")
    return value


def _wall_ns(value: Any) -> int:
    if value is None:
        return time_ns()
    if not isinstance(value, str):
        raise ValueError("'timestamp' must be an ISO-8601 string")
    try:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"'timestamp' is not ISO-8601: {value[:64]!r}") from None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return int(ts.timestamp() * 1_000_000) * 1000


def score_fields(score: Any) -> dict[str, Any]:
    """The feedback_record() arguments for one Langfuse score; ValueError naming the field when it is not one."""
    if not isinstance(score, dict):
        raise ValueError(f"a score must be a JSON object, got {type(score).__name__}")
    name = score.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ValueError("'name' is required: a non-empty string")
    if len(name) > 1000:
        raise ValueError("'name' is longer than 1000 characters")
    trace_id = _id(score.get("traceId"), "traceId")
    observation_id = _id(score.get("observationId"), "observationId")
    user_meta = score.get("metadata")
    target = user_meta.get("continuum_interaction_id") if isinstance(user_meta, dict) else None
    if target is not None and (not isinstance(target, str) or not target.strip()):
        raise ValueError("'metadata.continuum_interaction_id' must be a non-empty string")
    if observation_id and not trace_id:
        raise ValueError("'observationId' needs 'traceId' too")
    if target:
        interaction_id, scope = target.strip(), "interaction"
    elif trace_id and observation_id:
        interaction_id, scope = f"otel-{trace_id}-{observation_id}", "observation"
    elif trace_id:
        interaction_id, scope = f"otel-{trace_id}", "trace"
    else:
        what = "sessionId" if score.get("sessionId") else "datasetRunId" if score.get("datasetRunId") else None
        raise ValueError("'traceId' is required: " + (f"a score on a {what[:-2]} names no interaction"
                                                      if what else "it names the interaction the score is about"))
    if "value" not in score or score["value"] is None:
        raise ValueError("'value' is required")
    value = score["value"]
    data_type = score.get("dataType")
    if data_type is None:
        data_type = ("BOOLEAN" if isinstance(value, bool) else "NUMERIC" if isinstance(value, int | float)
                     else "CATEGORICAL")
    if not isinstance(data_type, str) or data_type.upper() not in DATA_TYPES:
        raise ValueError(f"'dataType' must be one of {', '.join(DATA_TYPES)}, got {data_type!r}")
    data_type = data_type.upper()
    comment = _text(score.get("comment"), "comment")
    fields: dict[str, Any] = {"score": None, "label": name.strip(), "comment": comment, "correction": None}
    if data_type in ("NUMERIC", "BOOLEAN"):
        if isinstance(value, bool):
            value = float(value)
        if not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"'value' of a {data_type} score must be a finite number, got {value!r}"[:200])
        if data_type == "BOOLEAN":
            if value not in (0, 1):
                raise ValueError(f"'value' of a BOOLEAN score must be 0 or 1, got {value!r}")
            fields["score"] = float(value)
        elif 0.0 <= value <= 1.0:
            fields["score"] = float(value)
    else:
        if isinstance(value, int | float) and not isinstance(value, bool) and data_type == "CATEGORICAL":
            value = str(value)
        value = _text(value, "value")
        if not value:
            raise ValueError(f"'value' of a {data_type} score must be a non-empty string")
        if data_type == "CATEGORICAL":
            fields["label"] = value
        elif data_type == "TEXT":
            fields["comment"] = value if comment is None else f"{value}\n\n{comment}"
        else:
            fields["correction"] = value
    raw = {"score_id": score.get("id"), "name": name, "value": score["value"], "data_type": data_type,
           "scope": scope, "trace_id": trace_id, "observation_id": observation_id,
           "environment": score.get("environment"), "config_id": score.get("configId"),
           "metadata": user_meta}
    feedback_id = score.get("id")
    if feedback_id is not None and (not isinstance(feedback_id, str) or not feedback_id.strip()):
        raise ValueError("'id' must be a non-empty string")
    from continuum_pipeline.capture._decorator import new_id

    return {
        "feedback_id": feedback_id.strip() if feedback_id else new_id(),
        "interaction_id": interaction_id,
        "wall_ns": _wall_ns(score.get("timestamp")),
        **fields,
        "metadata": {"langfuse": {k: v for k, v in raw.items() if v is not None}},
        "source": "langfuse",
    }


def _submit(all_fields: list[dict[str, Any]]) -> bool:
    """Queue the records on the SDK's writer; False when the writer dropped any (it is saturated)."""
    from continuum_pipeline.capture.writer import RECORD_BYTES, WRITER, approx_bytes

    before = sum(v for k, v in WRITER.counts.items() if k.startswith("dropped_"))
    for fields in all_fields:
        # The metadata is nested (the raw score and the app's own metadata): measure it, not the flat estimate.
        size = RECORD_BYTES + approx_bytes(fields) + len(json.dumps(fields["metadata"], default=str))
        WRITER.submit(_build, (fields,), size)
    after = sum(v for k, v in WRITER.counts.items() if k.startswith("dropped_"))
    return after == before


def _build(fields: dict[str, Any]) -> dict[str, Any]:
    from continuum_pipeline.capture.record import feedback_record

    return feedback_record(**fields)


def _describe(index: int, score: Any) -> str:
    sid = score.get("id") if isinstance(score, dict) else None
    return f"score {index}" + (f" (id {str(sid)[:80]})" if sid else "")


# --- routes ----------------------------------------------------------------------------------------------

def routes(settings: Settings) -> list[Route]:
    limit = settings.serve_max_body_bytes
    saturated = "the landing writer is saturated; retry later"

    async def authorized_json(request: Request) -> Any:
        """The JSON body of an authorized request, or the error response to send instead."""
        if (denied := auth.check_basic(settings, request)) is not None:
            return denied
        try:
            return await _read_json(request, limit)
        except BadRequest as exc:
            return _error(exc.status, exc.message)

    async def scores(request: Request) -> JSONResponse:
        body = await authorized_json(request)
        if isinstance(body, Response):
            return body
        single = isinstance(body, dict)
        items = [body] if single else body
        if not isinstance(items, list):
            return _error(400, f"body must be a score object or an array of scores, got {type(body).__name__}")
        if not items:
            return _error(400, "empty array: send at least one score")
        good, errors = [], []
        for i, item in enumerate(items):
            try:
                good.append(score_fields(item))
            except ValueError as exc:
                errors.append({"message": f"{_describe(i, item)}: {exc}"})
        if single and errors:
            return _error(400, errors[0]["message"])
        if good and not _submit(good):
            return _error(503, saturated, **{"Retry-After": "1"})
        log.debug("langfuse scores: %d accepted, %d rejected", len(good), len(errors))
        if errors:
            return JSONResponse({"accepted": len(good), "rejected": len(errors), "errors": errors}, status_code=207)
        return JSONResponse({"message": "Accepted"}, status_code=202)

    async def ingestion(request: Request) -> JSONResponse:
        body = await authorized_json(request)
        if isinstance(body, Response):
            return body
        batch = body.get("batch") if isinstance(body, dict) else None
        if not isinstance(batch, list):
            return _error(400, "body must be {\"batch\": [events]}")
        successes, errors, good = [], [], []
        for i, event in enumerate(batch):
            event_id = event.get("id") if isinstance(event, dict) else None
            event_id = event_id if isinstance(event_id, str) else str(i)
            kind = event.get("type") if isinstance(event, dict) else None
            if kind != "score-create":
                message = (f"event {i}: 'type' {kind!r} is not supported here: Continuum takes score-create events; "
                           "send traces through OTLP (/api/public/otel/v1/traces)")
                errors.append({"id": event_id, "status": 400, "message": message, "error": "unsupported event type"})
                continue
            try:
                good.append(score_fields(event.get("body")))
                successes.append({"id": event_id, "status": 201})
            except ValueError as exc:
                errors.append({"id": event_id, "status": 400, "message": f"event {i} body: {exc}",
                               "error": "invalid score"})
        if good and not _submit(good):
            return _error(503, saturated, **{"Retry-After": "1"})
        return JSONResponse({"successes": successes, "errors": errors}, status_code=207)

    async def projects(request: Request) -> JSONResponse:
        if (denied := auth.check_basic(settings, request)) is not None:
            return denied
        return JSONResponse({"data": [{"id": PROJECT_ID, "name": "Continuum",
                                       "organization": {"id": PROJECT_ID, "name": "Continuum"},
                                       "metadata": {}}]})

    return [
        Route("/api/public/scores", scores, methods=["POST"]),
        Route("/api/public/ingestion", ingestion, methods=["POST"]),
        Route("/api/public/projects", projects, methods=["GET"]),
    ]
