"""What one node is told: its context view, built from the cluster's records.

A requirement is met when every live provider of the role has registered (or, with
`wait: ready`, is ready). Until every requirement of a node is met, its view says what it
is blocked on, and the node configures nothing. Its members are the node itself and its
peers (see snapshots.py); its hosts are every registered node of the cluster; its files
are what every node trusts (trust.py) and what was issued to it.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Protocol

from corral.broker.schemas import ContextView, FileItem, HostEntry, RequirementView
from corral.broker.trust import GONE, PRINCIPALS, REGISTERED, REVOKED_KEYS, USER_CA, file_item
from corral.document import ClusterDocument
from corral.lifecycle import NodeState
from corral.store.models import NodeSecret

if TYPE_CHECKING:
    from corral.broker.snapshots import Peer, Snapshot


class Node(Protocol):
    """A workspace record or a snapshot's peer: what requirements are judged on."""

    group: str
    state: str


SSH_HOST_CERT = "/etc/ssh/ssh_host_ed25519_key-cert.pub"
SSHD_CONFIG = "/etc/ssh/sshd_config.d/corral.conf"
_COMPACT = (",", ":")  # JSON separators, as pydantic writes them


def build_view(
    snapshot: Snapshot, me: Peer, node_secret: NodeSecret | None, with_hosts: bool = True
) -> ContextView:
    """Node `me`'s view at `snapshot`: who it deals with, and its files.

    A blocked node gets its files too: it configures nothing until it is satisfied, but a
    node that was configured and is blocked again (its providers left) must still learn
    whom the cluster no longer trusts.
    """
    doc = snapshot.doc
    group = next(g for g in doc.nodes if g.group == me.group)
    peers = snapshot.peers[me.group]
    known = peers if any(p.id == me.id for p in peers) else sorted([*peers, me], key=_name)
    blocked = snapshot.blocked[me.group]
    satisfied = not blocked
    provided_by = provider_groups(doc)
    return ContextView(
        version=snapshot.group_versions[me.group],
        cluster=snapshot.cluster_id,
        node=me.name,
        group=me.group,
        provides=list(group.provides),
        requires=[RequirementView(role=r.role, wait=r.wait) for r in group.requires],
        satisfied=satisfied,
        blocked_on=blocked,
        roles={
            need.role: [p.member() for p in peers if p.group in provided_by.get(need.role, [])]
            for need in group.requires
        },
        members=[p.member() for p in known],
        hosts=[
            HostEntry(name=n, address=a) for n, a in (_with_me(snapshot, me) if with_hosts else ())
        ],
        data=dict(doc.data),
        files=node_files(snapshot, node_secret),
        ssh_known_hosts=snapshot.known_hosts,
        lease_end=snapshot.trust.lease_end.isoformat(),
    )


def view_json(snapshot: Snapshot, me: Peer, node_secret: NodeSecret | None) -> str:
    """`build_view` serialized, with the hosts serialized once per snapshot, not per node.

    Every node's view lists every host of the cluster: serializing that list for each
    node would make waking N nodes cost N*N.
    """
    view = build_view(snapshot, me, node_secret, with_hosts=False)
    # a snapshot read before the node registered (as for its register reply) lacks it
    hosts = snapshot.hosts_json if _listed(snapshot, me) else _hosts_json_with(snapshot, me)
    return view.model_dump_json(exclude={"hosts"})[:-1] + ',"hosts":' + hosts + "}"


def hosts_json(hosts: Iterable[tuple[str, str]]) -> str:
    """(name, address) pairs as a JSON list of HostEntry, without a pydantic object each."""
    return json.dumps([{"name": n, "address": a} for n, a in hosts], separators=_COMPACT)


def host_offsets(hosts: Sequence[tuple[str, str]]) -> list[int]:
    """Where each host's entry starts in `hosts_json(hosts)`."""
    offsets, at = [], 1
    for name, address in hosts:
        offsets.append(at)
        at += len(_host_json(name, address)) + 1
    return offsets


def _host_json(name: str, address: str) -> str:
    return json.dumps({"name": name, "address": address}, separators=_COMPACT)


