"""The task store for coroutines: the API routes, the workers and the embedded server await
these; each call runs the blocking database call in a thread, so the event loop never waits
on the database. A poll on SQLite reads on the event loop where that cannot wait (`nowait`)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from photo_eraser.tasks.idempotency import Remembered
from photo_eraser.tasks.nowait import NoWaitReads, WouldWait
from photo_eraser.tasks.records import (
    Closing,
    ImageRecord,
    Lease,
    Outlook,
    Queued,
    TaskRecord,
)
from photo_eraser.tasks.status import TaskStatus
from photo_eraser.tasks.store import TaskStore


class AsyncTaskStore:
    """The `TaskStore` calls that coroutines make; ``sync`` is the store itself (for threads:
    the intake writer, the maintenance pass, metrics)."""

    def __init__(self, store: TaskStore) -> None:
        self.sync = store
        self._nowait = NoWaitReads(store.engine) if NoWaitReads.possible(store.engine) else None

    def drop_loop_connection(self) -> None:
        """Close the event loop's own connection, if it has one (the pool is the engine's)."""
        if self._nowait is not None:
            self._nowait.close()

    # ---- The API -----------------------------------------------------------------------

    async def verify_key(self, appkey: str, appsecret: str) -> bool:
        """Checked in memory if the key was read recently (no thread hop), else read."""
        known = self.sync.remembered_key(appkey, appsecret)
        if known is not None:
            return known
        return await asyncio.to_thread(self.sync.verify_key, appkey, appsecret)

    async def get_task(self, task_id: str, appkey: str | None = None) -> TaskRecord | None:
        return await asyncio.to_thread(self.sync.get_task, task_id, appkey)

    async def close(self, task_id: str, appkey: str) -> Closing | None:
        return await asyncio.to_thread(self.sync.close, task_id, appkey)

    async def remembered(self, appkey: str, key: str) -> Remembered | None:
        return await asyncio.to_thread(self.sync.remembered, appkey, key)

    async def webhook_secret(self, appkey: str) -> str | None:
        return await asyncio.to_thread(self.sync.webhook_secret, appkey)

    async def take_token(self, appkey: str, per_minute: int) -> float:
        return await asyncio.to_thread(self.sync.take_token, appkey, per_minute)

    async def poll(
        self, task_id: str, appkey: str, heartbeat_window: float
    ) -> tuple[TaskRecord, Outlook] | None:
        """The key's task and what its ``wait_time`` is estimated from: on SQLite read on
        the event loop if that cannot wait (`nowait`), else in one thread hop
        (``run_in_executor``: ``to_thread`` also copies the context, a third of the hop's CPU,
        and nothing here reads a context variable)."""
        if self._nowait is not None:
            try:
                return self._nowait.run(
                    lambda conn: self.sync.poll_on(
                        conn, task_id, appkey, heartbeat_window, indexed_only=True
                    )
                )
            except WouldWait:
                pass
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.sync.poll, task_id, appkey, heartbeat_window)

    # ---- A worker ----------------------------------------------------------------------

    async def claim_next(self, owner: str, lease_seconds: float) -> TaskRecord | None:
        return await asyncio.to_thread(self.sync.claim_next, owner, lease_seconds)

    async def renew(self, lease: Lease, lease_seconds: float) -> bool:
        return await asyncio.to_thread(self.sync.renew, lease, lease_seconds)

    async def note(self, lease: Lease, reason: str) -> bool:
        return await asyncio.to_thread(self.sync.note, lease, reason)

    async def is_held(self, lease: Lease) -> bool:
        return await asyncio.to_thread(self.sync.is_held, lease)

    async def set_images(self, lease: Lease, updates: Sequence[ImageRecord]) -> bool:
        return await asyncio.to_thread(self.sync.set_images, lease, updates)

    async def finish(
        self,
        lease: Lease,
        status: TaskStatus,
        reason: str = "",
        images: Sequence[ImageRecord] = (),
    ) -> bool:
        return await asyncio.to_thread(self.sync.finish, lease, status, reason, images)

    async def requeue(self, lease: Lease, reason: str, *, attempt_counts: bool = True) -> bool:
        return await asyncio.to_thread(
            self.sync.requeue, lease, reason, attempt_counts=attempt_counts
        )

    async def release(self, lease: Lease) -> bool:
        return await asyncio.to_thread(self.sync.release, lease)

    async def expire_overdue(self) -> list[int]:
        return await asyncio.to_thread(self.sync.expire_overdue)

    # ---- The embedded server -----------------------------------------------------------

    async def release_owned(self, node: str, max_attempts: int) -> tuple[list[Queued], int]:
        return await asyncio.to_thread(self.sync.release_owned, node, max_attempts)

    async def beat(self, worker_id: str, slots: int) -> None:
        await asyncio.to_thread(self.sync.beat, worker_id, slots)

    async def forget_worker(self, worker_id: str) -> None:
        await asyncio.to_thread(self.sync.forget_worker, worker_id)
