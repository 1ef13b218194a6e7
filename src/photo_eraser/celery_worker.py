"""A worker host of the distributed mode (`photo-eraser worker`): a Celery worker on RabbitMQ.

Celery's prefork pool runs ``concurrency`` child processes; each takes one message at a time
(prefetch 1), claims the task it names in PostgreSQL under a lease of its own, and runs the same
`process_task` as the embedded workers, with the images and results in the S3 store. A message
whose task is not waiting (claimed by another worker after a redelivery, closed, finished) is
acknowledged and dropped. Each child keeps its event loop, downloader, engines and database
pool for its whole life, and says every few seconds that it is alive (one slot each)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from celery import Celery, signals
from celery.exceptions import Reject

from photo_eraser import memory
from photo_eraser.config import Settings
from photo_eraser.disk import DiskMonitor
from photo_eraser.dispatch.celery import QUEUE, RUN_TASK, CeleryDispatcher, make_celery
from photo_eraser.engines.registry import EngineRegistry
from photo_eraser.fetch import Fetcher
from photo_eraser.metrics import Metrics
from photo_eraser.pipeline import MaskCache
from photo_eraser.runtime import HEARTBEAT_SECONDS, open_blob_store
from photo_eraser.storage import UrlSigner
from photo_eraser.tasks.aio import AsyncTaskStore
from photo_eraser.tasks.db import create_db_engine
from photo_eraser.tasks.store import TaskStore
from photo_eraser.tasks.worker import WorkerContext, new_owner, process_task

log = logging.getLogger(__name__)

STORE_RETRY_SECONDS = 2.0
"""A message that arrives while the database is unreachable goes back to the queue after this
pause (not acknowledged: the task is still waiting and must run once the database is back)."""


@dataclass
class _Child:
    """What one worker child process holds for its whole life."""

    ctx: WorkerContext
    loop: asyncio.AbstractEventLoop
    name: str


class WorkerHost:
    """The Celery app of a worker host, and the per-child state its task runs on."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app: Celery = make_celery(settings)
        self._child: _Child | None = None
        self.app.task(name=RUN_TASK, acks_late=True)(self._run_task)
        signals.worker_process_init.connect(self._child_starts, weak=False)
        signals.worker_process_shutdown.connect(self._child_stops, weak=False)

    def start(self, concurrency: int) -> None:
        """Run the worker until it is stopped (SIGTERM: finish the tasks under way)."""
        self.app.worker_main(
            [
                "worker",
                f"--concurrency={concurrency}",
                "--pool=prefork",
                f"--queues={QUEUE}",
                # Unique even for two workers on one host (remote control queues per name).
                f"--hostname=photo-eraser-{os.getpid()}@%h",
                "--loglevel=INFO",
                "--without-gossip",
                "--without-mingle",
            ]
        )

    # ---- In a child process ---------------------------------------------------------------

    def _child_starts(self, **_: object) -> None:
        # Built after the fork (nothing built before it is used after it), at once: an idle
        # child counts among the cluster's live slots from the start.
        self._child = self._build_child()

    def _child_state(self) -> _Child:
        if self._child is None:
            self._child = self._build_child()
        return self._child

    def _build_child(self) -> _Child:
        s = self.settings
        # Not `open_store`: `photo-eraser worker` migrated before forking, and nothing here
        # may need the database up (a child respawned while it is away must still start).
        store = TaskStore(create_db_engine(s.db_url))
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        name = f"{socket.gethostname()}:{os.getpid()}"
        ctx = WorkerContext(
            settings=s,
            store=AsyncTaskStore(store),
            blobs=open_blob_store(s),
            fetcher=Fetcher.from_settings(s),
            engines=EngineRegistry.from_settings(s, threads=1),
            cpu=ThreadPoolExecutor(max_workers=s.image_threads, thread_name_prefix="cpu"),
            masks=MaskCache(s.max_image_bytes, max_side=s.max_side),
            disk=DiskMonitor(s.data_dir, 0),  # results go to the object store
            metrics=Metrics(store.queue_counts),
            dispatcher=CeleryDispatcher(self.app, store),
            signer=UrlSigner(s.signing_secret.encode()) if s.signing_secret else None,
        )
        threading.Thread(target=self._beat, args=(store, name), daemon=True).start()
        log.info("worker child ready", extra={"worker": name})
        return _Child(ctx, loop, name)

    def _beat(self, store: TaskStore, name: str) -> None:
        while True:
            try:
                store.beat(name, 1)
            except Exception as exc:
                log.warning("worker heartbeat failed", extra={"error": str(exc)})
            time.sleep(HEARTBEAT_SECONDS)

    def _child_stops(self, **_: object) -> None:
        if self._child is not None:
            try:
                self._child.ctx.store.sync.forget_worker(self._child.name)
            except Exception:
                pass

    def _run_task(self, task_id: str) -> str:
        """The Celery task: claim ``task_id`` and run it; what became of it, for the log."""
        try:
            child = self._child_state()
            ctx = child.ctx
            task = ctx.store.sync.claim(task_id, new_owner(child.name), self.settings.lease_seconds)
        except Exception as exc:
            # Not acknowledged: the task is still waiting and must run once the database is
            # back (an acknowledged message would leave it waiting with none).
            log.error("claiming a task failed; its message goes back", extra={"error": str(exc)})
            time.sleep(STORE_RETRY_SECONDS)
            raise Reject(str(exc), requeue=True) from exc
        if task is None:
            return "not waiting"  # another worker has it, or it finished: drop the message
        child.loop.run_until_complete(process_task(ctx, task, child.name))
        child.loop.run_until_complete(asyncio.to_thread(memory.trim))
        return "done"
