"""The task store: every state change of a task goes through here, in one transaction each.

A task is waiting, then held by one worker under a lease (`Lease`), then finished. Every write
of a worker checks in the same statement that the task is still in progress and still leased
to it, so a worker that lost its task (closed, timed out, or reaped after its lease expired and
claimed by another worker) writes nothing. Keys are in `keys.py`, the periodic passes of the
maintenance in `upkeep.py`."""

from __future__ import annotations

import time
from collections.abc import Sequence

import sqlalchemy as sa

from photo_eraser.imaging.mask import MaskPlacement
from photo_eraser.tasks.deliveries import (
    CALLBACK_COLUMNS,
    DeliveryQueries,
    callback_from_row,
    record_callback,
)
from photo_eraser.tasks.idempotency import (
    IdempotencyQueries,
    IdempotencyTaken,
    record_idempotency,
)
from photo_eraser.tasks.keys import KeyQueries, VerifiedKeys
from photo_eraser.tasks.nowait import WouldWait
from photo_eraser.tasks.prepared import Prepared
from photo_eraser.tasks.queue import queue_position, take_seqs
from photo_eraser.tasks.records import (
    Closing,
    ImageRecord,
    Lease,
    NewTask,
    Outlook,
    TaskRecord,
)
from photo_eraser.tasks.status import ImageStatus, TaskStatus
from photo_eraser.tasks.tables import task_images, tasks, webhook_deliveries
from photo_eraser.tasks.upkeep import (
    OPEN,
    UpkeepQueries,
    advisory_key,
    count_live_slots,
    fail_open_images,
    reset_images,
)

RECENT_RUNS = 20
"""Finished tasks whose mean run time ``wait_time`` assumes for the next ones."""
SHARED_OUTLOOK_SECONDS = 1.0
"""How long the polls of one process share one read of the recent run times and the live
worker slots: a ``wait_time`` may lag a task finishing or a worker joining by this much."""


