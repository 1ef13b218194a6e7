"""The local blob store through the `BlobStore` seam: atomic puts, opened reads that outlive a
delete, sizes, and keys that cannot leave its folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from photo_eraser.storage import BlobStore, LocalBlobStore, result_key, task_results

TASK = "0b8f4a36-1d7e-4c2a-9f51-3a6e2b7c9d10"


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return LocalBlobStore(tmp_path / "blobs")


def test_a_blob_reads_back_and_an_open_one_survives_its_deletion(blobs: BlobStore) -> None:
    key = result_key(TASK, 0, "png")
    assert key == f"results/{TASK}/0.png"
    blobs.put(key, b"\x89PNG...")
    assert blobs.size(key) == 7
    opened = blobs.open(key)
    assert opened is not None and opened.size == 7
    blobs.delete_prefix(task_results(TASK))  # the retention sweep, mid-download
    with opened.file as f:
        assert f.read() == b"\x89PNG..."
    assert blobs.open(key) is None and blobs.size(key) is None


@pytest.mark.parametrize("key", ["../escape", "/etc/passwd", "results/../../x", "", "results/"])
def test_keys_outside_the_store_are_not_found(blobs: BlobStore, key: str) -> None:
    assert blobs.open(key) is None and blobs.size(key) is None


def test_a_folder_is_not_a_blob(blobs: BlobStore) -> None:
    blobs.put(result_key(TASK, 1, "jpg"), b"x")
    assert blobs.open(task_results(TASK)) is None and blobs.size(task_results(TASK)) is None
    assert blobs.folders("results") == [TASK]
