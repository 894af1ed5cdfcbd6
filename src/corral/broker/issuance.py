"""Making and handing out a cluster's secrets: its authorities, and each node's certificates."""

from __future__ import annotations

from corral.broker import pki
from corral.broker.schemas import Identity
from corral.store.models import Cluster, ClusterSecret, NodeSecret, Workspace

# the principal nodes' root keys are certified for; nodes let it log in as root
NODE_PRINCIPAL = "corral-node"


def create_cluster_secret(cluster_id: str) -> ClusterSecret:
    authority = pki.create_cluster_authority(cluster_id)
    return ClusterSecret(
        cluster_id=cluster_id,
        ca_cert_pem=authority.ca_cert_pem,
        ca_key_pem=authority.ca_key_pem,
        ssh_ca_private=authority.ssh_ca_private,
        ssh_ca_public=authority.ssh_ca_public,
        munge_key_b64=authority.munge_key_b64,
    )


def authority_of(secret: ClusterSecret) -> pki.ClusterAuthority:
    return pki.ClusterAuthority(
        ca_cert_pem=secret.ca_cert_pem,
        ca_key_pem=secret.ca_key_pem,
        ssh_ca_private=secret.ssh_ca_private,
        ssh_ca_public=secret.ssh_ca_public,
        munge_key_b64=secret.munge_key_b64,
    )


def issue_node_secret(secret: ClusterSecret, ws: Workspace, identity: Identity) -> NodeSecret:
    """A TLS certificate for the node's name and address, and its SSH host key signed.

    Raises ValueError when the node offered an SSH host key that cannot be signed.
    """
    authority = authority_of(secret)
    address = ws.address or (identity.addresses[0] if identity.addresses else "127.0.0.1")
    cert, key = pki.issue_host_certificate(authority, ws.name, identity.hostname, address)
    host_keys = sorted(identity.ssh_host_keys, key=lambda k: not k.startswith("ssh-ed25519 "))
    ssh_cert = ""
    if host_keys:
        principals = sorted({ws.name, identity.hostname, address})
        ssh_cert = pki.sign_ssh_host_key(
            authority, host_keys[0], principals, key_id=f"{ws.cluster_id}/{ws.name}"
        )
    root_key, root_public = pki.generate_ssh_user_key()
    root_cert = pki.sign_ssh_user_key(authority, root_public, NODE_PRINCIPAL, days=30)
    return NodeSecret(
        workspace_id=ws.id,
        tls_cert_pem=cert,
        tls_key_pem=key,
        ssh_host_cert=ssh_cert,
        ssh_root_key=root_key,
        ssh_root_cert=root_cert,
    )


def user_patterns(cluster: Cluster) -> list[str]:
    """known_hosts patterns naming just this cluster's nodes: its addresses."""
    return sorted(w.address for w in cluster.workspaces if w.address)
