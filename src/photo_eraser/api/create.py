"""Creating a task: from a create request's body to a stored task (or the reason it is
refused). The route (`routes.tasks.create_task`) authenticates and rate-limits, then calls
`accept`; everything here is plain functions over the runtime."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import Request
from pydantic import ValidationError

from photo_eraser.api.body import BodyBudget, BodyBudgetFull, parse_json_object, read_body
from photo_eraser.api.errors import ApiError, Code
from photo_eraser.api.schemas import (
    MAX_IMAGES,
    CreateTaskRequest,
    Rectangle,
    check_http_url,
)
from photo_eraser.disk import DISK_FULL_REASON, is_disk_full
from photo_eraser.engines.base import EngineUnavailable
from photo_eraser.fetch import FetchError
from photo_eraser.imaging import MaskError, MaskPlacement, MaskSource, parse_mask_field
from photo_eraser.imaging.detect import DetectParams
from photo_eraser.imaging.rectangles import FRACTION_BASIS, boxes_document, draw_rectangles
from photo_eraser.storage import BlobStoreError, mask_key
from photo_eraser.tasks.idempotency import Idempotency, IdempotencyTaken
from photo_eraser.tasks.intake import IntakeClosed, IntakeFull, OpenTasksLimit
from photo_eraser.tasks.records import AUTO_MASK, NewCallback, NewTask, TaskRecord
from photo_eraser.uploads import UploadRefused, check_upload_link, parse_upload_link

if TYPE_CHECKING:
    from photo_eraser.runtime import Runtime

log = logging.getLogger(__name__)

INLINE_PARSE_BYTES = 64 << 10
"""Bodies up to this size are parsed on the event loop (a thread hop costs more)."""


MASK_DECODES = 2
"""Inline masks decoded at once by create requests. They wait here, on the event loop, and not
in a thread: waiting threads would take the pool that logins and polls need."""


IDEMPOTENCY_HEADER = "Idempotency-Key"
_IDEMPOTENCY_KEY = re.compile(r"[!-~]{1,255}")


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
    def admit(self, service: Runtime) -> Iterator[None]:
        if self.in_flight >= self.limit:
            msg = f"server busy: {self.in_flight} task creations in flight"
            raise _refused(service, "busy", Code.BUSY, msg)
        self.in_flight += 1  # the event loop's thread only: no lock needed
        try:
            yield
        finally:
            self.in_flight -= 1


@dataclass(frozen=True)
class Accepted:
    """A create that was stored, or answered by an earlier one (``replayed``)."""

    task_id: str
    request: CreateTaskRequest
    replayed: bool


async def accept(
    request: Request, service: Runtime, appkey: str, idempotency_key: str | None
) -> Accepted:
    """Read and check the create body of ``appkey`` and store its task; or answer the task an
    earlier create of the same ``Idempotency-Key`` and body made. Raises `ApiError`."""
    settings = service.settings
    admission: CreateAdmission = request.app.state.admission
    idem: Idempotency | None = None
    replayed: str | None = None  # the task an earlier create of the same key and body made
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
                    base = settings.public_url or str(request.base_url)
                    task = await _new_task(req, appkey, service, admission.mask_decodes, idem, base)
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
    return Accepted(task_id, req, replayed is not None)


def check_idempotency_key(value: str | None) -> None:
    if value is not None and not _IDEMPOTENCY_KEY.fullmatch(value):
        msg = f"{IDEMPOTENCY_HEADER}: 1 to 255 printable ASCII characters, no spaces"
        raise ApiError(Code.BAD_PARAMETER, msg)


async def _replayed(service: Runtime, appkey: str, idem: Idempotency) -> str | None:
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


async def wait_finished(
    service: Runtime, task_id: str, appkey: str, seconds: float
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
    service: Runtime,
    decodes: asyncio.Semaphore,
    idempotency: Idempotency | None = None,
    base_url: str = "",
) -> NewTask:
    settings = service.settings
    if len(req.images) > min(settings.max_images, MAX_IMAGES):
        raise ApiError(Code.BAD_PARAMETER, f"images: at most {settings.max_images} images per task")
    try:
        service.engines.check(req.engine)
    except EngineUnavailable as exc:
        raise ApiError(Code.BAD_PARAMETER, f"engine: {exc}") from None
    placement = _placement(req)
    callback = None
    if req.callback_url is not None:
        callback = await _callback(req.callback_url, appkey, service, base_url)
    _check_one_mask(req)
    if req.mask == AUTO_MASK:
        _check_auto(req)
        _check_uploads(req.images, None, appkey, service)
        mask = MaskSource(url=AUTO_MASK)
    else:
        mask = await _given_mask(req, appkey, service, decodes)
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
        callback=callback,
    )


def _check_one_mask(req: CreateTaskRequest) -> None:
    """``mask`` (a given one or ``"auto"``) or ``rectangles``: exactly one of the two."""
    if (req.mask is None) == (req.rectangles is None):
        which = "both" if req.mask is not None else "neither"
        raise ApiError(
            Code.BAD_PARAMETER, f"mask, rectangles: give exactly one of the two ({which} given)"
        )


def _check_auto(req: CreateTaskRequest) -> None:
    """A task whose mask is found in its batch: enough images, and a placement the mask found
    in one frame can take (stretched onto each image, as the mark scales with it)."""
    least = DetectParams().min_images
    if len(req.images) < least:
        raise ApiError(
            Code.BAD_PARAMETER,
            f"mask: auto finds the watermark the images share and needs at least {least} "
            f"images ({len(req.images)} given); send a mask",
        )
    if req.mask_fit not in (None, "stretch") or req.mask_invert:
        which = "mask_invert" if req.mask_invert else "mask_fit"
        raise ApiError(
            Code.BAD_PARAMETER,
            f"{which}: not with mask auto (the mask found is stretched onto each image)",
        )


async def _given_mask(
    req: CreateTaskRequest, appkey: str, service: Runtime, decodes: asyncio.Semaphore
) -> MaskSource:
    """The mask the request gives (or draws), checked now."""
    try:
        mask = _mask_source(req)
        _check_uploads(req.images, mask.url, appkey, service)
        # Decoded now, so a bad mask is a 400, not a failed task (drawn ones are good).
        if mask.data is not None and req.rectangles is None:
            async with decodes:
                await asyncio.to_thread(service.masks.decode, mask.data)
    except MaskError as exc:
        raise ApiError(Code.BAD_PARAMETER, f"mask: {exc}") from None
    return mask


async def _callback(url: str, appkey: str, service: Runtime, base_url: str) -> NewCallback:
    """The task's callback, once its URL passed the address policy (checked again at every
    attempt: the connection goes to a checked address) and the key can sign it."""
    assert service.webhooks is not None, "the runtime is running"
    try:
        await service.webhooks.check(url)
    except FetchError as exc:
        raise ApiError(Code.BAD_PARAMETER, f"callback_url: {exc.reason}") from None
    if await service.store.webhook_secret(appkey) is None:
        msg = (
            "callback_url: this key has no webhook secret yet (keys made before callbacks "
            "existed); make one with `photo-eraser keys rotate-webhook-secret APPKEY`"
        )
        raise ApiError(Code.BAD_PARAMETER, msg)
    return NewCallback(url=url, base_url=base_url.rstrip("/"), delivery_id=str(uuid.uuid4()))


async def _put_mask(service: Runtime, key: str, data: bytes) -> None:
    try:
        await asyncio.to_thread(service.blobs.put, key, data)
    except BlobStoreError as exc:
        log.error("mask not stored: blob store unavailable", extra={"error": str(exc)})
        msg = "the object store is unavailable: the task was not stored"
        raise _refused(service, "storage", Code.UNAVAILABLE, msg) from None
    except OSError as exc:
        raise _disk_full_or(exc, service, "mask") from None


async def _store(task: NewTask, service: Runtime) -> str:
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


def _disk_full_or(exc: Exception, service: Runtime, what: str) -> Exception:
    """The 503 of a create that a full disk kept from being stored; else ``exc`` itself."""
    if not is_disk_full(exc):
        return exc
    log.error(f"{what} not stored: disk full")
    msg = f"{DISK_FULL_REASON}: the task was not stored"
    return _refused(service, "disk_full", Code.DISK_FULL, msg)


def _check_disk(service: Runtime) -> None:
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


def _refused(service: Runtime, cause: str, code: Code, msg: str) -> ApiError:
    """A create refused for ``cause`` (counted in the metrics), with its ``Retry-After``."""
    service.metrics.creates_refused.labels(cause).inc()
    seconds = RETRY_SECONDS[code]
    return ApiError(code, f"{msg}; retry in {seconds} s", headers={"Retry-After": str(seconds)})


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
    """The mask given, or the one drawn from ``rectangles`` (`_check_one_mask`: one of them)."""
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


def _check_uploads(images: list[str], mask_url: str | None, appkey: str, service: Runtime) -> None:
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
