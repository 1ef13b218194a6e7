"""A Python client of the Photo Eraser API (the seed contract plus this server's upload and
close extensions): ``Client`` (blocking) and ``AsyncClient`` (asyncio) on httpx, sharing one
implementation of the wire format (``_wire``); ``verify_webhook`` for a callback receiver.
See docs/sdk.md."""

from photo_eraser.client._async import AsyncClient, AsyncTask
from photo_eraser.client._errors import (
    NO_ANSWER,
    AuthError,
    BadRequestError,
    NotFoundError,
    PhotoEraserError,
    RateLimitedError,
    ServerError,
    TimeoutExceeded,
)
from photo_eraser.client._models import Erased, ImageResult, ImageStatus, TaskResult, TaskStatus
from photo_eraser.client._sync import Client, Task
from photo_eraser.client._webhooks import (
    WebhookEvent,
    WebhookVerificationError,
    verify_webhook,
)
from photo_eraser.client._wire import RetryPolicy, Source

__all__ = [
    "NO_ANSWER",
    "AsyncClient",
    "AsyncTask",
    "AuthError",
    "BadRequestError",
    "Client",
    "Erased",
    "ImageResult",
    "ImageStatus",
    "NotFoundError",
    "PhotoEraserError",
    "RateLimitedError",
    "RetryPolicy",
    "ServerError",
    "Source",
    "Task",
    "TaskResult",
    "TaskStatus",
    "TimeoutExceeded",
    "WebhookEvent",
    "WebhookVerificationError",
    "verify_webhook",
]
