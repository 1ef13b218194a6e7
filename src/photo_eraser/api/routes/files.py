"""Result files: signed, expiring links that need no Authorization header."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from photo_eraser.api.deps import ServiceDep
from photo_eraser.api.errors import ApiError, Code
from photo_eraser.api.openapi import errors

router = APIRouter(tags=["results"])

_MEDIA = {".jpg": "image/jpeg", ".png": "image/png"}
_FILE = {"schema": {"type": "string", "format": "binary"}}
_RESPONSES = {
    200: {
        "description": "the result image, in the format of its input (BMP becomes PNG)",
        "content": {"image/png": _FILE, "image/jpeg": _FILE},
    },
    **errors(Code.BAD_PARAMETER, Code.LINK_EXPIRED, Code.NOT_FOUND),
}
Expires = Query(0, description="expiry of the link, seconds since the epoch")
Signature = Query("", description="HMAC-SHA256 signature of the key and expiry")


# GET and HEAD are two operations (two ids), so a generated client gets a method for each.
_ROUTE: dict[str, Any] = {
    "path": "/v3/pic/rw/files/{key:path}",
    "response_class": StreamingResponse,
    "responses": _RESPONSES,
}


@router.get(**_ROUTE, operation_id="get_result_file")
async def get_file(
    key: str, service: ServiceDep, expires: int = Expires, signature: str = Signature
) -> StreamingResponse:
    """A result image. The link is signed and expires; no Authorization header needed."""
    path = _checked_path(service, key, expires, signature)
    # Whole files only (no Range): results are a few MB, and every error stays an envelope.
    return StreamingResponse(
        _file_chunks(path),
        media_type=_MEDIA.get(path.suffix, "application/octet-stream"),
        headers={"Content-Length": str(path.stat().st_size), "Cache-Control": "private"},
    )


@router.head(**_ROUTE, operation_id="head_result_file")
async def head_file(
    key: str, service: ServiceDep, expires: int = Expires, signature: str = Signature
) -> StreamingResponse:
    """The headers of `get_file` (type and size), without the image."""
    return await get_file(key, service, expires, signature)


def _checked_path(service: ServiceDep, key: str, expires: int, signature: str) -> Path:
    if not service.signer.verify(key, expires, signature):
        raise ApiError(Code.LINK_EXPIRED, "result link is invalid or has expired")
    path = service.blobs.path(key)
    if path is None:
        raise ApiError(Code.NOT_FOUND, "result no longer exists")
    return path


async def _file_chunks(path: Path, chunk: int = 1 << 20) -> AsyncIterator[bytes]:
    with path.open("rb") as f:
        while data := await asyncio.to_thread(f.read, chunk):
            yield data
