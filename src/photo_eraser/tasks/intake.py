"""Task intake: creates that arrive together are stored in one transaction (group commit).

Each accepted task must be durable before its 200, and a durable commit costs one fsync
(about 4 ms here). One commit per request serialised the creates on that fsync and on SQLite's
write lock, whose busy handler sleeps ever longer under contention: throughput fell from 221
to 79 creates/s as clients went from 16 to 256. Here one writer thread takes every create
waiting at that moment (up to ``max_batch``) and commits them together: one fsync for all.

The queue is bounded: past ``max_pending`` waiting creates, `submit` raises `IntakeFull` at
once (the API answers 503 with Retry-After) instead of letting latency grow without bound.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future

from photo_eraser.groups import next_group
from photo_eraser.tasks.idempotency import IdempotencyTaken
from photo_eraser.tasks.records import NewTask, Queued
from photo_eraser.tasks.store import TaskStore

log = logging.getLogger(__name__)


class IntakeFull(Exception):
    """More creates are waiting to be stored than the intake holds; retry shortly."""


class OpenTasksLimit(Exception):
    """The key already has as many unfinished tasks as it may (``max_open_per_key``)."""


class IntakeClosed(Exception):
    """The server is shutting down and stores no more tasks."""


class TaskIntake:
    """A writer thread storing new tasks in groups; `submit` waits for the commit."""

    def __init__(
        self,
        store: TaskStore,
        max_pending: int = 1024,
        max_batch: int = 256,
        max_open_per_key: int = 0,
        on_stored: Callable[[Sequence[Queued]], None] | None = None,
    ) -> None:
        self.store = store
        self.on_stored = on_stored
        """Called by the writer thread after each commit with the tasks it stored (the
        dispatcher's publish: after the commit, never before)."""
        self.max_open_per_key = max_open_per_key
        self.max_batch = max_batch
        # None in the queue stops the writer once the creates before it are stored.
        self._queue: queue.Queue[tuple[NewTask, Future[str]] | None] = queue.Queue(max_pending)
        self._thread: threading.Thread | None = None
        self._closed = False
        self._lock = threading.Lock()
        """Held while checking ``_closed`` and queueing, so nothing is queued after the stop
        marker (it would wait for ever)."""

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="task-intake", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Store what is queued, then end the writer thread."""
        with self._lock:
            self._closed = True
        if self._thread is not None:
            self._queue.put(None)  # blocks only while the queue is full, i.e. briefly
            self._thread.join()
            self._thread = None

    async def submit(self, task: NewTask) -> str:
        """Store ``task``; its task_id once committed. Raises `IntakeFull`, `OpenTasksLimit`,
        `IntakeClosed`, or what the store raised for its group (e.g. the disk is full)."""
        future: Future[str] = Future()
        with self._lock:
            if self._closed or self._thread is None or not self._thread.is_alive():
                raise IntakeClosed("the server is shutting down")
            try:
                self._queue.put_nowait((task, future))
            except queue.Full:
                raise IntakeFull(f"{self._queue.maxsize} task creations are waiting") from None
        return await asyncio.wrap_future(future)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            group, stopping = next_group(self._queue, self.max_batch)
            # A request cancelled meanwhile (its client went away) never learns its task id:
            # its task is not stored. Those taken here can no longer be cancelled.
            group = [(t, f) for t, f in group if f.set_running_or_notify_cancel()]
            if group:
                self._store(group)

    def _store(self, group: list[tuple[NewTask, Future[str]]]) -> None:
        """Store a group and resolve its futures; never raises (the writer must not die)."""
        try:
            stored = self.store.create_tasks([task for task, _ in group], self.max_open_per_key)
        except Exception as exc:
            if len(group) > 1:
                # One bad row must not fail the others: store them one by one.
                for one in group:
                    self._store([one])
                return
            if not isinstance(exc, IdempotencyTaken):  # an answer, not a fault
                log.error("storing a new task failed", exc_info=exc)
            group[0][1].set_exception(exc)
            return
        if self.on_stored is not None:
            queued = [
                Queued(t.task_id, t.priority)
                for (t, _), ok in zip(group, stored, strict=True)
                if ok
            ]
            try:
                self.on_stored(queued)
            except Exception:  # stored all the same: the maintenance pass publishes them
                log.exception("handing stored tasks to the dispatcher failed")
        for (task, future), ok in zip(group, stored, strict=True):
            if ok:
                future.set_result(task.task_id)
            else:
                future.set_exception(
                    OpenTasksLimit(f"this key already has {self.max_open_per_key} unfinished tasks")
                )
