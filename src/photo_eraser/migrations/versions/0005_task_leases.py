"""Per-task leases instead of one server lease; inline masks in the blob store; dispatch
bookkeeping; worker heartbeats and rate-limit buckets shared by every process of a cluster.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Batch mode: SQLite cannot drop a column in place (Alembic copies the table).
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("lease_owner", sa.Text, nullable=True))
        batch.add_column(sa.Column("lease_expires_at", sa.Float, nullable=True))
        batch.add_column(sa.Column("dispatched_at", sa.Float, nullable=True))
        batch.add_column(sa.Column("mask_key", sa.Text, nullable=True))
        batch.drop_column("heartbeat_at")
    op.create_index("ix_tasks_lease_expires_at", "tasks", ["lease_expires_at"])
    # Tasks in progress under the old server lease have no lease of their own: an expired one,
    # so the maintenance pass takes them back at once (as the old crash recovery did).
    op.execute("UPDATE tasks SET lease_expires_at = 0 WHERE status = 2")
    op.drop_table("server_lease")
    op.create_table(
        "workers",
        sa.Column("worker_id", sa.String(200), primary_key=True),
        sa.Column("slots", sa.Integer, nullable=False),
        sa.Column("seen_at", sa.Float, nullable=False),
    )
    op.create_table(
        "rate_buckets",
        sa.Column("appkey", sa.String(64), primary_key=True),
        sa.Column("tokens", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("rate_buckets")
    op.drop_table("workers")
    op.create_table(
        "server_lease",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("holder", sa.Text, nullable=False),
        sa.Column("heartbeat_at", sa.Float, nullable=False),
    )
    op.drop_index("ix_tasks_lease_expires_at", "tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("heartbeat_at", sa.Float, nullable=True))
        batch.drop_column("mask_key")
        batch.drop_column("dispatched_at")
        batch.drop_column("lease_expires_at")
        batch.drop_column("lease_owner")
