"""Where masks and results live (blob stores) and how their URLs are signed."""

from photo_eraser.storage.base import (
    MASKS,
    RESULTS,
    TASK_FOLDER,
    UPLOADS,
    BlobStore,
    BlobStoreError,
    OpenBlob,
    detected_mask_key,
    mask_key,
    result_key,
    task_folder,
    task_results,
)
from photo_eraser.storage.local import LocalBlobStore
from photo_eraser.storage.signing import UrlSigner

__all__ = [
    "MASKS",
    "RESULTS",
    "TASK_FOLDER",
    "UPLOADS",
    "BlobStore",
    "BlobStoreError",
    "LocalBlobStore",
    "OpenBlob",
    "UrlSigner",
    "detected_mask_key",
    "mask_key",
    "result_key",
    "task_folder",
    "task_results",
]
