"""One task from claim to finish (download, decode, restore, store), and the embedded workers'
loop. The Celery workers of the distributed mode run the same `process_task`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from photo_eraser import memory
from photo_eraser.config import Settings
from photo_eraser.disk import DISK_FULL_REASON, DiskMonitor, is_disk_full
from photo_eraser.dispatch import Dispatcher
from photo_eraser.engines.base import Box, Engine, EngineError, Restored
from photo_eraser.engines.registry import EngineRegistry
from photo_eraser.fetch import Fetcher, FetchError
from photo_eraser.imaging import (
    DecodedImage,
    ImageError,
    ImageLimits,
    MaskError,
    decode_image,
    encode_mask,
)
from photo_eraser.imaging.detect import detect_watermark
from photo_eraser.imaging.rectangles import PixelBoxes, parse_boxes_document
from photo_eraser.metrics import Metrics, download_reason_class
from photo_eraser.pipeline import (
    FittedMasks,
    HeldPart,
    MaskCache,
    RestoredImage,
    StageTimes,
    encode_part,
    encode_result,
    erase_one,
    hold_part,
    restore_batch,
    restore_parts,
)
from photo_eraser.storage import (
    BlobStore,
    BlobStoreError,
    UrlSigner,
    detected_mask_key,
    result_key,
)
from photo_eraser.tasks.aio import AsyncTaskStore
from photo_eraser.tasks.records import ImageRecord, Lease, Queued, TaskRecord
from photo_eraser.tasks.status import ImageStatus, TaskStatus
from photo_eraser.uploads import parse_upload_link, read_upload

log = logging.getLogger(__name__)

T = TypeVar("T")


STORAGE_RETRY_PAUSE = 5.0
"""Seconds between two checks of a blob store that failed a task (it is not hammered)."""


class TaskAbandoned(Exception):
    """The task was closed, timed out or taken back while we worked on it: drop the work."""


@dataclass
class WorkerContext:
    """What every worker shares: one store, one blob store, one downloader, one engine set."""

    settings: Settings
    store: AsyncTaskStore
    blobs: BlobStore
    fetcher: Fetcher
    engines: EngineRegistry
    cpu: ThreadPoolExecutor
    """Decode, engine and encode run here, one thread per worker, apart from the API's threads."""
    masks: MaskCache
    disk: DiskMonitor
    """No new task starts while the data directory is low on space."""
    metrics: Metrics
    dispatcher: Dispatcher
    """Told about a task handed back at shutdown (it may run again at once)."""
    signer: UrlSigner | None = None
    """Checks the links of uploads a task names (None: a cluster worker without the signing
    secret, which trusts the check made when the task was created)."""

    @property
    def limits(self) -> ImageLimits:
        return ImageLimits.from_settings(self.settings)

    async def run_cpu(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.cpu, lambda: fn(*args, **kwargs))


async def run_worker(
    ctx: WorkerContext, name: str, wake: asyncio.Event, stop: asyncio.Event
) -> None:
    """An embedded worker: take the next task from the database until ``stop`` is set; sleep
    on ``wake`` (or a short poll) when idle. ``name`` prefixes its leases' owner."""
    while not stop.is_set():
        disk = await asyncio.to_thread(ctx.disk.state)
        if disk.low:
            log.warning("not starting new tasks: disk space low", extra={"disk": disk.describe()})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            continue
        try:
            task = await _claim(ctx, name)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("claiming a task failed", extra={"worker": name})
            task = None
        if task is None:
            wake.clear()
            try:
                await asyncio.wait_for(wake.wait(), timeout=0.5)
            except TimeoutError:
                pass
            continue
        try:
            await process_task(ctx, task, name)
            # The task's images and buffers are freed now; give the memory back, so an idle
            # worker does not hold the peak of its last task. Not on cancellation (shutdown):
            # the trim would queue behind the cancelled task's engine call.
            await ctx.run_cpu(memory.trim)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The store itself failed (disk full, database gone...). The task's lease runs out
            # and the maintenance pass re-queues it; keep this worker alive meanwhile.
            log.exception("recording a task's outcome failed", extra={"task_id": task.task_id})
            await asyncio.sleep(1.0)


