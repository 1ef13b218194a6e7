"""The studio: a web page for the batch API (upload, paint one mask or let the service find
the watermark, watch, compare).

The page and its assets ship in the package (``photo_eraser/studio/static``) and are served
from a fixed table with explicit MIME types: the platform's ``mimetypes`` registry (Windows
reads it from the registry and often says ``text/plain`` for ``.js``) is never consulted.
A Content-Security-Policy keeps the page to this origin: no CDN, no external request.
None of these routes is part of the API's OpenAPI document.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from urllib.parse import urlsplit

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from photo_eraser.api.auth import authenticate
from photo_eraser.api.deps import AuthHeader, ServiceDep, Store
from photo_eraser.api.errors import ApiError, Code, envelope
from photo_eraser.config import Settings
from photo_eraser.engines.registry import ENGINE_NAMES
from photo_eraser.imaging.detect import DetectParams

router = APIRouter(include_in_schema=False)

ASSETS: dict[str, str] = {
    "studio.js": "text/javascript; charset=utf-8",
    "zip.js": "text/javascript; charset=utf-8",
    "studio.css": "text/css; charset=utf-8",
}
"""Every file under ``/studio/static/`` and its type; anything else is a 404."""

_LIMITS_PLACEHOLDER = "{{STUDIO_CONFIG}}"


def _csp(settings: Settings) -> str:
    # Result links point elsewhere only when they are presigned by an object store's public
    # endpoint; that origin (and nothing else) may then be shown and fetched.
    extra = ""
    if settings.s3_public_url:
        parts = urlsplit(settings.s3_public_url)
        extra = f" {parts.scheme}://{parts.netloc}"
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; "
        f"img-src 'self' blob: data:{extra}; connect-src 'self'{extra}; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


def _headers(settings: Settings) -> dict[str, str]:
    return {
        "Content-Security-Policy": _csp(settings),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }


@cache
def _asset(name: str) -> bytes:
    return resources.files("photo_eraser.studio").joinpath("static", name).read_bytes()


def _config(settings: Settings) -> str:
    """What the page needs to check files before sending them: the service's own limits."""
    config = {
        "minSide": settings.min_side,
        "maxSide": settings.max_side,
        "maxAspect": settings.max_aspect,
        "maxImageBytes": settings.max_image_bytes,
        "maxBodyBytes": settings.max_body_bytes,
        "engines": list(ENGINE_NAMES),
        # The fewest images "mask": "auto" takes: the page says so before sending.
        "autoMinImages": DetectParams().min_images,
    }
    # Inside an HTML attribute: escape what could end it.
    return json.dumps(config).replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")


@router.get("/")
@router.get("/studio")
async def studio_page(service: ServiceDep) -> Response:
    """The studio page."""
    html = _asset("index.html").decode().replace(_LIMITS_PLACEHOLDER, _config(service.settings))
    return Response(html, media_type="text/html; charset=utf-8", headers=_headers(service.settings))


@router.get("/studio/static/{name}")
async def studio_asset(name: str, service: ServiceDep) -> Response:
    """A script or style sheet of the page, with its type set explicitly."""
    media_type = ASSETS.get(name)
    if media_type is None:
        raise ApiError(Code.NOT_FOUND, f"no studio asset {name[:100]}")
    return Response(_asset(name), media_type=media_type, headers=_headers(service.settings))


@router.post("/studio/session")
async def studio_session(store: Store, authorization: AuthHeader = None) -> JSONResponse:
    """Whether the Authorization header holds a valid key: always 200, so that the page's
    sign-in form can tell a wrong key without the browser logging a failed request."""
    try:
        appkey = await authenticate(authorization, store)
    except ApiError as exc:
        return envelope(Code.OK, data={"valid": False, "msg": exc.msg})
    return envelope(Code.OK, data={"valid": True, "appkey": appkey})
