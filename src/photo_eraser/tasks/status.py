"""Task and image status values, exactly as the API reports them."""

from __future__ import annotations

from enum import IntEnum


class TaskStatus(IntEnum):
    WAITING = 1
    IN_PROGRESS = 2
    COMPLETE = 3
    FAILED = 4
    CLOSED = 5
    TIMED_OUT = 6

    @property
    def finished(self) -> bool:
        return self >= TaskStatus.COMPLETE


class ImageStatus(IntEnum):
    WAITING = 1
    PROCESSING = 2
    DONE = 3
    FAILED = 4
