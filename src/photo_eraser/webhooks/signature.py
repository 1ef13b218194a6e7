"""How a callback is signed: HMAC-SHA-256, keyed with the key's webhook secret, over
``"<t>." + body``, where ``t`` is the Unix time of the attempt. The scheme of Stripe's webhooks
(``t=<unix>,v1=<hex>``): the timestamp inside the signed text bounds replays, and ``v1`` names
the scheme so a later one can be sent beside it. The SDK checks it (`client.verify_webhook`)."""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-PhotoEraser-Signature"
"""``t=<unix seconds>,v1=<hex HMAC-SHA-256 of "<t>." + body>``."""
DELIVERY_HEADER = "X-PhotoEraser-Delivery"
"""The delivery's id: the same on every attempt of one task's callback (drop repeats)."""
ATTEMPT_HEADER = "X-PhotoEraser-Attempt"
"""1 on the first attempt, 2 on the first retry, ..."""


def signature_header(secret: str, timestamp: int, body: bytes) -> str:
    """The value of `SIGNATURE_HEADER` for ``body`` sent at ``timestamp``."""
    signed = f"{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"
