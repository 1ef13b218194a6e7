"""The retention sweep and uploads, on the local blob store and on a real S3 server: an upload
stays while younger than the result TTL and goes once older; results of running tasks are not
touched by it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.s3server import S3Server
from photo_eraser.config import Settings
from photo_eraser.dispatch import InProcessDispatcher
from photo_eraser.maintenance import Maintenance
from photo_eraser.metrics import Metrics
from photo_eraser.runtime import open_store
from photo_eraser.storage import BlobStore, LocalBlobStore, result_key
from photo_eraser.tasks.store import TaskStore
from photo_eraser.uploads import UploadInfo, new_upload_key

TASK = "0b8f4a36-1d7e-4c2a-9f51-3a6e2b7c9d10"


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.services)])
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "local":
        return LocalBlobStore(tmp_path / "blobs")
    s3: S3Server = request.getfixturevalue("s3")
    from photo_eraser.storage.s3 import S3BlobStore

    bucket = s3.make_bucket()
    return S3BlobStore(bucket, "uploads-sweep", endpoint_url=s3.endpoint_url, client=s3.client())


@pytest.fixture
def store(tmp_path: Path) -> Iterator[TaskStore]:
    yield open_store(Settings(data_dir=tmp_path))


def sweep(store: TaskStore, blobs: BlobStore, ttl: float) -> None:
    settings = Settings(data_dir=Path("unused"), result_ttl_seconds=int(ttl))
    metrics = Metrics(store.queue_counts)
    Maintenance(settings, store, blobs, InProcessDispatcher(), metrics).delete_expired()


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
    result = result_key(TASK, 0, "png")
    blobs.put(result, b"result")
    sweep(store, blobs, ttl=1)
    assert blobs.size(upload) is None
    assert blobs.size(result) == 6