class TaskStore(KeyQueries, UpkeepQueries, IdempotencyQueries, DeliveryQueries):
    """Keys, tasks and per-image results in one relational database (SQLite or PostgreSQL)."""

    def __init__(self, engine: sa.Engine, key_cache_seconds: float = 0.0) -> None:
        self.engine = engine
        self.verified_keys = VerifiedKeys(key_cache_seconds)
        """Keys read recently (`keys.VerifiedKeys`); by default none are remembered."""
        self._outlook: tuple[float, list[float], int] | None = None

    # ---- Creating and reading tasks -------------------------------------------------------

    def create_tasks(self, new: Sequence[NewTask], max_open_per_key: int = 0) -> list[bool]:
        """Persist new waiting tasks in one transaction (one durable commit for all); for each,
        whether it was stored. With ``max_open_per_key``, a task whose key already has that
        many unfinished tasks is not stored. The count is exact however many processes store
        tasks at once: it is taken under a lock held to the commit (`_lock_keys`).

        A task with an idempotency key records it in the same transaction; if the key is
        taken, the transaction fails (`IdempotencyTaken` for a group of one, else the
        ``IntegrityError``: the intake then stores the group one by one)."""
        try:
            return self._create_tasks(new, max_open_per_key)
        except sa.exc.IntegrityError:
            if len(new) == 1 and new[0].idempotency is not None:
                raise IdempotencyTaken(new[0].idempotency.key) from None
            raise

    def _create_tasks(self, new: Sequence[NewTask], max_open_per_key: int) -> list[bool]:
        now = time.time()
        stored = [True] * len(new)
        images = []
        with self.engine.begin() as conn:
            room: dict[str, int] = {}
            if max_open_per_key:
                keys = {t.appkey for t in new}
                _lock_keys(conn, keys)
                room = _room_per_key(conn, keys, max_open_per_key)
                for i, task in enumerate(new):
                    if room[task.appkey] <= 0:
                        stored[i] = False
                        continue
                    room[task.appkey] -= 1
            kept = [task for task, ok in zip(new, stored, strict=True) if ok]
            seqs = take_seqs(conn, [task.priority for task in kept])
            for task, seq in zip(kept, seqs, strict=True):
                inserted = conn.execute(
                    tasks.insert().values(
                        task_id=task.task_id,
                        appkey=task.appkey,
                        status=TaskStatus.WAITING,
                        priority=task.priority,
                        engine=task.engine,
                        mask_url=task.mask_url,
                        mask_key=task.mask_key,
                        **_placement_columns(task.placement),
                        attempts=0,
                        reason="",
                        created_at=now,
                        deadline_at=now + task.deadline_seconds,
                        queue_seq=seq,
                    )
                ).inserted_primary_key
                assert inserted is not None
                if task.idempotency is not None:
                    record_idempotency(conn, task.appkey, task.idempotency, task.task_id, now)
                if task.callback is not None:
                    record_callback(conn, inserted[0], task.callback)
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
        return stored

    def get_task(self, task_id: str, appkey: str | None = None) -> TaskRecord | None:
        """Load a task with its images; with ``appkey``, only that key's task."""
        with self.engine.connect() as conn:
            return _read_task(conn, task_id, appkey)

    def poll(
        self, task_id: str, appkey: str, heartbeat_window: float
    ) -> tuple[TaskRecord, Outlook] | None:
        """What a poll answers from: the key's task and, while it is unfinished, what its
        ``wait_time`` is estimated from; on one connection, in a handful of indexed reads
        whatever the backlog. ``None`` if the key has no such task. The reads are separate
        statements, not one snapshot: a task claimed between them keeps the status of the
        first read, and counts no task of its own priority ahead of it (`queue_position`
        clamps at 0), which only shortens that one ``wait_time``."""
        with self.engine.connect() as conn:
            return self.poll_on(conn, task_id, appkey, heartbeat_window)

    def poll_on(
        self,
        conn: sa.Connection,
        task_id: str,
        appkey: str,
        heartbeat_window: float,
        *,
        indexed_only: bool = False,
    ) -> tuple[TaskRecord, Outlook] | None:
        """`poll` on ``conn``. ``indexed_only`` (`nowait`: reads on the event loop): the
        reads that may take long raise `WouldWait` instead, for the thread to make: the
        shared outlook's refresh, once a second (the recent run times are sorted out of every
        finished task), and the position of a waiting task from before queue numbers (a
        count over the backlog)."""
        if indexed_only and not self._outlook_fresh():
            raise WouldWait("the recent run times to read")
        task = _read_task(conn, task_id, appkey)
        if task is None:
            return None
        if task.status.finished:
            return task, Outlook(durations=[], slots=0, ahead=0)
        waiting = task.status == TaskStatus.WAITING
        if indexed_only and waiting and task.queue_seq is None:
            raise WouldWait("a position to count")
        # (Checked fresh above, microseconds ago: not refreshed on the loop if it just aged.)
        durations, slots = self._shared_outlook(conn, heartbeat_window, refresh=not indexed_only)
        return task, Outlook(
            durations=durations,
            slots=slots if waiting else 0,
            ahead=_position(conn, task) if waiting else 0,
        )

    def _outlook_fresh(self) -> bool:
        shared = self._outlook
        return shared is not None and time.monotonic() - shared[0] < SHARED_OUTLOOK_SECONDS

    def _shared_outlook(
        self, conn: sa.Connection, heartbeat_window: float, *, refresh: bool = True
    ) -> tuple[list[float], int]:
        """The recent run times and the live worker slots, the same for every task: read
        once per `SHARED_OUTLOOK_SECONDS` by the polls of this process (two reads fewer per
        poll; on PostgreSQL two round trips). Without ``refresh``, read only if never read."""
        now = time.monotonic()
        shared = self._outlook
        if shared is None or (refresh and now - shared[0] >= SHARED_OUTLOOK_SECONDS):
            shared = (now, _recent_durations(conn), count_live_slots(conn, heartbeat_window))
            self._outlook = shared  # one assignment: threads see the old or the new
        return shared[1], shared[2]

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
                .where(tasks.c.id == row.id, tasks.c.status.in_(OPEN))
                .values(
                    status=TaskStatus.CLOSED,
                    reason="closed by client",
                    finished_at=time.time(),
                    lease_owner=None,
                )
            )
            if not closed.rowcount:  # finished meanwhile: that verdict stands
                status = conn.execute(sa.select(tasks.c.status).where(tasks.c.id == row.id))
                return Closing(TaskStatus(status.scalar_one()), closed_now=False)
            fail_open_images(conn, [row.id], "task closed by client")
        return Closing(TaskStatus.CLOSED, closed_now=True)

    # ---- Claims: a worker takes a waiting task under a lease -------------------------------

    def claim_next(self, owner: str, lease_seconds: float) -> TaskRecord | None:
        """Take the waiting task with the highest priority, oldest first (the embedded
        workers' queue is the table itself)."""
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
        return self._claim(tasks.c.id == next_id, owner, lease_seconds)

    def claim(self, task_id: str, owner: str, lease_seconds: float) -> TaskRecord | None:
        """Take this task if it is waiting (a broker's message names it); ``None`` if it is not
        waiting: already claimed by another worker, finished, or unknown."""
        return self._claim(tasks.c.task_id == task_id, owner, lease_seconds)

    def _claim(
        self, which: sa.ColumnElement[bool], owner: str, lease_seconds: float
    ) -> TaskRecord | None:
        now = time.time()
        with self.engine.begin() as conn:
            row = conn.execute(
                tasks.update()
                .where(which, tasks.c.status == TaskStatus.WAITING)
                .values(
                    status=TaskStatus.IN_PROGRESS,
                    attempts=tasks.c.attempts + 1,
                    started_at=now,
                    lease_owner=owner,
                    lease_expires_at=now + lease_seconds,
                )
                .returning(tasks.c.task_id)
            ).first()
        return self.get_task(row.task_id) if row else None

    # ---- A worker's writes: each lands only while it holds the lease -----------------------

    def renew(self, lease: Lease, lease_seconds: float) -> bool:
        """Extend the lease; False if the worker no longer holds the task (stop working)."""
        with self.engine.begin() as conn:
            renewed = conn.execute(
                tasks.update()
                .where(*_held(lease))
                .values(lease_expires_at=time.time() + lease_seconds)
            )
        return bool(renewed.rowcount)

    def set_images(self, lease: Lease, updates: Sequence[ImageRecord]) -> bool:
        """Write per-image progress; False, writing nothing, if the lease is gone."""
        with self.engine.begin() as conn:
            # The guard and the write come in one transaction, guard first: SQLite takes its
            # write lock only at the first write, so a status read first could be stale by
            # the time the images are written (a close or a timeout in between).
            held = conn.execute(  # a write that changes nothing, to take the lock first
                tasks.update().where(*_held(lease)).values(status=TaskStatus.IN_PROGRESS)
            )
            if not held.rowcount:
                return False
            _write_images(conn, lease.pk, updates)
        return True

    def note(self, lease: Lease, reason: str) -> bool:
        """Say why the task is held up (its ``reason`` while in progress)."""
        with self.engine.begin() as conn:
            noted = conn.execute(tasks.update().where(*_held(lease)).values(reason=reason))
        return bool(noted.rowcount)

    def is_held(self, lease: Lease) -> bool:
        """Whether the worker still holds the task (not closed, timed out or reaped)."""
        with self.engine.connect() as conn:
            found = conn.execute(sa.select(tasks.c.id).where(*_held(lease))).first()
        return found is not None

    def finish(
        self,
        lease: Lease,
        status: TaskStatus,
        reason: str = "",
        images: Sequence[ImageRecord] = (),
    ) -> bool:
        """Move the task to a final status, with its images' last verdicts in the same
        transaction (a crash cannot leave one without the other); False, writing nothing, if
        the lease is gone."""
        with self.engine.begin() as conn:
            result = conn.execute(
                tasks.update()
                .where(*_held(lease))
                .values(status=status, reason=reason, finished_at=time.time(), lease_owner=None)
            )
            if not result.rowcount:
                return False
            _write_images(conn, lease.pk, images)
            if status != TaskStatus.COMPLETE:
                # Images that never got a verdict share the task's reason.
                fail_open_images(conn, [lease.pk], reason)
        return True

    def requeue(self, lease: Lease, reason: str, *, attempt_counts: bool = True) -> bool:
        """Give the task back to the queue after a failure of ours (not the input's); one
        that no attempt can help (a store that is down) does not count against the task."""
        return self._give_back(lease, reason=reason, attempt_counts=attempt_counts)

    def release(self, lease: Lease) -> bool:
        """Give back a task interrupted by a clean shutdown; the attempt does not count."""
        return self._give_back(lease, reason="", attempt_counts=False)

    def _give_back(self, lease: Lease, *, reason: str, attempt_counts: bool) -> bool:
        attempts = tasks.c.attempts if attempt_counts else tasks.c.attempts - 1
        with self.engine.begin() as conn:
            back = conn.execute(
                tasks.update()
                .where(*_held(lease))
                .values(
                    status=TaskStatus.WAITING,
                    reason=reason,
                    started_at=None,
                    attempts=attempts,
                    lease_owner=None,
                    lease_expires_at=time.time(),  # when it came back (see `undispatched`)
                    dispatched_at=None,
                )
            )
            if not back.rowcount:
                return False  # closed, timed out or reaped meanwhile: that verdict stands
            reset_images(conn, [lease.pk])
        return True

    # ---- The queue as the API reports it ---------------------------------------------------

    def queue_counts(self) -> tuple[dict[int, int], int]:
        """(waiting tasks by priority, tasks in progress), for metrics."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(tasks.c.status, tasks.c.priority, sa.func.count())
                .where(tasks.c.status.in_(OPEN))
                .group_by(tasks.c.status, tasks.c.priority)
            ).all()
        waiting = {r.priority: r[2] for r in rows if r.status == TaskStatus.WAITING}
        running = sum(r[2] for r in rows if r.status == TaskStatus.IN_PROGRESS)
        return waiting, running

    def queue_position(self, record: TaskRecord) -> int:
        """How many tasks run before this waiting one (ahead in the queue, or in progress):
        a few index lookups, whatever the backlog (`queue.py`)."""
        with self.engine.connect() as conn:
            return _position(conn, record)

    def recent_durations(self) -> list[float]:
        """Run times (seconds) of the `RECENT_RUNS` most recently finished tasks, newest
        first."""
        with self.engine.connect() as conn:
            return _recent_durations(conn)


def _read_task(conn: sa.Connection, task_id: str, appkey: str | None) -> TaskRecord | None:
    """A task with its images, in one query (a row per image)."""
    if appkey is None:
        rows = _TASK_BY_ID.rows(conn, task_id=task_id)
    else:
        rows = _TASK_OF_KEY.rows(conn, task_id=task_id, appkey=appkey)
    if not rows:
        return None
    record = _task_from_row(rows[0])
    record.callback = callback_from_row(rows[0])
    record.images = [
        ImageRecord(
            idx=r.image_idx,
            url=r.image_url,
            status=ImageStatus(r.image_status),
            reason=r.image_reason,
            result_key=r.image_result_key,
            method=r.image_method,
            recovered_share=r.image_recovered_share,
        )
        for r in rows
        if r.image_idx is not None
    ]
    return record


def _recent_durations(conn: sa.Connection) -> list[float]:
    rows = _RECENT_RUNS.rows(conn)
    return [r.finished_at - r.started_at for r in rows]


def _position(conn: sa.Connection, record: TaskRecord) -> int:
    if record.queue_seq is not None:
        return queue_position(conn, record.priority, record.queue_seq)
    return _counted_position(conn, record)  # a task stored by code from before 0009


def _counted_position(conn: sa.Connection, record: TaskRecord) -> int:
    """The queue position by counting the tasks ahead (for a task without a sequence number)."""
    ahead_in_queue = sa.and_(
        tasks.c.status == TaskStatus.WAITING,
        sa.or_(
            tasks.c.priority > record.priority,
            sa.and_(tasks.c.priority == record.priority, tasks.c.id < record.pk),
        ),
    )
    ahead = conn.execute(
        sa.select(sa.func.count()).where(
            sa.or_(tasks.c.status == TaskStatus.IN_PROGRESS, ahead_in_queue)
        )
    ).scalar_one()
    return int(ahead)


_IMAGE_COLUMNS = [
    task_images.c[name].label(f"image_{name}")
    for name in ("idx", "url", "status", "reason", "result_key", "method", "recovered_share")
]
"""A task's images in the same rows as the task (``image_`` + column, apart from its own)."""

