"""One word for a node, lifecycle states kept to their enums, documents kept as JSON.

- workspaces becomes nodes, and every workspace_id column node_id (address_allocations,
  events, node_secrets, bootstrap_tokens, reports); its indexes are renamed with it.
- clusters.state and nodes.state get a CHECK that keeps them to their lifecycle's states.
- clusters.document holds the parsed document as canonical JSON (it held YAML, which the
  service parsed again on every read); clusters.policy, a copy of the document's policy
  mode, goes.

Revision ID: 0006
Revises: 0005
"""

import json

import sqlalchemy as sa
import yaml
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# the lifecycles as this revision knows them (lifecycle.py may move on)
CLUSTER_STATES = ("launching", "ready", "failed", "terminating", "terminated")
NODE_STATES = (
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
NODE_COLUMNS = ("address_allocations", "events", "node_secrets", "bootstrap_tokens", "reports")
CLUSTERS = sa.table("clusters", sa.column("id", sa.String), sa.column("document", sa.Text))


def upgrade() -> None:
    op.drop_index("ix_workspaces_host", table_name="workspaces")
    op.drop_index("ix_workspaces_state", table_name="workspaces")
    op.rename_table("workspaces", "nodes")
    with op.batch_alter_table("nodes") as batch_op:
        batch_op.create_check_constraint("node_state", _one_of(NODE_STATES))
    op.create_index("ix_nodes_host", "nodes", ["host_name", "state"])
    op.create_index("ix_nodes_state", "nodes", ["state"])
    for table in NODE_COLUMNS:
        with op.batch_alter_table(table) as batch_op:
            batch_op.alter_column("workspace_id", new_column_name="node_id")
    _convert_documents(lambda text: _json(yaml.safe_load(text)))
    with op.batch_alter_table("clusters") as batch_op:
        batch_op.drop_column("policy")
        batch_op.create_check_constraint("cluster_state", _one_of(CLUSTER_STATES))


def downgrade() -> None:
    with op.batch_alter_table("clusters") as batch_op:
        batch_op.drop_constraint("cluster_state", type_="check")
        batch_op.add_column(sa.Column("policy", sa.String(16), nullable=True))
    connection = op.get_bind()
    for cluster_id, text in connection.execute(sa.select(CLUSTERS.c.id, CLUSTERS.c.document)):
        mode = json.loads(text).get("policy", {}).get("mode", "all-or-nothing")
        connection.execute(
            sa.text("UPDATE clusters SET policy = :mode WHERE id = :id"),
            {"mode": mode, "id": cluster_id},
        )
    _convert_documents(
        lambda text: yaml.safe_dump(json.loads(text), sort_keys=False, allow_unicode=True)
    )
    with op.batch_alter_table("clusters") as batch_op:
        batch_op.alter_column("policy", nullable=False)
    for table in NODE_COLUMNS:
        with op.batch_alter_table(table) as batch_op:
            batch_op.alter_column("node_id", new_column_name="workspace_id")
    op.drop_index("ix_nodes_host", table_name="nodes")
    op.drop_index("ix_nodes_state", table_name="nodes")
    with op.batch_alter_table("nodes") as batch_op:
        batch_op.drop_constraint("node_state", type_="check")
    op.rename_table("nodes", "workspaces")
    op.create_index("ix_workspaces_host", "workspaces", ["host_name", "state"])
    op.create_index("ix_workspaces_state", "workspaces", ["state"])


def _one_of(states: tuple[str, ...]) -> str:
    return "state IN (" + ", ".join(f"'{s}'" for s in states) + ")"


def _json(data: object) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def _convert_documents(convert) -> None:
    connection = op.get_bind()
    for cluster_id, text in connection.execute(sa.select(CLUSTERS.c.id, CLUSTERS.c.document)):
        connection.execute(
            CLUSTERS.update().where(CLUSTERS.c.id == cluster_id).values(document=convert(text))
        )
