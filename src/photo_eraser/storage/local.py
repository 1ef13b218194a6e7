"""Blob store on the local disk. Writes are atomic: a temp file, then a rename. A durable put
fsyncs the file before the rename and the folder after it; a task's results are put without,
then made durable together (`make_durable`: each file, then each folder once) when the task
ends, rather than two fsyncs per file in the middle of the work."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from photo_eraser.storage.base import BlobStoreError, OpenBlob, is_valid_key


class LocalBlobStore:
    """A `BlobStore` in a folder. Keys are relative paths such as ``results/<task_id>/0.jpg``;
    no ``..``, no absolute paths."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        if not is_valid_key(key):
            raise ValueError(f"invalid blob key: {key!r}")
        return self.root / key

    def put(self, key: str, data: bytes, *, durable: bool = True) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                if durable:
                    os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        if durable:
            _fsync_dir(path.parent)  # the rename itself must survive a power cut

    def make_durable(self, keys: Sequence[str]) -> None:
        """Fsync each file, then each folder they are in (the renames); raises `OSError` (or
        `FileNotFoundError` for a key that is gone) like `put`."""
        folders: dict[Path, None] = {}
        for key in keys:
            path = self._path(key)
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            folders[path.parent] = None
        for folder in folders:
            _fsync_dir(folder)

    def open(self, key: str) -> OpenBlob | None:
        try:
            f = self._path(key).open("rb")
        except (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        return OpenBlob(os.fstat(f.fileno()).st_size, f)

    def size(self, key: str) -> int | None:
        try:
            path = self._path(key)
            return path.stat().st_size if path.is_file() else None
        except (ValueError, OSError):
            return None

    def folders(self, key: str) -> list[str]:
        """Names of the folders directly under ``key`` (e.g. the task ids under ``results``)."""
        path = self._path(key)
        return sorted(p.name for p in path.iterdir() if p.is_dir()) if path.is_dir() else []

    def modified(self, key: str) -> float | None:
        """When the file or folder ``key`` last changed (seconds since the epoch), if it exists."""
        try:
            return self._path(key).stat().st_mtime
        except (OSError, ValueError):
            return None

    def list_blobs(self, key: str) -> list[tuple[str, float]]:
        path = self._path(key)
        found = []
        for file in path.rglob("*") if path.is_dir() else ():
            name = file.relative_to(self.root).as_posix()
            if not is_valid_key(name):  # a temporary file of a `put` in progress
                continue
            try:
                if file.is_file():
                    found.append((name, file.stat().st_mtime))
            except OSError:  # deleted meanwhile
                continue
        return sorted(found)

    def delete_prefix(self, key: str) -> None:
        """Delete a folder of blobs with everything in it (also files no key was kept for)."""
        path = self._path(key)
        if path.is_dir():
            shutil.rmtree(path)

    def check(self) -> None:
        if not self.root.is_dir():
            raise BlobStoreError(f"the blob folder {self.root} is gone")

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        try:
            path.parent.rmdir()
        except OSError:
            pass


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
