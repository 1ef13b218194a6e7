"""Wires settings into one running service: store, blobs, signer, engines, workers, sweeper."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import math
import os
import secrets
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import mean
from typing import TextIO

from photo_eraser.config import Settings, usable_cores
from photo_eraser.disk import DiskMonitor
from photo_eraser.engines.registry import EngineRegistry
from photo_eraser.fetch import Fetcher
from photo_eraser.metrics import Metrics
from photo_eraser.pipeline import MaskCache
from photo_eraser.storage import (
    RESULTS,
    TASK_FOLDER,
    BlobStore,
    LocalBlobStore,
    UrlSigner,
    task_results,
)
from photo_eraser.tasks.db import create_db_engine, migrate
from photo_eraser.tasks.intake import TaskIntake
from photo_eraser.tasks.status import TaskStatus
from photo_eraser.tasks.store import TaskRecord, TaskStore
from photo_eraser.tasks.worker import WorkerContext, run_worker

log = logging.getLogger(__name__)

ORPHAN_SECONDS = 300.0
"""An in-progress task no worker holds and that showed no progress this long is re-queued."""
LEASE_STALE_SECONDS = 120.0
"""A database lease not renewed for this long is free. It is renewed every second; the margin
covers the database's 30 s busy timeout and clocks of hosts that disagree by up to a minute."""

DEFAULT_TASK_SECONDS = 5.0
"""Assumed run time of one task before any has finished, for ``wait_time``."""


