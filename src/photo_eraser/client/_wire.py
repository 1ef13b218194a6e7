"""The wire format, without I/O: the requests the SDK sends, the answers it parses, and when
and how long to wait before a retry or the next poll. ``Client`` and ``AsyncClient`` only carry
these requests over httpx and sleep; everything they decide is decided here, once."""

from __future__ import annotations

import base64
import email.utils
import json
import os
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from photo_eraser.client._errors import (
    NO_ANSWER,
    AuthError,
    BadRequestError,
    NotFoundError,
    PhotoEraserError,
    RateLimitedError,
    ServerError,
)
from photo_eraser.client._models import ImageResult, ImageStatus, TaskResult, TaskStatus

CREATE_PATH = "/v3/pic/rw/batch"
RESULT_PATH = "/v3/pic/rw/result/{task_id}"
CLOSE_PATH = "/v3/pic/rw/close/{task_id}"
UPLOAD_PATH = "/v3/pic/rw/upload"
MAX_CALLBACK_URL = 2048
"""The server's limit on a ``callback_url``."""

Source = str | os.PathLike[str] | bytes
"""An image or mask as a caller gives it: an ``http(s)`` URL; a local file (a ``Path``, or a
``str`` naming an existing file) or its bytes, uploaded first; for the mask also base64 or a
``data:`` URI, sent as they are, or ``"auto"``: the server finds the watermark the images
share (an extension)."""


@dataclass(frozen=True)
class Request:
    """One HTTP request to make. ``url`` is a path under the base URL, or absolute (a result
    link, fetched without credentials). ``replayable``: whether sending it twice is harmless,
    so a 500 or a lost answer may be retried (a create is not: it could make two tasks)."""

    method: str
    url: str
    json: dict[str, Any] | None = None
    content: bytes | None = None
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    replayable: bool = True


def basic_auth(appkey: str, appsecret: str) -> str:
    """The contract's ``Authorization`` value: ``Basic base64(appkey:appsecret)``."""
    return "Basic " + base64.b64encode(f"{appkey}:{appsecret}".encode()).decode()


class Wire:
    """Builds the requests of one key."""

    def __init__(self, appkey: str, appsecret: str) -> None:
        self._auth = {"Authorization": basic_auth(appkey, appsecret)}

    def create(
        self,
        images: Sequence[str],
        mask: str,
        priority: int,
        engine: str | None,
        extensions: Mapping[str, Any],
    ) -> Request:
        body: dict[str, Any] = {"images": list(images), "mask": mask, "priority": priority}
        if engine is not None:
            body["engine"] = engine
        _check_callback_url(extensions.get("callback_url"))
        body.update(extensions)
        headers = {**self._auth, "Content-Type": "application/json"}
        return Request("POST", CREATE_PATH, json=body, headers=headers, replayable=False)

    def result(self, task_id: str) -> Request:
        return Request("GET", RESULT_PATH.format(task_id=task_id), headers=dict(self._auth))

    def close(self, task_id: str) -> Request:
        """This server's close extension (the seed contract has no such call)."""
        return Request("POST", CLOSE_PATH.format(task_id=task_id), headers=dict(self._auth))

    def upload(self, body: bytes, kind: str) -> Request:
        # Replayable: a second copy of an upload only takes space until its TTL.
        headers = {**self._auth, "Content-Type": "application/octet-stream"}
        return Request("POST", UPLOAD_PATH, content=body, params={"kind": kind}, headers=headers)

    @staticmethod
    def download(url: str) -> Request:
        """A result link is signed: it is fetched without credentials (it may be on another
        host, an object store)."""
        return Request("GET", url)


def _check_callback_url(url: object) -> None:
    """A ``callback_url`` the server would refuse for its form is refused before sending (its
    address is the server's to judge)."""
    if url is None:
        return
    if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
        raise BadRequestError(NO_ANSWER, f"callback_url: not an http(s) URL: {url!r}")
    if len(url) > MAX_CALLBACK_URL:
        raise BadRequestError(NO_ANSWER, f"callback_url: longer than {MAX_CALLBACK_URL} characters")


