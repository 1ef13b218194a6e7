"""The task store: every state change of a task goes through here, in one transaction each."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa

from photo_eraser.tasks.status import ImageStatus, TaskStatus
from photo_eraser.tasks.tables import api_keys, server_lease, task_images, tasks

_LEASE = "serve"


@dataclass
class ApiKey:
    appkey: str
    name: str
    created_at: float
    revoked_at: float | None


@dataclass
class ImageRecord:
    idx: int
    url: str
    status: ImageStatus
    reason: str = ""
    result_key: str | None = None
    method: str | None = None
    recovered_share: float | None = None


@dataclass(frozen=True)
class Closing:
    """What closing a task did: its status after the call, and whether this call closed it."""

    status: TaskStatus
    closed_now: bool


@dataclass(frozen=True)
class NewTask:
    """What a create request asks for; the store adds its id, status and times."""

    appkey: str
    urls: Sequence[str]
    priority: int
    engine: str
    mask_url: str | None
    mask_data: bytes | None
    deadline_seconds: float


@dataclass
class TaskRecord:
    pk: int
    task_id: str
    appkey: str
    status: TaskStatus
    priority: int
    engine: str
    mask_url: str | None
    mask_data: bytes | None
    attempts: int
    reason: str
    created_at: float
    deadline_at: float
    started_at: float | None
    finished_at: float | None
    images: list[ImageRecord] = field(default_factory=list)


def _hash_secret(secret: str) -> str:
    # Secrets are 256-bit random tokens, so a fast hash is enough: there is nothing to brute-force.
    return hashlib.sha256(secret.encode()).hexdigest()


class TaskStore:
    """Keys, tasks and per-image results in one relational database."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.owner: str | None = None
        """The lease holder of the server whose workers use this store (``Service`` sets it):
        their writes to tasks then land only while it holds the database's lease."""

    def _held(self, pk: int) -> tuple[sa.ColumnElement[bool], ...]:
        """WHERE of a worker's write to its task ``pk``: still in progress, its lease still ours."""
        return (tasks.c.id == pk, tasks.c.status == TaskStatus.IN_PROGRESS, self._leased())

    def _leased(self) -> sa.ColumnElement[bool]:
        """Part of the WHERE of every write of a worker: this server still holds the lease,
        checked in the same statement (a server that lost it to another writes nothing, even
        from a call already under way)."""
        if self.owner is None:
            return sa.true()
        return sa.exists().where(server_lease.c.name == _LEASE, server_lease.c.holder == self.owner)

    # ---- API keys -------------------------------------------------------------------------

    def create_key(self, name: str) -> tuple[str, str]:
        """Create a key; return ``(appkey, appsecret)``. The secret is stored only as a hash."""
        appkey = "pe_" + secrets.token_hex(12)
        appsecret = secrets.token_urlsafe(32)
        with self.engine.begin() as conn:
            conn.execute(
                api_keys.insert().values(
                    appkey=appkey,
                    name=name,
                    secret_sha256=_hash_secret(appsecret),
                    created_at=time.time(),
                )
            )
        return appkey, appsecret

    def list_keys(self) -> list[ApiKey]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    api_keys.c.appkey, api_keys.c.name, api_keys.c.created_at, api_keys.c.revoked_at
                ).order_by(api_keys.c.created_at)
            ).all()
        return [ApiKey(r.appkey, r.name, r.created_at, r.revoked_at) for r in rows]

    def revoke_key(self, appkey: str) -> bool:
        with self.engine.begin() as conn:
            result = conn.execute(
                api_keys.update()
                .where(api_keys.c.appkey == appkey, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=time.time())
            )
        return result.rowcount > 0

    def verify_key(self, appkey: str, appsecret: str) -> bool:
        """Constant-time check of a key pair; revoked and unknown keys fail alike."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(api_keys.c.secret_sha256).where(
                    api_keys.c.appkey == appkey, api_keys.c.revoked_at.is_(None)
                )
            ).first()
        expected = row.secret_sha256 if row else "0" * 64
        return hmac.compare_digest(expected, _hash_secret(appsecret)) and row is not None

    # ---- Tasks ----------------------------------------------------------------------------

    def create_task(
        self,
        *,
        appkey: str,
        urls: Sequence[str],
        priority: int,
        engine: str,
        mask_url: str | None,
        mask_data: bytes | None,
        deadline_seconds: float,
    ) -> str:
        """Persist a new waiting task (committed before the caller answers 200)."""
        new = NewTask(appkey, urls, priority, engine, mask_url, mask_data, deadline_seconds)
        task_id = self.create_tasks([new])[0]
        assert task_id is not None  # no cap asked for
        return task_id

    def create_tasks(self, new: Sequence[NewTask], max_open_per_key: int = 0) -> list[str | None]:
        """Persist new waiting tasks in one transaction (one durable commit for all); their
        task ids in order. With ``max_open_per_key``, a task whose key already has that many
        unfinished tasks is not stored (``None`` in its place). The count is exact while one
        writer stores new tasks (`TaskIntake`): pysqlite begins the transaction only at the
        first insert, after the count."""
        now = time.time()
        ids: list[str | None] = [str(uuid.uuid4()) for _ in new]
        images = []
        with self.engine.begin() as conn:
            room = (
                _room_per_key(conn, {t.appkey for t in new}, max_open_per_key)
                if max_open_per_key
                else {}
            )
            for i, task in enumerate(new):
                if max_open_per_key:
                    if room[task.appkey] <= 0:
                        ids[i] = None
                        continue
                    room[task.appkey] -= 1
                task_id = ids[i]
                inserted = conn.execute(
                    tasks.insert().values(
                        task_id=task_id,
                        appkey=task.appkey,
                        status=TaskStatus.WAITING,
                        priority=task.priority,
                        engine=task.engine,
                        mask_url=task.mask_url,
                        mask_data=task.mask_data,
                        attempts=0,
                        reason="",
                        created_at=now,
                        deadline_at=now + task.deadline_seconds,
                    )
                ).inserted_primary_key
                assert inserted is not None
                images += [
                    {
                        "task_pk": inserted[0],
                        "idx": idx,
                        "url": url,
                        "status": ImageStatus.WAITING,
                        "reason": "",
                    }
                    for idx, url in enumerate(task.urls)
                ]
            if images:
                conn.execute(task_images.insert(), images)
        return ids

    def queue_counts(self) -> tuple[dict[int, int], int]:
        """(waiting tasks by priority, tasks in progress), for metrics."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(tasks.c.status, tasks.c.priority, sa.func.count())
                .where(tasks.c.status.in_([TaskStatus.WAITING, TaskStatus.IN_PROGRESS]))
                .group_by(tasks.c.status, tasks.c.priority)
            ).all()
        waiting = {r.priority: r[2] for r in rows if r.status == TaskStatus.WAITING}
        running = sum(r[2] for r in rows if r.status == TaskStatus.IN_PROGRESS)
        return waiting, running

    def get_task(self, task_id: str, appkey: str | None = None) -> TaskRecord | None:
        """Load a task with its images; with ``appkey``, only that key's task."""
        query = sa.select(tasks).where(tasks.c.task_id == task_id)
        if appkey is not None:
            query = query.where(tasks.c.appkey == appkey)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
            if row is None:
                return None
            image_rows = conn.execute(
                sa.select(task_images)
                .where(task_images.c.task_pk == row.id)
                .order_by(task_images.c.idx)
            ).all()
        record = _task_from_row(row)
        record.images = [
            ImageRecord(
                idx=r.idx,
                url=r.url,
                status=ImageStatus(r.status),
                reason=r.reason,
                result_key=r.result_key,
                method=r.method,
                recovered_share=r.recovered_share,
            )
            for r in image_rows
        ]
        return record

    def claim_next(self) -> TaskRecord | None:
        """Atomically take the waiting task with the highest priority, oldest first."""
        now = time.time()
        next_id = (
            sa.select(tasks.c.id)
            .where(tasks.c.status == TaskStatus.WAITING)
            .order_by(tasks.c.priority.desc(), tasks.c.id)
            .limit(1)
            # PostgreSQL: concurrent claimers skip each other's row; SQLite ignores this and
            # serialises writers instead.
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        with self.engine.begin() as conn:
            row = conn.execute(
                tasks.update()
                .where(tasks.c.id == next_id, tasks.c.status == TaskStatus.WAITING, self._leased())
                .values(
                    status=TaskStatus.IN_PROGRESS,
                    attempts=tasks.c.attempts + 1,
                    started_at=now,
                    heartbeat_at=now,
                )
                .returning(tasks.c.task_id)
            ).first()
        return self.get_task(row.task_id) if row else None

    def task_status(self, pk: int) -> TaskStatus:
        with self.engine.connect() as conn:
            return TaskStatus(
                conn.execute(sa.select(tasks.c.status).where(tasks.c.id == pk)).scalar_one()
            )

    def set_images(self, pk: int, updates: Sequence[ImageRecord]) -> bool:
        """Write per-image progress of a task that is still in progress.

        Returns False, writing nothing, if the task was closed or timed out meanwhile.
        """
        with self.engine.begin() as conn:
            # The guard and the write come in one statement: SQLite takes its write lock only at
            # the first write, so a status read first could be stale by the time the images
            # are written (a close or a timeout in between).
            held = conn.execute(
                tasks.update().where(*self._held(pk)).values(heartbeat_at=time.time())
            )
            if not held.rowcount:
                return False
            _write_images(conn, pk, updates)
        return True

    def finish(
        self,
        pk: int,
        status: TaskStatus,
        reason: str = "",
        images: Sequence[ImageRecord] = (),
    ) -> bool:
        """Move an in-progress task to a final status, with its images' last verdicts in the
        same transaction (a crash cannot leave one without the other); False, writing nothing,
        if it was closed or timed out meanwhile."""
        with self.engine.begin() as conn:
            result = conn.execute(
                tasks.update()
                .where(*self._held(pk))
                .values(status=status, reason=reason, finished_at=time.time())
            )
            if not result.rowcount:
                return False
            _write_images(conn, pk, images)
            if status != TaskStatus.COMPLETE:
                # Images that never got a verdict share the task's reason.
                _fail_open_images(conn, [pk], reason)
        return True

    def requeue(self, pk: int, reason: str) -> None:
        """Give an in-progress task back to the queue after a failure of ours (not the input's)."""
        with self.engine.begin() as conn:
            requeued = conn.execute(
                tasks.update()
                .where(*self._held(pk))
                .values(status=TaskStatus.WAITING, reason=reason, started_at=None)
            )
            if requeued.rowcount:
                _reset_images(conn, [pk])

    def release(self, pk: int) -> None:
        """Give back a task interrupted by a clean shutdown; the attempt does not count."""
        with self.engine.begin() as conn:
            released = conn.execute(
                tasks.update()
                .where(*self._held(pk))
                .values(status=TaskStatus.WAITING, started_at=None, attempts=tasks.c.attempts - 1)
            )
            if not released.rowcount:
                return  # closed or timed out meanwhile: its verdict stands
            _reset_images(conn, [pk])

    def requeue_orphans(
        self, owned: set[int], stale_seconds: float, max_attempts: int | None = None
    ) -> int:
        """Re-queue in-progress tasks that no worker of this process holds and that have shown
        no progress for ``stale_seconds`` (a worker lost them to an error), or fail those that
        have had ``max_attempts`` already. Returns how many were re-queued or failed.
        Single-process only.
        """
        cutoff = time.time() - stale_seconds
        with self.engine.begin() as conn:
            pks = [
                pk
                for pk in conn.execute(
                    sa.select(tasks.c.id).where(
                        tasks.c.status == TaskStatus.IN_PROGRESS, tasks.c.heartbeat_at < cutoff
                    )
                ).scalars()
                if pk not in owned
            ]
            if not pks:
                return 0
            # Only those still in progress when written (one may have been closed since) and
            # not claimed again since the read.
            still = (
                tasks.c.id.in_(pks),
                tasks.c.status == TaskStatus.IN_PROGRESS,
                tasks.c.heartbeat_at < cutoff,
                self._leased(),
            )
            spent = tasks.c.attempts >= max_attempts if max_attempts is not None else sa.false()
            reason = _gave_up(max_attempts)
            failed = list(
                conn.execute(
                    tasks.update()
                    .where(*still, spent)
                    .values(status=TaskStatus.FAILED, reason=reason, finished_at=time.time())
                    .returning(tasks.c.id)
                ).scalars()
            )
            if failed:
                _fail_open_images(conn, failed, reason)
            requeued = list(
                conn.execute(
                    tasks.update()
                    .where(*still, sa.not_(spent))
                    .values(status=TaskStatus.WAITING, started_at=None)
                    .returning(tasks.c.id)
                ).scalars()
            )
            if requeued:
                _reset_images(conn, requeued)
        return len(failed) + len(requeued)

    def close(self, task_id: str, appkey: str) -> Closing | None:
        """Close a waiting or running task for its owner; ``None`` if it has no such task."""
        with self.engine.begin() as conn:
            row = conn.execute(
                sa.select(tasks.c.id, tasks.c.status).where(
                    tasks.c.task_id == task_id, tasks.c.appkey == appkey
                )
            ).first()
            if row is None:
                return None
            if TaskStatus(row.status).finished:
                return Closing(TaskStatus(row.status), closed_now=False)
            # Still open when written, whatever it was when read: a worker may have claimed
            # the task in between (SQLite takes the write lock only now).
            closed = conn.execute(
                tasks.update()
                .where(
                    tasks.c.id == row.id,
                    tasks.c.status.in_([TaskStatus.WAITING, TaskStatus.IN_PROGRESS]),
                )
                .values(
                    status=TaskStatus.CLOSED, reason="closed by client", finished_at=time.time()
                )
            )
            if not closed.rowcount:  # finished meanwhile: that verdict stands
                status = conn.execute(sa.select(tasks.c.status).where(tasks.c.id == row.id))
                return Closing(TaskStatus(status.scalar_one()), closed_now=False)
            _fail_open_images(conn, [row.id], "task closed by client")
        return Closing(TaskStatus.CLOSED, closed_now=True)

    def acquire_lease(
        self, holder: str, stale_after: float, now: float | None = None
    ) -> str | None:
        """Take the database's serving lease for ``holder``; ``None`` if taken, else who holds it.

        Free when nobody holds it, when ``holder`` itself does (a restart after a crash), or when
        its holder has not renewed it for ``stale_after`` seconds. Crash recovery re-queues
        every task in progress, so it must never run while another server works on them.
        """
        now = time.time() if now is None else now
        take = (
            server_lease.update()
            .where(
                server_lease.c.name == _LEASE,
                sa.or_(
                    server_lease.c.holder == holder,
                    server_lease.c.heartbeat_at < now - stale_after,
                ),
            )
            .values(holder=holder, heartbeat_at=now)
        )
        with self.engine.begin() as conn:
            if conn.execute(take).rowcount:
                return None
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    server_lease.insert().values(name=_LEASE, holder=holder, heartbeat_at=now)
                )
            return None
        except sa.exc.IntegrityError:  # someone else holds it (or took it just now)
            with self.engine.connect() as conn:
                other = conn.execute(
                    sa.select(server_lease.c.holder).where(server_lease.c.name == _LEASE)
                ).scalar_one_or_none()
            return other or "another server"

    def renew_lease(self, holder: str) -> bool:
        """Show ``holder`` is alive; False if it has lost the lease to another server."""
        with self.engine.begin() as conn:
            renewed = conn.execute(
                server_lease.update()
                .where(server_lease.c.name == _LEASE, server_lease.c.holder == holder)
                .values(heartbeat_at=time.time())
            )
        return bool(renewed.rowcount)

    def release_lease(self, holder: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                server_lease.delete().where(
                    server_lease.c.name == _LEASE, server_lease.c.holder == holder
                )
            )

    def recover_interrupted(self, max_attempts: int) -> tuple[int, int]:
        """After a crash: re-queue in-progress tasks, or fail those out of attempts.

        Returns ``(requeued, failed)``. Safe only while no worker of this database runs.
        """
        reason = _gave_up(max_attempts)
        with self.engine.begin() as conn:
            stuck = conn.execute(
                sa.select(tasks.c.id, tasks.c.attempts).where(
                    tasks.c.status == TaskStatus.IN_PROGRESS
                )
            ).all()
            retry = [r.id for r in stuck if r.attempts < max_attempts]
            give_up = [r.id for r in stuck if r.attempts >= max_attempts]
            if retry:
                conn.execute(
                    tasks.update()
                    .where(tasks.c.id.in_(retry))
                    .values(status=TaskStatus.WAITING, started_at=None)
                )
                _reset_images(conn, retry)
            if give_up:
                conn.execute(
                    tasks.update()
                    .where(tasks.c.id.in_(give_up))
                    .values(status=TaskStatus.FAILED, reason=reason, finished_at=time.time())
                )
                conn.execute(
                    task_images.update()
                    .where(
                        task_images.c.task_pk.in_(give_up), task_images.c.status != ImageStatus.DONE
                    )
                    .values(status=ImageStatus.FAILED, reason=reason)
                )
        return len(retry), len(give_up)

    def expire_overdue(self, now: float | None = None) -> list[int]:
        """Mark waiting/in-progress tasks past their deadline as timed out; return their pks."""
        now = time.time() if now is None else now
        reason = "task exceeded its deadline"
        active = [TaskStatus.WAITING, TaskStatus.IN_PROGRESS]
        with self.engine.begin() as conn:
            pks = list(
                conn.execute(
                    sa.select(tasks.c.id).where(
                        tasks.c.status.in_(active), tasks.c.deadline_at < now
                    )
                ).scalars()
            )
            if pks:
                # Only those still open when written (one may have finished since the read).
                pks = list(
                    conn.execute(
                        tasks.update()
                        .where(tasks.c.id.in_(pks), tasks.c.status.in_(active))
                        .values(status=TaskStatus.TIMED_OUT, reason=reason, finished_at=now)
                        .returning(tasks.c.id)
                    ).scalars()
                )
            if pks:
                _fail_open_images(conn, pks, reason)
        return pks

    def queue_position(self, record: TaskRecord) -> int:
        """How many tasks run before this waiting one (ahead in the queue, or in progress)."""
        with self.engine.connect() as conn:
            ahead = conn.execute(
                sa.select(sa.func.count()).where(
                    sa.or_(
                        tasks.c.status == TaskStatus.IN_PROGRESS,
                        sa.and_(
                            tasks.c.status == TaskStatus.WAITING,
                            sa.or_(
                                tasks.c.priority > record.priority,
                                sa.and_(
                                    tasks.c.priority == record.priority, tasks.c.id < record.pk
                                ),
                            ),
                        ),
                    )
                )
            ).scalar_one()
        return int(ahead)

    def recent_durations(self, limit: int = 20) -> list[float]:
        """Run times (seconds) of the most recently finished tasks, newest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(tasks.c.started_at, tasks.c.finished_at)
                .where(
                    tasks.c.status.in_([TaskStatus.COMPLETE, TaskStatus.FAILED]),
                    tasks.c.started_at.is_not(None),
                )
                .order_by(tasks.c.finished_at.desc())
                .limit(limit)
            ).all()
        return [r.finished_at - r.started_at for r in rows]

    def expired_result_keys(self, before: float) -> list[tuple[int, list[str]]]:
        """Finished tasks older than ``before`` that still hold result blobs."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(task_images.c.task_pk, task_images.c.result_key)
                .join(tasks, tasks.c.id == task_images.c.task_pk)
                .where(tasks.c.finished_at < before, task_images.c.result_key.is_not(None))
            ).all()
        grouped: dict[int, list[str]] = {}
        for r in rows:
            grouped.setdefault(r.task_pk, []).append(r.result_key)
        return list(grouped.items())

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

    def forget_masks(self, before: float) -> int:
        """Drop the inline masks of tasks finished before ``before`` (whatever their outcome)."""
        with self.engine.begin() as conn:
            result = conn.execute(
                tasks.update()
                .where(tasks.c.finished_at < before, tasks.c.mask_data.is_not(None))
                .values(mask_data=None)
            )
        return int(result.rowcount)

    def forget_results(self, pk: int) -> None:
        """Mark a task's result files as deleted (the caller deleted the blobs)."""
        with self.engine.begin() as conn:
            conn.execute(
                task_images.update()
                .where(task_images.c.task_pk == pk, task_images.c.result_key.is_not(None))
                .values(result_key=None, reason="result deleted after its retention period")
            )


