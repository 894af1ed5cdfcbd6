"""Making and handing out a cluster's secrets: its authorities, each node's certificates,
and a user's.

Names and addresses in certificates come from the service's record of the node, never
from what its agent claims. Every certificate ends when the cluster's lease ends, and an
extension renews them all (`renew_credentials`). Each login node's root key is certified
for that node alone (`root@<node>`, key id `<cluster>/<node>/root`); other nodes get no
root key, so a worker is root nowhere but on itself.
"""

from __future__ import annotations

import base64
import json
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from corral.broker import pki, ssh
from corral.store.models import Cluster, ClusterSecret, Node, NodeSecret

MUNGE_KEY_BYTES = 1024


def create_cluster_authority(cluster_id: str, not_after: datetime) -> pki.ClusterAuthority:
    """A fresh authority for `cluster_id`: X.509 CA valid until `not_after` (the lease's
    end), SSH host and user CAs, and a munge key.

    Raises ValueError when `cluster_id` is empty or holds whitespace, or `not_after` has
    passed.
    """
    ca_cert, ca_key = pki.create_ca_certificate(cluster_id, not_after)
    host_private, host_public = ssh.generate_ssh_key()
    user_private, user_public = ssh.generate_ssh_key()
    return pki.ClusterAuthority(
        ca_cert_pem=ca_cert,
        ca_key_pem=ca_key,
        ssh_host_ca_private=host_private,
        ssh_host_ca_public=f"{host_public} corral-{cluster_id}-hosts",
        ssh_user_ca_private=user_private,
        ssh_user_ca_public=f"{user_public} corral-{cluster_id}-users",
        munge_key_b64=base64.b64encode(secrets.token_bytes(MUNGE_KEY_BYTES)).decode(),
    )


def create_cluster_secret(cluster_id: str, lease_end: datetime) -> ClusterSecret:
    authority = create_cluster_authority(cluster_id, lease_end)
    return ClusterSecret(
        cluster_id=cluster_id,
        ca_cert_pem=authority.ca_cert_pem,
        ca_key_pem=authority.ca_key_pem,
        ssh_host_ca_private=authority.ssh_host_ca_private,
        ssh_host_ca_public=authority.ssh_host_ca_public,
        ssh_user_ca_private=authority.ssh_user_ca_private,
        ssh_user_ca_public=authority.ssh_user_ca_public,
        munge_key_b64=authority.munge_key_b64,
        generation=0,
    )


def authority_of(secret: ClusterSecret) -> pki.ClusterAuthority:
    return pki.ClusterAuthority(
        ca_cert_pem=secret.ca_cert_pem,
        ca_key_pem=secret.ca_key_pem,
        ssh_host_ca_private=secret.ssh_host_ca_private,
        ssh_host_ca_public=secret.ssh_host_ca_public,
        ssh_user_ca_private=secret.ssh_user_ca_private,
        ssh_user_ca_public=secret.ssh_user_ca_public,
        munge_key_b64=secret.munge_key_b64,
    )


def root_principal(node: str) -> str:
    """The principal a node's root key is certified for (user names cannot hold '@')."""
    return f"root@{node}"


def issue_node_secret(secret: ClusterSecret, node: Node, lease_end: datetime) -> NodeSecret:
    """What a registering node is given: a TLS certificate for its name and address, its
    recorded SSH host key certified, and, on a login node, a root key certified for it.

    Raises ValueError when the node's recorded SSH host key cannot be signed.
    """
    node_secret = NodeSecret(node_id=node.id)
    authority = authority_of(secret)
    serial = pki.certificate_serial(authority, node.id, secret.generation)
    node_secret.tls_cert_pem, node_secret.tls_key_pem = pki.issue_host_certificate(
        authority, node.name, node.address, lease_end, serial
    )
    node_secret.ssh_host_cert = _host_certificate(authority, node, lease_end)
    node_secret.ssh_root_key = node_secret.ssh_root_cert = ""
    if node.login:
        node_secret.ssh_root_key, node.ssh_root_key = ssh.generate_ssh_key()
        node_secret.ssh_root_cert = _root_certificate(authority, node, lease_end)
    return node_secret


