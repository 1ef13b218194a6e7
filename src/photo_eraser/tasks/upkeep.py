"""The store's side of the maintenance pass and of cluster-wide state: deadlines, expired
leases, dispatch bookkeeping, retention, worker heartbeats and the shared rate limit."""

from __future__ import annotations

import fcntl
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import sqlalchemy as sa

from photo_eraser.tasks.prepared import Prepared
from photo_eraser.tasks.records import Queued
from photo_eraser.tasks.status import ImageStatus, TaskStatus
from photo_eraser.tasks.tables import rate_buckets, task_images, tasks, workers

OPEN = (TaskStatus.WAITING, TaskStatus.IN_PROGRESS)
"""The statuses of a task that has not finished."""


def gave_up(max_attempts: int) -> str:
    return f"processing was interrupted {max_attempts} times; giving up"


@dataclass
class HeldLock:
    """A lock taken by `UpkeepQueries.hold`; ``release`` frees it (so does the process's end)."""

    release: Callable[[], None]


class UpkeepQueries:
    """Passes over many tasks at once (a part of `TaskStore`)."""

    engine: sa.Engine

    @contextmanager
    def exclusive(self, name: str) -> Iterator[bool]:
        """Whether this process may run the job ``name`` now: on PostgreSQL, an advisory lock
        held for the block on a connection of its own (released if the process dies); on
        SQLite always (the embedded server is the only process: its data directory's lock)."""
        if self.engine.dialect.name != "postgresql":
            yield True
            return
        with self.engine.connect() as conn:
            key = advisory_key(name)
            got = bool(conn.execute(sa.select(sa.func.pg_try_advisory_lock(key))).scalar())
            conn.commit()
            try:
                yield got
            finally:
                if got:
                    conn.execute(sa.select(sa.func.pg_advisory_unlock(key)))
                    conn.commit()

    def hold(self, name: str, *, shared: bool) -> HeldLock | None:
        """Take the database-wide lock ``name`` for as long as the returned handle is open
        (the process's life): exclusively, or shared with other holders of a shared one.
        ``None`` if it is taken the other way. PostgreSQL: a session advisory lock on a
        connection of its own; SQLite: a lock file beside the database."""
        if self.engine.dialect.name == "postgresql":
            conn = self.engine.connect()
            # A holder whose host vanished must not keep the lock for the kernel's default
            # two hours of TCP keepalive: the server drops its session within a minute or so.
            conn.exec_driver_sql(
                "SET tcp_keepalives_idle = 30; SET tcp_keepalives_interval = 10;"
                " SET tcp_keepalives_count = 3"
            )
            key = advisory_key(name)
            take = sa.func.pg_try_advisory_lock_shared if shared else sa.func.pg_try_advisory_lock
            got = bool(conn.execute(sa.select(take(key))).scalar())
            conn.commit()
            if not got:
                conn.close()
                return None
            free = sa.func.pg_advisory_unlock_shared if shared else sa.func.pg_advisory_unlock

            def release() -> None:
                # Unlocked first (the server frees it at once; a closed socket only when its
                # backend has exited), then dropped: back in the pool it would keep nothing.
                try:
                    conn.execute(sa.select(free(key)))
                    conn.commit()
                finally:
                    conn.invalidate()

            return HeldLock(release)
        path = self.engine.url.database
        if not path or path == ":memory:":
            return HeldLock(lambda: None)
        lock_file = open(f"{path}.{name}-lock", "a+")  # noqa: SIM115 - held until released
        try:
            fcntl.flock(lock_file, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.close()
            return None
        return HeldLock(lock_file.close)

    # ---- Deadlines and lost workers --------------------------------------------------------

    def expire_overdue(self, now: float | None = None) -> list[int]:
        """Mark waiting/in-progress tasks past their deadline as timed out; return their pks."""
        now = time.time() if now is None else now
        reason = "task exceeded its deadline"
        with self.engine.begin() as conn:
            pks = list(
                conn.execute(
                    tasks.update()
                    .where(tasks.c.status.in_(OPEN), tasks.c.deadline_at < now)
                    .values(
                        status=TaskStatus.TIMED_OUT,
                        reason=reason,
                        finished_at=now,
                        lease_owner=None,
                    )
                    .returning(tasks.c.id)
                ).scalars()
            )
            if pks:
                fail_open_images(conn, pks, reason)
        return pks

    def reap_expired_leases(
        self, max_attempts: int, now: float | None = None
    ) -> tuple[list[Queued], int]:
        """Tasks whose worker stopped renewing its lease (a host that vanished, a worker that
        lost the database) go back to the queue, or fail once they have had ``max_attempts``.
        Returns the re-queued tasks (to publish again) and how many failed."""
        now = time.time() if now is None else now
        return self._take_back(tasks.c.lease_expires_at < now, max_attempts)

    def release_owned(self, node: str, max_attempts: int) -> tuple[list[Queued], int]:
        """After a crash of the embedded server: its own tasks from before the crash (leased
        to ``node#...``, the data directory's name, whose lock it now holds) go back at once
        instead of when their leases expire."""
        owned = tasks.c.lease_owner.startswith(f"{node}#", autoescape=True)
        return self._take_back(owned, max_attempts)

    def _take_back(
        self, which: sa.ColumnElement[bool], max_attempts: int
    ) -> tuple[list[Queued], int]:
        reason = gave_up(max_attempts)
        lost = (which, tasks.c.status == TaskStatus.IN_PROGRESS)
        with self.engine.begin() as conn:
            failed = list(
                conn.execute(
                    tasks.update()
                    .where(*lost, tasks.c.attempts >= max_attempts)
                    .values(
                        status=TaskStatus.FAILED,
                        reason=reason,
                        finished_at=time.time(),
                        lease_owner=None,
                    )
                    .returning(tasks.c.id)
                ).scalars()
            )
            if failed:
                fail_open_images(conn, failed, reason)
            requeued = conn.execute(
                tasks.update()
                .where(*lost, tasks.c.attempts < max_attempts)
                .values(
                    status=TaskStatus.WAITING,
                    reason="the worker running it stopped; retrying",
                    started_at=None,
                    lease_owner=None,
                    lease_expires_at=time.time(),  # when it came back (see `undispatched`)
                    dispatched_at=None,
                )
                .returning(tasks.c.id, tasks.c.task_id, tasks.c.priority)
            ).all()
            if requeued:
                reset_images(conn, [r.id for r in requeued])
        return [Queued(r.task_id, r.priority) for r in requeued], len(failed)

    # ---- Dispatch bookkeeping (distributed mode) ------------------------------------------

    def undispatched(
        self, before: float, dispatched_before: float = 0.0, limit: int = 1000
    ) -> list[Queued]:
        """Waiting tasks with no message on the broker since before ``before``: the API
        process stopped between its commit and its publish, or the task came back to the
        queue (its lease ended then). With ``dispatched_before``, also those published before
        it and still waiting (a message lost past the broker's confirm: a purged queue, a
        broker that lost its disk); a duplicate message is harmless. Highest priority first."""
        never = sa.and_(
            tasks.c.dispatched_at.is_(None),
            tasks.c.created_at < before,
            sa.or_(tasks.c.lease_expires_at.is_(None), tasks.c.lease_expires_at < before),
        )
        long_ago = tasks.c.dispatched_at < dispatched_before
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(tasks.c.task_id, tasks.c.priority)
                .where(tasks.c.status == TaskStatus.WAITING, sa.or_(never, long_ago))
                .order_by(tasks.c.priority.desc(), tasks.c.id)
                .limit(limit)
            ).all()
        return [Queued(r.task_id, r.priority) for r in rows]

    def mark_dispatched(self, task_ids: Sequence[str], published_at: float) -> None:
        """Record that the broker confirmed a message, published from ``published_at`` on,
        for each of these tasks. A task that came back to the queue after that (a worker took
        the message and gave the task back meanwhile) needs a new message: left unmarked."""
        if not task_ids:
            return
        with self.engine.begin() as conn:
            conn.execute(
                tasks.update()
                .where(
                    tasks.c.task_id.in_(list(task_ids)),
                    tasks.c.status == TaskStatus.WAITING,
                    sa.or_(
                        tasks.c.lease_expires_at.is_(None),
                        tasks.c.lease_expires_at < published_at,
                    ),
                )
                .values(dispatched_at=time.time())
            )

    # ---- Retention ------------------------------------------------------------------------

    def expired_blob_keys(self, before: float) -> list[tuple[int, list[str]]]:
        """Tasks finished before ``before`` that still hold blobs (results, an inline mask)."""
        with self.engine.connect() as conn:
            results = conn.execute(
                sa.select(task_images.c.task_pk, task_images.c.result_key)
                .join(tasks, tasks.c.id == task_images.c.task_pk)
                .where(tasks.c.finished_at < before, task_images.c.result_key.is_not(None))
            ).all()
            masks = conn.execute(
                sa.select(tasks.c.id, tasks.c.mask_key).where(
                    tasks.c.finished_at < before, tasks.c.mask_key.is_not(None)
                )
            ).all()
        grouped: dict[int, list[str]] = {}
        for pk, key in [*results, *masks]:
            grouped.setdefault(pk, []).append(key)
        return list(grouped.items())

    def forget_blobs(self, pk: int) -> None:
        """Mark a task's blobs as deleted (the caller deleted them)."""
        with self.engine.begin() as conn:
            conn.execute(
                task_images.update()
                .where(task_images.c.task_pk == pk, task_images.c.result_key.is_not(None))
                .values(result_key=None, reason="result deleted after its retention period")
            )
            conn.execute(
                tasks.update().where(tasks.c.id == pk).values(mask_key=None, mask_data=None)
            )

    def forget_masks(self, before: float) -> int:
        """Drop the inline masks kept in the database (tasks from before version 0005) of
        tasks finished before ``before``."""
        with self.engine.begin() as conn:
            result = conn.execute(
                tasks.update()
                .where(tasks.c.finished_at < before, tasks.c.mask_data.is_not(None))
                .values(mask_data=None)
            )
        return int(result.rowcount)

    def finish_times(self, task_ids: Sequence[str]) -> dict[str, float | None]:
        """When each of ``task_ids`` that exists finished (``None``: not yet)."""
        out: dict[str, float | None] = {}
        for start in range(0, len(task_ids), 500):
            with self.engine.connect() as conn:
                rows = conn.execute(
                    sa.select(tasks.c.task_id, tasks.c.finished_at).where(
                        tasks.c.task_id.in_(list(task_ids[start : start + 500]))
                    )
                ).all()
            out.update({r.task_id: r.finished_at for r in rows})
        return out

    # ---- Worker heartbeats: how many slots the cluster has now ----------------------------

    def beat(self, worker_id: str, slots: int) -> None:
        """Say that ``worker_id`` is alive with ``slots`` tasks at a time."""
        now = time.time()
        with self.engine.begin() as conn:
            _insert_missing(conn, workers, worker_id=worker_id, slots=slots, seen_at=now)
            conn.execute(
                workers.update()
                .where(workers.c.worker_id == worker_id)
                .values(slots=slots, seen_at=now)
            )

    def forget_worker(self, worker_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(workers.delete().where(workers.c.worker_id == worker_id))

    def forget_silent_workers(self, silent_for: float = 3600.0) -> int:
        """Drop the rows of workers not heard from for ``silent_for`` seconds (killed ones)."""
        with self.engine.begin() as conn:
            gone = conn.execute(
                workers.delete().where(workers.c.seen_at < time.time() - silent_for)
            )
        return int(gone.rowcount)

    def live_slots(self, within: float) -> int:
        """Worker slots of the whole cluster, from heartbeats of the last ``within`` seconds."""
        with self.engine.connect() as conn:
            return count_live_slots(conn, within)

    # ---- The create rate limit, shared by every API process -------------------------------

    def take_token(self, appkey: str, per_minute: int) -> float:
        """Take one create from ``appkey``'s token bucket (``per_minute`` tokens, refilled
        continuously); 0 if taken, else the seconds until one is there."""
        now = time.time()
        rate = per_minute / 60.0
        bucket = rate_buckets.c.appkey == appkey
        with self.engine.begin() as conn:
            _insert_missing(conn, rate_buckets, appkey=appkey, tokens=per_minute, updated_at=now)
            row = conn.execute(
                sa.select(rate_buckets.c.tokens, rate_buckets.c.updated_at)
                .where(bucket)
                .with_for_update()  # concurrent API processes take turns on one key
            ).one()
            tokens = min(float(per_minute), row.tokens + max(0.0, now - row.updated_at) * rate)
            taken = tokens >= 1.0
            left = tokens - 1.0 if taken else tokens
            conn.execute(rate_buckets.update().where(bucket).values(tokens=left, updated_at=now))
        return 0.0 if taken else (1.0 - tokens) / rate


def count_live_slots(conn: sa.Connection, within: float) -> int:
    """Worker slots of the whole cluster, from heartbeats of the last ``within`` seconds."""
    return int(_LIVE_SLOTS.rows(conn, since=time.time() - within)[0][0])


_LIVE_SLOTS = Prepared(
    sa.select(sa.func.coalesce(sa.func.sum(workers.c.slots), 0)).where(
        workers.c.seen_at >= sa.bindparam("since", type_=sa.Float, required=False)
    )
)


def _insert_missing(conn: sa.Connection, table: sa.Table, **values: object) -> None:
    """Insert the row unless one with its primary key exists (concurrent callers: one wins)."""
    from sqlalchemy.dialects import postgresql, sqlite

    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    conn.execute(dialect.insert(table).values(**values).on_conflict_do_nothing())


def advisory_key(name: str) -> sa.ColumnElement[int]:
    """The PostgreSQL advisory lock key of ``name``, per schema: two installations (or test
    runs) in one database never share a lock."""
    return sa.func.hashtext(sa.func.concat(sa.func.current_schema(), f":{name}"))


def fail_open_images(conn: sa.Connection, pks: Sequence[int], reason: str) -> None:
    """Images of these tasks that never got a verdict fail with ``reason``."""
    conn.execute(
        task_images.update()
        .where(
            task_images.c.task_pk.in_(pks),
            task_images.c.status.in_([ImageStatus.WAITING, ImageStatus.PROCESSING]),
        )
        .values(status=ImageStatus.FAILED, reason=reason)
    )


def reset_images(conn: sa.Connection, pks: Sequence[int]) -> None:
    """Images of these tasks back to waiting, for a fresh run."""
    conn.execute(
        task_images.update()
        .where(task_images.c.task_pk.in_(pks))
        .values(status=ImageStatus.WAITING, reason="", result_key=None)
    )
