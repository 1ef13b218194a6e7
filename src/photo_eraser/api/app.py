"""The FastAPI application: thin routes over the task store and the service."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from photo_eraser import __version__
from photo_eraser.api.auth import RateLimiter, authenticate
from photo_eraser.api.body import parse_json_object, read_body
from photo_eraser.api.errors import CODE_TABLE, ApiError, Code, InternalErrorMiddleware, envelope
from photo_eraser.api.schemas import CreateTaskRequest, ResultData, ResultItem, check_http_url
from photo_eraser.config import Settings
from photo_eraser.disk import DISK_FULL_REASON, is_disk_full
from photo_eraser.engines.base import EngineUnavailable
from photo_eraser.imaging import MaskError, MaskSource, parse_mask_field
from photo_eraser.pipeline import MaskCache
from photo_eraser.service import Service
from photo_eraser.tasks.status import ImageStatus

log = logging.getLogger(__name__)

API_DESCRIPTION = (
    "Photo Eraser batch API. Every response is `{code, msg, data}`; HTTP status = code // 100.\n\n"
    + "\n".join(f"- `{int(c)}`: {text}" for c, text in CODE_TABLE.items())
)

DISK_RETRY_SECONDS = 60

AuthHeader = Annotated[str | None, Header(alias="Authorization")]


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; the service (workers, sweeper) runs for the app's lifespan."""
    settings = settings or Settings()
    service = Service(settings)
    limiter = RateLimiter(settings.rate_limit_per_minute)

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
    )
    app.state.service = service
    _install_error_handlers(app)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> JSONResponse:
        if service.lease_lost:
            return envelope(
                Code.UNAVAILABLE,
                "lost the database lease to another server, which now runs the tasks; this one "
                "no longer does (stop it: it can start again once the other has stopped)",
            )
        disk = await asyncio.to_thread(service.disk.state)
        if disk.low:
            return envelope(
                Code.UNAVAILABLE,
                f"degraded: {disk.describe()}; new tasks are refused until space is freed",
                data={"status": "degraded", "disk_free_bytes": disk.free_bytes},
            )
        return envelope(Code.OK, data={"status": "ok", "engines": service.engines.availability()})

    @app.post(
        "/v3/pic/rw/batch",
        tags=["tasks"],
        # The body is read by hand (size limit while streaming, our own 400s), so describe it here.
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": CreateTaskRequest.model_json_schema()}},
            }
        },
    )
    async def create_task(request: Request, authorization: AuthHeader = None) -> JSONResponse:
        """Create a task: up to 20 image URLs, one mask, a priority 0..9. Returns its task_id."""
        appkey = await asyncio.to_thread(authenticate, authorization, service.store)
        limiter.check(appkey)
        raw = await read_body(request, settings.max_body_bytes)
        body = await asyncio.to_thread(parse_json_object, raw)
        try:
            req = CreateTaskRequest.model_validate(body)
        except ValidationError as exc:
            raise ApiError(Code.BAD_PARAMETER, _validation_message(exc)) from None
        if len(req.images) > settings.max_images:
            raise ApiError(
                Code.BAD_PARAMETER, f"images: at most {settings.max_images} images per task"
            )
        try:
            service.engines.check(req.engine)
        except EngineUnavailable as exc:
            raise ApiError(Code.BAD_PARAMETER, f"engine: {exc}") from None
        try:
            mask = await asyncio.to_thread(_check_mask, req.mask, service.masks)
        except MaskError as exc:
            raise ApiError(Code.BAD_PARAMETER, f"mask: {exc}") from None
        disk = await asyncio.to_thread(service.disk.state)
        if disk.low:
            raise ApiError(
                Code.UNAVAILABLE,
                f"not accepting new tasks: {disk.describe()}",
                headers={"Retry-After": str(DISK_RETRY_SECONDS)},
            )
        try:
            task_id = await asyncio.to_thread(
                service.store.create_task,
                appkey=appkey,
                urls=req.images,
                priority=req.priority,
                engine=req.engine,
                mask_url=mask.url,
                mask_data=mask.data,
                deadline_seconds=settings.task_deadline_seconds,
            )
        except Exception as exc:
            if not is_disk_full(exc):
                raise
            log.error("task not stored: disk full")
            raise ApiError(
                Code.UNAVAILABLE,
                f"{DISK_FULL_REASON}: the task was not stored; retry later",
                headers={"Retry-After": str(DISK_RETRY_SECONDS)},
            ) from None
        service.wake.set()
        log.info(
            "task created",
            extra={
                "task_id": task_id,
                "images": len(req.images),
                "priority": req.priority,
                "engine": req.engine,
            },
        )
        return envelope(Code.OK, data={"task_id": task_id})

    @app.get("/v3/pic/rw/result/{task_id}", tags=["tasks"])
    async def get_result(
        task_id: str, request: Request, authorization: AuthHeader = None
    ) -> JSONResponse:
        """Status of a task and, per input image in input order, its result URL or failure reason."""
        appkey = await asyncio.to_thread(authenticate, authorization, service.store)
        task = await asyncio.to_thread(service.store.get_task, task_id, appkey)
        if task is None:
            raise ApiError(Code.NOT_FOUND, f"task {task_id} not found")
        wait_time = await asyncio.to_thread(service.wait_time, task)
        base = (settings.public_url or str(request.base_url)).rstrip("/")
        expires = int((task.finished_at or 0) + settings.result_ttl_seconds)
        items = []
        for im in task.images:
            url = ""
            if im.status == ImageStatus.DONE and im.result_key and task.finished_at:
                sig = service.signer.signature(im.result_key, expires)
                url = f"{base}/v3/pic/rw/files/{im.result_key}?expires={expires}&signature={sig}"
            items.append(
                ResultItem(
                    image_result=url,
                    status=str(int(im.status)),
                    reason=im.reason,
                    method=im.method,
                    recovered_share=(
                        None if im.recovered_share is None else round(im.recovered_share, 3)
                    ),
                )
            )
        data = ResultData(status=str(int(task.status)), wait_time=wait_time, list=items)
        return envelope(Code.OK, data=data.model_dump(exclude_none=True))

    @app.post("/v3/pic/rw/close/{task_id}", tags=["tasks"])
    async def close_task(task_id: str, authorization: AuthHeader = None) -> JSONResponse:
        """Extension: close a waiting or running task (status 5). Finished tasks stay as they are."""
        appkey = await asyncio.to_thread(authenticate, authorization, service.store)
        status = await asyncio.to_thread(service.store.close, task_id, appkey)
        if status is None:
            raise ApiError(Code.NOT_FOUND, f"task {task_id} not found")
        return envelope(Code.OK, data={"task_id": task_id, "status": str(int(status))})

    @app.api_route(
        "/v3/pic/rw/files/{key:path}",
        methods=["GET", "HEAD"],
        tags=["results"],
        response_model=None,
    )
    async def get_file(key: str, expires: int = 0, signature: str = "") -> StreamingResponse:
        """A result image. The link is signed and expires; no Authorization header needed."""
        if not service.signer.verify(key, expires, signature):
            raise ApiError(Code.LINK_EXPIRED, "result link is invalid or has expired")
        path = service.blobs.path(key)
        if path is None:
            raise ApiError(Code.NOT_FOUND, "result no longer exists")
        media = {".jpg": "image/jpeg", ".png": "image/png"}.get(
            path.suffix, "application/octet-stream"
        )
        # Whole files only (no Range): results are a few MB, and every error stays an envelope.
        return StreamingResponse(
            _file_chunks(path),
            media_type=media,
            headers={"Content-Length": str(path.stat().st_size), "Cache-Control": "private"},
        )

    return app


