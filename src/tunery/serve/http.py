"""The HTTP edge: API-key check, per-route counts, bounded request bodies, and errors in OpenAI's shape.

Both middlewares are plain ASGI (no per-request task, nothing buffered), so streamed answers pass
through them untouched.
"""

from __future__ import annotations

import hmac
import json
import sys
import traceback

from tunery.serve.protocol import MAX_BODY_BYTES, ApiError

OPEN_PATHS = frozenset({"/health"})
ROUTES = ("/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/feedback",
          "/v1/admin/models")


def route_label(path: str) -> str:
    """The route a path belongs to, for metrics (unknown paths share one label, so they cannot flood it)."""
    if path in ROUTES:
        return path
    for prefix in ("/v1/models/", "/v1/admin/models/"):
        if path.startswith(prefix):
            return prefix + "{name}"
    return "other"


async def send_json(send, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


def bearer_key(scope) -> bytes:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" else b""
    return b""


class KeyCheck:
    """With a key set, every route but /health needs `Authorization: Bearer KEY` (constant-time compare)."""

    def __init__(self, app, key: str | None):
        self.app, self.key = app, key.encode() if key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.key is None or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        if not hmac.compare_digest(bearer_key(scope), self.key):
            error = ApiError(401, "invalid or missing API key: send the header 'Authorization: Bearer KEY'",
                             code="invalid_api_key")
            return await send_json(send, 401, error.body(), {"WWW-Authenticate": "Bearer"})
        return await self.app(scope, receive, send)


class CountRequests:
    """Counts every answer by route and status code."""

    def __init__(self, app, metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = {"code": 500}

        async def counting_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            self.metrics.answered(route_label(scope["path"]), status["code"])


async def read_body(request) -> bytes:
    """The request body, refused with 413 past MAX_BODY_BYTES (checked as it arrives)."""
    from starlette.requests import ClientDisconnect

    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise ApiError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ApiError(400, "the client went away while sending the request") from None
    return b"".join(chunks)


def install_error_handlers(app) -> None:
    """Every error answer is `{"error": {...}}`; unexpected ones are 500 without a traceback (which
    goes to the server's log instead)."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    @app.exception_handler(ApiError)
    async def api_error(request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
        error = ApiError(exc.status_code, message.get(exc.status_code, str(exc.detail)), code=str(exc.status_code))
        return JSONResponse(error.body(), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc: RequestValidationError):
        return JSONResponse(ApiError(400, f"invalid request: {str(exc)[:300]}").body(), status_code=400)

    @app.exception_handler(Exception)
    async def unexpected(request, exc: Exception):
        print("tunery serve: unexpected error:\n" + traceback.format_exc(), file=sys.stderr, flush=True)
        error = ApiError(500, "the server failed on this request (its log has the details)", type="server_error")
        return JSONResponse(error.body(), status_code=500)
