"""Who may send to `continuum serve`: bearer API keys (gateway, OTLP) and Langfuse's Basic public:secret pair.

Open (no key) only when CONTINUUM_SERVE_ALLOW_NO_AUTH is set *and* the service listens on 127.0.0.1 — a
laptop or a test, never a network. Keys are compared in constant time and never logged or captured.
"""

from __future__ import annotations

import base64
import hmac

from starlette.requests import Request
from starlette.responses import JSONResponse

from continuum_pipeline.settings import Settings

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def open_without_keys(settings: Settings, request: Request) -> bool:
    host = (request.scope.get("server") or ("", 0))[0]
    return settings.serve_allow_no_auth and host in LOOPBACK


def _unauthorized(message: str, scheme: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "authentication_error"}}, status_code=401,
                        headers={"WWW-Authenticate": f'{scheme} realm="continuum"'})


def check_bearer(settings: Settings, request: Request) -> JSONResponse | None:
    """None when the request may pass; else the 401 to answer. Accepts `Authorization: Bearer KEY`."""
    if open_without_keys(settings, request):
        return None
    if not settings.serve_api_keys:
        return _unauthorized("no API key is configured: set CONTINUUM_SERVE_API_KEYS (or, on 127.0.0.1 only, "
                             "CONTINUUM_SERVE_ALLOW_NO_AUTH=1)", "Bearer")
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not any(hmac.compare_digest(token.encode(), k.encode())
                                              for k in settings.serve_api_keys):
        return _unauthorized("missing or wrong API key: send `Authorization: Bearer <key>`", "Bearer")
    return None


def check_basic(settings: Settings, request: Request) -> JSONResponse | None:
    """None when the request may pass; else the 401. Langfuse SDKs send Basic base64(public:secret)."""
    if open_without_keys(settings, request):
        return None
    if not (settings.langfuse_public_key and settings.langfuse_secret_key):
        return _unauthorized("no Langfuse key pair is configured: set CONTINUUM_LANGFUSE_PUBLIC_KEY and "
                             "CONTINUUM_LANGFUSE_SECRET_KEY", "Basic")
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    try:
        public, _, secret = base64.b64decode(encoded).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        public = secret = ""
    if scheme.lower() != "basic" or not (hmac.compare_digest(public, settings.langfuse_public_key)
                                         and hmac.compare_digest(secret, settings.langfuse_secret_key)):
        return _unauthorized("missing or wrong Langfuse keys: Basic base64(public_key:secret_key)", "Basic")
    return None