async def _claim(ctx: WorkerContext, name: str) -> TaskRecord | None:
    """Claim the next task; a shutdown during the claim hands the claimed task straight back."""
    owner = new_owner(name)
    claim = asyncio.ensure_future(ctx.store.claim_next(owner, ctx.settings.lease_seconds))
    try:
        return await asyncio.shield(claim)
    except asyncio.CancelledError:
        task = await claim
        if task is not None:
            await ctx.store.release(task.lease)
        raise


def new_owner(name: str) -> str:
    """A lease owner unique to one claim, so a worker's late write can never land on a later
    claim of the same task by the same worker."""
    return f"{name}:{uuid.uuid4().hex[:12]}"


async def process_task(ctx: WorkerContext, task: TaskRecord, worker: str = "") -> None:
    """Run one claimed task to a final status, or give it back to the queue on our own failure.
    The task's lease is renewed meanwhile; if it is lost, the work stops."""
    started = time.perf_counter()
    metrics = ctx.metrics
    lease = task.lease
    extra = {"task_id": task.task_id, "worker": worker, "attempt": task.attempts}
    log.info("task started", extra=extra)
    records = {im.idx: ImageRecord(im.idx, im.url, ImageStatus.PROCESSING) for im in task.images}
    try:
        timeout = max(0.0, task.deadline_at - time.time())
        work = asyncio.wait_for(_run(ctx, task, records), timeout=timeout)
        status, reason = await _holding_lease(ctx, lease, work)
    except asyncio.CancelledError:
        await _release_at_shutdown(ctx, task, extra)
        raise
    except TaskAbandoned:
        log.info("task abandoned (closed, timed out or taken back)", extra=extra)
        return
    except TimeoutError:
        expired = await ctx.store.expire_overdue()
        metrics.tasks_finished.labels("timed_out").inc(len(expired))
        log.info("task timed out", extra=extra)
        return
    except EngineError as exc:
        # The per-image verdicts we already have (download or format failures) are kept.
        status, reason = TaskStatus.FAILED, str(exc)
    except Exception as exc:
        await _after_crash(ctx, task, exc, extra)
        return
    # The images' verdicts and the task's status are written together (see TaskStore.finish).
    finished = await ctx.store.finish(lease, status, reason, list(records.values()))
    if finished:
        seconds = time.perf_counter() - started
        metrics.tasks_finished.labels(status.name.lower()).inc()
        metrics.task_duration.observe(seconds)
        metrics.queue_wait.observe(max(0.0, (task.started_at or time.time()) - task.created_at))
        for rec in records.values():
            outcome = "done" if rec.status == ImageStatus.DONE else "failed"
            metrics.images.labels(rec.method or task.engine, outcome).inc()
    log.info(
        "task finished",
        extra={
            **extra,
            "status": int(status),
            "kept": finished,
            "seconds": round(time.perf_counter() - started, 3),
        },
    )


async def _release_at_shutdown(ctx: WorkerContext, task: TaskRecord, extra: dict[str, Any]) -> None:
    """Hand the task back without counting this attempt against it, and say it waits."""
    await asyncio.shield(ctx.store.release(task.lease))
    ctx.dispatcher.publish([Queued(task.task_id, task.priority)])
    log.info("task released at shutdown", extra=extra)


