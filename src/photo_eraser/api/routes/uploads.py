"""Uploads (an extension of the seed API): one image or mask per request, kept for the result
TTL, answered with a signed link that tasks of the same key can name. See `photo_eraser.uploads`."""

from __future__ import annotations

import asyncio
import logging
import time

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from photo_eraser.api.auth import rate_limited
from photo_eraser.api.body import BodyBudgetFull, read_body
from photo_eraser.api.deps import AuthHeader, ServiceDep, caller
from photo_eraser.api.errors import ApiError, Code, envelope
from photo_eraser.api.multipart import FIELD, form_file
from photo_eraser.api.openapi import errors
from photo_eraser.api.schemas import Uploaded, UploadedData
from photo_eraser.disk import DISK_FULL_REASON, is_disk_full
from photo_eraser.imaging import ImageError, ImageLimits, MaskError
from photo_eraser.runtime import Runtime
from photo_eraser.sizes import format_size
from photo_eraser.uploads import UploadInfo, UploadKind, check_upload, new_upload_key

log = logging.getLogger(__name__)
router = APIRouter(tags=["uploads"])

MULTIPART_OVERHEAD = 64 << 10
"""Bytes a multipart body may hold beyond the file (boundaries, part headers, small fields)."""
DECODES = 2
"""Uploads checked (decoded) at once; the others wait on the event loop, holding no thread."""

_FILE = {"schema": {"type": "string", "format": "binary"}}
_BODY = {
    "required": True,
    "description": "the file as the raw body (any Content-Type: the format is read from the "
    f"content), or multipart/form-data with the file in the field `{FIELD}`",
    "content": {
        "image/png": _FILE,
        "image/jpeg": _FILE,
        "image/bmp": _FILE,
        "application/octet-stream": _FILE,
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {FIELD: {"type": "string", "format": "binary"}},
                "required": [FIELD],
            }
        },
    },
}


class UploadChecks:
    """The decodes of uploads in flight, bounded (each may briefly take 150 MB)."""

    def __init__(self) -> None:
        self.decodes = asyncio.Semaphore(DECODES)


@router.post(
    "/v3/pic/rw/upload",
    response_model=Uploaded,
    responses=errors(
        Code.BAD_PARAMETER,
        Code.MISSING_CREDENTIALS,
        Code.INVALID_CREDENTIALS,
        Code.REQUEST_TIMEOUT,
        Code.BODY_TOO_LARGE,
        Code.RATE_LIMITED,
        Code.INTERNAL,
        Code.UNAVAILABLE,
        Code.BUSY,
        Code.DISK_FULL,
    ),
    openapi_extra={"requestBody": _BODY},
)
async def upload_file(
    request: Request,
    service: ServiceDep,
    authorization: AuthHeader = None,
    kind: UploadKind = Query(  # noqa: B008 - FastAPI's way to describe a parameter
        UploadKind.IMAGE,
        description="what the file is for: `image` (the input limits apply) or `mask` "
        "(the mask rules apply)",
    ),
) -> JSONResponse:
    """Extension: upload one image or mask. Returns a signed link to it, usable in `images`
    or `mask` of this key's tasks until `expires_at` (the result TTL)."""
    settings = service.settings
    appkey = await caller(service.store, authorization)  # before the body: no budget without
    wait = await request.app.state.limiter.check(f"upload:{appkey}")
    if wait:
        raise rate_limited(settings.rate_limit_per_minute, wait, "uploads")
    content_type = request.headers.get("content-type", "")
    multipart = content_type.lower().startswith("multipart/")
    limit = settings.max_image_bytes + (MULTIPART_OVERHEAD if multipart else 0)
    checks: UploadChecks = request.app.state.upload_checks
    try:
        async with read_body(
            request,
            limit,
            settings.body_timeout_seconds,
            request.app.state.admission.bodies,
            appkey,
        ) as raw:
            data = form_file(raw, content_type) if multipart else raw
            info = await _check(service, data, kind, checks)
            key = new_upload_key(appkey, info)
            await _put(service, key, data)
    except BodyBudgetFull as exc:
        raise _retry(Code.BUSY, f"server busy: {exc}", 1) from None
    expires = int(time.time()) + settings.result_ttl_seconds
    base = (settings.public_url or str(request.base_url)).rstrip("/")
    log.info("upload stored", extra={"key": key, "format": info.format, "kind": str(kind)})
    data_out = UploadedData(
        url=service.signed_link(key, expires, base),
        expires_at=expires,
        format=info.format,
        width=info.width,
        height=info.height,
    )
    return envelope(Code.OK, data=data_out.model_dump())


async def _check(
    service: Runtime, data: bytes, kind: UploadKind, checks: UploadChecks
) -> UploadInfo:
    settings = service.settings
    if not data:
        raise ApiError(Code.BAD_PARAMETER, "body: empty; send the image file as the body")
    if len(data) > settings.max_image_bytes:  # a multipart body may pass its own limit
        msg = f"the file exceeds {format_size(settings.max_image_bytes)}"
        raise ApiError(Code.BODY_TOO_LARGE, msg)
    disk = service.disk.state()
    if disk.low:
        raise _retry(Code.DISK_FULL, f"not accepting uploads: {disk.describe()}", 60)
    limits = ImageLimits.from_settings(settings)
    try:
        async with checks.decodes:
            return await asyncio.to_thread(check_upload, data, kind, limits, service.masks)
    except (ImageError, MaskError) as exc:
        raise ApiError(Code.BAD_PARAMETER, f"{kind}: {exc}") from None


async def _put(service: Runtime, key: str, data: bytes) -> None:
    """Store the upload; a store that is away is the app's 503 (`BlobStoreError`)."""
    try:
        await asyncio.to_thread(service.blobs.put, key, data)
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        raise _retry(Code.DISK_FULL, f"{DISK_FULL_REASON}: the upload was not stored", 60) from None


def _retry(code: Code, msg: str, seconds: int) -> ApiError:
    return ApiError(code, f"{msg}; retry in {seconds} s", headers={"Retry-After": str(seconds)})
