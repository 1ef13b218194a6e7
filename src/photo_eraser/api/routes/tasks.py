"""Task routes: create, result, close."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from photo_eraser.api.auth import rate_limited
from photo_eraser.api.body import BodyBudget, BodyBudgetFull, parse_json_object, read_body
from photo_eraser.api.deps import AuthHeader, Caller, ServiceDep, Store, caller
from photo_eraser.api.errors import ApiError, Code, envelope
from photo_eraser.api.openapi import errors, schema_ref
from photo_eraser.api.schemas import (
    MAX_IMAGES,
    Closed,
    ClosedData,
    Created,
    CreatedData,
    CreateTaskRequest,
    Rectangle,
    Result,
    ResultData,
    ResultItem,
    check_http_url,
)
from photo_eraser.disk import DISK_FULL_REASON, is_disk_full
from photo_eraser.engines.base import EngineUnavailable
from photo_eraser.imaging import MaskError, MaskPlacement, MaskSource, parse_mask_field
from photo_eraser.imaging.rectangles import FRACTION_BASIS, boxes_document, draw_rectangles
from photo_eraser.storage import BlobStoreError, mask_key
from photo_eraser.tasks.idempotency import Idempotency, IdempotencyTaken
from photo_eraser.tasks.intake import IntakeClosed, IntakeFull, OpenTasksLimit
from photo_eraser.tasks.records import NewTask, Outlook, TaskRecord
from photo_eraser.tasks.status import ImageStatus
from photo_eraser.uploads import UploadRefused, check_upload_link, parse_upload_link

log = logging.getLogger(__name__)
router = APIRouter(tags=["tasks"])

INLINE_PARSE_BYTES = 64 << 10
"""Bodies up to this size are parsed on the event loop (a thread hop costs more)."""


MASK_DECODES = 2
"""Inline masks decoded at once by create requests. They wait here, on the event loop, and not
in a thread: waiting threads would take the pool that logins and polls need."""


IDEMPOTENCY_HEADER = "Idempotency-Key"
_IDEMPOTENCY_KEY = re.compile(r"[!-~]{1,255}")

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias=IDEMPOTENCY_HEADER,
        description="extension: 1 to 255 printable ASCII characters, no spaces. A create "
        "repeated with the same key and the same body within 24 h answers the first one's "
        "task_id (no new task); with another body it is a 409 (code 40901)",
    ),
]


class CreateAdmission:
    """At most ``limit`` create requests handled at once (counted once their body has
    arrived, so slow senders hold no place); past it they are refused at once with 503, so an
    overload sheds requests instead of making every client wait ever longer."""

    def __init__(self, limit: int, body_bytes: int, one_body: int) -> None:
        self.limit = limit
        self.in_flight = 0
        self.mask_decodes = asyncio.Semaphore(MASK_DECODES)
        self.bodies = BodyBudget(body_bytes, one_body)

    @contextmanager
    def admit(self, service: ServiceDep) -> Iterator[None]:
        if self.in_flight >= self.limit:
            msg = f"server busy: {self.in_flight} task creations in flight"
            raise _refused(service, "busy", Code.BUSY, msg)
        self.in_flight += 1  # the event loop's thread only: no lock needed
        try:
            yield
        finally:
            self.in_flight -= 1


@router.post(
    "/v3/pic/rw/batch",
    response_model=Created,
    responses=errors(
        Code.BAD_PARAMETER,
        Code.MALFORMED_JSON,
        Code.MISSING_CREDENTIALS,
        Code.INVALID_CREDENTIALS,
        Code.REQUEST_TIMEOUT,
        Code.IDEMPOTENCY_CONFLICT,
        Code.BODY_TOO_LARGE,
        Code.RATE_LIMITED,
        Code.TOO_MANY_OPEN_TASKS,
        Code.INTERNAL,
        Code.UNAVAILABLE,
        Code.BUSY,
        Code.DISK_FULL,
    ),
    # The body is read by hand (size limit while streaming, our own 400s), so describe it here.
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schema_ref(CreateTaskRequest)}},
        }
    },
)
async def create_task(
    request: Request,
    service: ServiceDep,
    authorization: AuthHeader = None,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JSONResponse:
    """Create a task: up to 20 image URLs, one mask, a priority 0..9. Returns its task_id."""
    settings = service.settings
    admission: CreateAdmission = request.app.state.admission
    # Credentials first (headers only): a client without them holds no body budget.
    appkey = await caller(service.store, authorization)
    _check_idempotency_key(idempotency_key)
    idem: Idempotency | None = None
    replayed: str | None = None  # the task an earlier create of the same key and body made
    wait = await request.app.state.limiter.check(appkey)
    if wait:
        raise rate_limited(settings.rate_limit_per_minute, wait)
    try:
        async with read_body(
            request,
            settings.max_body_bytes,
            settings.body_timeout_seconds,
            admission.bodies,
            appkey,
        ) as raw:
            with admission.admit(service):  # before any work, so shedding stays cheap
                _check_disk(service)
                req = await _parse_request(raw)
                if idempotency_key is not None:
                    idem = Idempotency(idempotency_key, hashlib.sha256(raw).hexdigest())
                    replayed = await _replayed(service, appkey, idem)
                if replayed is None:
                    task = await _new_task(req, appkey, service, admission.mask_decodes, idem)
                    task_id = await _store(task, service)
                else:
                    task_id = replayed
    except BodyBudgetFull as exc:
        raise _refused(service, "body_buffer", Code.BUSY, f"server busy: {exc}") from None
    except IdempotencyTaken:  # a duplicate stored first, meanwhile: answer its task
        assert idem is not None
        replayed = await _replayed(service, appkey, idem)
        if replayed is None:  # its row expired meanwhile: the client may simply retry
            raise ApiError(Code.IDEMPOTENCY_CONFLICT, f"{IDEMPOTENCY_HEADER}: retry") from None
        task_id = replayed
    if replayed is None:
        service.metrics.tasks_created.labels(str(req.priority)).inc()
        log.info(
            "task created",
            extra={"task_id": task_id, "images": len(req.images), "priority": req.priority},
        )
    created = CreatedData(task_id=task_id)
    if req.sync:  # after the body and the admission place are released: waiting holds neither
        finished = await _wait_finished(service, task_id, appkey, req.sync)
        if finished is not None:
            created.result = _result_data(finished, request, service)
    return envelope(Code.OK, data=created.model_dump(exclude_none=True))


def _check_idempotency_key(value: str | None) -> None:
    if value is not None and not _IDEMPOTENCY_KEY.fullmatch(value):
        msg = f"{IDEMPOTENCY_HEADER}: 1 to 255 printable ASCII characters, no spaces"
        raise ApiError(Code.BAD_PARAMETER, msg)


async def _replayed(service: ServiceDep, appkey: str, idem: Idempotency) -> str | None:
    """The task an earlier create of the same key and body made; None if there is none; a
    409 if the key came with another body."""
    earlier = await service.store.remembered(appkey, idem.key)
    if earlier is None:
        return None
    if earlier.body_sha256 != idem.body_sha256:
        msg = (
            f"{IDEMPOTENCY_HEADER}: this key was used with another body (task "
            f"{earlier.task_id}); use a new key for a new request"
        )
        raise ApiError(Code.IDEMPOTENCY_CONFLICT, msg)
    return earlier.task_id


SYNC_POLL_SECONDS = (0.05, 0.1, 0.2, 0.25)
"""Pauses between reads of a ``sync`` create's task (then the last one, repeated): each read is
one short store call, so a waiting request holds no connection and no thread between them."""


async def _wait_finished(
    service: ServiceDep, task_id: str, appkey: str, seconds: float
) -> TaskRecord | None:
    """The task once finished, if it finishes within ``seconds``; else None."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    for attempt in range(1 << 30):
        task = await service.store.get_task(task_id, appkey)
        if task is not None and task.status.finished:
            return task
        left = deadline - loop.time()
        if left <= 0:
            return None
        pause = SYNC_POLL_SECONDS[min(attempt, len(SYNC_POLL_SECONDS) - 1)]
        await asyncio.sleep(min(pause, left))
    return None


