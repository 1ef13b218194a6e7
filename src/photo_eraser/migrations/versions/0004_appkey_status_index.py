"""Index tasks by key and status: the cap on unfinished tasks per key counts them per create.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_tasks_appkey_status", "tasks", ["appkey", "status"])


def downgrade() -> None:
    op.drop_index("ix_tasks_appkey_status", "tasks")
