"""A waiting task's queue position, read without counting the backlog.

Each task gets a sequence number when it is created, one counter per priority (``queue_seqs``):
1, 2, 3, ... in creation order, kept for good (a task given back to the queue keeps its place,
as the queue order by id always did). Numbers are dense: the counter moves in the create's own
transaction, so a create that rolls back takes its numbers back, and tasks are never deleted.
So among the tasks of priority ``q`` whose numbers lie between the first waiting one (the head,
``min``) and the last (the tail, ``max``), the waiting ones are all of them but those that left
out of order (claimed by a broker's message, closed, timed out, or still in progress while an
older one was given back): the "holes", counted on the same index. Hence, exactly::

    position = running + sum over q > p of (tail_q - head_q + 1 - holes_q(head_q, tail_q))
                       + (my_seq - head_p - holes_p(head_p, my_seq))

which is what ``TaskStore.queue_position`` always meant (tasks in progress, plus waiting ones
of a higher priority, plus waiting ones of the same priority created before). It costs two
index lookups per priority at or above the task's, one index range per status for the holes
(empty unless tasks left out of order), and the count of tasks in progress (bounded by the
worker slots): the same time with 10 or 10,000 tasks waiting.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import sqlalchemy as sa

from photo_eraser.tasks.prepared import Prepared, among
from photo_eraser.tasks.status import TaskStatus
from photo_eraser.tasks.tables import queue_seqs, tasks

PRIORITIES = range(10)
"""The priorities the API accepts; the migration makes one counter row for each."""

_LEFT = [s for s in TaskStatus if s != TaskStatus.WAITING]
"""The statuses of a task that is no longer (or not now) in the queue."""


def take_seqs(conn: sa.Connection, priorities: Sequence[int]) -> list[int]:
    """Sequence numbers for new tasks of these priorities (in their order), taken in the
    caller's transaction. Counters are updated in priority order, so two creates on PostgreSQL
    lock the rows in one order and cannot deadlock."""
    wanted: dict[int, int] = {}
    for p in priorities:
        wanted[p] = wanted.get(p, 0) + 1
    next_seq: dict[int, int] = {}
    for p in sorted(wanted):
        n = wanted[p]
        last = conn.execute(
            queue_seqs.update()
            .where(queue_seqs.c.priority == p)
            .values(last_seq=queue_seqs.c.last_seq + n)
            .returning(queue_seqs.c.last_seq)
        ).scalar()
        if last is None:  # a priority the migration made no row for
            conn.execute(queue_seqs.insert().values(priority=p, last_seq=n))
            last = n
        next_seq[p] = last - n + 1
    seqs = []
    for p in priorities:
        seqs.append(next_seq[p])
        next_seq[p] += 1
    return seqs


def queue_position(conn: sa.Connection, priority: int, seq: int) -> int:
    """How many tasks run before the waiting task of ``priority`` numbered ``seq``: those in
    progress, and the waiting ones ahead of it in the queue (see the module's docstring)."""
    (row,) = _position_query(priority).rows(conn, seq=seq)
    return int(sum(v or 0 for v in row))


def _head(p: int) -> sa.ScalarSelect[int]:
    """The number of the first waiting task of priority ``p`` (NULL if none waits)."""
    return _waiting(p, sa.func.min(tasks.c.queue_seq))


def _tail(p: int) -> sa.ScalarSelect[int]:
    """The number of the last waiting task of priority ``p`` (NULL if none waits)."""
    return _waiting(p, sa.func.max(tasks.c.queue_seq))


def _waiting(p: int, what: sa.ColumnElement[int]) -> sa.ScalarSelect[int]:
    return (
        sa.select(what)
        .where(tasks.c.status == _int(TaskStatus.WAITING), tasks.c.priority == _int(p))
        .scalar_subquery()
    )


def _holes(
    p: int, after: sa.ColumnElement[int], before: sa.ColumnElement[int]
) -> sa.ScalarSelect[int]:
    """Tasks of priority ``p`` numbered strictly between two waiting ones that are not waiting."""
    return (
        sa.select(sa.func.count())
        .where(
            among(tasks.c.status, _LEFT),
            tasks.c.priority == _int(p),
            tasks.c.queue_seq > after,
            tasks.c.queue_seq < before,
        )
        .scalar_subquery()
    )


def _int(value: int) -> sa.ColumnElement[int]:
    """An integer written into the SQL (a statement of constants has no parameters to build)."""
    return sa.literal_column(str(int(value)), sa.Integer)


@lru_cache(maxsize=len(PRIORITIES) + 1)
def _position_query(priority: int) -> Prepared:
    """One statement (built and compiled once per priority) whose columns add up to the
    position of the task numbered ``:seq``."""
    mine = sa.bindparam("seq", type_=sa.Integer, required=False)
    running = (
        sa.select(sa.func.count())
        .where(tasks.c.status == _int(TaskStatus.IN_PROGRESS))
        .scalar_subquery()
    )
    columns: list[sa.ColumnElement[int]] = [running]
    for q in PRIORITIES:
        if q <= priority:
            continue
        head, tail = _head(q), _tail(q)
        columns.append(tail - head + _int(1) - _holes(q, head, tail))
    head = _head(priority)
    columns.append(mine - head - _holes(priority, head, mine))
    return Prepared(sa.select(*columns))
