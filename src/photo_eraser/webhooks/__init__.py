"""Callbacks (the ``callback_url`` extension): the result POSTed to the client's URL once its
task has a final status, signed, retried with backoff, at least once. See docs/webhooks.md."""

from photo_eraser.webhooks.deliverer import Deliverer, retry_at
from photo_eraser.webhooks.sender import Answer, WebhookSender
from photo_eraser.webhooks.signature import (
    ATTEMPT_HEADER,
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    signature_header,
)

__all__ = [
    "ATTEMPT_HEADER",
    "DELIVERY_HEADER",
    "SIGNATURE_HEADER",
    "Answer",
    "Deliverer",
    "WebhookSender",
    "retry_at",
    "signature_header",
]
