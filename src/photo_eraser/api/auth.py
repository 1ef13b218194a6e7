"""``Authorization: Basic base64(appkey:appsecret)`` and per-key rate limiting."""

from __future__ import annotations

import base64
import binascii
import threading
import time

from photo_eraser.api.errors import ApiError, Code
from photo_eraser.tasks.store import TaskStore


def authenticate(header: str | None, store: TaskStore) -> str:
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
    if not sep or not store.verify_key(appkey, appsecret):
        raise ApiError(Code.INVALID_CREDENTIALS, "invalid appkey or appsecret")
    return appkey


class RateLimiter:
    """A token bucket per key: ``per_minute`` creations, refilled continuously. In-process."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def check(self, key: str) -> None:
        if self.per_minute <= 0:
            return
        now = time.monotonic()
        rate = self.per_minute / 60.0
        with self._lock:
            tokens, last = self._buckets.get(key, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - last) * rate)
            if tokens < 1.0:
                retry = max(1, int((1.0 - tokens) / rate) + 1)
                self._buckets[key] = (tokens, now)
                raise ApiError(
                    Code.RATE_LIMITED,
                    f"rate limit of {self.per_minute} tasks per minute exceeded; retry in {retry} s",
                    headers={"Retry-After": str(retry)},
                )
            self._buckets[key] = (tokens - 1.0, now)