async def _after_crash(
    ctx: WorkerContext, task: TaskRecord, exc: Exception, extra: dict[str, Any]
) -> None:
    """A failure of ours, not the input's: retry the task, or fail it once out of attempts."""
    if isinstance(exc, BlobStoreError):
        # The object store is away: no attempt can help until it is back, so none is spent.
        # The worker keeps the task (its lease renewed) until the store answers again or the
        # deadline passes, then gives it back: the images are downloaded and restored again
        # once, not once per pause.
        ctx.metrics.retries.labels("storage_unavailable").inc()
        log.error("task could not use the blob store", extra={**extra, "error": str(exc)})
        try:
            await ctx.store.note(task.lease, f"{exc}; waiting for it to come back")
            await _holding_lease(ctx, task.lease, _until_store_is_back(ctx, task))
        except TaskAbandoned:
            return
        except asyncio.CancelledError:  # shutdown during the wait
            await _release_at_shutdown(ctx, task, extra)
            raise
        await ctx.store.requeue(task.lease, f"{exc}; retrying", attempt_counts=False)
        return
    if is_disk_full(exc):
        # Retried once space is freed (no task starts before).
        cause = "disk_full"
        log.error("task could not save its results: disk full", extra=extra)
        retry, give_up = f"{DISK_FULL_REASON}; retrying", f"{DISK_FULL_REASON}: results not saved"
    else:
        cause = "internal_error"
        log.exception("task crashed", extra=extra)
        retry, give_up = "internal error; retrying", "internal error while processing"
    if task.attempts < ctx.settings.max_attempts:
        ctx.metrics.retries.labels(cause).inc()
        # Not published again here: in a cluster the maintenance pass does, after
        # `republish_after_seconds`; embedded workers find it in the database.
        await ctx.store.requeue(task.lease, retry)
    elif await ctx.store.finish(task.lease, TaskStatus.FAILED, give_up):
        ctx.metrics.tasks_finished.labels(TaskStatus.FAILED.name.lower()).inc()


async def _until_store_is_back(ctx: WorkerContext, task: TaskRecord) -> None:
    """Wait, a pause at a time, until the blob store answers or the task's deadline passes."""
    while time.time() < task.deadline_at:
        await asyncio.sleep(STORAGE_RETRY_PAUSE)
        try:
            await asyncio.to_thread(ctx.blobs.check)
            return
        except BlobStoreError:
            continue


