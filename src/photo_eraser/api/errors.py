"""The response envelope and the one table of numeric codes.

Every response, errors included, is ``{"code": int, "msg": str, "data": object}``; the HTTP status
always matches the code's class (``code // 100``).
"""

from __future__ import annotations

import logging
from enum import IntEnum
from typing import Any

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)


class Code(IntEnum):
    """Numeric ``code`` values. The HTTP status of a response is ``code // 100`` (0 -> 200)."""

    OK = 0
    BAD_PARAMETER = 40001
    MALFORMED_JSON = 40002
    MISSING_CREDENTIALS = 40101
    INVALID_CREDENTIALS = 40102
    LINK_EXPIRED = 40301
    NOT_FOUND = 40401
    METHOD_NOT_ALLOWED = 40501
    REQUEST_TIMEOUT = 40801
    IDEMPOTENCY_CONFLICT = 40901
    BODY_TOO_LARGE = 41301
    RATE_LIMITED = 42901
    TOO_MANY_OPEN_TASKS = 42902
    INTERNAL = 50001
    UNAVAILABLE = 50301
    BUSY = 50302
    DISK_FULL = 50303

    @property
    def http_status(self) -> int:
        return 200 if self == Code.OK else self // 100


CODE_TABLE = {
    Code.OK: "success",
    Code.BAD_PARAMETER: "a request parameter is missing or invalid; msg names the field",
    Code.MALFORMED_JSON: "the body is not one UTF-8 JSON object (or was cut off by the client)",
    Code.MISSING_CREDENTIALS: "no Authorization: Basic header",
    Code.INVALID_CREDENTIALS: "unknown, revoked or wrong appkey/appsecret",
    Code.LINK_EXPIRED: "a result or upload link's signature is wrong or it has expired",
    Code.NOT_FOUND: "no such task for this key (or no such route)",
    Code.METHOD_NOT_ALLOWED: "the route exists but not for this HTTP method",
    Code.REQUEST_TIMEOUT: "the request body did not arrive within PHOTO_ERASER_BODY_TIMEOUT_SECONDS",
    Code.IDEMPOTENCY_CONFLICT: "this Idempotency-Key was used by this key within 24 h with "
    "another body (a new request needs a new key)",
    Code.BODY_TOO_LARGE: "the request body (or an uploaded file) exceeds the configured limit",
    Code.RATE_LIMITED: "too many task creations (or uploads) for this key; retry after "
    "Retry-After seconds",
    Code.INTERNAL: "internal error; the request may be retried",
    Code.TOO_MANY_OPEN_TASKS: "this key has as many unfinished tasks as it may "
    "(PHOTO_ERASER_MAX_OPEN_TASKS_PER_KEY); retry after Retry-After seconds",
    Code.UNAVAILABLE: "the server is shutting down, or the task database or the blob store it "
    "needs is unreachable; retry after Retry-After",
    Code.BUSY: "the server is shedding load: too many creates in flight; retry after "
    "Retry-After seconds",
    Code.DISK_FULL: "the server's disk is (nearly) full: no new task is accepted; retry after "
    "Retry-After seconds (/healthz: degraded)",
}


class ApiError(Exception):
    """Raised anywhere in a route; rendered as the envelope with the matching HTTP status."""

    def __init__(self, code: Code, msg: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.headers = headers


def envelope(
    code: Code, msg: str = "", data: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"code": int(code), "msg": msg, "data": {} if data is None else data},
        status_code=code.http_status,
        headers=headers,
    )


class InternalErrorMiddleware:
    """Turn an exception no handler took into the 500 envelope, and keep the connection usable.

    Pure ASGI (no ``BaseHTTPMiddleware``: it would buffer streamed result files). If the
    response had already started, the exception is re-raised: the server must then drop the
    connection, as the client has a partial response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracking(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        except Exception:
            log.exception("unhandled error", extra={"path": scope.get("path", "")})
            if started:
                raise
            response = envelope(Code.INTERNAL, "internal error; the request may be retried")
            await response(scope, receive, send)