def _room_per_key(conn: sa.Connection, appkeys: set[str], cap: int) -> dict[str, int]:
    """How many more unfinished tasks each key may have under ``cap``."""
    rows = conn.execute(
        sa.select(tasks.c.appkey, sa.func.count().label("open"))
        .where(
            tasks.c.appkey.in_(appkeys),
            tasks.c.status.in_([TaskStatus.WAITING, TaskStatus.IN_PROGRESS]),
        )
        .group_by(tasks.c.appkey)
    ).all()
    open_ = {r.appkey: int(r.open) for r in rows}
    return {key: cap - open_.get(key, 0) for key in appkeys}


def _gave_up(max_attempts: int | None) -> str:
    return f"processing was interrupted {max_attempts} times; giving up"


def _write_images(conn: sa.Connection, pk: int, images: Sequence[ImageRecord]) -> None:
    for im in images:
        conn.execute(
            task_images.update()
            .where(task_images.c.task_pk == pk, task_images.c.idx == im.idx)
            .values(
                status=im.status,
                reason=im.reason,
                result_key=im.result_key,
                method=im.method,
                recovered_share=im.recovered_share,
            )
        )


def _fail_open_images(conn: sa.Connection, pks: Sequence[int], reason: str) -> None:
    """Images of these tasks that never got a verdict fail with ``reason``."""
    conn.execute(
        task_images.update()
        .where(
            task_images.c.task_pk.in_(pks),
            task_images.c.status.in_([ImageStatus.WAITING, ImageStatus.PROCESSING]),
        )
        .values(status=ImageStatus.FAILED, reason=reason)
    )


def _reset_images(conn: sa.Connection, pks: Sequence[int]) -> None:
    """Images of these tasks back to waiting, for a fresh run."""
    conn.execute(
        task_images.update()
        .where(task_images.c.task_pk.in_(pks))
        .values(status=ImageStatus.WAITING, reason="", result_key=None)
    )


def _task_from_row(row: sa.Row) -> TaskRecord:
    return TaskRecord(
        pk=row.id,
        task_id=row.task_id,
        appkey=row.appkey,
        status=TaskStatus(row.status),
        priority=row.priority,
        engine=row.engine,
        mask_url=row.mask_url,
        mask_data=row.mask_data,
        attempts=row.attempts,
        reason=row.reason,
        created_at=row.created_at,
        deadline_at=row.deadline_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
    )