_TASK_ROWS = (
    sa.select(tasks, *_IMAGE_COLUMNS, *CALLBACK_COLUMNS)
    .outerjoin(task_images, task_images.c.task_pk == tasks.c.id)
    .outerjoin(webhook_deliveries, webhook_deliveries.c.task_pk == tasks.c.id)
    .where(tasks.c.task_id == sa.bindparam("task_id", required=False))
    .order_by(task_images.c.idx)
)
_TASK_BY_ID = Prepared(_TASK_ROWS)
_TASK_OF_KEY = Prepared(_TASK_ROWS.where(tasks.c.appkey == sa.bindparam("appkey", required=False)))


def _recent_runs_with(status: TaskStatus) -> sa.Subquery:
    """The `RECENT_RUNS` last finished tasks of one status: a backward walk of
    ``ix_tasks_status_finished_at`` (with ``status IN (...)`` the databases sorted them all)."""
    return (
        sa.select(tasks.c.started_at, tasks.c.finished_at)
        .where(tasks.c.status == int(status), tasks.c.started_at.is_not(None))
        .order_by(tasks.c.finished_at.desc())
        .limit(RECENT_RUNS)
        .subquery()
    )


_RECENT_RUNS = Prepared(
    sa.union_all(
        *(
            sa.select(runs)
            for runs in map(_recent_runs_with, (TaskStatus.COMPLETE, TaskStatus.FAILED))
        )
    )
    .order_by(sa.literal_column("finished_at").desc())
    .limit(RECENT_RUNS)
)


