"""Callback deliveries in the store: recorded with their task, due once it has a final status,
held under a lease while one process sends them, retried until delivered or given up.

A row is made in the task's own transaction (`record_callback`), so a task that asked for a
callback can never finish without one. It needs no write when the task finishes: it is due as
soon as the task's status is final (the claim joins the task). The lease works as a worker's
on a task: the claim takes due rows whose lease is free or expired, in one statement that
re-checks that condition on the row it locks, so two processes never hold one row; an outcome
lands only while the lease is still its sender's. A sender killed mid-send leaves its lease to
expire, and the row is sent again, under the same delivery id (at least once)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from photo_eraser.tasks.records import CallbackRecord, NewCallback
from photo_eraser.tasks.status import TaskStatus
from photo_eraser.tasks.tables import api_keys, tasks, webhook_deliveries

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"

FINAL = (TaskStatus.COMPLETE, TaskStatus.FAILED, TaskStatus.CLOSED, TaskStatus.TIMED_OUT)
"""The statuses after which a task's callback is due."""


@dataclass(frozen=True)
class DeliveryClaim:
    """One callback held by one sender: what to send where, signed with which secret."""

    task_pk: int
    task_id: str
    appkey: str
    delivery_id: str
    url: str
    base_url: str
    attempt: int
    """This attempt's number (1 for the first send)."""
    finished_at: float
    secret: str | None
    """The key's webhook secret now (None: the key has none)."""
    owner: str


class DeliveryQueries:
    """Claiming callbacks and recording their outcome (a part of `TaskStore`)."""

    engine: sa.Engine

    def claim_deliveries(
        self, owner: str, lease_seconds: float, limit: int = 16, now: float | None = None
    ) -> list[DeliveryClaim]:
        """Take up to ``limit`` due callbacks (task finished, next attempt due, lease free or
        expired) under a lease to ``owner``; each claim counts as an attempt."""
        now = time.time() if now is None else now
        d = webhook_deliveries
        due = (
            d.c.state == PENDING,
            d.c.next_attempt_at <= now,
            sa.or_(d.c.lease_expires_at.is_(None), d.c.lease_expires_at < now),
        )
        pick = (
            sa.select(d.c.task_pk)
            .join(tasks, tasks.c.id == d.c.task_pk)
            .where(*due, tasks.c.status.in_(FINAL))
            .order_by(d.c.next_attempt_at)
            .limit(limit)
            # PostgreSQL: concurrent senders skip each other's rows; SQLite serialises writers.
            .with_for_update(of=d, skip_locked=True)
        )
        with self.engine.begin() as conn:
            # Picked first, then taken: as one UPDATE ... WHERE IN (subquery), PostgreSQL may
            # run the subquery again per row and take more than ``limit``. ``due`` is checked
            # again by the UPDATE itself: SQLite reads the pick before its write lock, and a
            # row another sender took meanwhile is left alone.
            picked = list(conn.execute(pick).scalars())
            if not picked:
                return []
            taken = conn.execute(
                d.update()
                .where(d.c.task_pk.in_(picked), *due)
                .values(
                    lease_owner=owner,
                    lease_expires_at=now + lease_seconds,
                    attempts=d.c.attempts + 1,
                )
                .returning(d.c.task_pk)
            ).scalars()
            pks = list(taken)
            if not pks:
                return []
            rows = conn.execute(
                sa.select(
                    d.c.task_pk,
                    d.c.delivery_id,
                    d.c.url,
                    d.c.base_url,
                    d.c.attempts,
                    tasks.c.task_id,
                    tasks.c.appkey,
                    tasks.c.finished_at,
                    api_keys.c.webhook_secret,
                )
                .join(tasks, tasks.c.id == d.c.task_pk)
                .join(api_keys, api_keys.c.appkey == tasks.c.appkey)
                .where(d.c.task_pk.in_(pks))
                .order_by(d.c.next_attempt_at)
            ).all()
        return [
            DeliveryClaim(
                task_pk=r.task_pk,
                task_id=r.task_id,
                appkey=r.appkey,
                delivery_id=r.delivery_id,
                url=r.url,
                base_url=r.base_url,
                attempt=r.attempts,
                finished_at=r.finished_at or now,
                secret=r.webhook_secret,
                owner=owner,
            )
            for r in rows
        ]

    def release_deliveries(self, owner_prefix: str) -> int:
        """After a crash of the embedded server: the callbacks its predecessor held (leased to
        ``owner_prefix...``; the data directory's lock says it is dead) are free at once
        instead of when their leases expire. How many were held."""
        d = webhook_deliveries
        with self.engine.begin() as conn:
            freed = conn.execute(
                d.update()
                .where(
                    d.c.state == PENDING,
                    d.c.lease_owner.startswith(owner_prefix, autoescape=True),
                )
                .values(lease_owner=None, lease_expires_at=None)
            )
        return int(freed.rowcount)

    def delivery_succeeded(self, claim: DeliveryClaim, status_code: int) -> bool:
        """Record a 2xx answer: delivered. False, writing nothing, if the lease is gone."""
        return self._delivery_outcome(
            claim,
            state=DELIVERED,
            last_status_code=status_code,
            last_error=None,
            ended_at=time.time(),
        )

    def delivery_failed(
        self, claim: DeliveryClaim, status_code: int | None, error: str, retry_at: float | None
    ) -> bool:
        """Record a failed attempt: due again at ``retry_at``, or given up (``None``). False,
        writing nothing, if the lease is gone."""
        if retry_at is None:
            return self._delivery_outcome(
                claim,
                state=FAILED,
                last_status_code=status_code,
                last_error=error,
                ended_at=time.time(),
            )
        return self._delivery_outcome(
            claim,
            state=PENDING,
            last_status_code=status_code,
            last_error=error,
            next_attempt_at=retry_at,
        )

    def _delivery_outcome(self, claim: DeliveryClaim, **values: object) -> bool:
        d = webhook_deliveries
        with self.engine.begin() as conn:
            done = conn.execute(
                d.update()
                .where(
                    d.c.task_pk == claim.task_pk,
                    d.c.state == PENDING,
                    d.c.lease_owner == claim.owner,
                )
                .values(lease_owner=None, lease_expires_at=None, **values)
            )
        return bool(done.rowcount)


def record_callback(conn: sa.Connection, task_pk: int, callback: NewCallback) -> None:
    """Within a task's transaction: its callback, due once the task has a final status."""
    conn.execute(
        webhook_deliveries.insert().values(
            task_pk=task_pk,
            delivery_id=callback.delivery_id,
            url=callback.url,
            base_url=callback.base_url,
            state=PENDING,
            attempts=0,
            next_attempt_at=0.0,
        )
    )


CALLBACK_COLUMNS = [
    webhook_deliveries.c[name].label(f"callback_{name}")
    for name in ("delivery_id", "state", "attempts", "last_status_code", "last_error", "ended_at")
]
"""A task's callback in the same rows as the task when read (an outer join: NULLs if none)."""


def callback_from_row(row: Any) -> CallbackRecord | None:
    """Where the callback of a task stands, from a row with `CALLBACK_COLUMNS`; None if the
    task asked for none."""
    if row.callback_delivery_id is None:
        return None
    return CallbackRecord(
        delivery_id=row.callback_delivery_id,
        state=row.callback_state,
        attempts=row.callback_attempts,
        last_status_code=row.callback_last_status_code,
        last_error=row.callback_last_error,
        ended_at=row.callback_ended_at,
    )