def _hosts_json_with(snapshot: Snapshot, me: Peer) -> str:
    """The snapshot's hosts as JSON with `me` added in its place: a thousand hosts are
    spliced, not serialized again, for each node registering."""
    entry = _host_json(me.name, me.address)
    place = bisect.bisect(snapshot.hosts, (me.name, me.address))
    if place == len(snapshot.hosts):
        return snapshot.hosts_json[:-1] + ("," if snapshot.hosts else "") + entry + "]"
    at = snapshot.host_offsets[place]
    return snapshot.hosts_json[:at] + entry + "," + snapshot.hosts_json[at:]


def _listed(snapshot: Snapshot, me: Peer) -> bool:
    """Whether the snapshot's hosts include `me` (or would not, having no address)."""
    return not me.address or snapshot.state_of(me.id) in REGISTERED


def _with_me(snapshot: Snapshot, me: Peer) -> tuple[tuple[str, str], ...]:
    """The cluster's hosts, and this node even when the snapshot predates its registering."""
    if _listed(snapshot, me):
        return snapshot.hosts
    return tuple(sorted([*snapshot.hosts, (me.name, me.address)]))


def _name(peer: Peer) -> str:
    return peer.name


def provider_groups(doc: ClusterDocument) -> dict[str, list[str]]:
    """Each role the document's groups provide, with those groups in document order."""
    provided_by: dict[str, list[str]] = {}
    for g in doc.nodes:
        for role in g.provides:
            provided_by.setdefault(role, []).append(g.group)
    return provided_by


def live_providers(nodes: Iterable[Node], doc: ClusterDocument) -> dict[str, list[Node]]:
    """Each role's providers that may still provide it, in one pass over the nodes."""
    provided_by = provider_groups(doc)
    by_group: dict[str, list[Node]] = {}
    for w in nodes:
        if w.state not in GONE:  # states are StrEnums: a plain string compares as its state
            by_group.setdefault(w.group, []).append(w)
    return {
        role: [w for group in groups for w in by_group.get(group, [])]
        for role, groups in provided_by.items()
    }


def blocked_by_group(
    doc: ClusterDocument, providers: dict[str, list[Node]]
) -> dict[str, list[str]]:
    """For each group, the required roles whose providers are not far enough yet."""
    met: dict[tuple[str, str], bool] = {}
    blocked: dict[str, list[str]] = {}
    for g in doc.nodes:
        blocked[g.group] = []
        for need in g.requires:
            key = (need.role, need.wait)
            if key not in met:
                enough = {NodeState.READY} if need.wait == "ready" else REGISTERED
                role_providers = providers.get(need.role, [])
                met[key] = bool(role_providers) and all(w.state in enough for w in role_providers)
            if not met[key]:
                blocked[g.group].append(need.role)
    return blocked


def node_files(snapshot: Snapshot, node_secret: NodeSecret | None) -> list[FileItem]:
    """The files every node of the cluster gets (trust.cluster_files), plus what was
    issued to this node: its TLS certificate and key, its SSH host certificate and the
    sshd configuration that uses it, and on a login node its root key."""
    files = list(snapshot.cluster_files)
    if node_secret is None:
        return files
    files += [
        file_item("/etc/corral/tls/host.crt", "0644", node_secret.tls_cert_pem),
        file_item("/etc/corral/tls/host.key", "0600", node_secret.tls_key_pem),
    ]
    sshd = [
        f"TrustedUserCAKeys {USER_CA}",
        f"AuthorizedPrincipalsFile {PRINCIPALS}/%u",
        f"RevokedKeys {REVOKED_KEYS}",
    ]
    if node_secret.ssh_host_cert:
        sshd.insert(0, f"HostCertificate {SSH_HOST_CERT}")
        files.append(file_item(SSH_HOST_CERT, "0644", node_secret.ssh_host_cert.strip() + "\n"))
    files.append(file_item(SSHD_CONFIG, "0644", "# written by corral\n" + "\n".join(sshd) + "\n"))
    if node_secret.ssh_root_key:
        files += [
            file_item("/root/.ssh/id_ed25519", "0600", node_secret.ssh_root_key),
            file_item("/root/.ssh/id_ed25519-cert.pub", "0644", node_secret.ssh_root_cert + "\n"),
        ]
    return files