async def _parse_request(raw: bytes) -> CreateTaskRequest:
    if len(raw) <= INLINE_PARSE_BYTES:
        body = parse_json_object(raw)
    else:
        body = await asyncio.to_thread(parse_json_object, raw)
    try:
        return CreateTaskRequest.model_validate(body)
    except ValidationError as exc:
        raise ApiError(Code.BAD_PARAMETER, _validation_message(exc)) from None


async def _new_task(
    req: CreateTaskRequest,
    appkey: str,
    service: ServiceDep,
    decodes: asyncio.Semaphore,
    idempotency: Idempotency | None = None,
) -> NewTask:
    settings = service.settings
    if len(req.images) > min(settings.max_images, MAX_IMAGES):
        raise ApiError(Code.BAD_PARAMETER, f"images: at most {settings.max_images} images per task")
    try:
        service.engines.check(req.engine)
    except EngineUnavailable as exc:
        raise ApiError(Code.BAD_PARAMETER, f"engine: {exc}") from None
    placement = _placement(req)
    try:
        mask = _mask_source(req)
        _check_uploads(req.images, mask.url, appkey, service)
        # Decoded now, so a bad mask is a 400, not a failed task (drawn ones are good).
        if mask.data is not None and req.rectangles is None:
            async with decodes:
                await asyncio.to_thread(service.masks.decode, mask.data)
    except MaskError as exc:
        raise ApiError(Code.BAD_PARAMETER, f"mask: {exc}") from None
    task_id = str(uuid.uuid4())
    stored_mask = None
    if mask.data is not None:
        # In the blob store before the task is committed: a worker never sees a task without
        # its mask. If the commit fails, the retention sweep deletes the orphan.
        stored_mask = mask_key(task_id)
        await _put_mask(service, stored_mask, mask.data)
    return NewTask(
        task_id=task_id,
        appkey=appkey,
        urls=req.images,
        priority=req.priority,
        engine=req.engine,
        mask_url=mask.url,
        mask_key=stored_mask,
        placement=placement,
        deadline_seconds=settings.task_deadline_seconds,
        idempotency=idempotency,
    )