def _check_mask(value: str, masks: MaskCache) -> MaskSource:
    """Parse the mask field; decode inline data now so a bad mask is a 400, not a failed task."""
    mask = parse_mask_field(value)
    if mask.url is not None:
        try:
            check_http_url(mask.url)
        except ValueError as exc:
            raise MaskError(str(exc)) from None
    if mask.data is not None:
        masks.decode(mask.data)
    return mask


async def _file_chunks(path: Path, chunk: int = 1 << 20) -> AsyncIterator[bytes]:
    with path.open("rb") as f:
        while data := await asyncio.to_thread(f.read, chunk):
            yield data


def _validation_message(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "body"
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"{loc}: {msg}"


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return envelope(exc.code, exc.msg, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = ".".join(str(p) for p in err["loc"][1:]) or "request"
        return envelope(Code.BAD_PARAMETER, f"{loc}: {err['msg']}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: Code.NOT_FOUND, 405: Code.METHOD_NOT_ALLOWED, 413: Code.BODY_TOO_LARGE}.get(
            exc.status_code, Code.BAD_PARAMETER if exc.status_code < 500 else Code.INTERNAL
        )
        return envelope(code, str(exc.detail), headers=getattr(exc, "headers", None))

    # Not app.exception_handler(Exception): Starlette runs that one in its outermost middleware,
    # which re-raises after answering, and the server then drops the kept-alive connection.
    app.add_middleware(InternalErrorMiddleware)
