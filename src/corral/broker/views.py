"""What one node is told: its context view, built from the cluster's records.

A requirement is met when every live provider of the role has registered (or, with
`wait: ready`, is ready). Until every requirement of a node is met, its view carries no
files; it says what it is blocked on.
"""

from __future__ import annotations

import base64
import json

from corral.broker import pki
from corral.broker.issuance import authority_of
from corral.broker.schemas import ContextView, FileItem, HostEntry, Member, RequirementView
from corral.document import ClusterDocument
from corral.lifecycle import NodeState
from corral.store.models import Cluster, ClusterSecret, NodeSecret, Workspace

REGISTERED = frozenset({NodeState.REGISTERED, NodeState.CONFIGURING, NodeState.READY})
# providers in these states will never provide: they no longer count
GONE = frozenset({NodeState.FAILED, NodeState.LOST, NodeState.TERMINATING, NodeState.TERMINATED})

SSH_HOST_CERT = "/etc/ssh/ssh_host_ed25519_key-cert.pub"


def member_of(ws: Workspace) -> Member:
    return Member(
        name=ws.name,
        group=ws.group,
        address=ws.address,
        hostname=ws.hostname,
        ssh_host_keys=json.loads(ws.ssh_host_keys or "[]"),
        state=ws.state,
    )


def build_view(
    cluster: Cluster,
    doc: ClusterDocument,
    ws: Workspace,
    secret: ClusterSecret,
    node_secret: NodeSecret | None,
) -> ContextView:
    group = next(g for g in doc.nodes if g.group == ws.group)
    registered = [w for w in cluster.workspaces if NodeState(w.state) in REGISTERED]
    roles: dict[str, list[Member]] = {}
    blocked: list[str] = []
    for need in group.requires:
        provider_groups = {g.group for g in doc.nodes if need.role in g.provides}
        providers = [
            w
            for w in cluster.workspaces
            if w.group in provider_groups and NodeState(w.state) not in GONE
        ]
        enough = {NodeState.READY} if need.wait == "ready" else REGISTERED
        if not providers or any(NodeState(w.state) not in enough for w in providers):
            blocked.append(need.role)
        roles[need.role] = [member_of(w) for w in providers if NodeState(w.state) in REGISTERED]
    satisfied = not blocked
    return ContextView(
        version=cluster.context_version,
        cluster=cluster.id,
        node=ws.name,
        group=ws.group,
        provides=list(group.provides),
        requires=[RequirementView(role=r.role, wait=r.wait) for r in group.requires],
        satisfied=satisfied,
        blocked_on=blocked,
        roles=roles,
        members=[member_of(w) for w in registered],
        hosts=[HostEntry(name=w.name, address=w.address) for w in registered if w.address],
        data=dict(doc.data),
        files=node_files(secret, node_secret) if satisfied else [],
        ssh_known_hosts=pki.known_hosts_line(authority_of(secret), ["*"]),
    )


def node_files(secret: ClusterSecret, node_secret: NodeSecret | None) -> list[FileItem]:
    """The files every node of the cluster gets, plus what was issued to this node."""
    files = [
        _file("/etc/corral/tls/ca.crt", "0644", secret.ca_cert_pem),
        _file("/etc/munge/munge.key", "0400", base64.b64decode(secret.munge_key_b64)),
    ]
    if node_secret is not None:
        files += [
            _file("/etc/corral/tls/host.crt", "0644", node_secret.tls_cert_pem),
            _file("/etc/corral/tls/host.key", "0600", node_secret.tls_key_pem),
        ]
        if node_secret.ssh_host_cert:
            files += [
                _file(SSH_HOST_CERT, "0644", node_secret.ssh_host_cert.strip() + "\n"),
                _file(
                    "/etc/ssh/sshd_config.d/corral.conf",
                    "0644",
                    f"# written by corral\nHostCertificate {SSH_HOST_CERT}\n",
                ),
            ]
    return files


def _file(path: str, mode: str, content: str | bytes) -> FileItem:
    raw = content.encode() if isinstance(content, str) else content
    return FileItem(path=path, mode=mode, content_b64=base64.b64encode(raw).decode())
