"""The maintenance pass: deadlines, workers that stopped, unpublished tasks, retention.

It runs every second in every API process (and in the embedded server), but in one place at a
time: each pass first takes the database's ``maintenance`` lock (a PostgreSQL advisory lock,
freed with its connection if the process dies) and is skipped where another process holds it.
The retention sweep has a lock of its own, so a slow object store delays only itself.
"""

from __future__ import annotations

import asyncio
import logging
import time

from photo_eraser.config import Settings
from photo_eraser.dispatch import Dispatcher
from photo_eraser.metrics import Metrics
from photo_eraser.storage import (
    MASKS,
    RESULTS,
    TASK_FOLDER,
    UPLOADS,
    BlobStore,
    BlobStoreError,
    task_folder,
)
from photo_eraser.tasks.idempotency import IDEMPOTENCY_TTL_SECONDS
from photo_eraser.tasks.records import Queued
from photo_eraser.tasks.store import TaskStore

log = logging.getLogger(__name__)

RETENTION_EVERY = 60.0
"""Seconds between two retention sweeps (listing the blob store is not free)."""
REDISPATCH_AFTER = 900.0
"""A task still waiting this long after its message was confirmed gets another: the first may
have been lost past the confirm (a purged queue). A duplicate is dropped by the claim, so a
long backlog costs one extra message per waiting task per this period, nothing more."""


class Maintenance:
    def __init__(
        self,
        settings: Settings,
        store: TaskStore,
        blobs: BlobStore,
        dispatcher: Dispatcher,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.store = store
        self.blobs = blobs
        self.dispatcher = dispatcher
        self.metrics = metrics
        self._last_retention = 0.0

    async def run(self, stop: asyncio.Event, every: float = 1.0) -> None:
        """Run a pass every ``every`` seconds until ``stop`` is set."""
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.run_once)
            except Exception:
                log.exception("maintenance pass failed")
            try:
                await asyncio.wait_for(stop.wait(), timeout=every)
            except TimeoutError:
                pass

    def run_once(self) -> bool:
        """One pass, if no other process is running one; whether it ran. The database part
        runs under the ``maintenance`` lock; the publishing after it, outside (a broker that
        hangs must not keep the lock), and the retention sweep under a lock of its own."""
        with self.store.exclusive("maintenance") as mine:
            if not mine:
                return False
            to_publish = self._take_back()
        if to_publish:
            # One process at a time: a batch of confirmed publishes can outlast a pass, and
            # the others would pick the same rows meanwhile (harmless, but doubled messages).
            with self.store.exclusive("publish") as publisher:
                if publisher:
                    log.info("publishing waiting tasks again", extra={"tasks": len(to_publish)})
                    self.dispatcher.publish_now(to_publish)
        if time.monotonic() - self._last_retention > RETENTION_EVERY:
            self._last_retention = time.monotonic()
            with self.store.exclusive("retention") as sweep:
                if sweep:
                    self.delete_expired()
        return True

    def _take_back(self) -> list[Queued]:
        """Time out overdue tasks, take back those of workers that stopped; the waiting tasks
        that need a message (distributed) or a wake-up (embedded)."""
        s = self.settings
        expired = self.store.expire_overdue()
        self.metrics.tasks_finished.labels("timed_out").inc(len(expired))
        requeued, failed = self.store.reap_expired_leases(s.max_attempts)
        if requeued or failed:
            log.warning(
                "took back tasks whose worker stopped renewing its lease",
                extra={"requeued": len(requeued), "failed": failed},
            )
            self.metrics.retries.labels("interrupted").inc(len(requeued))
            self.metrics.tasks_finished.labels("failed").inc(failed)
        if not self.dispatcher.republishes:
            return requeued
        now = time.time()
        # Tasks given back (after a pause), tasks whose publish was never confirmed, and, as a
        # safety net, tasks still waiting long after their message went out.
        return self.store.undispatched(
            now - s.republish_after_seconds, dispatched_before=now - REDISPATCH_AFTER
        )

    def delete_expired(self) -> None:
        """Delete blobs of tasks finished longer ago than the result TTL, uploads stored longer
        ago than that, and blobs no task recorded (a worker that lost its task while saving; a create that failed after storing
        its mask) once they are as old; and idempotency keys older than 24 h."""
        before = time.time() - self.settings.result_ttl_seconds
        for folder in (RESULTS, MASKS):
            task_ids = [f for f in self.blobs.folders(folder) if TASK_FOLDER.match(f)]
            finished = self.store.finish_times(task_ids)
            for task_id in task_ids:
                key = task_folder(folder, task_id)
                if task_id in finished:
                    at = finished[task_id]
                    expired = at is not None and at < before
                else:
                    changed = self.blobs.modified(key)
                    expired = changed is not None and changed < before
                if expired:
                    try:
                        self.blobs.delete_prefix(key)
                    except (OSError, BlobStoreError):
                        log.exception("could not delete a blob folder", extra={"key": key})
        self._delete_old_uploads(before)
        for pk, keys in self.store.expired_blob_keys(before):
            for key in keys:
                self.blobs.delete(key)
            self.store.forget_blobs(pk)
        self.store.forget_masks(before)
        self.store.forget_idempotency_keys(time.time() - IDEMPOTENCY_TTL_SECONDS)
        self.store.forget_silent_workers()

    def _delete_old_uploads(self, before: float) -> None:
        """Uploads stored before ``before``: their links expired with the result TTL."""
        for key, stored in self.blobs.list_blobs(UPLOADS):
            if stored < before:
                try:
                    self.blobs.delete(key)
                except (OSError, BlobStoreError):
                    log.exception("could not delete an upload", extra={"key": key})
