"""``Authorization: Basic base64(appkey:appsecret)`` and per-key rate limiting."""

from __future__ import annotations

import base64
import binascii
import math
import threading
import time

from photo_eraser.api.errors import ApiError, Code
from photo_eraser.tasks.aio import AsyncTaskStore


async def authenticate(header: str | None, store: AsyncTaskStore) -> str:
    """Return the caller's appkey or raise 401."""
    if not header:
        raise ApiError(
            Code.MISSING_CREDENTIALS, "missing Authorization header (Basic appkey:appsecret)"
        )
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value.strip():
        raise ApiError(
            Code.MISSING_CREDENTIALS, "Authorization must be 'Basic base64(appkey:appsecret)'"
        )
    try:
        # A str with non-ASCII characters (header bytes arrive as latin-1) is a ValueError.
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise ApiError(Code.INVALID_CREDENTIALS, "Authorization is not valid base64") from None
    appkey, sep, appsecret = decoded.partition(":")
    if not sep or not await store.verify_key(appkey, appsecret):
        raise ApiError(Code.INVALID_CREDENTIALS, "invalid appkey or appsecret")
    return appkey


class RateLimiter:
    """A token bucket per key: ``per_minute`` creations, refilled continuously. In memory: the
    embedded server is one process (a cluster counts in the database: `runtime.RateLimit`)."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    async def check(self, key: str) -> float:
        """0 if ``key`` may create a task now (and takes the token), else the seconds until it
        may."""
        if self.per_minute <= 0:
            return 0.0
        now = time.monotonic()
        rate = self.per_minute / 60.0
        with self._lock:
            tokens, last = self._buckets.get(key, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - last) * rate)
            taken = tokens >= 1.0
            self._buckets[key] = (tokens - 1.0 if taken else tokens, now)
        return 0.0 if taken else (1.0 - tokens) / rate


def rate_limited(per_minute: int, wait: float, what: str = "tasks") -> ApiError:
    """The 429 of a create (or an upload) past the key's rate limit."""
    retry = max(1, math.ceil(wait))
    return ApiError(
        Code.RATE_LIMITED,
        f"rate limit of {per_minute} {what} per minute exceeded; retry in {retry} s",
        headers={"Retry-After": str(retry)},
    )
