"""Embedded dispatch: wake the in-process workers; they claim from the database in order."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from photo_eraser.tasks.records import Queued


class InProcessDispatcher:
    """Sets an `asyncio.Event` the idle workers wait on (from any thread), and tells a worker
    at once when a client closes the task it holds."""

    republishes = False

    def __init__(self) -> None:
        self.wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._held: dict[str, asyncio.Event] = {}
        """Tasks the workers hold -> the event that tells one its task was closed."""

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The event loop the workers run on (publish may be called from other threads)."""
        self._loop = loop

    def publish(self, queued: Sequence[Queued]) -> None:
        if queued and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.wake.set)

    def publish_now(self, queued: Sequence[Queued]) -> list[str]:
        self.publish(queued)
        return [q.task_id for q in queued]

    def closed(self, task_id: str) -> None:
        event = self._held.get(task_id)
        if event is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(event.set)

    def watch_close(self, task_id: str) -> asyncio.Event | None:
        event = self._held[task_id] = asyncio.Event()
        return event

    def unwatch_close(self, task_id: str, event: asyncio.Event) -> None:
        if self._held.get(task_id) is event:  # not a later claim's of the same task
            del self._held[task_id]

    def close(self) -> None:
        self._loop = None
