"""Task routes: create, result, close. Creating a task is in `api.create`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse

from photo_eraser.api.auth import rate_limited
from photo_eraser.api.create import IDEMPOTENCY_HEADER, accept, check_idempotency_key, wait_finished
from photo_eraser.api.deps import AuthHeader, Caller, ServiceDep, Store, caller
from photo_eraser.api.errors import ApiError, Code, envelope
from photo_eraser.api.openapi import errors, schema_ref
from photo_eraser.api.presenters import result_data
from photo_eraser.api.schemas import (
    Closed,
    ClosedData,
    Created,
    CreatedData,
    CreateTaskRequest,
    Result,
    ResultData,
)
from photo_eraser.tasks.records import Outlook, TaskRecord

router = APIRouter(tags=["tasks"])

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias=IDEMPOTENCY_HEADER,
        description="extension: 1 to 255 printable ASCII characters, no spaces. A create "
        "repeated with the same key and the same body within 24 h answers the first one's "
        "task_id (no new task); with another body it is a 409 (code 40901)",
    ),
]


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
    # Credentials first (headers only): a client without them holds no body budget.
    appkey = await caller(service.store, authorization)
    check_idempotency_key(idempotency_key)
    wait = await request.app.state.limiter.check(appkey)
    if wait:
        raise rate_limited(service.settings.rate_limit_per_minute, wait)
    accepted = await accept(request, service, appkey, idempotency_key)
    created = CreatedData(task_id=accepted.task_id)
    # Waited for after the body and the admission place are released: waiting holds neither.
    if accepted.request.sync:
        finished = await wait_finished(service, accepted.task_id, appkey, accepted.request.sync)
        if finished is not None:
            created.result = _result_data(finished, request, service)
    return envelope(Code.OK, data=created.model_dump(exclude_none=True))


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
    return result_data(task, service, service.settings.public_url or str(request.base_url), outlook)


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
        service.dispatcher.closed(task_id)
    data = ClosedData(task_id=task_id, status=str(int(closing.status)))
    return envelope(Code.OK, data=data.model_dump())
