"""Reads that never wait, run on the event loop itself: SQLite only.

A poll's reads take a thread hop (`AsyncTaskStore`) so that a read that waits cannot stop the
event loop: waiting for a pooled connection, or for a lock (SQLite's busy timeout). The hop
costs more than the reads: a dozen futex calls a poll as the loop and the pool's thread hand
the GIL back and forth (counted with strace), 0.1 ms of CPU or more on this project's
machine. Here neither wait can happen: the reads go to a connection of their own, opened by
an engine of their own without a pool (opened, never waited for), with a busy timeout of 0,
so a lock that would make them wait (a writer of a non-WAL database, a checkpoint resetting
the WAL, WAL recovery) raises SQLITE_BUSY at once; that is `WouldWait`, and the caller takes
the thread hop as before. SQLite never sleeps on a lock but for its busy timeout (its file
locks are taken without waiting); what is left is reading pages, from SQLite's cache or the
OS's, and a few retries of the WAL read lock in a rare race with a writer. A connection that
failed is closed; the next read opens another.

PostgreSQL (a network round trip) always takes the hop."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from typing import TypeVar

import sqlalchemy as sa

T = TypeVar("T")


class WouldWait(Exception):
    """The read would have to wait (a lock, the connection in use): take the thread hop."""


class NoWaitReads:
    """The event loop's own SQLite connection, for reads that must not wait."""

    def __init__(self, engine: sa.Engine) -> None:
        # The same file, not the same pool: the store's connections wait up to 30 s.
        self.engine = sa.create_engine(
            engine.url,
            poolclass=sa.pool.NullPool,
            connect_args={"timeout": 0, "check_same_thread": False},
        )
        self._conn: sa.Connection | None = None
        self._busy = threading.Lock()

    @staticmethod
    def possible(engine: sa.Engine) -> bool:
        """A SQLite file (a second connection to an in-memory database is another one)."""
        url = engine.url
        database = url.database or ""
        return (
            engine.dialect.name == "sqlite"
            and database not in ("", ":memory:")
            and url.query.get("mode") != "memory"
        )

    def run(self, read: Callable[[sa.Connection], T]) -> T:
        """``read(conn)`` now, or `WouldWait`. ``read`` must only read."""
        if not self._busy.acquire(blocking=False):
            raise WouldWait("the connection is in use")  # another event loop's read
        try:
            conn = self._conn or self._open()
            try:
                result = read(conn)
                conn.rollback()  # ends SQLAlchemy's transaction (no read stays open)
                return result
            except BaseException as exc:
                self._drop()
                if isinstance(exc, sa.exc.OperationalError) and _busy(exc.orig):
                    raise WouldWait(str(exc.orig)) from exc
                raise
        finally:
            self._busy.release()

    def close(self) -> None:
        with self._busy:
            self._drop()

    def _open(self) -> sa.Connection:
        self._conn = self.engine.connect()
        return self._conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.invalidate()  # not reused: a failed read may have left it in any state
            conn.close()


def _busy(error: BaseException | None) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    return (
        isinstance(error, sqlite3.Error)
        and code is not None
        and code & 0xFF
        in (
            sqlite3.SQLITE_BUSY,
            sqlite3.SQLITE_LOCKED,
        )
    )
