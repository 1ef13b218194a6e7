"""Idempotency keys of create requests: the same key and body within a day name one task.

The row is written in the transaction that stores its task (`TaskStore.create_tasks`), and the
table's primary key (appkey, idempotency key) is the only arbiter between concurrent duplicates:
the second insert fails, its task is not stored, and its request answers the first one's task.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import sqlalchemy as sa

from photo_eraser.tasks.tables import idempotency_keys

IDEMPOTENCY_TTL_SECONDS = 24 * 3600
"""How long a key names its task; older rows are ignored, replaced, and swept."""


@dataclass(frozen=True)
class Idempotency:
    """A create's ``Idempotency-Key`` and the SHA-256 (hex) of its body."""

    key: str
    body_sha256: str


@dataclass(frozen=True)
class Remembered:
    """The task a key named, and the hash of the body it came with."""

    task_id: str
    body_sha256: str


class IdempotencyTaken(Exception):
    """Another create with the same key was stored first (its row won the unique constraint);
    the task at hand was not stored."""


class IdempotencyQueries:
    """Reading and sweeping idempotency keys (a part of `TaskStore`)."""

    engine: sa.Engine

    def remembered(self, appkey: str, key: str, now: float | None = None) -> Remembered | None:
        """The task ``key`` of ``appkey`` named within the last 24 h, if any."""
        since = (time.time() if now is None else now) - IDEMPOTENCY_TTL_SECONDS
        t = idempotency_keys
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(t.c.task_id, t.c.body_sha256).where(
                    t.c.appkey == appkey, t.c.idempotency_key == key, t.c.created_at >= since
                )
            ).first()
        return None if row is None else Remembered(row.task_id, row.body_sha256)

    def forget_idempotency_keys(self, before: float) -> int:
        """Delete the keys recorded before ``before``."""
        with self.engine.begin() as conn:
            result = conn.execute(
                idempotency_keys.delete().where(idempotency_keys.c.created_at < before)
            )
        return int(result.rowcount)


def record_idempotency(
    conn: sa.Connection, appkey: str, idem: Idempotency, task_id: str, now: float
) -> None:
    """Within a task's transaction: claim ``idem`` for ``task_id``. An expired row of the same
    key is replaced; a live one makes the insert fail (``IntegrityError``)."""
    t = idempotency_keys
    conn.execute(
        t.delete().where(
            t.c.appkey == appkey,
            t.c.idempotency_key == idem.key,
            t.c.created_at < now - IDEMPOTENCY_TTL_SECONDS,
        )
    )
    conn.execute(
        t.insert().values(
            appkey=appkey,
            idempotency_key=idem.key,
            body_sha256=idem.body_sha256,
            task_id=task_id,
            created_at=now,
        )
    )
