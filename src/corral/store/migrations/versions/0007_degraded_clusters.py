"""A cluster can be degraded: it was ready, then lost nodes, and goes on with the others.

clusters.state's CHECK takes the new state; a downgrade turns degraded clusters back
into failed ones (what they were before this revision), keeping their cause.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# the cluster lifecycle before and after this revision (lifecycle.py may move on)
BEFORE = ("launching", "ready", "failed", "terminating", "terminated")
AFTER = ("launching", "ready", "degraded", "failed", "terminating", "terminated")


def upgrade() -> None:
    with op.batch_alter_table("clusters") as batch_op:
        batch_op.drop_constraint("cluster_state", type_="check")
        batch_op.create_check_constraint("cluster_state", _one_of(AFTER))


def downgrade() -> None:
    op.execute(sa.text("UPDATE clusters SET state = 'failed' WHERE state = 'degraded'"))
    with op.batch_alter_table("clusters") as batch_op:
        batch_op.drop_constraint("cluster_state", type_="check")
        batch_op.create_check_constraint("cluster_state", _one_of(BEFORE))


def _one_of(states: tuple[str, ...]) -> str:
    return "state IN (" + ", ".join(f"'{s}'" for s in states) + ")"