def parse_envelope(status_code: int, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    """``data`` of a successful answer; otherwise raises the error the answer describes."""
    try:
        envelope = json.loads(body)
        code, msg = int(envelope["code"]), str(envelope["msg"])
        data = envelope.get("data") or {}
    except (ValueError, KeyError, TypeError):
        code, msg, data = status_code * 100, body[:200].decode("utf-8", "replace"), {}
    if status_code == 200 and code == 0:
        if not isinstance(data, dict):
            raise ServerError(50001, "answer without a data object", status_code)
        return data
    raise error_for(status_code, code, msg, headers)


def error_for(
    status_code: int, code: int, msg: str, headers: Mapping[str, str]
) -> PhotoEraserError:
    """The exception of one refused request."""
    if status_code == 401:
        return AuthError(code, msg, status_code)
    if status_code == 429:
        return RateLimitedError(code, msg, status_code, parse_retry_after(headers))
    if status_code == 404:
        return NotFoundError(code, msg, status_code)
    if status_code >= 500 or status_code < 400:
        return ServerError(code, msg, status_code)
    return BadRequestError(code, msg, status_code)


def parse_task_id(data: Mapping[str, Any]) -> str:
    return str(_field(data, "task_id"))


def parse_upload(data: Mapping[str, Any]) -> str:
    return str(_field(data, "url"))


def parse_closed(data: Mapping[str, Any]) -> TaskStatus:
    try:
        return TaskStatus(str(_field(data, "status")))
    except ValueError as exc:
        raise ServerError(50001, f"unexpected close answer: {exc}", 200) from exc


def _field(data: Mapping[str, Any], name: str) -> Any:
    if name not in data:
        raise ServerError(50001, f"unexpected answer: no data.{name}", 200)
    return data[name]


def parse_result(task_id: str, data: Mapping[str, Any]) -> TaskResult:
    try:
        return _parse_result(task_id, data)
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise ServerError(50001, f"unexpected result answer: {exc!r}", 200) from exc


def _parse_result(task_id: str, data: Mapping[str, Any]) -> TaskResult:
    images = []
    for index, item in enumerate(data.get("list") or []):
        share = item.get("recovered_share")
        images.append(
            ImageResult(
                index=index,
                status=ImageStatus(str(item.get("status", "1"))),
                url=str(item.get("image_result") or ""),
                reason=str(item.get("reason") or ""),
                method=item.get("method"),
                recovered_share=None if share is None else float(share),
            )
        )
    return TaskResult(
        task_id=task_id,
        status=TaskStatus(str(data["status"])),
        wait_time=_seconds(data.get("wait_time")),
        images=images,
        detected_mask=data.get("detected_mask") or None,
        raw=dict(data),
    )


def _seconds(value: Any) -> float:
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        return 0.0


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """``Retry-After`` in seconds (RFC 9110: delay-seconds or an HTTP date), if present."""
    value = headers.get("retry-after") or headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass(frozen=True)
class RetryPolicy:
    """Which failures are retried, how often, and after how long.

    Retried: 429 and 503 (the server did not carry the request out) on every request; other
    5xx and a lost answer (read timeout, reset) only on replayable ones; a connection that
    could not be made on every request. The wait is the server's ``Retry-After`` (plus up to
    10 % jitter) or, without one, exponential backoff with full jitter from ``backoff``.
    A ``Retry-After`` longer than ``max_wait`` is not waited for: the error is raised."""

    max_retries: int = 4
    backoff: float = 0.5
    max_wait: float = 60.0

    def delay(
        self,
        attempt: int,
        request: Request,
        *,
        status_code: int | None = None,
        retry_after: float | None = None,
        connect_failed: bool = False,
        rng: random.Random | None = None,
    ) -> float | None:
        """Seconds to wait before retry number ``attempt + 1`` (``attempt`` counts from 0),
        or ``None``: give up and raise. Give ``status_code`` for an answer, else
        ``connect_failed`` for a transport error."""
        if attempt >= self.max_retries:
            return None
        if status_code is not None:
            retry = status_code in (429, 503) or (status_code >= 500 and request.replayable)
        else:
            retry = connect_failed or request.replayable
        if not retry:
            return None
        draw = rng.random() if rng is not None else random.random()
        if retry_after is not None:
            if retry_after > self.max_wait:
                return None
            return retry_after * (1 + 0.1 * draw)
        return min(self.max_wait, self.backoff * 2**attempt) * (0.5 + 0.5 * draw)


def poll_delay(
    wait_time: float,
    *,
    min_interval: float,
    max_interval: float,
    rng: random.Random | None = None,
) -> float:
    """Seconds before the next poll: the server's ``wait_time`` kept within the caller's
    bounds, stretched by up to 20 % so that clients started together do not poll together."""
    base = min(max(wait_time, min_interval), max_interval)
    draw = rng.random() if rng is not None else random.random()
    return base * (1 + 0.2 * draw)


AUTO_MASK = "auto"
"""``mask`` value asking the server to find the watermark the images share (an extension)."""


def to_upload(source: Source, kind: str, name: str) -> Path | bytes | None:
    """What to upload for ``source`` (a file's path, or the bytes), or ``None``: send it as
    it is. An image that is neither an ``http(s)`` URL nor an existing file is refused here
    (``name`` is the field, ``images.0``), before anything is uploaded."""
    if isinstance(source, bytes):
        return source
    if kind == "mask" and source == AUTO_MASK:  # the server finds the mask in the batch
        return None
    path = local_path(source, mask=kind == "mask")
    if path is not None:
        return path
    if kind != "mask" and not str(source)[:8].lower().startswith(("http://", "https://")):
        raise BadRequestError(NO_ANSWER, f"{name}: not an http(s) URL nor a file: {source!r}")
    return None


def source_name(source: Source) -> str:
    """How a source is named in result file names (bytes have no name)."""
    return "" if isinstance(source, bytes) else str(source)


def local_path(source: Source, *, mask: bool = False) -> Path | None:
    """The local file ``source`` names, or ``None`` if it is to be sent as it is (a URL; for
    the mask also base64 or a ``data:`` URI)."""
    if isinstance(source, bytes):
        return None
    if isinstance(source, os.PathLike):
        return Path(source)
    lowered = source[:8].lower()
    if lowered.startswith(("http://", "https://", "data:")):
        return None
    if mask and len(source) > 4096:  # base64 of an image, not a file name
        return None
    path = Path(source)
    try:
        return path if path.is_file() else None
    except OSError:  # a name too long for the filesystem
        return None


def result_names(sources: Sequence[str], results: Sequence[ImageResult]) -> list[str | None]:
    """A file name for each downloadable result, in input order (``None`` for the others):
    the input's stem (a local file's, or the last segment of its URL) with the result's
    extension, numbered where two inputs share a stem."""
    stems = [_stem(source, index) for index, source in enumerate(sources)]
    names: list[str | None] = []
    for index, result in enumerate(results):
        if not result.ok:
            names.append(None)
            continue
        stem = stems[index] if index < len(stems) else f"image-{index}"
        if stems.count(stem) > 1:
            stem = f"{stem}-{index}"
        suffix = PurePosixPath(urlsplit(result.url).path).suffix or ".bin"
        names.append(stem + suffix)
    return names


def _stem(source: str, index: int) -> str:
    if source.lower().startswith(("http://", "https://")):
        segment = unquote(PurePosixPath(urlsplit(source).path).name)
        stem = PurePosixPath(segment).stem
    else:
        stem = Path(source).stem
    stem = "".join(c for c in stem if c.isalnum() or c in " -_.").strip(" .")
    return stem or f"image-{index}"
