"""Result files and uploads: signed, expiring links that need no Authorization header."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import BinaryIO

from fastapi import APIRouter, Query
from fastapi.responses import Response, StreamingResponse

from photo_eraser.api.deps import Blobs, Signer
from photo_eraser.api.errors import ApiError, Code
from photo_eraser.api.openapi import errors
from photo_eraser.imaging import result_content_type
from photo_eraser.storage import UPLOADS, UrlSigner
from photo_eraser.uploads import UPLOAD_TYPES

router = APIRouter(tags=["results"])

PATH = "/v3/pic/rw/files/{key:path}"
_FILE = {"schema": {"type": "string", "format": "binary"}}
_ERRORS = errors(
    Code.BAD_PARAMETER, Code.LINK_EXPIRED, Code.NOT_FOUND, Code.INTERNAL, Code.UNAVAILABLE
)
Expires = Query(0, description="expiry of the link, seconds since the epoch")
Signature = Query("", description="HMAC-SHA256 signature of the key and expiry")


# GET and HEAD are two operations (two ids), so a generated client gets a method for each.
@router.get(
    PATH,
    response_class=StreamingResponse,
    operation_id="get_result_file",
    responses={
        200: {
            "description": "the result image, in the format of its input (BMP becomes PNG), "
            "or an upload, in its own format",
            "content": {"image/png": _FILE, "image/jpeg": _FILE, "image/bmp": _FILE},
        },
        **_ERRORS,
    },
)
async def get_file(
    key: str, blobs: Blobs, signer: Signer, expires: int = Expires, signature: str = Signature
) -> StreamingResponse:
    """A result image or an upload. The link is signed and expires; no Authorization header
    needed."""
    _check_signature(signer, key, expires, signature)
    # Opened now: deleted after this (retention), it still streams to the end.
    blob = await asyncio.to_thread(blobs.open, key)
    if blob is None:
        raise ApiError(Code.NOT_FOUND, "file no longer exists")
    # Whole files only (no Range): results are a few MB, and every error stays an envelope.
    return StreamingResponse(
        _chunks(blob.file), media_type=_content_type(key), headers=_headers(blob.size)
    )


@router.head(
    PATH,
    response_class=Response,
    operation_id="head_result_file",
    responses={
        200: {"description": "the headers of the image (type and size), no body"},
        **_ERRORS,
    },
)
async def head_file(
    key: str, blobs: Blobs, signer: Signer, expires: int = Expires, signature: str = Signature
) -> Response:
    """The headers of `get_file` (type and size), without reading the image."""
    _check_signature(signer, key, expires, signature)
    size = await asyncio.to_thread(blobs.size, key)
    if size is None:
        raise ApiError(Code.NOT_FOUND, "file no longer exists")
    return Response(media_type=_content_type(key), headers=_headers(size))


def _check_signature(signer: UrlSigner, key: str, expires: int, signature: str) -> None:
    if not signer.verify(key, expires, signature):
        raise ApiError(Code.LINK_EXPIRED, "link is invalid or has expired")


def _content_type(key: str) -> str:
    if key.startswith(UPLOADS + "/"):
        return UPLOAD_TYPES.get(key.rpartition(".")[2], "application/octet-stream")
    return result_content_type(key)


def _headers(size: int) -> dict[str, str]:
    # nosniff: an upload is served from the studio's origin; checked as an image by content,
    # it must never be read as anything else.
    return {
        "Content-Length": str(size),
        "Cache-Control": "private",
        "X-Content-Type-Options": "nosniff",
    }


async def _chunks(f: BinaryIO, chunk: int = 1 << 20) -> AsyncIterator[bytes]:
    with f:
        while data := await asyncio.to_thread(f.read, chunk):
            yield data