async def _put_mask(service: ServiceDep, key: str, data: bytes) -> None:
    try:
        await asyncio.to_thread(service.blobs.put, key, data)
    except BlobStoreError as exc:
        log.error("mask not stored: blob store unavailable", extra={"error": str(exc)})
        msg = "the object store is unavailable: the task was not stored"
        raise _refused(service, "storage", Code.UNAVAILABLE, msg) from None
    except OSError as exc:
        raise _disk_full_or(exc, service, "mask") from None


async def _store(task: NewTask, service: ServiceDep) -> str:
    """Store the task through the intake (durable before this returns), or say why not."""
    try:
        return await service.intake.submit(task)
    except IntakeFull as exc:
        raise _refused(service, "busy", Code.BUSY, f"server busy: {exc}") from None
    except OpenTasksLimit as exc:
        msg = f"{exc} (wait for some to finish)"
        raise _refused(service, "open_tasks", Code.TOO_MANY_OPEN_TASKS, msg) from None
    except IdempotencyTaken:
        raise
    except IntakeClosed:
        msg = "the server is shutting down"
        raise _refused(service, "shutting_down", Code.UNAVAILABLE, msg) from None
    except Exception as exc:
        raise _disk_full_or(exc, service, "task") from None


def _disk_full_or(exc: Exception, service: ServiceDep, what: str) -> Exception:
    """The 503 of a create that a full disk kept from being stored; else ``exc`` itself."""
    if not is_disk_full(exc):
        return exc
    log.error(f"{what} not stored: disk full")
    msg = f"{DISK_FULL_REASON}: the task was not stored"
    return _refused(service, "disk_full", Code.DISK_FULL, msg)


def _check_disk(service: ServiceDep) -> None:
    disk = service.disk.state()
    if disk.low:
        msg = f"not accepting new tasks: {disk.describe()}"
        raise _refused(service, "disk_low", Code.DISK_FULL, msg)


RETRY_SECONDS = {
    Code.BUSY: 1,
    Code.UNAVAILABLE: 1,
    Code.TOO_MANY_OPEN_TASKS: 10,
    Code.DISK_FULL: 60,
}
"""``Retry-After`` of each way a valid create can be refused."""


def _refused(service: ServiceDep, cause: str, code: Code, msg: str) -> ApiError:
    """A create refused for ``cause`` (counted in the metrics), with its ``Retry-After``."""
    service.metrics.creates_refused.labels(cause).inc()
    seconds = RETRY_SECONDS[code]
    return ApiError(code, f"{msg}; retry in {seconds} s", headers={"Retry-After": str(seconds)})


@router.get(
    "/v3/pic/rw/result/{task_id}",
    response_model=Result,
    responses=errors(
        Code.MISSING_CREDENTIALS,
        Code.INVALID_CREDENTIALS,
        Code.NOT_FOUND,
        Code.INTERNAL,
        Code.UNAVAILABLE,
    ),
)
async def get_result(
    task_id: str, request: Request, appkey: Caller, service: ServiceDep
) -> JSONResponse:
    """Status of a task and, per input image in input order, its result URL or failure reason."""
    polled = await service.poll(task_id, appkey)
    if polled is None:
        raise ApiError(Code.NOT_FOUND, f"task {task_id} not found")
    task, outlook = polled
    data = _result_data(task, request, service, outlook)
    return envelope(Code.OK, data=data.model_dump(exclude_none=True))


def _result_data(
    task: TaskRecord, request: Request, service: ServiceDep, outlook: Outlook | None = None
) -> ResultData:
    """What the result route answers for ``task`` (also a ``sync`` create's ``result``, of a
    finished task: no ``outlook`` needed)."""
    wait_time = service.wait_time(task, outlook)
    settings = service.settings
    base = (settings.public_url or str(request.base_url)).rstrip("/")
    expires = int((task.finished_at or 0) + settings.result_ttl_seconds)
    items = []
    for im in task.images:
        url = ""
        if im.status == ImageStatus.DONE and im.result_key and task.finished_at:
            url = service.result_url(im.result_key, expires, base)
        share = None if im.recovered_share is None else round(im.recovered_share, 3)
        items.append(
            ResultItem(
                image_result=url,
                status=str(int(im.status)),
                reason=im.reason,
                method=im.method,
                recovered_share=share,
            )
        )
    return ResultData(status=str(int(task.status)), wait_time=wait_time, list=items)


