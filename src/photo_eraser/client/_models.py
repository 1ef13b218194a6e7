"""Typed views of the seed contract's answers (``GET /v3/pic/rw/result/{task_id}``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, NamedTuple


class TaskStatus(StrEnum):
    """``data.status`` of a task, as the contract numbers it."""

    WAITING = "1"
    RUNNING = "2"
    COMPLETE = "3"
    FAILED = "4"
    CLOSED = "5"
    TIMED_OUT = "6"

    @property
    def finished(self) -> bool:
        return self in (
            TaskStatus.COMPLETE,
            TaskStatus.FAILED,
            TaskStatus.CLOSED,
            TaskStatus.TIMED_OUT,
        )


class ImageStatus(StrEnum):
    """``status`` of one item of ``data.list``."""

    WAITING = "1"
    PROCESSING = "2"
    DONE = "3"
    FAILED = "4"


@dataclass(frozen=True)
class ImageResult:
    """One input image's outcome, in input order. ``url`` is the signed result link (``""``
    unless done); ``method`` and ``recovered_share`` are this server's extensions (``None``
    from a server that does not send them)."""

    index: int
    status: ImageStatus
    url: str
    reason: str
    method: str | None = None
    recovered_share: float | None = None

    @property
    def ok(self) -> bool:
        return self.status is ImageStatus.DONE and bool(self.url)


@dataclass(frozen=True)
class TaskResult:
    """One answer of the result call. ``wait_time`` is the server's advice in seconds before
    the next poll; ``raw`` the answer's ``data`` as sent (fields this SDK does not know)."""

    task_id: str
    status: TaskStatus
    wait_time: float
    images: list[ImageResult]
    detected_mask: str | None = None
    """With ``mask="auto"``: signed link to the mask the server found (an extension)."""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def finished(self) -> bool:
        return self.status.finished

    @property
    def done_count(self) -> int:
        """Images finished one way or the other (done or failed)."""
        return sum(i.status in (ImageStatus.DONE, ImageStatus.FAILED) for i in self.images)


class Erased(NamedTuple):
    """What ``erase`` returns: the final result and, in input order, the file each image was
    written to (``None`` where the image has no result)."""

    result: TaskResult
    files: list[Path | None]
