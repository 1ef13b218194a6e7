"""Initial schema: api keys, tasks, per-image results.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("appkey", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("secret_sha256", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("revoked_at", sa.Float, nullable=True),
    )
    op.create_table(
        "tasks",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("task_id", sa.String(36), nullable=False, unique=True),
        sa.Column("appkey", sa.String(64), sa.ForeignKey("api_keys.appkey"), nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("engine", sa.String(32), nullable=False),
        sa.Column("mask_url", sa.Text, nullable=True),
        sa.Column("mask_data", sa.LargeBinary, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("deadline_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float, nullable=True),
        sa.Column("finished_at", sa.Float, nullable=True),
        sa.Column("heartbeat_at", sa.Float, nullable=True),
    )
    op.create_index("ix_tasks_queue", "tasks", ["status", "priority", "id"])
    op.create_index("ix_tasks_appkey", "tasks", ["appkey"])
    op.create_table(
        "task_images",
        sa.Column(
            "task_pk",
            sa.Integer,
            sa.ForeignKey("tasks.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("idx", sa.Integer, primary_key=True),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("result_key", sa.Text, nullable=True),
        sa.Column("method", sa.String(64), nullable=True),
        sa.Column("recovered_share", sa.Float, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("task_images")
    op.drop_index("ix_tasks_appkey", "tasks")
    op.drop_index("ix_tasks_queue", "tasks")
    op.drop_table("tasks")
    op.drop_table("api_keys")
