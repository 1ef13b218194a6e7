"""What the task store hands out: keys, tasks, their images, and the lease a worker holds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from photo_eraser.imaging.mask import MaskPlacement
from photo_eraser.tasks.idempotency import Idempotency
from photo_eraser.tasks.status import ImageStatus, TaskStatus

AUTO_MASK = "auto"
"""``mask_url`` of a task whose mask is found in its batch (the ``"mask": "auto"`` extension):
the request's own word, which no URL can be."""


@dataclass
class ApiKey:
    appkey: str
    name: str
    created_at: float
    revoked_at: float | None


@dataclass
class ImageRecord:
    idx: int
    url: str
    status: ImageStatus
    reason: str = ""
    result_key: str | None = None
    method: str | None = None
    recovered_share: float | None = None


@dataclass(frozen=True)
class Closing:
    """What closing a task did: its status after the call, and whether this call closed it."""

    status: TaskStatus
    closed_now: bool


@dataclass(frozen=True)
class NewCallback:
    """A create's ``callback_url``: where the result goes once the task has a final status,
    under which delivery id, with result links on ``base_url``."""

    url: str
    base_url: str
    delivery_id: str


@dataclass(frozen=True)
class CallbackRecord:
    """Where a task's callback stands (the result route's ``data.callback``)."""

    delivery_id: str
    state: str
    """pending (not sent yet, or to be sent again), delivered, or failed (given up)."""
    attempts: int
    last_status_code: int | None
    last_error: str | None
    ended_at: float | None


@dataclass(frozen=True)
class NewTask:
    """What a create request asks for; the store adds its status and times. The id is chosen
    by the caller, so an inline mask can be stored under it before the task is."""

    task_id: str
    appkey: str
    urls: Sequence[str]
    priority: int
    engine: str
    mask_url: str | None
    mask_key: str | None
    deadline_seconds: float
    placement: MaskPlacement | None = None
    """How the mask is placed on each image (``mask_fit`` ...); None = the default (stretch)."""
    idempotency: Idempotency | None = None
    """The create's ``Idempotency-Key``, recorded in the task's own transaction."""
    callback: NewCallback | None = None
    """The create's ``callback_url``, recorded in the task's own transaction."""


@dataclass(frozen=True)
class Outlook:
    """Recent task run times, the cluster's live worker slots, and the tasks ahead of one:
    what its ``wait_time`` is estimated from."""

    durations: list[float]
    slots: int
    ahead: int


@dataclass(frozen=True)
class Queued:
    """A waiting task as the dispatcher sees it: which one, and how urgent."""

    task_id: str
    priority: int


@dataclass(frozen=True)
class Lease:
    """A worker's hold on one in-progress task. Every write of that worker names it, and lands
    only while the task is in progress and still leased to ``owner`` (checked in the same
    statement)."""

    pk: int
    task_id: str
    owner: str


@dataclass
class TaskRecord:
    pk: int
    task_id: str
    appkey: str
    status: TaskStatus
    priority: int
    engine: str
    mask_url: str | None
    mask_key: str | None
    mask_data: bytes | None
    """Inline mask of a task created before masks moved to the blob store (version 0005)."""
    attempts: int
    reason: str
    created_at: float
    deadline_at: float
    started_at: float | None
    finished_at: float | None
    lease_owner: str | None = None
    queue_seq: int | None = None
    """Its number in its priority's queue (`tasks/queue.py`); None for tasks from before 0009."""
    placement: MaskPlacement = field(default_factory=MaskPlacement)
    images: list[ImageRecord] = field(default_factory=list)
    callback: CallbackRecord | None = None

    @property
    def mask_auto(self) -> bool:
        """Whether the mask is to be found in the batch (``"mask": "auto"``)."""
        return self.mask_url == AUTO_MASK

    @property
    def lease(self) -> Lease:
        """The lease of a task claimed by a worker."""
        assert self.lease_owner is not None, "not a claimed task"
        return Lease(self.pk, self.task_id, self.lease_owner)
