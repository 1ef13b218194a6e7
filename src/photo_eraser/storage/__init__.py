"""Where results live (blob stores) and how their URLs are signed."""

from photo_eraser.storage.base import (
    RESULTS,
    TASK_FOLDER,
    BlobStore,
    OpenBlob,
    result_key,
    task_results,
)
from photo_eraser.storage.local import LocalBlobStore
from photo_eraser.storage.signing import UrlSigner

__all__ = [
    "RESULTS",
    "TASK_FOLDER",
    "BlobStore",
    "LocalBlobStore",
    "OpenBlob",
    "UrlSigner",
    "result_key",
    "task_results",
]
