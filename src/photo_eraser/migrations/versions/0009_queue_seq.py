"""Per-priority enqueue sequence numbers, so a task's queue position is read from a few index
lookups instead of a count of the backlog (`tasks/queue.py`). Unfinished tasks are numbered in
their queue order (per priority, by id); finished ones keep NULL (they are in no queue).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

PRIORITIES = range(10)
OPEN = (1, 2)  # waiting, in progress


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("queue_seq", sa.Integer, nullable=True))
    seqs = op.create_table(
        "queue_seqs",
        sa.Column("priority", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("last_seq", sa.Integer, nullable=False),
    )
    conn = op.get_bind()
    tasks = sa.table(
        "tasks",
        sa.column("id", sa.Integer),
        sa.column("status", sa.Integer),
        sa.column("priority", sa.Integer),
        sa.column("queue_seq", sa.Integer),
    )
    rows = conn.execute(
        sa.select(tasks.c.id, tasks.c.priority)
        .where(tasks.c.status.in_(OPEN))
        .order_by(tasks.c.priority, tasks.c.id)
    ).all()
    last: dict[int, int] = dict.fromkeys(PRIORITIES, 0)
    numbered = []
    for pk, priority in rows:
        last[priority] = last.get(priority, 0) + 1
        numbered.append({"pk": pk, "seq": last[priority]})
    if numbered:
        conn.execute(
            tasks.update()
            .where(tasks.c.id == sa.bindparam("pk"))
            .values(queue_seq=sa.bindparam("seq")),
            numbered,
        )
    op.bulk_insert(seqs, [{"priority": p, "last_seq": n} for p, n in sorted(last.items())])
    op.create_index("ix_tasks_queue_seq", "tasks", ["status", "priority", "queue_seq"])


def downgrade() -> None:
    op.drop_index("ix_tasks_queue_seq", table_name="tasks")
    op.drop_table("queue_seqs")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("queue_seq")
