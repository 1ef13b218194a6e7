"""Free space on the data directory, and telling a full disk from other storage errors.

Below ``min_free_disk_mb`` the server reports itself degraded, refuses new tasks with 503 and
starts no new work, so what is already accepted can still be finished and recorded."""

from __future__ import annotations

import errno
import shutil
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

DISK_FULL_REASON = "the server's disk is full"


@dataclass(frozen=True)
class DiskState:
    free_bytes: int
    min_free_bytes: int

    @property
    def low(self) -> bool:
        return self.free_bytes < self.min_free_bytes

    def describe(self) -> str:
        return (
            f"{self.free_bytes / 2**20:.0f} MB free on the data directory, below the "
            f"{self.min_free_bytes / 2**20:.0f} MB the server keeps (PHOTO_ERASER_MIN_FREE_DISK_MB)"
        )


class DiskMonitor:
    """Free space of one directory, read at most once per ``ttl`` seconds (statvfs is cheap,
    but every create request asks)."""

    def __init__(self, path: Path, min_free_mb: int, ttl: float = 1.0) -> None:
        self.path = path
        self.min_free_bytes = min_free_mb * 2**20
        self.ttl = ttl
        self._cached: tuple[float, DiskState] | None = None
        self._lock = threading.Lock()

    def state(self) -> DiskState:
        now = time.monotonic()
        with self._lock:
            if self._cached is not None and now - self._cached[0] < self.ttl:
                return self._cached[1]
        try:
            free = shutil.disk_usage(self.path).free
        except OSError:
            free = 0  # the directory is gone or unreadable: nothing can be stored there
        state = DiskState(free, self.min_free_bytes)
        with self._lock:
            self._cached = (now, state)
        return state


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is the disk running out of space."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(current, sqlite3.Error) and "disk is full" in str(current):
            return True  # SQLITE_FULL ("database or disk is full")
        if (
            getattr(current, "pgcode", None) == "53100"
            or getattr(current, "sqlstate", None) == "53100"
        ):
            return True  # PostgreSQL disk_full
        orig = getattr(current, "orig", None)  # SQLAlchemy's DBAPIError wraps the driver's
        current = (
            orig if isinstance(orig, BaseException) else (current.__cause__ or current.__context__)
        )
    return False
