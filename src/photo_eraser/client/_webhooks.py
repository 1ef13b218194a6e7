"""Checking a callback on the receiving side: its signature, its age, and what it says."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from photo_eraser.client._models import TaskResult
from photo_eraser.client._wire import parse_result

SIGNATURE_HEADER = "X-PhotoEraser-Signature"
DELIVERY_HEADER = "X-PhotoEraser-Delivery"
ATTEMPT_HEADER = "X-PhotoEraser-Attempt"


class WebhookVerificationError(ValueError):
    """The callback is not signed with the secret, is too old, or is not one at all: answer it
    with a 4xx and do not act on it."""


@dataclass(frozen=True)
class WebhookEvent:
    """A verified callback. ``delivery_id`` is the same on every attempt of one task's
    callback: a receiver that has handled it drops the repeat (delivery is at least once)."""

    delivery_id: str
    attempt: int
    timestamp: int
    result: TaskResult


def verify_webhook(
    secret: str | Sequence[str],
    headers: Mapping[str, str],
    body: bytes,
    tolerance: float = 300,
    now: float | None = None,
) -> WebhookEvent:
    """Check a callback as received (``headers`` in any case, ``body`` the raw bytes) against
    the key's webhook secret: ``X-PhotoEraser-Signature: t=<unix>,v1=<hex>`` must carry the
    HMAC-SHA-256 of ``"<t>." + body`` and ``t`` be within ``tolerance`` seconds of ``now``.
    ``secret`` may be several (old and new, while rotating). Raises `WebhookVerificationError`."""
    lower = {k.lower(): v for k, v in headers.items()}
    header = lower.get(SIGNATURE_HEADER.lower())
    if not header:
        raise WebhookVerificationError(f"no {SIGNATURE_HEADER} header")
    timestamp, signatures = _parse_signature(header)
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance:
        raise WebhookVerificationError(
            f"signed {int(now - timestamp)} s from now, more than {tolerance:g} s"
        )
    secrets = [secret] if isinstance(secret, str) else list(secret)
    signed = f"{timestamp}.".encode() + body
    expected = [hmac.new(s.encode(), signed, hashlib.sha256).hexdigest() for s in secrets]
    if not any(hmac.compare_digest(e, got) for e in expected for got in signatures):
        raise WebhookVerificationError("the signature does not match (wrong secret or body)")
    try:
        data = json.loads(body)["data"]
        result = parse_result(str(data["task_id"]), data)
        attempt = int(lower.get(ATTEMPT_HEADER.lower(), "1"))
    except (ValueError, KeyError, TypeError) as exc:
        raise WebhookVerificationError(f"signed, but not a callback body: {exc!r}") from None
    return WebhookEvent(lower.get(DELIVERY_HEADER.lower(), ""), attempt, timestamp, result)


def _parse_signature(header: str) -> tuple[int, list[str]]:
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isdigit():
            timestamp = int(value)
        elif name == "v1":
            signatures.append(value)
    if timestamp is None or not signatures:
        raise WebhookVerificationError(f"malformed {SIGNATURE_HEADER}: {header[:100]!r}")
    return timestamp, signatures
