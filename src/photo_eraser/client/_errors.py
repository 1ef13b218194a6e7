"""The SDK's errors: one base class carrying the envelope's ``code`` and ``msg``, one subclass
per thing a caller does about it (fix the credentials, fix the request, slow down, try later)."""

from __future__ import annotations

import builtins

NO_ANSWER = -1
"""``code`` of an error the server did not answer with (a timeout, a refused connection)."""


class PhotoEraserError(Exception):
    """Base of every error the SDK raises. ``code`` is the envelope's code (``HTTP * 100 +
    n``, e.g. 40102) or ``NO_ANSWER``; ``msg`` the server's message or ours; ``status_code``
    the HTTP status, 0 when there was no answer."""

    def __init__(self, code: int, msg: str, status_code: int = 0) -> None:
        super().__init__(f"{code}: {msg}" if code != NO_ANSWER else msg)
        self.code = code
        self.msg = msg
        self.status_code = status_code


class AuthError(PhotoEraserError):
    """401: no, unknown, revoked or wrong appkey/appsecret (40101, 40102)."""


class BadRequestError(PhotoEraserError):
    """A 4xx the request itself caused (40001 a bad field, 40002 a bad body, 413 too large,
    404 no such task for this key): resending it unchanged will not help."""


class NotFoundError(BadRequestError):
    """404 (40401): no such task for this key."""


class RateLimitedError(PhotoEraserError):
    """429 (42901 past the key's rate limit, 42902 too many unfinished tasks), still refused
    after the retries. ``retry_after`` is the server's last ``Retry-After`` in seconds."""

    def __init__(self, code: int, msg: str, status_code: int, retry_after: float | None) -> None:
        super().__init__(code, msg, status_code)
        self.retry_after = retry_after


class ServerError(PhotoEraserError):
    """5xx, still failing after the retries, or a connection that could not be made."""


class TimeoutExceeded(PhotoEraserError, builtins.TimeoutError):
    """A request took longer than the client's ``timeout``, or ``Task.wait`` its own
    ``timeout`` (``code`` is ``NO_ANSWER``)."""
