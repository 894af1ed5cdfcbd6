"""Separate SSH CAs for hosts and logins, renewals counted, login nodes' root keys kept.

- cluster_secrets: the one SSH CA becomes the host CA (ssh_ca_* renamed ssh_host_ca_*);
  a user CA (ssh_user_ca_*) signs logins from now on. A cluster made before has its old CA
  as its user CA too, since its nodes already trust that CA for logins.
- cluster_secrets.generation: how many times the cluster's certificates were renewed.
- workspaces.ssh_root_key: the public half of a login node's root key, to revoke it.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("cluster_secrets") as batch_op:
        batch_op.alter_column("ssh_ca_private", new_column_name="ssh_host_ca_private")
        batch_op.alter_column("ssh_ca_public", new_column_name="ssh_host_ca_public")
        batch_op.add_column(
            sa.Column("ssh_user_ca_private", sa.Text(), nullable=False, server_default="")
        )
        batch_op.add_column(
            sa.Column("ssh_user_ca_public", sa.Text(), nullable=False, server_default="")
        )
        batch_op.add_column(
            sa.Column("generation", sa.Integer(), nullable=False, server_default="0")
        )
    op.execute(
        "UPDATE cluster_secrets SET ssh_user_ca_private = ssh_host_ca_private, "
        "ssh_user_ca_public = ssh_host_ca_public"
    )
    with op.batch_alter_table("cluster_secrets") as batch_op:
        batch_op.alter_column("ssh_user_ca_private", server_default=None)
        batch_op.alter_column("ssh_user_ca_public", server_default=None)
        batch_op.alter_column("generation", server_default=None)
    with op.batch_alter_table("workspaces") as batch_op:
        batch_op.add_column(sa.Column("ssh_root_key", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workspaces") as batch_op:
        batch_op.drop_column("ssh_root_key")
    with op.batch_alter_table("cluster_secrets") as batch_op:
        batch_op.drop_column("generation")
        batch_op.drop_column("ssh_user_ca_public")
        batch_op.drop_column("ssh_user_ca_private")
        batch_op.alter_column("ssh_host_ca_public", new_column_name="ssh_ca_public")
        batch_op.alter_column("ssh_host_ca_private", new_column_name="ssh_ca_private")
