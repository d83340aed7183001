"""Reading a request body within `CONTINUUM_SERVE_MAX_BODY_BYTES`: one rule for the receiver and the gateway."""

from __future__ import annotations

from starlette.requests import ClientDisconnect, Request


class BadRequest(Exception):
    """A request to refuse: the HTTP status and a message that says what to send instead."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


async def read_body(request: Request, limit: int) -> bytes:
    """The body as sent, refused with 413 past `limit` bytes — by Content-Length, or while reading a chunked
    body, so an oversize request never sits in memory whole."""
    over = f"request body is over the limit of {limit} bytes (CONTINUUM_SERVE_MAX_BODY_BYTES): send smaller requests"
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise BadRequest(400, f"Content-Length {declared!r} is not a number")
        if int(declared) > limit:
            raise BadRequest(413, over)
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BadRequest(413, over)
            chunks.append(chunk)
    except ClientDisconnect:
        raise BadRequest(400, "the client disconnected before the body was complete") from None
    return b"".join(chunks)
