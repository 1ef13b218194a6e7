"""The blob store seam: where masks and results are kept, and the layout of their keys.

The embedded mode keeps blobs on the local disk (`local.py`); the distributed mode keeps them in
an S3 object store (`s3.py`) behind the same methods. Keys are relative, ``/``-separated names; nothing
outside a store sees a filesystem path."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO, Protocol

RESULTS = "results"
"""Folder of result files, one subfolder per task: ``results/<task_id>/<index>.<ext>``."""
MASKS = "masks"
"""Folder of inline masks (sent in the create request), one per task: ``masks/<task_id>/mask``."""
UPLOADS = "uploads"
"""Folder of files uploaded through ``POST /v3/pic/rw/upload``, one subfolder per key:
``uploads/<owner>/<upload_id>.<ext>`` (`photo_eraser.uploads` names the owner)."""
TASK_FOLDER = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
"""A folder name under `RESULTS` that is a task id (uuid4, as the store makes them)."""


_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")


def is_valid_key(key: str) -> bool:
    """Whether ``key`` is a relative ``/``-separated name that stays inside its store (no
    ``..``, no leading ``/``, no empty part): the rule of every store."""
    return bool(_KEY.match(key)) and ".." not in key.split("/")


def result_key(task_id: str, index: int, extension: str) -> str:
    """Key of the result of image ``index`` of a task (the same on every attempt)."""
    return f"{RESULTS}/{task_id}/{index}.{extension}"


def detected_mask_key(task_id: str) -> str:
    """Key of the mask found in a task's batch (``"mask": "auto"``), beside its results (it
    is signed like them and expires with them)."""
    return f"{RESULTS}/{task_id}/detected-mask.png"


def task_results(task_id: str) -> str:
    """Key of the folder holding all results of a task."""
    return task_folder(RESULTS, task_id)


def mask_key(task_id: str) -> str:
    """Key of the inline mask of a task."""
    return f"{task_folder(MASKS, task_id)}/mask"


def task_folder(folder: str, task_id: str) -> str:
    """Key of a task's folder under ``RESULTS`` or ``MASKS``."""
    return f"{folder}/{task_id}"


class BlobStoreError(Exception):
    """The blob store could not be reached or refused the request (ours, not the input's):
    retry later."""


@dataclass
class OpenBlob:
    """A blob opened for reading: its size and a file to read it from (close it when done)."""

    size: int
    file: BinaryIO


class BlobStore(Protocol):
    """What the service needs of a blob store."""

    def put(self, key: str, data: bytes, *, durable: bool = True) -> None:
        """Store ``data`` under ``key`` atomically: a reader sees all of it or none. With
        ``durable=False`` it may not survive a power cut until `make_durable` names it."""

    def make_durable(self, keys: Sequence[str]) -> None:
        """Make blobs put with ``durable=False`` survive a power cut, in one pass (a task's
        results, before it is recorded as finished)."""

    def open(self, key: str) -> OpenBlob | None:
        """The blob for reading, or None if there is none (or the key is not valid)."""

    def size(self, key: str) -> int | None:
        """The blob's size in bytes, or None if there is none."""

    def delete(self, key: str) -> None:
        """Delete a blob; nothing happens if there is none."""

    def delete_prefix(self, key: str) -> None:
        """Delete every blob under the folder ``key`` (also ones no task recorded)."""

    def folders(self, key: str) -> list[str]:
        """Names of the folders directly under ``key``."""

    def modified(self, key: str) -> float | None:
        """When the blob or folder ``key`` last changed (seconds since the epoch), if it exists."""

    def list_blobs(self, key: str) -> list[tuple[str, float]]:
        """``(key, when stored)`` of every blob under the folder ``key``, at any depth: one
        listing, for a sweep that judges blobs one by one (uploads) rather than by folder."""

    def check(self) -> None:
        """Raise `BlobStoreError`, saying what to fix, unless the store can be used now."""
