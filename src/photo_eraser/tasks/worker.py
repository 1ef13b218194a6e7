"""The worker loop: claim the next task, download, decode, restore, store, finish."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import numpy as np

from photo_eraser.config import Settings
from photo_eraser.engines.base import EngineError
from photo_eraser.engines.registry import EngineRegistry
from photo_eraser.fetch import Fetcher, FetchError
from photo_eraser.imaging import (
    DecodedImage,
    ImageError,
    ImageLimits,
    MaskError,
    decode_image,
    decode_mask,
)
from photo_eraser.pipeline import StageTimes, restore_images
from photo_eraser.storage import LocalBlobStore
from photo_eraser.tasks.status import ImageStatus, TaskStatus
from photo_eraser.tasks.store import ImageRecord, TaskRecord, TaskStore

log = logging.getLogger(__name__)


class TaskAbandoned(Exception):
    """The task was closed or timed out while we worked on it; drop the work silently."""


@dataclass
class WorkerContext:
    """What every worker shares: one store, one blob store, one downloader, one engine set."""

    settings: Settings
    store: TaskStore
    blobs: LocalBlobStore
    fetcher: Fetcher
    engines: EngineRegistry

    @property
    def limits(self) -> ImageLimits:
        s = self.settings
        return ImageLimits(
            max_bytes=s.max_image_bytes,
            min_side=s.min_side,
            max_side=s.max_side,
            max_aspect=s.max_aspect,
        )


async def run_worker(
    ctx: WorkerContext, name: str, wake: asyncio.Event, stop: asyncio.Event
) -> None:
    """Process tasks until ``stop`` is set; sleep on ``wake`` (or a short poll) when idle."""
    while not stop.is_set():
        try:
            task = await asyncio.to_thread(ctx.store.claim_next)
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
        except asyncio.CancelledError:
            raise
        except Exception:
            # The store itself failed (disk full, database locked...): the task stays in
            # progress and is re-queued at the next start; keep this worker alive meanwhile.
            log.exception("recording a task's outcome failed", extra={"task_id": task.task_id})
            await asyncio.sleep(1.0)


async def process_task(ctx: WorkerContext, task: TaskRecord, worker: str = "") -> None:
    """Run one claimed task to a final status, or give it back to the queue on our own failure."""
    started = time.perf_counter()
    extra = {"task_id": task.task_id, "worker": worker, "attempt": task.attempts}
    log.info("task started", extra=extra)
    try:
        timeout = max(0.0, task.deadline_at - time.time())
        status, reason = await asyncio.wait_for(_run(ctx, task), timeout=timeout)
    except asyncio.CancelledError:
        # Shutdown: hand the task back without counting this attempt against it.
        ctx.store.release(task.pk)
        log.info("task released at shutdown", extra=extra)
        raise
    except TaskAbandoned:
        log.info("task abandoned (closed or timed out)", extra=extra)
        return
    except TimeoutError:
        await asyncio.to_thread(ctx.store.expire_overdue)
        log.info("task timed out", extra=extra)
        return
    except EngineError as exc:
        status, reason = TaskStatus.FAILED, str(exc)
    except Exception:
        log.exception("task crashed", extra=extra)
        if task.attempts < ctx.settings.max_attempts:
            await asyncio.to_thread(ctx.store.requeue, task.pk, "internal error; retrying")
        else:
            await asyncio.to_thread(
                ctx.store.finish, task.pk, TaskStatus.FAILED, "internal error while processing"
            )
        return
    finished = await asyncio.to_thread(ctx.store.finish, task.pk, status, reason)
    log.info(
        "task finished",
        extra={
            **extra,
            "status": int(status),
            "kept": finished,
            "seconds": round(time.perf_counter() - started, 3),
        },
    )


async def _checkpoint(ctx: WorkerContext, task: TaskRecord) -> None:
    status = await asyncio.to_thread(ctx.store.task_status, task.pk)
    if status != TaskStatus.IN_PROGRESS:
        raise TaskAbandoned


async def _run(ctx: WorkerContext, task: TaskRecord) -> tuple[TaskStatus, str]:
    times = StageTimes()
    records = {im.idx: ImageRecord(im.idx, im.url, ImageStatus.PROCESSING) for im in task.images}
    await asyncio.to_thread(ctx.store.set_images, task.pk, list(records.values()))

    t = time.perf_counter()
    try:
        mask = await _load_mask(ctx, task)
    except (FetchError, MaskError) as exc:
        return TaskStatus.FAILED, f"mask unusable: {exc}"
    times.add("mask", t)

    t = time.perf_counter()
    payloads = await asyncio.gather(
        *(ctx.fetcher.fetch(im.url) for im in task.images), return_exceptions=True
    )
    times.add("download", t)
    await _checkpoint(ctx, task)

    t = time.perf_counter()
    decoded: dict[int, DecodedImage] = {}
    for im, payload in zip(task.images, payloads, strict=True):
        if isinstance(payload, FetchError):
            _fail(records[im.idx], str(payload))
        elif isinstance(payload, BaseException):
            raise payload
        else:
            try:
                decoded[im.idx] = await asyncio.to_thread(decode_image, payload, ctx.limits)
            except ImageError as exc:
                _fail(records[im.idx], str(exc))
    times.add("decode", t)

    if decoded:
        engine = await asyncio.to_thread(ctx.engines.get, task.engine)
        order = sorted(decoded)
        results = await asyncio.to_thread(
            restore_images,
            [decoded[i] for i in order],
            mask,
            engine,
            jpeg_quality=ctx.settings.jpeg_quality,
            times=times,
        )
        await _checkpoint(ctx, task)
        t = time.perf_counter()
        for idx, result in zip(order, results, strict=True):
            key = f"results/{task.task_id}/{idx}.{result.encoded.extension}"
            await asyncio.to_thread(ctx.blobs.put, key, result.encoded.data)
            rec = records[idx]
            rec.status = ImageStatus.DONE
            rec.result_key = key
            rec.method = result.restored.method
            rec.recovered_share = result.restored.recovered_share
        times.add("store", t)

    await asyncio.to_thread(ctx.store.set_images, task.pk, list(records.values()))
    log.info(
        "task stages",
        extra={
            "task_id": task.task_id,
            "engine": task.engine,
            "stages": {k: round(v, 4) for k, v in times.seconds.items()},
        },
    )
    if any(r.status == ImageStatus.DONE for r in records.values()):
        return TaskStatus.COMPLETE, ""
    return TaskStatus.FAILED, "no image could be processed"


def _fail(record: ImageRecord, reason: str) -> None:
    record.status = ImageStatus.FAILED
    record.reason = reason


async def _load_mask(ctx: WorkerContext, task: TaskRecord) -> np.ndarray:
    if task.mask_data is not None:
        data = task.mask_data
    else:
        assert task.mask_url is not None
        data = await ctx.fetcher.fetch(task.mask_url)
    return await asyncio.to_thread(decode_mask, data, ctx.settings.max_image_bytes)