def _held(lease: Lease) -> tuple[sa.ColumnElement[bool], ...]:
    """WHERE of a worker's write: its task, still in progress, still leased to it."""
    return (
        tasks.c.id == lease.pk,
        tasks.c.status == TaskStatus.IN_PROGRESS,
        tasks.c.lease_owner == lease.owner,
    )


def _lock_keys(conn: sa.Connection, appkeys: set[str]) -> None:
    """Hold, to the end of the transaction, the right to count and add these keys' tasks."""
    if conn.dialect.name == "postgresql":
        for key in sorted(appkeys):  # one lock order: no deadlock
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(advisory_key(f"key:{key}"))))
    else:
        # SQLite has one writer at a time, but pysqlite begins the transaction only at the
        # first write: write first (a no-op), so the count is read under the write lock.
        conn.execute(tasks.update().where(sa.false()).values(status=tasks.c.status))


def _room_per_key(conn: sa.Connection, appkeys: set[str], cap: int) -> dict[str, int]:
    """How many more unfinished tasks each key may have under ``cap``."""
    rows = conn.execute(
        sa.select(tasks.c.appkey, sa.func.count().label("open"))
        .where(tasks.c.appkey.in_(appkeys), tasks.c.status.in_(OPEN))
        .group_by(tasks.c.appkey)
    ).all()
    open_ = {r.appkey: int(r.open) for r in rows}
    return {key: cap - open_.get(key, 0) for key in appkeys}


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


def _task_from_row(row: sa.Row) -> TaskRecord:
    return TaskRecord(
        pk=row.id,
        task_id=row.task_id,
        appkey=row.appkey,
        status=TaskStatus(row.status),
        priority=row.priority,
        engine=row.engine,
        mask_url=row.mask_url,
        mask_key=row.mask_key,
        mask_data=row.mask_data,
        attempts=row.attempts,
        reason=row.reason,
        created_at=row.created_at,
        deadline_at=row.deadline_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        lease_owner=row.lease_owner,
        queue_seq=row.queue_seq,
        placement=MaskPlacement(
            fit=row.mask_fit or "stretch",
            anchor=row.mask_anchor or "center",
            dilate=row.mask_dilate or 0,
            invert=bool(row.mask_invert),
        ),
    )


def _placement_columns(placement: MaskPlacement | None) -> dict[str, object]:
    """The mask placement's columns: all NULL for the default, as in tasks made before 0007."""
    if placement is None or placement.is_default:
        return {}
    return {
        "mask_fit": placement.fit,
        "mask_anchor": placement.anchor,
        "mask_dilate": placement.dilate,
        "mask_invert": placement.invert,
    }