def open_store(settings: Settings) -> TaskStore:
    """Create the data directory and database if needed and migrate it to the newest schema."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = create_db_engine(settings.db_url)
    migrate(engine)
    return TaskStore(engine)


class Service:
    """Everything a running server holds. ``start``/``stop`` bracket the worker tasks."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = open_store(settings)
        self.blobs: BlobStore = LocalBlobStore(settings.data_dir / "blobs")
        self.signer = UrlSigner.from_data_dir(settings.data_dir, settings.signing_secret)
        self.engines = EngineRegistry(
            settings.models_path,
            threads=_engine_threads(settings),
            restore_exact_fit=settings.restore_exact_fit,
        )
        self.disk = DiskMonitor(settings.data_dir, settings.min_free_disk_mb)
        self.intake = TaskIntake(
            self.store,
            max_pending=settings.max_pending_creates,
            max_open_per_key=settings.max_open_tasks_per_key,
        )
        self.metrics = Metrics(self.store.queue_counts)
        self.masks = MaskCache(settings.max_image_bytes, max_side=settings.max_side)
        self.wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.fetcher: Fetcher | None = None
        self._cpu: ThreadPoolExecutor | None = None
        self._ctx: WorkerContext | None = None
        self._lock_file: TextIO | None = None
        self.lease_holder = ""  # set at start, once the data directory is ours
        self._holds_lease = False
        self.lease_lost = False
        self._workers: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        s = self.settings
        self._take_data_dir_lock()
        try:
            self._take_database_lease()
        except BaseException:
            self._release_data_dir_lock()
            raise
        self.intake.start()
        requeued, failed = await asyncio.to_thread(self.store.recover_interrupted, s.max_attempts)
        if requeued:
            self.metrics.retries.labels("interrupted").inc(requeued)
        if failed:
            self.metrics.tasks_finished.labels("failed").inc(failed)
        if requeued or failed:
            log.warning(
                "recovered interrupted tasks", extra={"requeued": requeued, "failed": failed}
            )
        log.info("engines available", extra={"engines": self.engines.availability()})
        self.fetcher = Fetcher.from_settings(s)
        self._cpu = ThreadPoolExecutor(max_workers=max(1, s.workers), thread_name_prefix="cpu")
        ctx = WorkerContext(
            s,
            self.store,
            self.blobs,
            self.fetcher,
            self.engines,
            self._cpu,
            self.masks,
            self.disk,
            self.metrics,
        )
        self._ctx = ctx
        self._stop.clear()
        for i in range(s.workers):
            worker = asyncio.create_task(run_worker(ctx, f"w{i}", self.wake, self._stop))
            self._workers.append(worker)
            self._tasks.append(worker)
        self._tasks.append(asyncio.create_task(self._sweep()))
        self._tasks.append(asyncio.create_task(self._keep_lease()))

    async def stop(self) -> None:
        await asyncio.to_thread(self.intake.stop)  # every create it took is stored first
        self._stop.set()
        self.wake.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self._workers.clear()
        if self.fetcher is not None:
            await self.fetcher.aclose()
        if self._cpu is not None:
            self._cpu.shutdown(wait=False, cancel_futures=True)
        if self._holds_lease:
            await asyncio.to_thread(self.store.release_lease, self.lease_holder)
            self._holds_lease = False
        self._release_data_dir_lock()

    def _release_data_dir_lock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # releases the flock
            self._lock_file = None

    def _take_database_lease(self) -> None:
        """One serving process per database too: several data directories (or hosts) may
        point at one ``PHOTO_ERASER_DATABASE_URL``, and crash recovery would re-queue the
        other server's running tasks."""
        # Stable across restarts of this data directory (its file lock already keeps out a
        # second process here), so a restart after a crash need not wait; the directory's own
        # random id tells apart containers with the same host name and path.
        data_dir = self.settings.data_dir
        self.lease_holder = f"{socket.gethostname()}:{data_dir.resolve()}:{_server_id(data_dir)}"
        other = self.store.acquire_lease(self.lease_holder, LEASE_STALE_SECONDS)
        if other is not None:
            raise RuntimeError(
                f"another photo-eraser server ({other}) is using this database; a server that "
                f"stopped without a clean shutdown frees it after {LEASE_STALE_SECONDS:.0f} s"
            )
        self._holds_lease = True
        # From now on the workers' writes land only while this server holds the lease.
        self.store.owner = self.lease_holder

    def _take_data_dir_lock(self) -> None:
        """One serving process per data directory: crash recovery assumes no other workers."""
        path = self.settings.data_dir / "serve.lock"
        lock_file = path.open("a+")
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.close()
            raise RuntimeError(
                f"another photo-eraser server is already using {self.settings.data_dir}"
            ) from None
        self._lock_file = lock_file

    async def _sweep(self) -> None:
        """Time out overdue tasks every second; delete expired results every minute."""
        last_cleanup = 0.0
        while not self._stop.is_set():
            try:
                expired = await asyncio.to_thread(self.store.expire_overdue)
                self.metrics.tasks_finished.labels("timed_out").inc(len(expired))
                if self._ctx is not None:
                    owned = set(self._ctx.in_flight)
                    await asyncio.to_thread(
                        self.store.requeue_orphans,
                        owned,
                        ORPHAN_SECONDS,
                        self.settings.max_attempts,
                    )
                if time.monotonic() - last_cleanup > 60:
                    last_cleanup = time.monotonic()
                    await asyncio.to_thread(self._delete_expired_results)
            except Exception:
                log.exception("sweeper pass failed")
            await asyncio.sleep(1.0)

    async def _keep_lease(self) -> None:
        """Renew the database lease every second, apart from the sweeper (whose passes can be
        slow). If another server has taken it over, stop working on tasks at once."""
        while not self._stop.is_set():
            try:
                holder = self.lease_holder
                if not await asyncio.to_thread(self.store.renew_lease, holder):
                    # Gone (e.g. the row was deleted) or someone else's now.
                    other = await asyncio.to_thread(
                        self.store.acquire_lease, holder, LEASE_STALE_SECONDS
                    )
                    if other is not None:
                        self._lease_lost(other)
                        return
            except Exception:
                log.exception("lease renewal failed")
            await asyncio.sleep(1.0)

    def _lease_lost(self, other: str) -> None:
        log.error(
            "lost the database lease to another server: stopped working on tasks",
            extra={"holder": self.lease_holder, "taken_by": other},
        )
        # Their writes are refused already (TaskStore.owner); stop them wasting work.
        self.lease_lost = True
        self._holds_lease = False
        self._stop.set()
        self.wake.set()
        for worker in self._workers:
            worker.cancel()

    def _delete_expired_results(self) -> None:
        before = time.time() - self.settings.result_ttl_seconds
        # Whole folders first: a worker that lost its task (closed, timed out, interrupted)
        # while saving may have written files the database never recorded. Folders of tasks
        # the database does not know (any more) go once they are as old as a result may be.
        folders = [f for f in self.blobs.folders(RESULTS) if TASK_FOLDER.match(f)]
        finished = self.store.finish_times(folders)
        for task_id in folders:
            key = task_results(task_id)
            if task_id in finished:
                at = finished[task_id]
                expired = at is not None and at < before
            else:
                changed = self.blobs.modified(key)
                expired = changed is not None and changed < before
            if expired:
                try:
                    self.blobs.delete_folder(key)
                except OSError:
                    log.exception("could not delete a result folder", extra={"key": key})
        for pk, keys in self.store.expired_result_keys(before):
            for key in keys:
                self.blobs.delete(key)
            self.store.forget_results(pk)
        self.store.forget_masks(before)

    def wait_time(self, task: TaskRecord) -> str:
        """Seconds until the next useful poll, from queue position and recent task durations."""
        if task.status.finished:
            return "0"
        durations = self.store.recent_durations()
        per_task = mean(durations) if durations else DEFAULT_TASK_SECONDS
        workers = max(1, self.settings.workers)
        if task.status == TaskStatus.IN_PROGRESS:
            elapsed = time.time() - (task.started_at or time.time())
            estimate = per_task - elapsed
        else:
            ahead = self.store.queue_position(task)
            estimate = (ahead // workers + 1) * per_task
        return str(max(1, math.ceil(estimate)))


def _engine_threads(settings: Settings) -> int:
    """Split the cores between workers so concurrent inferences do not oversubscribe them."""
    return max(1, usable_cores() // max(1, settings.workers))


def _server_id(data_dir: Path) -> str:
    """A random id made once per data directory (``DATA_DIR/server.id``); call with the data
    directory's lock held."""
    path = data_dir / "server.id"
    try:
        value = path.read_text().strip() if path.exists() else ""
        if not value:
            value = secrets.token_hex(8)
            tmp = path.with_name(".server.id.tmp")
            tmp.write_text(value + "\n")
            os.replace(tmp, path)
    except (OSError, UnicodeDecodeError) as exc:
        raise RuntimeError(f"cannot read or write {path}: {exc}") from None
    return value
