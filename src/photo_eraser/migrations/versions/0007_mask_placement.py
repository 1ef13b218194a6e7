"""How a task's mask is placed on each image (the ``mask_fit``, ``mask_anchor``,
``mask_dilate`` and ``mask_invert`` extensions); NULL = the default, as for older tasks.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("mask_fit", sa.String(16), nullable=True))
        batch.add_column(sa.Column("mask_anchor", sa.String(16), nullable=True))
        batch.add_column(sa.Column("mask_dilate", sa.Integer, nullable=True))
        batch.add_column(sa.Column("mask_invert", sa.Boolean, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("mask_invert")
        batch.drop_column("mask_dilate")
        batch.drop_column("mask_anchor")
        batch.drop_column("mask_fit")
