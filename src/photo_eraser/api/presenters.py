"""A task as the API shows it: the result route's ``data``, a ``sync`` create's ``result``, and
the body of its callback."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from photo_eraser.api.errors import Code, envelope
from photo_eraser.api.schemas import CallbackState, ResultData
from photo_eraser.storage import detected_mask_key
from photo_eraser.tasks.records import CallbackRecord, Outlook, TaskRecord
from photo_eraser.tasks.status import ImageStatus, TaskStatus

if TYPE_CHECKING:
    from photo_eraser.runtime import Runtime


def result_data(
    task: TaskRecord, service: Runtime, base: str, outlook: Outlook | None = None
) -> ResultData:
    """What the result route answers for ``task``, its result links on ``base``; ``outlook``
    (what ``wait_time`` is estimated from) is needed only while the task is unfinished."""
    return ResultData.model_validate(result_fields(task, service, lambda: base, outlook))


def result_fields(
    task: TaskRecord, service: Runtime, base: Callable[[], str], outlook: Outlook | None = None
) -> dict[str, Any]:
    """`result_data` as the JSON object it is sent as (``model_dump(exclude_none=True)``: the
    fields in the model's order, none that is None), built without the models: the poll
    answers it straight (`api.poll`). ``base`` is called only if a link is made."""
    wait_time = service.wait_time(task, outlook)
    items = []
    # Links only to a finished task's kept results: the base is not worked out otherwise.
    links = bool(task.finished_at) and any(im.result_key for im in task.images)
    root = base().rstrip("/") if links else ""
    expires = int((task.finished_at or 0) + service.settings.result_ttl_seconds)
    for im in task.images:
        url = ""
        if im.status == ImageStatus.DONE and im.result_key and links:
            url = service.result_url(im.result_key, expires, root)
        item: dict[str, Any] = {
            "image_result": url,
            "status": str(int(im.status)),
            "reason": im.reason,
        }
        if im.method is not None:
            item["method"] = im.method
        if im.recovered_share is not None:
            item["recovered_share"] = round(float(im.recovered_share), 3)
        items.append(item)
    data: dict[str, Any] = {"status": str(int(task.status)), "wait_time": wait_time, "list": items}
    if task.callback is not None:
        data["callback"] = callback_state(task.callback).model_dump(exclude_none=True)
    # Shown while the results are (the retention sweep deletes it with them).
    if task.mask_auto and task.status == TaskStatus.COMPLETE and links:
        data["detected_mask"] = service.result_url(detected_mask_key(task.task_id), expires, root)
    return data


def callback_state(record: CallbackRecord) -> CallbackState:
    """``data.callback``: the last error only while it is not delivered."""
    return CallbackState(
        status=record.state,  # type: ignore[arg-type]  # one of the three (tasks.deliveries)
        attempts=record.attempts,
        delivery_id=record.delivery_id,
        last_status_code=record.last_status_code,
        last_error=None if record.state == "delivered" else record.last_error,
    )


def callback_body(task: TaskRecord, service: Runtime, base: str) -> bytes:
    """The body POSTed to a task's ``callback_url`` (a finished task): the result route's
    envelope, with the ``task_id`` and without ``callback`` (its state is in the headers)."""
    data = result_data(task, service, base)
    data.task_id = task.task_id
    data.callback = None
    return bytes(envelope(Code.OK, data=data.model_dump(exclude_none=True)).body)
