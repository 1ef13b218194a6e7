"""Storage tables (SQLAlchemy Core). Schema changes go through Alembic migrations."""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)

metadata = MetaData()

api_keys = Table(
    "api_keys",
    metadata,
    Column("appkey", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("secret_sha256", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float, nullable=True),
    # Signs the key's callback deliveries (version 0008). Kept as it is, not hashed: signing
    # needs the secret itself (see docs/webhooks.md). NULL for keys made before 0008.
    Column("webhook_secret", String(64), nullable=True),
)

tasks = Table(
    "tasks",
    metadata,
    # The integer id gives FIFO order within a priority; task_id is the public name.
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("task_id", String(36), nullable=False, unique=True),
    Column("appkey", String(64), ForeignKey("api_keys.appkey"), nullable=False),
    Column("status", Integer, nullable=False),
    Column("priority", Integer, nullable=False),
    Column("engine", String(32), nullable=False),
    Column("mask_url", Text, nullable=True),
    Column("mask_data", LargeBinary, nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("reason", Text, nullable=False, default=""),
    Column("created_at", Float, nullable=False),
    Column("deadline_at", Float, nullable=False),
    Column("started_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
    # The worker that holds the task while it is in progress, until when (it renews the lease
    # while working; an expired one is reaped by the maintenance pass). For a waiting task
    # that was given back, when its last lease ended.
    Column("lease_owner", Text, nullable=True),
    Column("lease_expires_at", Float, nullable=True),
    # When a message for the task last went to the broker (distributed mode only).
    Column("dispatched_at", Float, nullable=True),
    # The inline mask's blob; mask_data holds those of tasks created before version 0005.
    Column("mask_key", Text, nullable=True),
    # How the mask is placed on each image (the mask_fit extension, version 0007); NULL = the
    # default (stretch, anchor center, no dilation, not inverted), as for older tasks.
    Column("mask_fit", String(16), nullable=True),
    Column("mask_anchor", String(16), nullable=True),
    Column("mask_dilate", Integer, nullable=True),
    Column("mask_invert", Boolean, nullable=True),
    # Its place in its priority's queue: 1, 2, 3, ... in the order tasks of that priority
    # were created (`queue_seqs`), kept when the task is given back; what the queue position
    # is read from (`tasks/queue.py`, version 0009). NULL for tasks finished before 0009.
    Column("queue_seq", Integer, nullable=True),
)
Index("ix_tasks_queue", tasks.c.status, tasks.c.priority, tasks.c.id)
Index("ix_tasks_queue_seq", tasks.c.status, tasks.c.priority, tasks.c.queue_seq)
Index("ix_tasks_appkey", tasks.c.appkey)
Index("ix_tasks_appkey_status", tasks.c.appkey, tasks.c.status)  # unfinished tasks per key
Index("ix_tasks_finished_at", tasks.c.finished_at)
Index("ix_tasks_status_finished_at", tasks.c.status, tasks.c.finished_at)  # recent runs
Index("ix_tasks_lease_expires_at", tasks.c.lease_expires_at)

task_images = Table(
    "task_images",
    metadata,
    Column("task_pk", Integer, ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True),
    Column("idx", Integer, primary_key=True),
    Column("url", Text, nullable=False),
    Column("status", Integer, nullable=False),
    Column("reason", Text, nullable=False, default=""),
    Column("result_key", Text, nullable=True),
    Column("method", String(64), nullable=True),
    Column("recovered_share", Float, nullable=True),
)

# The last ``queue_seq`` given to a task of each priority (a row per priority, 0..9 made by the
# migration). Creates update it in their own transaction: on PostgreSQL its row lock orders the
# creates of one priority, so sequence numbers follow the order of the ids.
queue_seqs = Table(
    "queue_seqs",
    metadata,
    Column("priority", Integer, primary_key=True, autoincrement=False),
    Column("last_seq", Integer, nullable=False),
)

# Live worker slots: every worker process says how many tasks it can run at once, every few
# seconds (``wait_time`` counts the slots of workers seen recently, over the whole cluster).
workers = Table(
    "workers",
    metadata,
    Column("worker_id", String(200), primary_key=True),
    Column("slots", Integer, nullable=False),
    Column("seen_at", Float, nullable=False),
)

# One token bucket per key for the create rate limit, shared by every API process.
rate_buckets = Table(
    "rate_buckets",
    metadata,
    Column("appkey", String(64), primary_key=True),
    Column("tokens", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

# Idempotency-Key of create requests: per key, which task a key named and a hash of the body it
# came with. The primary key is the unique constraint that makes concurrent duplicates end with
# one task: the row is inserted in the task's own transaction. Kept 24 h (the retention sweep).
idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("appkey", String(64), ForeignKey("api_keys.appkey"), nullable=False),
    Column("idempotency_key", String(255), nullable=False),
    Column("body_sha256", String(64), nullable=False),
    Column("task_id", String(36), nullable=False),
    Column("created_at", Float, nullable=False),
    PrimaryKeyConstraint("appkey", "idempotency_key", name="pk_idempotency_keys"),
)
Index("ix_idempotency_keys_created_at", idempotency_keys.c.created_at)

# The callback of a task created with ``callback_url`` (version 0008): one row per task, made in
# the task's own transaction and due once the task has a final status. A delivering process
# holds a row under a lease (``lease_owner`` until ``lease_expires_at``), like a worker a task,
# so two processes never send it at once; a process killed mid-send leaves a lease that
# expires, and the next one sends again with the same ``delivery_id`` (at least once).
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("task_pk", Integer, ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True),
    Column("delivery_id", String(36), nullable=False, unique=True),
    Column("url", Text, nullable=False),
    # Base of the result links in the body: the public URL, or the address the task was
    # created through (a delivering process has no request to take it from).
    Column("base_url", Text, nullable=False),
    Column("state", String(16), nullable=False),  # pending, delivered, failed
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", Float, nullable=False),
    Column("lease_owner", Text, nullable=True),
    Column("lease_expires_at", Float, nullable=True),
    Column("last_status_code", Integer, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("ended_at", Float, nullable=True),  # when it was delivered or given up
)
Index("ix_webhook_deliveries_due", webhook_deliveries.c.state, webhook_deliveries.c.next_attempt_at)
