"""What ``Client`` and ``AsyncClient`` share around httpx: turning a ``Request`` into httpx's
arguments and a transport failure into a retry decision or an error."""

from __future__ import annotations

from typing import Any

import httpx

from photo_eraser.client._errors import NO_ANSWER, PhotoEraserError, ServerError, TimeoutExceeded
from photo_eraser.client._wire import Request, RetryPolicy, parse_envelope, parse_retry_after

DEFAULT_TIMEOUT = 30.0
"""Seconds a connection, a read or a write may take (httpx's per-operation timeout)."""


def httpx_args(request: Request) -> dict[str, Any]:
    return {
        "method": request.method,
        "url": request.url,
        "json": request.json,
        "content": request.content,
        "params": request.params or None,
        "headers": request.headers,
    }


def on_transport_error(
    policy: RetryPolicy, attempt: int, request: Request, exc: httpx.TransportError
) -> tuple[float | None, PhotoEraserError]:
    """The wait before the next try (``None``: give up) and the error to raise then."""
    connect_failed = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
    delay = policy.delay(attempt, request, connect_failed=connect_failed)
    what = f"{request.method} {request.url}"
    error: PhotoEraserError
    if isinstance(exc, httpx.TimeoutException):
        error = TimeoutExceeded(NO_ANSWER, f"{what}: timed out ({type(exc).__name__})")
    else:
        error = ServerError(NO_ANSWER, f"{what}: {type(exc).__name__}: {exc}")
    return delay, error


def on_answer(
    policy: RetryPolicy, attempt: int, request: Request, response: httpx.Response
) -> float | None:
    """The wait before the next try after a refused request (``None``: do not retry)."""
    return policy.delay(
        attempt,
        request,
        status_code=response.status_code,
        retry_after=parse_retry_after(response.headers),
    )


def data_of(response: httpx.Response) -> dict[str, Any]:
    return parse_envelope(response.status_code, response.headers, response.content)


def content_of(response: httpx.Response) -> bytes:
    """A download's bytes, or the error its answer describes."""
    if response.status_code == 200:
        return response.content
    parse_envelope(response.status_code, response.headers, response.content)
    raise ServerError(response.status_code * 100, "unexpected answer", response.status_code)