def renew_credentials(session: Session, cluster: Cluster, lease_end: datetime) -> int:
    """Make the cluster's certificates last until `lease_end`: its CA's, and those of every
    node that has registered, with the keys they have. Returns how many nodes had theirs
    renewed; the caller makes the nodes re-read their views.
    """
    secret = session.get(ClusterSecret, cluster.id)
    secret.ca_cert_pem = pki.renew_cluster_ca(authority_of(secret), lease_end)
    secret.generation = (secret.generation or 0) + 1
    authority = authority_of(secret)
    renewed = 0
    for node in cluster.nodes:
        node_secret = session.get(NodeSecret, node.id)
        if node_secret is None:
            continue
        serial = pki.certificate_serial(authority, node.id, secret.generation)
        node_secret.tls_cert_pem, _ = pki.issue_host_certificate(
            authority, node.name, node.address, lease_end, serial, key_pem=node_secret.tls_key_pem
        )
        node_secret.ssh_host_cert = _host_certificate(authority, node, lease_end)
        if node.ssh_root_key:
            node_secret.ssh_root_cert = _root_certificate(authority, node, lease_end)
        renewed += 1
    return renewed


def _host_certificate(authority: pki.ClusterAuthority, node: Node, lease_end: datetime) -> str:
    """The node's recorded host key (Ed25519 first) certified for its name and address."""
    keys = sorted(json.loads(node.ssh_host_keys or "[]"), key=lambda k: not k.startswith("ssh-ed"))
    if not keys:
        return ""
    principals = [node.name, node.address or ""]
    key_id = f"{node.cluster_id}/{node.name}"
    return ssh.sign_ssh_host_key(authority, keys[0], principals, key_id, lease_end)


def _root_certificate(authority: pki.ClusterAuthority, node: Node, lease_end: datetime) -> str:
    return ssh.sign_ssh_user_key(
        authority,
        node.ssh_root_key,
        root_principal(node.name),
        f"{node.cluster_id}/{node.name}/root",
        lease_end,
        forwarding=False,
    )


@dataclass(frozen=True)
class UserCredentials:
    """What a user is given to trust a cluster's nodes and be trusted by them."""

    ca_cert_pem: str
    user_cert_pem: str
    user_key_pem: str
    ssh_known_hosts: str
    ssh_user_key: str
    ssh_user_public: str
    ssh_user_cert: str
    valid_until: datetime


def issue_user_credentials(
    secret: ClusterSecret, cluster: Cluster, user: str, revoked_host_keys: list[str]
) -> UserCredentials:
    """A TLS certificate and an SSH key certified for `user`, both ending with the lease,
    and known_hosts lines trusting the cluster's nodes by their addresses."""
    authority = authority_of(secret)
    user_cert, user_key = pki.issue_user_certificate(authority, user, cluster.lease_end)
    ssh_key, ssh_public = ssh.generate_ssh_key()
    return UserCredentials(
        ca_cert_pem=authority.ca_cert_pem,
        user_cert_pem=user_cert,
        user_key_pem=user_key,
        ssh_known_hosts=ssh.known_hosts(authority, user_patterns(cluster), revoked_host_keys),
        ssh_user_key=ssh_key,
        ssh_user_public=ssh_public,
        ssh_user_cert=ssh.sign_ssh_user_key(
            authority,
            ssh_public,
            user,
            f"{cluster.id}/{user}",
            cluster.lease_end,
            forwarding=True,
        ),
        valid_until=cluster.lease_end,
    )


def user_patterns(cluster: Cluster) -> list[str]:
    """known_hosts patterns naming just this cluster's nodes: its addresses."""
    return sorted(w.address for w in cluster.nodes if w.address)
