"""What every node of a cluster is told to trust and to refuse, the same for all of them.

Trusted: the cluster's X.509 CA, its SSH host CA (for every node's host key), its SSH user
CA (for logins), and, as root, the cluster's owner and the root key of each login node.
Refused: everything issued to a node that left after registering (failed, lost,
terminating or terminated): its host key (`@revoked` in known_hosts), its root key
(sshd's RevokedKeys), and every TLS certificate it was ever issued (the CA's revocation
list). Built once per snapshot of the cluster and shared by every node's view.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from corral.broker import pki, ssh
from corral.broker.issuance import authority_of, root_principal
from corral.broker.peers import Peer
from corral.broker.schemas import AccountView, FileItem
from corral.lifecycle import NodeState
from corral.store.models import ClusterSecret

# nodes in these states have left: nothing issued to them is trusted any more
GONE = frozenset({NodeState.FAILED, NodeState.LOST, NodeState.TERMINATING, NodeState.TERMINATED})
# nodes in these states are members: in every view, its hosts and the scheduler's nodes
REGISTERED = frozenset(
    {NodeState.REGISTERED, NodeState.CONFIGURING, NodeState.READY, NodeState.DRAINING}
)

CA_CERT = "/etc/corral/tls/ca.crt"
CRL = "/etc/corral/tls/crl.pem"
MUNGE_KEY = "/etc/munge/munge.key"
USER_CA = "/etc/ssh/corral_user_ca.pub"
PRINCIPALS = "/etc/ssh/corral_principals"
REVOKED_KEYS = "/etc/ssh/corral_revoked_keys"


@dataclass(frozen=True)
class Trust:
    """Who a cluster's nodes trust at one moment; `key` changes whenever any of it does."""

    lease_end: datetime
    generation: int  # renewals of the cluster's certificates so far
    login_principals: tuple[str, ...]  # root@<login node> of each registered login node
    departed_ids: tuple[str, ...]  # node ids of the registered nodes that left
    departed_host_keys: tuple[str, ...]
    departed_root_keys: tuple[str, ...]

    @property
    def key(self) -> tuple:
        return (*self.refusals, self.login_principals)

    @property
    def refusals(self) -> tuple:
        """What ends trust: the lease's end, renewed certificates, the nodes that left. A
        blocked node acts on these alone: a new login node can wait until it is satisfied."""
        return (self.lease_end, self.generation, self.departed_ids)


def trust_of(nodes: Iterable[Peer], lease_end: datetime, generation: int) -> Trust:
    """The trust of a cluster whose nodes are `nodes`, sorted by name."""
    principals, ids, host_keys, root_keys = [], [], [], []
    for node in nodes:
        if node.state in GONE:
            if node.ssh_host_keys:  # it registered: it was issued something
                ids.append(node.id)
                host_keys += node.ssh_host_keys
            if node.ssh_root_key:
                root_keys.append(node.ssh_root_key)
        elif node.login and node.ssh_root_key and node.state in REGISTERED:
            principals.append(root_principal(node.name))
    return Trust(
        lease_end, generation, tuple(principals), tuple(ids), tuple(host_keys), tuple(root_keys)
    )


def known_hosts(secret: ClusterSecret, trust: Trust) -> str:
    """The nodes' known_hosts block: any host of the cluster's host CA, but no departed one."""
    return ssh.known_hosts(authority_of(secret), ["*"], trust.departed_host_keys)


def cluster_files(
    secret: ClusterSecret, owner: str, trust: Trust, accounts: Iterable[AccountView]
) -> list[FileItem]:
    """The files every node of the cluster gets alike.

    Root logs in with a certificate of the cluster's user CA: for the cluster's owner
    (`corral ssh`), or for a login node's root. Each user account takes the owner's
    certificate too. A node's view adds its own files (views.node_files).
    """
    authority = authority_of(secret)
    serials = [
        pki.certificate_serial(authority, node_id, generation)
        for node_id in trust.departed_ids
        for generation in range(trust.generation + 1)
    ]
    principals = "".join(f"{p}\n" for p in (owner, *trust.login_principals))
    return [
        file_item(CA_CERT, "0644", secret.ca_cert_pem),
        file_item(CRL, "0644", pki.revocation_list(authority, serials, trust.lease_end)),
        file_item(MUNGE_KEY, "0400", base64.b64decode(secret.munge_key_b64)),
        file_item(USER_CA, "0644", secret.ssh_user_ca_public.strip() + "\n"),
        file_item(f"{PRINCIPALS}/root", "0644", principals),
        *(file_item(f"{PRINCIPALS}/{a.name}", "0644", f"{owner}\n") for a in accounts),
        file_item(REVOKED_KEYS, "0644", ssh.revoked_keys(trust.departed_root_keys)),
    ]


def file_item(path: str, mode: str, content: str | bytes) -> FileItem:
    raw = content.encode() if isinstance(content, str) else content
    return FileItem(path=path, mode=mode, content_b64=base64.b64encode(raw).decode())
