"""Index tasks by status and finish time: the wait estimate reads the most recently finished
complete and failed tasks once a second, and without it both SQLite and PostgreSQL sorted
every finished task to find them.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_tasks_status_finished_at", "tasks", ["status", "finished_at"])


def downgrade() -> None:
    op.drop_index("ix_tasks_status_finished_at", "tasks")
