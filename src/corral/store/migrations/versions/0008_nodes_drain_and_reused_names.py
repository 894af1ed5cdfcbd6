"""Nodes can be drained before they are removed, and a name can be used again.

- nodes.state's CHECK takes `draining`: a node a resize or `destroy NODE` removes runs
  its roles' `drain` hooks first. A downgrade turns draining nodes back into ready ones.
- nodes.drain_timeout: how long, in seconds, its hooks may wait for its work to end.
- A node's name is unique among the cluster's nodes that are not terminated, no longer
  among all it ever had: an autoscaled group's nodes come and go under the names its
  scheduler knows (`worker-0` again after the first `worker-0` was removed). A downgrade
  gives the terminated namesakes of live nodes their id as a name, so that the old
  unique key holds again.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# the node lifecycle before and after this revision (lifecycle.py may move on)
BEFORE = (
    "pending",
    "booting",
    "registered",
    "configuring",
    "ready",
    "failed",
    "lost",
    "terminating",
    "terminated",
)
AFTER = (*BEFORE[:5], "draining", *BEFORE[5:])
LIVE = sa.text("state != 'terminated'")
# an unnamed unique key (0001 made it so) is found under this name in batch mode
NAMING = {"uq": "uq_%(table_name)s_%(column_0_name)s_%(column_1_name)s"}


def upgrade() -> None:
    old_key = _unique_key_on_name()
    with op.batch_alter_table("nodes", naming_convention=NAMING) as batch_op:
        batch_op.drop_constraint(old_key, type_="unique")
        batch_op.drop_constraint("node_state", type_="check")
        batch_op.create_check_constraint("node_state", _one_of(AFTER))
        batch_op.add_column(sa.Column("drain_timeout", sa.Integer(), nullable=True))
    op.create_index(
        "ix_nodes_live_name",
        "nodes",
        ["cluster_id", "name"],
        unique=True,
        sqlite_where=LIVE,
        postgresql_where=LIVE,
    )


def downgrade() -> None:
    op.drop_index("ix_nodes_live_name", table_name="nodes")
    op.execute(sa.text("UPDATE nodes SET state = 'ready' WHERE state = 'draining'"))
    op.execute(
        sa.text(
            "UPDATE nodes SET name = id WHERE state = 'terminated' AND EXISTS ("
            "SELECT 1 FROM nodes AS live WHERE live.cluster_id = nodes.cluster_id "
            "AND live.name = nodes.name AND live.id != nodes.id)"
        )
    )
    with op.batch_alter_table("nodes", naming_convention=NAMING) as batch_op:
        batch_op.drop_column("drain_timeout")
        batch_op.drop_constraint("node_state", type_="check")
        batch_op.create_check_constraint("node_state", _one_of(BEFORE))
        batch_op.create_unique_constraint("uq_nodes_cluster_id_name", ["cluster_id", "name"])


def _unique_key_on_name() -> str:
    """The name of the unique key on (cluster_id, name): PostgreSQL named it when 0001
    made it; SQLite keeps no name, and batch mode finds it under NAMING's."""
    for key in sa.inspect(op.get_bind()).get_unique_constraints("nodes"):
        if sorted(key["column_names"]) == ["cluster_id", "name"] and key["name"]:
            return key["name"]
    return "uq_nodes_cluster_id_name"


def _one_of(states: tuple[str, ...]) -> str:
    return "state IN (" + ", ".join(f"'{s}'" for s in states) + ")"
