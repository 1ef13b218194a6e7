"""The embedded server (`photo-eraser serve`): the API, its workers and the maintenance pass in
one process, on the data directory (SQLite and local blobs unless configured otherwise)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import secrets
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TextIO

from photo_eraser.config import Settings, usable_cores
from photo_eraser.disk import DiskMonitor
from photo_eraser.dispatch import InProcessDispatcher
from photo_eraser.fetch import Fetcher
from photo_eraser.models.autopull import AutoPull
from photo_eraser.runtime import HEARTBEAT_SECONDS, Runtime, open_store
from photo_eraser.storage import UrlSigner
from photo_eraser.tasks.worker import WorkerContext, run_worker

log = logging.getLogger(__name__)

# Kept importable from here: the CLI and tests open the store of a data directory.
__all__ = ["Service", "open_store"]


class Service(Runtime):
    """Everything a running embedded server holds. ``start``/``stop`` bracket the workers."""

    def __init__(self, settings: Settings) -> None:
        self.local = InProcessDispatcher()
        super().__init__(settings, open_store(settings), self.local)
        self.signer = UrlSigner.from_data_dir(settings.data_dir, settings.signing_secret)
        self.disk = DiskMonitor(settings.data_dir, settings.min_free_disk_mb)
        self.node = ""  # the lease owner's name, once the data directory is ours
        self.fetcher: Fetcher | None = None
        self._cpu: ThreadPoolExecutor | None = None
        self._lock_file: TextIO | None = None
        self.auto_pull: AutoPull | None = None
        """The background download of the LaMa model, when this start began one."""

    def callbacks_owner(self) -> str:
        """Callback leases in the data directory's name (as its tasks' leases), so a restart
        after a crash frees its predecessor's at once."""
        return f"{self.node}#callbacks"

    def engine_threads(self) -> int:
        """Split the cores between workers so concurrent inferences do not oversubscribe them."""
        return max(1, usable_cores() // max(1, self.settings.workers))

    async def start(self) -> None:
        s = self.settings
        self._take_data_dir_lock()
        try:
            self._take_database()
        except BaseException:
            self._release_data_dir_lock()
            raise
        # Stable across restarts of this data directory (its lock keeps out a second process
        # here), so a restart after a crash takes its own tasks back at once; the directory's
        # random id tells apart containers with the same host name and path.
        self.node = f"{socket.gethostname()}:{s.data_dir.resolve()}:{_server_id(s.data_dir)}"
        self.local.bind(asyncio.get_running_loop())
        requeued, failed = await self.store.release_owned(self.node, s.max_attempts)
        if requeued:
            self.metrics.retries.labels("interrupted").inc(len(requeued))
        if failed:
            self.metrics.tasks_finished.labels("failed").inc(failed)
        if requeued or failed:
            log.warning(
                "recovered interrupted tasks", extra={"requeued": len(requeued), "failed": failed}
            )
        freed = await asyncio.to_thread(
            self.store.sync.release_deliveries, f"{self.callbacks_owner()}:"
        )
        if freed:
            log.warning("recovered interrupted callbacks", extra={"callbacks": freed})
        await super().start()
        log.info("engines available", extra={"engines": self.engines.availability()})
        if s.auto_pull and s.workers and not self.engines.can_run("lama"):  # 0: accept only
            pulling = AutoPull("lama", s.models_path)
            if pulling.start():
                self.auto_pull = pulling
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
            self.local,
            self.signer,
        )
        for i in range(s.workers):
            worker = run_worker(ctx, f"{self.node}#w{i}", self.local.wake, self._stop)
            self._tasks.append(asyncio.create_task(worker))
        if s.workers:
            self._tasks.append(asyncio.create_task(self._beat()))

    async def stop(self) -> None:
        if self.auto_pull is not None:
            await asyncio.to_thread(self.auto_pull.stop)  # its part file is kept for next time
            self.auto_pull = None
        await super().stop()
        if self.fetcher is not None:
            await self.fetcher.aclose()
        if self._cpu is not None:
            self._cpu.shutdown(wait=False, cancel_futures=True)
        if self.settings.workers and self.node:
            with contextlib.suppress(Exception):
                await self.store.forget_worker(self.node)
        self._release_data_dir_lock()

    def _release_data_dir_lock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # releases the flock
            self._lock_file = None

    async def _beat(self) -> None:
        """Count this server's workers in the cluster's live slots (for ``wait_time``)."""
        while not self._stop.is_set():
            try:
                await self.store.beat(self.node, self.settings.workers)
            except Exception:
                log.exception("worker heartbeat failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=HEARTBEAT_SECONDS)

    def _take_data_dir_lock(self) -> None:
        """One serving process per data directory: its crash recovery takes back the tasks
        leased in the directory's name, so no other process may be working on them."""
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
