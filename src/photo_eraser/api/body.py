"""Reading and parsing the JSON body of a create request, with our own 4xx for each way it
can be wrong: too large or too slow to arrive, not UTF-8 JSON, nested too deep, too many
values, a key given twice, a NaN, not an object. One reading of the bytes: a proxy in front
and this server cannot disagree on what the request says."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Request
from starlette.requests import ClientDisconnect

from photo_eraser.api.errors import ApiError, Code

MAX_DEPTH = 32
"""Deepest nesting of arrays/objects accepted. The request has two levels; the limit only keeps
a hostile body from costing recursion (json.loads raises RecursionError near 1000 levels)."""
MAX_VALUES = 4096
"""Commas and brackets accepted: a request of 20 URLs has a few dozen. Past it, parsing values
the request then ignores would cost seconds of CPU (9 MB of ``[],`` takes 1.4 s)."""


class BodyBudget:
    """Bytes of request bodies held at once, over all requests: each body is bounded by
    ``PHOTO_ERASER_MAX_BODY_BYTES``, and this bounds their sum, so many clients uploading
    10 MB masks at once get 503 rather than the server's memory. One key may hold a quarter
    of it (at least one body), so a client trickling bodies cannot shut the others out.
    Counted as bytes arrive, so a slow sender holds only what it has sent. The event loop's
    thread only: no lock."""

    KEY_SHARE = 4

    def __init__(self, max_bytes: int, one_body: int) -> None:
        self.max_bytes = max_bytes
        self.per_key = max(max_bytes // self.KEY_SHARE, one_body)
        self.held = 0
        self._by_key: dict[str, int] = {}

    def take(self, size: int, key: str) -> None:
        mine = self._by_key.get(key, 0)
        if mine + size > self.per_key:
            raise BodyBudgetFull(
                f"this key is sending {self.per_key >> 20} MB of request bodies at once"
            )
        if self.held + size > self.max_bytes:
            raise BodyBudgetFull(
                f"{self.max_bytes >> 20} MB of request bodies are being received at once"
            )
        self.held += size
        self._by_key[key] = mine + size

    def give_back(self, size: int, key: str) -> None:
        self.held -= size
        left = self._by_key.get(key, 0) - size
        if left > 0:
            self._by_key[key] = left
        else:
            self._by_key.pop(key, None)


class BodyBudgetFull(Exception):
    """Taking more body bytes would pass the budget; the request should be retried."""


@asynccontextmanager
async def read_body(
    request: Request, limit: int, timeout: float, budget: BodyBudget, key: str
) -> AsyncIterator[bytes]:
    """The body, read at most ``limit`` bytes within ``timeout`` seconds and counted in
    ``budget`` (for ``key``) until the block ends. A longer body (declared or streamed) is a 413, a slower
    one a 408, one cut off by the client a 400; past the budget, `BodyBudgetFull`."""
    chunks: list[bytes] = []
    taken = 0
    try:
        await _receive(request, chunks, limit, timeout, lambda n: budget.take(n, key))
        taken = sum(len(c) for c in chunks)
        body = b"".join(chunks)
        chunks.clear()  # one copy held, as counted
        yield body
    finally:
        budget.give_back(taken + sum(len(c) for c in chunks), key)


async def _receive(
    request: Request,
    chunks: list[bytes],
    limit: int,
    timeout: float,
    take: Callable[[int], None],
) -> None:
    too_large = ApiError(Code.BODY_TOO_LARGE, f"request body exceeds {limit} bytes")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise too_large
                take(len(chunk))
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(
            Code.REQUEST_TIMEOUT, f"request body not received within {timeout:g} s"
        ) from None
    except ClientDisconnect:  # nobody will read the answer; it is not our error either
        raise ApiError(Code.MALFORMED_JSON, "the client closed the connection mid-body") from None


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The body as a dict; 400 if it is not one UTF-8 JSON object with unique keys."""
    if _nesting_depth(raw) > MAX_DEPTH:
        raise ApiError(Code.MALFORMED_JSON, f"body is nested deeper than {MAX_DEPTH} levels")
    if raw.count(b",") + raw.count(b"[") + raw.count(b"{") > MAX_VALUES:
        raise ApiError(Code.MALFORMED_JSON, f"body has more than {MAX_VALUES} values")
    try:
        # Decoded here, strictly: json.loads(bytes) would also take UTF-16 and UTF-32.
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(Code.MALFORMED_JSON, "body is not UTF-8") from None
    try:
        body = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constants)
    except _DuplicateKey as exc:
        raise ApiError(
            Code.MALFORMED_JSON, f"body has the key {exc.key!r} more than once"
        ) from None
    except _NotJson as exc:
        raise ApiError(Code.MALFORMED_JSON, f"body is not valid JSON: {exc}") from None
    except (ValueError, RecursionError):  # a BOM is a ValueError too
        raise ApiError(Code.MALFORMED_JSON, "body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(Code.MALFORMED_JSON, "body must be a JSON object")
    return body


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


class _NotJson(ValueError):
    """Python's json module accepts these; JSON (RFC 8259) does not."""


def _no_constants(name: str) -> Any:
    raise _NotJson(f"{name} is not a JSON value")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` refusing a repeated key: JSON parsers disagree on which one wins,
    so a proxy and this server could read two different requests from the same bytes."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _nesting_depth(raw: bytes) -> int:
    """Bracket nesting outside strings, a linear scan that cannot recurse: above `MAX_DEPTH`
    once it goes deeper than that (it stops there), otherwise at most `MAX_DEPTH`."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return 0  # too few brackets to be too deep: skip the scan (most requests)
    depth = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > MAX_DEPTH:
                return depth
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return depth
