"""Nodes keep the backend's name of their machine and what an hour of it costs.

- nodes.machine_id: the backend's own name for the node's machine (an EC2 instance id),
  shown by `status`; empty for backends that name machines after their node.
- nodes.hourly_price: what the node's pool charges for an hour of it, from the pool's
  price table at launch, so that a cost so far stays true when the table changes; NULL
  where the pool has no prices.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nodes") as batch_op:
        batch_op.add_column(
            sa.Column("machine_id", sa.String(64), nullable=False, server_default="")
        )
        batch_op.add_column(sa.Column("hourly_price", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("nodes") as batch_op:
        batch_op.drop_column("hourly_price")
        batch_op.drop_column("machine_id")
