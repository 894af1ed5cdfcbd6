"""What one node is told: its context view, rendered from a snapshot of its cluster.

Until every requirement of a node is met (requirements.py), its view says what it is
blocked on, and the node configures nothing. Its members are the node itself and its
peers (see snapshots.py); its hosts are every registered node of the cluster; its data
are the document's and its own group's; its files are what every node trusts (trust.py)
and what was issued to it.
"""

from __future__ import annotations

import bisect

from corral.broker.peers import Peer
from corral.broker.requirements import provider_groups
from corral.broker.schemas import (
    ContextView,
    DrainView,
    FileItem,
    HostEntry,
    RequirementView,
    host_entry_json,
)
from corral.broker.snapshots import Snapshot
from corral.broker.trust import PRINCIPALS, REGISTERED, REVOKED_KEYS, USER_CA, file_item
from corral.store.models import NodeSecret

SSH_HOST_CERT = "/etc/ssh/ssh_host_ed25519_key-cert.pub"
SSHD_CONFIG = "/etc/ssh/sshd_config.d/corral.conf"


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
        data={**doc.data, **group.data},  # the group's own data wins over the document's
        users=snapshot.accounts,
        files=node_files(snapshot, node_secret),
        ssh_known_hosts=snapshot.known_hosts,
        lease_end=snapshot.trust.lease_end.isoformat(),
        drain=_drain(snapshot.nodes.get(me.id, me)),
        autoscale=snapshot.autoscale,
    )


def _drain(me: Peer) -> DrainView | None:
    """What the node is asked to drain; `me` as the snapshot read it (a node's cached
    record is from when it registered)."""
    return DrainView(timeout_seconds=me.drain_timeout or 0) if me.draining else None


def view_json(snapshot: Snapshot, me: Peer, node_secret: NodeSecret | None) -> str:
    """`build_view` serialized, with the hosts serialized once per snapshot, not per node.

    Every node's view lists every host of the cluster: serializing that list for each
    node would make waking N nodes cost N*N.
    """
    view = build_view(snapshot, me, node_secret, with_hosts=False)
    # a snapshot read before the node registered (as for its register reply) lacks it
    hosts = snapshot.hosts_json if _listed(snapshot, me) else _hosts_json_with(snapshot, me)
    return view.model_dump_json(exclude={"hosts"})[:-1] + ',"hosts":' + hosts + "}"


def _hosts_json_with(snapshot: Snapshot, me: Peer) -> str:
    """The snapshot's hosts as JSON with `me` added in its place, for a node the snapshot
    predates: its entry among the snapshot's, joined once."""
    place = bisect.bisect(snapshot.hosts, (me.name, me.address))
    entries = snapshot.host_entries
    mine = host_entry_json(me.name, me.address)
    return "[" + ",".join([*entries[:place], mine, *entries[place:]]) + "]"


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
