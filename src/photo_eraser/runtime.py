"""What the API routes and the maintenance pass depend on, built for one mode.

- Embedded (`photo-eraser serve`, `service.Service`): SQLite (or any database) in the data
  directory, blobs on the local disk, in-process workers woken by an event.
- Distributed (`photo-eraser api`, `ApiRuntime`): PostgreSQL, an S3 store, Celery on RabbitMQ;
  the workers are other processes (`photo-eraser worker`, `celery_worker.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from functools import lru_cache
from statistics import mean

from photo_eraser.api.presenters import callback_body
from photo_eraser.config import Settings
from photo_eraser.disk import DiskMonitor
from photo_eraser.dispatch import Dispatcher
from photo_eraser.engines.registry import EngineRegistry
from photo_eraser.maintenance import Maintenance
from photo_eraser.metrics import Metrics
from photo_eraser.pipeline import MaskCache
from photo_eraser.storage import BlobStore, BlobStoreError, LocalBlobStore, UrlSigner
from photo_eraser.tasks.aio import AsyncTaskStore
from photo_eraser.tasks.db import create_db_engine, migrate
from photo_eraser.tasks.intake import TaskIntake
from photo_eraser.tasks.records import Outlook, TaskRecord
from photo_eraser.tasks.status import TaskStatus
from photo_eraser.tasks.store import TaskStore
from photo_eraser.tasks.upkeep import HeldLock
from photo_eraser.webhooks import Deliverer, WebhookSender

log = logging.getLogger(__name__)

DEFAULT_TASK_SECONDS = 5.0
"""Assumed run time of one task before any has finished, for ``wait_time``."""
DATABASE_LOCK = "serving"
"""Held shared by every API process of a cluster, exclusively by an embedded server."""
HEARTBEAT_SECONDS = 5.0
"""How often a worker process says it is alive; one not heard for 6x this is gone."""


def open_store(settings: Settings) -> TaskStore:
    """Create the data directory and database if needed and migrate it to the newest schema."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = create_db_engine(settings.db_url)
    migrate(engine)
    return TaskStore(engine, key_cache_seconds=settings.key_cache_seconds)


def open_blob_store(settings: Settings) -> BlobStore:
    """The S3 store named by ``PHOTO_ERASER_STORAGE_URL``, else the data directory's blobs."""
    if settings.storage_url:
        from photo_eraser.storage.s3 import S3BlobStore

        return S3BlobStore.from_url(
            settings.storage_url,
            settings.s3_endpoint_url,
            public_endpoint_url=settings.s3_public_url,
        )
    return LocalBlobStore(settings.data_dir / "blobs")


def check_blob_store(blobs: BlobStore) -> None:
    """Fail at start, saying what to fix, if the object store cannot be used."""
    try:
        blobs.check()
    except BlobStoreError as exc:
        raise RuntimeError(f"cannot use the blob store: {exc}") from None


class RateLimit:
    """Task creations per key per minute, counted in the database: the limit holds over every
    API process of a cluster. (The embedded server counts in memory: `api.auth.RateLimiter`.)"""

    def __init__(self, store: AsyncTaskStore, per_minute: int) -> None:
        self.store = store
        self.per_minute = per_minute

    async def check(self, appkey: str) -> float:
        """0 if ``appkey`` may create a task now, else the seconds until it may."""
        if self.per_minute <= 0:
            return 0.0
        return await self.store.take_token(appkey, self.per_minute)


