"""The dispatch seam."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

from photo_eraser.tasks.records import Queued


class Dispatcher(Protocol):
    """Tells the workers about waiting tasks. Called after the tasks are committed; a lost
    call loses no task (the database is the source of truth), it only delays it."""

    republishes: bool
    """Whether the maintenance pass must publish again the waiting tasks the broker never
    confirmed (distributed). Embedded workers read the queue from the database instead."""

    def publish(self, queued: Sequence[Queued]) -> None:
        """Announce these waiting tasks; returns at once (never blocks on the network)."""

    def publish_now(self, queued: Sequence[Queued]) -> list[str]:
        """Announce these tasks and wait until the broker has them; the ids announced."""

    def closed(self, task_id: str) -> None:
        """A client closed this task: a worker holding it may drop it now instead of at its
        next lease renewal (a third of the lease). Best effort: a lost call costs only that
        wait."""

    def watch_close(self, task_id: str) -> asyncio.Event | None:
        """An event set (on the worker's event loop) when ``closed(task_id)`` is called, while
        that worker holds the task; None where closes cannot reach the worker (another
        process). The worker calls `unwatch_close` when done."""

    def unwatch_close(self, task_id: str, event: asyncio.Event) -> None:
        """Forget ``event``, which `watch_close` gave."""

    def close(self) -> None:
        """Publish what is pending, if it can, and stop."""
