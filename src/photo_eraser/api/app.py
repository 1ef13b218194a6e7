"""The FastAPI application: the routes of `routes/`, the error envelope, metrics, OpenAPI."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from photo_eraser import __version__
from photo_eraser.api import openapi
from photo_eraser.api.auth import RateLimiter
from photo_eraser.api.create import CreateAdmission
from photo_eraser.api.errors import CODE_TABLE, ApiError, Code, InternalErrorMiddleware, envelope
from photo_eraser.api.http_metrics import HttpMetrics
from photo_eraser.api.poll import PollRoute
from photo_eraser.api.routes import callbacks, files, ops, studio, tasks, uploads
from photo_eraser.config import Settings
from photo_eraser.disk import DISK_FULL_REASON, is_disk_full
from photo_eraser.runtime import Runtime
from photo_eraser.storage import BlobStoreError

log = logging.getLogger(__name__)

API_DESCRIPTION = (
    "Photo Eraser batch API. Every response is `{code, msg, data}`; HTTP status = code // 100.\n\n"
    + "\n".join(f"- `{int(c)}`: {text}" for c, text in CODE_TABLE.items())
)


def create_app(settings: Settings | None = None, *, distributed: bool = False) -> FastAPI:
    """Build the app on the embedded service (workers in this process) or, ``distributed``,
    as one API process of a cluster; the runtime runs for the app's lifespan."""
    settings = settings or Settings()
    service: Runtime
    if distributed:
        from photo_eraser.runtime import ApiRuntime

        service = ApiRuntime(settings)
    else:
        from photo_eraser.service import Service

        service = Service(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(
        title="Photo Eraser",
        version=__version__,
        description=API_DESCRIPTION,
        lifespan=lifespan,
        # "/v3/pic/rw/batch/" is a 404 envelope, not a redirect to a Location built from the
        # client's own Host header.
        redirect_slashes=False,
        # Operation ids are the route functions' names (create_task, get_result, ...): what a
        # client generated from the document calls its methods.
        generate_unique_id_function=lambda route: route.name,
    )
    app.state.service = service
    app.state.limiter = service.rate_limit or RateLimiter(settings.rate_limit_per_minute)
    # One body budget for creates and uploads; one key may hold at least one upload.
    one_body = max(settings.max_body_bytes, settings.max_image_bytes + uploads.MULTIPART_OVERHEAD)
    app.state.admission = CreateAdmission(
        settings.max_pending_creates, settings.max_body_buffer_mb << 20, one_body
    )
    app.state.upload_checks = uploads.UploadChecks()
    for module in (tasks, uploads, files, ops, studio):
        app.include_router(module.router)
    callbacks.document(app)
    # Middleware added later wraps what was added before. Polls are answered innermost (the
    # error middleware guards them as it guards the routes) ...
    result_route = next(
        r for r in tasks.router.routes if isinstance(r, APIRoute) and r.endpoint is tasks.get_result
    )
    app.add_middleware(PollRoute, service=service, route=result_route)
    _install_error_handlers(app)
    # ... and every request is counted and timed outermost, by route template (never by task
    # id), into the service's own registry.
    metrics = service.metrics
    app.add_middleware(HttpMetrics, requests=metrics.http_requests, duration=metrics.http_duration)
    openapi.install(app)
    return app


UNAVAILABLE_RETRY = 5
"""``Retry-After`` of a request refused because the database or the blob store is away."""


def _unavailable(msg: str) -> JSONResponse:
    return envelope(Code.UNAVAILABLE, msg, headers={"Retry-After": str(UNAVAILABLE_RETRY)})


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return envelope(exc.code, exc.msg, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = ".".join(str(p) for p in err["loc"][1:]) or "request"
        return envelope(Code.BAD_PARAMETER, f"{loc}: {err['msg']}")

    @app.exception_handler(BlobStoreError)
    async def _blob_store(_request: Request, exc: BlobStoreError) -> JSONResponse:
        log.error("blob store unavailable", extra={"error": str(exc)})
        # The details (its address, which credential it refused) are for the log only.
        return _unavailable(f"the object store is unavailable; retry in {UNAVAILABLE_RETRY} s")

    @app.exception_handler(sa.exc.OperationalError)
    @app.exception_handler(sa.exc.InterfaceError)
    @app.exception_handler(sa.exc.TimeoutError)
    async def _database(_request: Request, exc: Exception) -> JSONResponse:
        if is_disk_full(exc):
            msg = f"{DISK_FULL_REASON}; retry later"
            return envelope(Code.DISK_FULL, msg, headers={"Retry-After": "60"})
        log.error("task database unavailable", extra={"error": str(exc).splitlines()[0]})
        return _unavailable(f"the task database is unavailable; retry in {UNAVAILABLE_RETRY} s")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: Code.NOT_FOUND, 405: Code.METHOD_NOT_ALLOWED, 413: Code.BODY_TOO_LARGE}.get(
            exc.status_code, Code.BAD_PARAMETER if exc.status_code < 500 else Code.INTERNAL
        )
        msg = str(exc.detail)
        if code == Code.NOT_FOUND:
            msg = f"no route {request.method} {request.url.path[:200]}"
        return envelope(code, msg, headers=getattr(exc, "headers", None))

    # Not app.exception_handler(Exception): Starlette runs that one in its outermost middleware,
    # which re-raises after answering, and the server then drops the kept-alive connection.
    app.add_middleware(InternalErrorMiddleware)