async def _holding_lease(ctx: WorkerContext, lease: Lease, work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` while renewing ``lease`` every third of its length, and at once when a
    client closes the task through this process; if the lease is lost (the task was closed,
    timed out, or taken back from a worker thought dead), cancel the work and raise
    `TaskAbandoned`."""
    seconds = ctx.settings.lease_seconds
    running = asyncio.ensure_future(work)
    lost = False
    closed = ctx.dispatcher.watch_close(lease.task_id)

    async def renew() -> None:
        nonlocal lost
        while True:
            if closed is None:
                await asyncio.sleep(seconds / 3)
            else:  # a close in this process checks the lease at once
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(closed.wait(), seconds / 3)
                closed.clear()
            try:
                held = await ctx.store.renew(lease, seconds)
            except Exception as exc:  # the database is away: try again, the lease may hold
                log.warning("renewing a lease failed", extra={"error": str(exc)})
                continue
            if not held:
                lost = True
                running.cancel()
                return

    keeper = asyncio.create_task(renew())
    try:
        return await running
    except asyncio.CancelledError:
        if lost:
            raise TaskAbandoned from None
        raise
    finally:
        keeper.cancel()
        if closed is not None:
            ctx.dispatcher.unwatch_close(lease.task_id, closed)


async def _save_images(
    ctx: WorkerContext, task: TaskRecord, records: dict[int, ImageRecord]
) -> None:
    if not await ctx.store.set_images(task.lease, list(records.values())):
        raise TaskAbandoned


async def _checkpoint(ctx: WorkerContext, task: TaskRecord) -> None:
    if not await ctx.store.is_held(task.lease):
        raise TaskAbandoned


async def _run(
    ctx: WorkerContext, task: TaskRecord, records: dict[int, ImageRecord]
) -> tuple[TaskStatus, str]:
    times = StageTimes()
    await _save_images(ctx, task, records)

    t = time.perf_counter()
    mask: np.ndarray | PixelBoxes | None = None  # None: found in the batch (mask auto)
    if not task.mask_auto:
        try:
            mask = await _load_mask(ctx, task)
        except (FetchError, MaskError) as exc:
            if isinstance(exc, FetchError):
                ctx.metrics.download_failures.labels(download_reason_class(exc.reason)).inc()
            return TaskStatus.FAILED, f"mask unusable: {exc}"
        times.add("mask", t)

    try:
        failed = await _TaskImages(ctx, task, records, mask, times).run()
    except _MaskUnusable as exc:
        return TaskStatus.FAILED, f"mask unusable: {exc}"
    if failed is not None:
        return TaskStatus.FAILED, failed  # each image without a verdict gets the reason

    for stage, seconds in times.seconds.items():
        ctx.metrics.stage_seconds.labels(stage).observe(seconds)
    if "engine" in times.seconds:
        ctx.metrics.engine_seconds.labels(task.engine).observe(times.seconds["engine"])
    log.info(
        "task stages",
        extra={
            "task_id": task.task_id,
            "engine": task.engine,
            "stages": {k: round(v, 4) for k, v in times.seconds.items()},
            "methods": [r.method for r in records.values()],
            "recovered_share": [r.recovered_share for r in records.values()],
        },
    )
    if any(r.status == ImageStatus.DONE for r in records.values()):
        return TaskStatus.COMPLETE, ""
    return TaskStatus.FAILED, "no image could be processed"


class _MaskUnusable(Exception):
    """The task's pixel boxes do not fit its first image."""


class _TaskImages:
    """A task's images through download, decode, engine, encode and store.

    A per-image engine (`Engine.per_image`) takes each image alone from download to stored
    result, ``image_threads`` of them in the CPU stages at once; a batch engine gets every
    decoded image in one call, then the results are encoded and stored ``image_threads`` at a
    time. Either way at most twice ``image_threads`` images are downloaded and not yet
    decoded, so a task of large images holds a few of them, not all. Results are put without
    an fsync each and made durable together before the task is finished (``make_durable``).
    """

    def __init__(
        self,
        ctx: WorkerContext,
        task: TaskRecord,
        records: dict[int, ImageRecord],
        mask: np.ndarray | PixelBoxes | None,
        times: StageTimes,
    ) -> None:
        self.ctx = ctx
        self.task = task
        self.records = records
        self.mask = mask
        self.times = times
        threads = max(1, ctx.settings.image_threads)
        self.cpu = asyncio.Semaphore(threads)
        """Images of this task in the CPU stages (each holds its decoded pixels)."""
        self.window = asyncio.Semaphore(2 * threads)
        """Images of this task downloaded or downloading and not yet decoded."""
        self.fitted = FittedMasks(mask, task.placement) if isinstance(mask, np.ndarray) else None
        loop = asyncio.get_running_loop()
        self.sizes: dict[int, asyncio.Future[tuple[int, int] | None]] = {
            im.idx: loop.create_future() for im in task.images
        }
        """Each image's decoded (height, width), None if it failed: pixel boxes are drawn on
        the first image that decoded."""
        self.stored: list[str] = []
        self.windows: dict[tuple[int, int], Box | None] = {}
        """The engine's window per image size (``_window``)."""
        self.windows_lock = threading.Lock()

    async def run(self) -> str | None:
        """Every image to its verdict; returns why the task failed as a whole (no watermark
        found for a task whose mask is to be detected), else None."""
        try:
            engine: Engine | EngineError = await asyncio.to_thread(
                self.ctx.engines.get, self.task.engine
            )
        except EngineError as exc:  # raised once an image decodes, as before streaming
            engine = exc
        failed = None
        try:
            # A mask found in the batch needs every image decoded first: no streaming then.
            if isinstance(engine, Engine) and engine.per_image and self.mask is not None:
                await _all(self._stream(im, engine) for im in self.task.images)
            else:
                failed = await self._batch(engine)
        finally:
            for future in self.sizes.values():
                if not future.done():
                    future.set_result(None)
        t = time.perf_counter()
        await _checkpoint(self.ctx, self.task)
        if self.stored:
            await asyncio.to_thread(self.ctx.blobs.make_durable, self.stored)
        self.times.add("store", t)
        return failed

    async def _stream(self, im: ImageRecord, engine: Engine) -> None:
        """One image from download to stored result."""
        async with self.window:
            payload = await self._download(im)
            if payload is None:
                return
            if self.fitted is not None:  # the common case: one pool call from bytes to result
                async with self.cpu:
                    result = await self.ctx.run_cpu(self._erase_payload, im, payload, engine)
                decoded = None
            else:
                async with self.cpu:
                    decoded = await self.ctx.run_cpu(self._decode, im, payload)
                if decoded is None:
                    return
            del payload
        if decoded is not None:
            # Pixel boxes are drawn on the first image that decoded: wait for the images
            # before this one to decode or fail, holding no slot meanwhile.
            masks = await self._masks_for(im.idx)
            async with self.cpu:
                result = await self.ctx.run_cpu(
                    erase_one,
                    decoded,
                    masks,
                    engine,
                    jpeg_quality=self.ctx.settings.jpeg_quality,
                    times=self.times,
                )
            del decoded
        if result is not None:
            await self._store(im.idx, result)

    def _erase_payload(
        self, im: ImageRecord, payload: bytes, engine: Engine
    ) -> RestoredImage | None:
        decoded = self._decode(im, payload)
        if decoded is None:
            return None
        assert self.fitted is not None
        return erase_one(
            decoded,
            self.fitted,
            engine,
            jpeg_quality=self.ctx.settings.jpeg_quality,
            times=self.times,
        )

    async def _batch(self, engine: Engine | EngineError) -> str | None:
        """Every image decoded, the batch restored in one engine call, each result encoded and
        stored; the mask detected in the batch first if the task has none (returns why none
        was found, if so).

        An engine that needs only a part of each image (``Engine.window``; ``auto``: the mask's
        surroundings) is given the parts: each image is held as its part and its bytes, and
        decoded again to put the restored part back and encode it. Twenty 12 MP images are
        687 MB decoded, their parts a few MB. Where the parts cannot be used (images of several
        sizes, fewer images than the window was asked for), the held images are decoded whole
        again."""
        decoded: dict[int, DecodedImage | HeldPart] = {}
        # Parts need the mask before decoding: not for pixel boxes or a mask found in the batch.
        parted = engine if isinstance(engine, Engine) and self.fitted is not None else None

        async def decode(im: ImageRecord) -> None:
            async with self.window:
                payload = await self._download(im)
                if payload is None:
                    return
                async with self.cpu:
                    image = await self.ctx.run_cpu(self._decode_held, im, payload, parted)
            if image is not None:
                decoded[im.idx] = image

        await _all(decode(im) for im in self.task.images)
        if not decoded:
            return None
        if self.mask is None:
            t = time.perf_counter()
            whole = {i: image for i, image in decoded.items() if isinstance(image, DecodedImage)}
            found = await _detected_mask(self.ctx, self.task, whole)
            self.times.add("detect", t)
            if isinstance(found, str):
                return found
            self.fitted = FittedMasks(found, self.task.placement)
        if isinstance(engine, EngineError):
            raise engine
        order = sorted(decoded)
        masks = await self._masks_for(order[0])
        items = [decoded.pop(i) for i in order]
        held = self._parts(items, engine, masks)
        if held is not None:
            await self._restore_parts(order, held, engine, masks)
            return None
        images = await self._whole(items)
        del items
        restored = await self.ctx.run_cpu(restore_batch, images, masks, engine, times=self.times)
        pending = list(zip(order, images, restored, strict=True))
        del images, restored

        async def encode(idx: int, image: DecodedImage, result: Restored) -> None:
            async with self.cpu:
                encoded = await self.ctx.run_cpu(
                    encode_result,
                    image,
                    result,
                    jpeg_quality=self.ctx.settings.jpeg_quality,
                    times=self.times,
                    consume=True,
                )
            del image, result
            await self._store(idx, encoded)

        jobs = [encode(*job) for job in pending]
        del pending
        await _all(jobs)
        return None

    async def _restore_parts(
        self, order: list[int], held: list[HeldPart], engine: Engine, masks: FittedMasks
    ) -> None:
        """The batch restored on its parts; each image decoded again, its part put back,
        encoded and stored, ``image_threads`` at a time."""
        restored = await self.ctx.run_cpu(restore_parts, held, masks, engine, times=self.times)
        pending = list(zip(order, held, restored, strict=True))
        del held, restored

        async def encode(idx: int, part: HeldPart, result: Restored) -> None:
            async with self.cpu:
                encoded = await self.ctx.run_cpu(
                    encode_part,
                    part,
                    result,
                    self.ctx.limits,
                    jpeg_quality=self.ctx.settings.jpeg_quality,
                    times=self.times,
                )
            del part, result
            await self._store(idx, encoded)

        jobs = [encode(*job) for job in pending]
        del pending
        await _all(jobs)

    def _decode_held(
        self, im: ImageRecord, payload: bytes, engine: Engine | None
    ) -> DecodedImage | HeldPart | None:
        """``_decode``, then only the part of the image ``engine`` needs, if it names one."""
        image = self._decode(im, payload)
        if image is None or engine is None:
            return image
        box = self._window(engine, image.height, image.width)
        return image if box is None else hold_part(image, payload, box)

    def _window(self, engine: Engine, height: int, width: int) -> Box | None:
        """The engine's window for images of this size in a batch of the task's images
        (computed once per size; the decoding threads share it)."""
        with self.windows_lock:
            if (height, width) in self.windows:
                return self.windows[height, width]
        assert self.fitted is not None
        box = engine.window(self.fitted.for_size(height, width), len(self.task.images))
        with self.windows_lock:
            return self.windows.setdefault((height, width), box)

    def _parts(
        self, items: list[DecodedImage | HeldPart], engine: Engine, masks: FittedMasks
    ) -> list[HeldPart] | None:
        """The held parts, if the engine can restore the batch from them: every image held
        and of one size, and the window the same for the images that decoded."""
        held = [item for item in items if isinstance(item, HeldPart)]
        if not held or len(held) < len(items):
            return None
        size = (held[0].height, held[0].width)
        if any((h.height, h.width) != size for h in held):
            return None  # several sizes: the grid places each by the others' masks
        box = engine.window(masks.for_size(*size), len(held))
        return held if all(h.box == box for h in held) else None

    async def _whole(self, items: list[DecodedImage | HeldPart]) -> list[DecodedImage]:
        """The batch as whole decoded images: held parts decoded again, in parallel."""

        async def whole(item: DecodedImage | HeldPart) -> DecodedImage:
            if isinstance(item, DecodedImage):
                return item
            async with self.cpu:
                t = time.perf_counter()
                image = await self.ctx.run_cpu(decode_image, item.payload, self.ctx.limits)
                self.times.add("decode", t)
                return image

        return list(await asyncio.gather(*(whole(item) for item in items)))

    async def _download(self, im: ImageRecord) -> bytes | None:
        """The image's bytes, or None with the image failed (a download failure)."""
        t = time.perf_counter()
        try:
            return await fetch_input(self.ctx, im.url, self.task.appkey)
        except FetchError as exc:
            self.ctx.metrics.download_failures.labels(download_reason_class(exc.reason)).inc()
            _fail(self.records[im.idx], str(exc))
            self.sizes[im.idx].set_result(None)
            return None
        finally:
            self.times.add("download", t)

    def _decode(self, im: ImageRecord, payload: bytes) -> DecodedImage | None:
        """Decoded pixels (on a pool thread), or None with the image failed. Tells
        ``self.sizes`` either way."""
        t = time.perf_counter()
        future = self.sizes[im.idx]
        loop = future.get_loop()
        try:
            image = decode_image(payload, self.ctx.limits)
        except ImageError as exc:
            _fail(self.records[im.idx], str(exc))
            loop.call_soon_threadsafe(_settle, future, None)
            return None
        finally:
            self.times.add("decode", t)
        loop.call_soon_threadsafe(_settle, future, (image.height, image.width))
        return image

    async def _masks_for(self, idx: int) -> FittedMasks:
        """The task's mask; pixel boxes drawn on the first image (by index) that decoded,
        once every image before ``idx`` has decoded or failed."""
        if self.fitted is not None:
            return self.fitted
        assert isinstance(self.mask, PixelBoxes)
        for i in sorted(self.sizes):
            size = await self.sizes[i]
            if size is not None:
                break
        assert size is not None  # image ``idx`` itself decoded
        if self.fitted is None:
            height, width = size
            try:
                self.fitted = FittedMasks(self.mask.draw(width, height), self.task.placement)
            except MaskError as exc:
                raise _MaskUnusable(str(exc)) from exc
        return self.fitted

    async def _store(self, idx: int, result: RestoredImage) -> None:
        t = time.perf_counter()
        key = result_key(self.task.task_id, idx, result.encoded.extension)
        await asyncio.to_thread(self.ctx.blobs.put, key, result.encoded.data, durable=False)
        self.stored.append(key)
        rec = self.records[idx]
        rec.status = ImageStatus.DONE
        rec.result_key = key
        rec.method = result.restored.method
        rec.recovered_share = result.restored.recovered_share
        self.times.add("store", t)


def _settle(future: asyncio.Future[T], value: T) -> None:
    if not future.done():
        future.set_result(value)


async def _all(jobs: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run the jobs concurrently; the first error (or a cancellation) cancels the others and
    is raised once they have stopped."""
    running = [asyncio.ensure_future(job) for job in jobs]
    try:
        await asyncio.gather(*running)
    except BaseException:
        for job in running:
            job.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        raise


async def _detected_mask(
    ctx: WorkerContext, task: TaskRecord, decoded: dict[int, DecodedImage]
) -> np.ndarray | str:
    """The watermark the decoded images share, as a mask (stored as the task's detected mask
    first), or why none was found."""
    found = await ctx.run_cpu(detect_watermark, [decoded[i].pixels for i in sorted(decoded)])
    log.info(
        "watermark detection",
        extra={
            "task_id": task.task_id,
            "found": found.found,
            "images": found.images,
            "confidence": found.confidence,
            "contrast": round(found.contrast, 2),
            "shifts": found.shifts,
        },
    )
    if found.mask is None:
        return found.reason
    png = await ctx.run_cpu(encode_mask, found.mask)
    await _checkpoint(ctx, task)
    await asyncio.to_thread(ctx.blobs.put, detected_mask_key(task.task_id), png)
    return found.mask


def _fail(record: ImageRecord, reason: str) -> None:
    record.status = ImageStatus.FAILED
    record.reason = reason


async def _load_mask(ctx: WorkerContext, task: TaskRecord) -> np.ndarray | PixelBoxes:
    """The task's mask; for pixel boxes of the first image, the boxes (drawn once its size is
    known)."""
    if task.mask_key is not None:
        data = await asyncio.to_thread(_read_blob, ctx.blobs, task.mask_key)
        boxes = parse_boxes_document(data)
        if boxes is not None:
            return boxes
    elif task.mask_data is not None:  # a task created before masks moved to the blob store
        data = task.mask_data
    else:
        assert task.mask_url is not None
        data = await fetch_input(ctx, task.mask_url, task.appkey)
    return await ctx.run_cpu(ctx.masks.decode, data)


async def fetch_input(ctx: WorkerContext, url: str, appkey: str) -> bytes:
    """An image or mask a task names: an upload of this service is read from the blob store
    (no HTTP round trip, no address policy to pass); any other URL is downloaded."""
    link = parse_upload_link(url)
    if link is None:
        return await ctx.fetcher.fetch(url)
    return await asyncio.to_thread(read_upload, ctx.blobs, link, appkey, ctx.signer)


def _read_blob(blobs: BlobStore, key: str) -> bytes:
    blob = blobs.open(key)
    if blob is None:
        raise MaskError("the uploaded mask is gone from the blob store")
    with blob.file as f:
        return f.read()
