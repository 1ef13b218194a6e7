"""The maintenance pass's retention sweep, on the local blob store and on a real S3 server:
results and inline masks go once their task finished longer ago than the result TTL, blobs no
task recorded go once they are as old, uploads once they are older than the TTL, and folders of
tasks still running stay."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.s3server import S3Server
from photo_eraser.config import Settings
from photo_eraser.dispatch import InProcessDispatcher
from photo_eraser.maintenance import Maintenance
from photo_eraser.metrics import Metrics
from photo_eraser.runtime import open_store
from photo_eraser.storage import BlobStore, LocalBlobStore, mask_key, result_key
from photo_eraser.tasks.records import ImageRecord, NewTask
from photo_eraser.tasks.status import ImageStatus, TaskStatus
from photo_eraser.tasks.store import TaskStore
from photo_eraser.uploads import UploadInfo, new_upload_key


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.services)])
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "local":
        return LocalBlobStore(tmp_path / "blobs")
    s3: S3Server = request.getfixturevalue("s3")
    from photo_eraser.storage.s3 import S3BlobStore

    bucket = s3.make_bucket()
    client = s3.client()
    return S3BlobStore(bucket, "sweep", endpoint_url=s3.endpoint_url, client=client)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[TaskStore]:
    yield open_store(Settings(data_dir=tmp_path))


def sweep(store: TaskStore, blobs: BlobStore, ttl: float) -> None:
    settings = Settings(data_dir=Path("unused"), result_ttl_seconds=int(ttl))
    metrics = Metrics(store.queue_counts)
    Maintenance(settings, store, blobs, InProcessDispatcher(), metrics).delete_expired()


def new_task(store: TaskStore, appkey: str, blobs: BlobStore, inline_mask: bool) -> str:
    task_id = str(uuid.uuid4())
    key = mask_key(task_id) if inline_mask else None
    if key:
        blobs.put(key, b"mask bytes")
    task = NewTask(
        task_id, appkey, ["http://a.example/0.png"], 1, "auto", None if key else "u", key, 60
    )
    assert store.create_tasks([task]) == [True]
    return task_id


def test_results_and_inline_masks_of_expired_tasks_are_deleted(
    store: TaskStore, blobs: BlobStore
) -> None:
    appkey, _ = store.create_key("k")
    task_id = new_task(store, appkey, blobs, inline_mask=True)
    task = store.claim_next("w:1", 60)
    assert task is not None
    key = result_key(task_id, 0, "png")
    blobs.put(key, b"result")
    done = [ImageRecord(0, "http://a.example/0.png", ImageStatus.DONE, result_key=key)]
    assert store.finish(task.lease, TaskStatus.COMPLETE, "", done)
    sweep(store, blobs, ttl=3600)  # not yet expired: kept
    assert blobs.size(key) == 6 and blobs.size(mask_key(task_id)) == 10
    time.sleep(1.1)  # S3 times are whole seconds
    sweep(store, blobs, ttl=0)
    assert blobs.open(key) is None and blobs.open(mask_key(task_id)) is None
    assert blobs.folders("results") == [] and blobs.folders("masks") == []
    record = store.get_task(task_id)
    assert record is not None and record.status == TaskStatus.COMPLETE
    assert record.images[0].result_key is None and record.mask_key is None
    assert "retention" in record.images[0].reason


def test_blobs_nobody_recorded_go_and_running_tasks_stay(
    store: TaskStore, blobs: BlobStore
) -> None:
    """A worker that loses its task (closed, timed out, killed) between writing a result and
    recording it leaves a blob the database does not know; so does a create whose commit
    failed after its mask was stored. They go once old enough; a running task keeps its own."""
    appkey, _ = store.create_key("k")
    closed = new_task(store, appkey, blobs, inline_mask=False)
    running = new_task(store, appkey, blobs, inline_mask=True)
    assert store.claim_next("w:1", 60) is not None and store.claim_next("w:2", 60) is not None
    blobs.put(result_key(closed, 0, "png"), b"written, then the task was closed")
    blobs.put(result_key(running, 0, "png"), b"still being worked on")
    orphan = str(uuid.uuid4())
    blobs.put(result_key(orphan, 0, "png"), b"no such task")
    blobs.put(mask_key(orphan), b"a create that was never committed")
    blobs.put("results/not-a-task/x", b"not ours: left alone")
    closing = store.close(closed, appkey)
    assert closing is not None and closing.status == TaskStatus.CLOSED
    time.sleep(1.1)
    sweep(store, blobs, ttl=0)
    assert sorted(blobs.folders("results")) == sorted(["not-a-task", running])
    assert blobs.folders("masks") == [running]
    assert blobs.size(result_key(running, 0, "png")) is not None


# ---- uploads ------------------------------------------------------------------------------


def test_uploads_older_than_the_ttl_are_deleted(store: TaskStore, blobs: BlobStore) -> None:
    png = UploadInfo("PNG", 400, 300)
    mine = [new_upload_key("pe_a", png), new_upload_key("pe_a", png)]
    theirs = new_upload_key("pe_b", UploadInfo("JPEG", 400, 300))
    for key in [*mine, theirs]:
        blobs.put(key, b"upload")
    listed = [key for key, _ in blobs.list_blobs("uploads")]
    assert listed == sorted([*mine, theirs])
    sweep(store, blobs, ttl=3600)  # younger than the TTL: kept
    assert all(blobs.size(key) == 6 for key in [*mine, theirs])
    time.sleep(1.1)  # S3 times are whole seconds
    newer = new_upload_key("pe_a", png)
    blobs.put(newer, b"new")
    sweep(store, blobs, ttl=1)
    assert [key for key, _ in blobs.list_blobs("uploads")] == [newer]
    assert blobs.folders("uploads") == [newer.split("/")[1]]  # the emptied folder went too


def test_the_upload_sweep_leaves_other_folders_alone(store: TaskStore, blobs: BlobStore) -> None:
    """A result the store does not know yet (a worker saving it), younger than the TTL, stays
    while an older upload goes."""
    upload = new_upload_key("pe_a", UploadInfo("PNG", 400, 300))
    blobs.put(upload, b"upload")
    time.sleep(1.1)
    result = result_key("0b8f4a36-1d7e-4c2a-9f51-3a6e2b7c9d10", 0, "png")
    blobs.put(result, b"result")
    sweep(store, blobs, ttl=1)
    assert blobs.size(upload) is None
    assert blobs.size(result) == 6
