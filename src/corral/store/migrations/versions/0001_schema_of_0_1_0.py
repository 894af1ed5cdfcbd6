"""The schema of corral 0.1.0 (ee1e1ac): every table it made with create_all.

A store that 0.1.0 made has no alembic_version table; opening it marks it as this
revision (store/schema.py). Do not change this file: later changes are later revisions.

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-29 03:06:57.954255
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "images",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("digest", sa.String(length=80), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "pools",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("backend", sa.String(length=32), nullable=False),
        sa.Column("address_range", sa.String(length=64), nullable=False),
        sa.Column("subnet_prefix", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("is_admin", sa.Boolean(), nullable=False),
        sa.Column("max_nodes", sa.Integer(), nullable=True),
        sa.Column("max_node_hours", sa.Double(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_table(
        "clusters",
        sa.Column("id", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("policy", sa.String(length=16), nullable=False),
        sa.Column("pool_name", sa.String(length=64), nullable=False),
        sa.Column("subnet", sa.String(length=64), nullable=True),
        sa.Column("lease_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_warned", sa.Boolean(), nullable=False),
        sa.Column("keep_on_failure", sa.Boolean(), nullable=False),
        sa.Column("failure", sa.Text(), nullable=True),
        sa.Column("context_version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["owner_id"], ["users.id"]),
        sa.ForeignKeyConstraint(["pool_name"], ["pools.name"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_clusters_owner_state", "clusters", ["owner_id", "state"])

    op.create_table(
        "hosts",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("pool_name", sa.String(length=64), nullable=False),
        sa.Column("cores", sa.Integer(), nullable=False),
        sa.Column("memory_mib", sa.Integer(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["pool_name"], ["pools.name"]),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "cluster_secrets",
        sa.Column("cluster_id", sa.String(length=16), nullable=False),
        sa.Column("ca_cert_pem", sa.Text(), nullable=False),
        sa.Column("ca_key_pem", sa.Text(), nullable=False),
        sa.Column("ssh_ca_private", sa.Text(), nullable=False),
        sa.Column("ssh_ca_public", sa.Text(), nullable=False),
        sa.Column("munge_key_b64", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["cluster_id"], ["clusters.id"]),
        sa.PrimaryKeyConstraint("cluster_id"),
    )
    op.create_table(
        "subnet_allocations",
        sa.Column("pool_name", sa.String(length=64), nullable=False),
        sa.Column("subnet", sa.String(length=64), nullable=False),
        sa.Column("cluster_id", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("pool_name", "subnet"),
        sa.ForeignKeyConstraint(["pool_name"], ["pools.name"]),
        sa.UniqueConstraint("cluster_id"),
        sa.ForeignKeyConstraint(["cluster_id"], ["clusters.id"]),
    )
    op.create_table(
        "workspaces",
        sa.Column("id", sa.String(length=16), nullable=False),
        sa.Column("cluster_id", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("group", sa.String(length=32), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("host_name", sa.String(length=64), nullable=False),
        sa.Column("image", sa.String(length=128), nullable=False),
        sa.Column("image_digest", sa.String(length=80), nullable=False),
        sa.Column("cores", sa.Integer(), nullable=False),
        sa.Column("memory_mib", sa.Integer(), nullable=False),
        sa.Column("login", sa.Boolean(), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("state_since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("failure", sa.Text(), nullable=True),
        sa.Column("failure_phase", sa.String(length=16), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("credential_hash", sa.String(length=64), nullable=True),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("hostname", sa.String(length=255), nullable=True),
        sa.Column("ssh_host_keys", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("cluster_id", "name"),
        sa.ForeignKeyConstraint(["cluster_id"], ["clusters.id"]),
        sa.ForeignKeyConstraint(["host_name"], ["hosts.name"]),
        sa.UniqueConstraint("credential_hash"),
    )
    op.create_index("ix_workspaces_host", "workspaces", ["host_name", "state"])
    op.create_index("ix_workspaces_state", "workspaces", ["state"])

    op.create_table(
        "address_allocations",
        sa.Column("pool_name", sa.String(length=64), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=False),
        sa.Column("workspace_id", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("pool_name", "address"),
        sa.ForeignKeyConstraint(["pool_name"], ["pools.name"]),
        sa.UniqueConstraint("workspace_id"),
        sa.ForeignKeyConstraint(["workspace_id"], ["workspaces.id"]),
    )
    op.create_table(
        "bootstrap_tokens",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("workspace_id", sa.String(length=16), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["workspace_id"], ["workspaces.id"]),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cluster_id", sa.String(length=16), nullable=False),
        sa.Column("workspace_id", sa.String(length=16), nullable=True),
        sa.Column("subject", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("from_state", sa.String(length=16), nullable=True),
        sa.Column("to_state", sa.String(length=16), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["cluster_id"], ["clusters.id"]),
        sa.ForeignKeyConstraint(["workspace_id"], ["workspaces.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_events_cluster", "events", ["cluster_id", "id"])

    op.create_table(
        "node_secrets",
        sa.Column("workspace_id", sa.String(length=16), nullable=False),
        sa.Column("tls_cert_pem", sa.Text(), nullable=False),
        sa.Column("tls_key_pem", sa.Text(), nullable=False),
        sa.Column("ssh_host_cert", sa.Text(), nullable=False),
        sa.Column("ssh_root_key", sa.Text(), nullable=False),
        sa.Column("ssh_root_cert", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["workspace_id"], ["workspaces.id"]),
        sa.PrimaryKeyConstraint("workspace_id"),
    )
    op.create_table(
        "reports",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cluster_id", sa.String(length=16), nullable=False),
        sa.Column("workspace_id", sa.String(length=16), nullable=False),
        sa.Column("node", sa.String(length=64), nullable=False),
        sa.Column("phase", sa.String(length=16), nullable=False),
        sa.Column("role", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("log_tail", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("workspace_id", "phase", "role", "version", "state"),
        sa.ForeignKeyConstraint(["cluster_id"], ["clusters.id"]),
        sa.ForeignKeyConstraint(["workspace_id"], ["workspaces.id"]),
    )
    op.create_index("ix_reports_node", "reports", ["cluster_id", "node", "id"])


def downgrade() -> None:
    op.drop_index("ix_reports_node", table_name="reports")

    op.drop_table("reports")
    op.drop_table("node_secrets")
    op.drop_index("ix_events_cluster", table_name="events")

    op.drop_table("events")
    op.drop_table("bootstrap_tokens")
    op.drop_table("address_allocations")
    op.drop_index("ix_workspaces_state", table_name="workspaces")
    op.drop_index("ix_workspaces_host", table_name="workspaces")

    op.drop_table("workspaces")
    op.drop_table("subnet_allocations")
    op.drop_table("cluster_secrets")
    op.drop_table("hosts")
    op.drop_index("ix_clusters_owner_state", table_name="clusters")

    op.drop_table("clusters")
    op.drop_table("users")
    op.drop_table("pools")
    op.drop_table("images")