@router.post(
    "/v3/pic/rw/close/{task_id}",
    response_model=Closed,
    responses=errors(
        Code.MISSING_CREDENTIALS,
        Code.INVALID_CREDENTIALS,
        Code.NOT_FOUND,
        Code.INTERNAL,
        Code.UNAVAILABLE,
    ),
)
async def close_task(
    task_id: str, appkey: Caller, store: Store, service: ServiceDep
) -> JSONResponse:
    """Extension: close a waiting or running task (status 5). Finished tasks stay as they are."""
    closing = await store.close(task_id, appkey)
    if closing is None:
        raise ApiError(Code.NOT_FOUND, f"task {task_id} not found")
    if closing.closed_now:
        service.metrics.tasks_finished.labels("closed").inc()
    data = ClosedData(task_id=task_id, status=str(int(closing.status)))
    return envelope(Code.OK, data=data.model_dump())


def _placement(req: CreateTaskRequest) -> MaskPlacement:
    """How the mask is placed on each image (the ``mask_fit`` extension)."""
    fit = req.mask_fit or "stretch"
    if req.mask_anchor is not None and fit != "anchor":
        raise ApiError(
            Code.BAD_PARAMETER, f"mask_anchor: only with mask_fit anchor (mask_fit is {fit})"
        )
    if fit != "stretch" and req.rectangles is not None and _fractions(req):
        raise ApiError(
            Code.BAD_PARAMETER,
            f"mask_fit: {fit} needs a mask of a known size; rectangles given as fractions are "
            "fractions of each image (give rect_basis, or pixel boxes)",
        )
    return MaskPlacement(
        fit=fit, anchor=req.mask_anchor or "center", dilate=req.mask_dilate, invert=req.mask_invert
    )


def _fractions(req: CreateTaskRequest) -> bool:
    """Rectangles given as fractions of each image (no basis, every value within 0..1)."""
    assert req.rectangles is not None
    return req.rect_basis is None and all(v <= 1 for box in req.rectangles for v in box)


def _mask_source(req: CreateTaskRequest) -> MaskSource:
    """The mask given, or the one drawn from ``rectangles`` (exactly one of the two)."""
    if (req.mask is None) == (req.rectangles is None):
        which = "both" if req.mask is not None else "neither"
        raise ApiError(
            Code.BAD_PARAMETER, f"mask, rectangles: give exactly one of the two ({which} given)"
        )
    if req.rectangles is None:
        assert req.mask is not None
        return _parse_mask(req.mask)
    return MaskSource(data=_rectangles_png(req.rectangles, req.rect_basis))


def _rectangles_png(rectangles: list[Rectangle], basis: list[int] | None) -> bytes:
    if basis is None:
        if any(v > 1 for box in rectangles for v in box):
            # Pixels of the first image: the worker draws them once it knows its size.
            for i, (_, _, w, h) in enumerate(rectangles):
                if w <= 0 or h <= 0:
                    raise ApiError(Code.BAD_PARAMETER, f"rectangles: box {i} is empty")
            return boxes_document([(x, y, w, h) for x, y, w, h in rectangles])
        width, height = FRACTION_BASIS
        boxes = [(x * width, y * height, w * width, h * height) for x, y, w, h in rectangles]
    else:
        width, height = basis
        boxes = [(x, y, w, h) for x, y, w, h in rectangles]
    try:
        return draw_rectangles(boxes, width, height)
    except MaskError as exc:
        raise ApiError(Code.BAD_PARAMETER, f"rectangles: {exc}") from None


def _parse_mask(value: str) -> MaskSource:
    """Where the mask comes from; a mask URL is held to the images' URL rules."""
    mask = parse_mask_field(value)
    if mask.url is not None:
        try:
            check_http_url(mask.url)
        except ValueError as exc:
            raise MaskError(str(exc)) from None
    return mask


def _check_uploads(
    images: list[str], mask_url: str | None, appkey: str, service: ServiceDep
) -> None:
    """Links to this service's uploads are checked now (signature, owner, expiry), so that
    another key's upload is a 400 here rather than a failed image later."""
    named = [(f"images.{i}", url) for i, url in enumerate(images)]
    if mask_url is not None:
        named.append(("mask", mask_url))
    for field, url in named:
        link = parse_upload_link(url)
        if link is None:
            continue
        try:
            check_upload_link(link, appkey, service.signer)
        except UploadRefused as exc:
            raise ApiError(Code.BAD_PARAMETER, f"{field}: {exc.reason}") from None


def _validation_message(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "body"
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"{loc}: {msg}"