class Runtime:
    """The dependencies of the routes; subclasses choose the dispatcher and add workers."""

    shares_database = False
    """Whether other processes of the same kind use the database too (a cluster's API
    processes) or it is this process's alone (the embedded server)."""

    def __init__(self, settings: Settings, store: TaskStore, dispatcher: Dispatcher) -> None:
        self.settings = settings
        self.store = AsyncTaskStore(store)
        self.dispatcher = dispatcher
        self.blobs = open_blob_store(settings)
        self.presign: Callable[[str, int], str] | None = None
        """Set when result links are presigned URLs of the object store."""
        if settings.s3_public_url:
            self.presign = getattr(self.blobs, "presigned_url", None)
        self.engines = EngineRegistry.from_settings(settings, threads=self.engine_threads())
        self.intake = TaskIntake(
            store,
            max_pending=settings.max_pending_creates,
            max_open_per_key=settings.max_open_tasks_per_key,
            on_stored=dispatcher.publish,
        )
        self.metrics = Metrics(store.queue_counts)
        self.masks = MaskCache(settings.max_image_bytes, max_side=settings.max_side)
        self.maintenance = Maintenance(settings, store, self.blobs, dispatcher, self.metrics)
        self.signer: UrlSigner
        self.disk: DiskMonitor
        self.rate_limit: RateLimit | None = None
        """Set where creates are limited in the database (distributed); else in memory."""
        self.webhooks: WebhookSender | None = None
        """Sends callbacks and checks a create's ``callback_url`` (set while running)."""
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._database_lock: HeldLock | None = None

    def engine_threads(self) -> int:
        return 1

    def callbacks_owner(self) -> str | None:
        """Prefix of this process's callback leases (None: host and pid)."""
        return None

    async def start(self) -> None:
        if self._database_lock is None:
            self._take_database()
        self._stop.clear()
        self.intake.start()
        self._tasks.append(asyncio.create_task(self.maintenance.run(self._stop)))
        # Every API process sends callbacks; the store's leases keep each with one of them.
        s = self.settings
        self.webhooks = WebhookSender(
            allow_private=s.allow_private_urls, timeout=s.webhook_timeout_seconds
        )
        deliverer = Deliverer(
            s,
            self.store.sync,
            self.webhooks,
            self._callback_body,
            self.metrics,
            self.callbacks_owner(),
        )
        self._tasks.append(asyncio.create_task(deliverer.run(self._stop)))

    async def stop(self) -> None:
        await asyncio.to_thread(self.intake.stop)  # every create it took is stored first
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self.webhooks is not None:
            await self.webhooks.aclose()
            self.webhooks = None
        await asyncio.to_thread(self.dispatcher.close)
        self.store.drop_loop_connection()
        if self._database_lock is not None:
            self._database_lock.release()
            self._database_lock = None

    def _take_database(self) -> None:
        """API processes of a cluster share the database; an embedded server has it alone
        (its workers, blobs and crash recovery are its own): each refuses to start beside the
        other kind."""
        held = self.store.sync.hold(DATABASE_LOCK, shared=self.shares_database)
        if held is None:
            other = (
                "an embedded photo-eraser server is"
                if self.shares_database
                else "another photo-eraser server or a cluster's API processes are"
            )
            raise RuntimeError(
                f"{other} using this database ({self.settings.db_url.split('@')[-1]}); "
                "an embedded server (photo-eraser serve) needs a database of its own"
            )
        self._database_lock = held

    def result_url(self, key: str, expires: int, base: str) -> str:
        """Where a client downloads a result until ``expires``: a presigned URL of the object
        store when PHOTO_ERASER_S3_PUBLIC_URL is set, else the API's own signed link (the API
        streams the blob, so the object store need not be public)."""
        if self.presign is not None:
            return self.presign(key, expires - int(time.time()))
        return self.signed_link(key, expires, base)

    def signed_link(self, key: str, expires: int, base: str) -> str:
        """The API's own link to the blob ``key`` until ``expires`` (`routes.files` serves it).
        Uploads are always linked so, never presigned: a worker recognises the path."""
        signature = self.signer.signature(key, expires)
        return f"{base}/v3/pic/rw/files/{key}?expires={expires}&signature={signature}"

    async def _callback_body(self, task: TaskRecord, base: str) -> bytes:
        return callback_body(task, self, base)

    async def poll(self, task_id: str, appkey: str) -> tuple[TaskRecord, Outlook] | None:
        """The key's task and what its ``wait_time`` is estimated from (None: no such task)."""
        return await self.store.poll(task_id, appkey, heartbeat_window=6 * HEARTBEAT_SECONDS)

    def wait_time(self, task: TaskRecord, outlook: Outlook | None) -> str:
        """Seconds until the next useful poll, from the queue position, recent task durations
        and the worker slots alive now over the whole cluster (``outlook``; None only for a
        finished task)."""
        if task.status.finished:
            return "0"
        assert outlook is not None, "an unfinished task's wait_time needs its outlook"
        per_task = _mean_seconds(tuple(outlook.durations))
        if task.status == TaskStatus.IN_PROGRESS:
            elapsed = time.time() - (task.started_at or time.time())
            estimate = per_task - elapsed
        else:
            estimate = (outlook.ahead // max(1, outlook.slots) + 1) * per_task
        return str(max(1, math.ceil(estimate)))


@lru_cache(maxsize=8)
def _mean_seconds(durations: tuple[float, ...]) -> float:
    """The mean run time ``wait_time`` assumes per task. Cached: the polls of this process
    share one list of run times for a second (`TaskStore.poll`), and ``statistics.mean`` (an
    exact sum of fractions, kept for its exactly rounded result) costs 20-30 us a call."""
    return mean(durations) if durations else DEFAULT_TASK_SECONDS


class ApiRuntime(Runtime):
    """An API process of a cluster: HTTP only; tasks go to the workers through RabbitMQ."""

    shares_database = True

    def __init__(self, settings: Settings) -> None:
        problems = settings.distributed_problems("api")
        if problems:
            raise RuntimeError("cannot start an API process:\n  " + "\n  ".join(problems))
        from photo_eraser.dispatch.celery import CeleryDispatcher, make_celery

        store = open_store(settings)
        super().__init__(settings, store, CeleryDispatcher(make_celery(settings), store))
        check_blob_store(self.blobs)
        assert settings.signing_secret is not None
        self.signer = UrlSigner(settings.signing_secret.encode())
        self.disk = DiskMonitor(settings.data_dir, 0)  # nothing is stored on this host's disk
        self.rate_limit = RateLimit(self.store, settings.rate_limit_per_minute)
