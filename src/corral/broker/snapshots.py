"""One cluster's membership, read once and shared by every view built from it.

Views are built from a snapshot of the cluster's nodes rather than from the store, so a
burst of N long-polls costs one read of the cluster, not N. A snapshot is a consistent
point in time: a view built from an old one is still true of its version, and the node
is woken again for whatever changed after it.

Each group's view has its own version: the cluster's context version at which something
that group's nodes act on last changed. While a group is blocked that is only what it
is blocked on; once satisfied it is also who its peers are (the providers of the roles it
requires, the nodes that require a role it provides) and their addresses and keys, and
the cluster's host names. A node is therefore never woken by another node's state
changing, and a blocked node is woken only when it may go on: launching N nodes costs
O(N) wake-ups, not one per node per change.

A refresh told which nodes changed re-reads only their rows and keeps the others from
the latest snapshot, so the store is read in proportion to what changed, not to the
cluster's size.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property

from sqlalchemy import select

from corral.broker.peers import Peer, read_peers
from corral.broker.requirements import RUNNING, blocked_by_group, live_providers, provider_groups
from corral.broker.schemas import AccountView, AutoscaleView, FileItem, host_entry_json
from corral.broker.trust import REGISTERED, Trust, cluster_files, known_hosts, trust_of
from corral.document import ClusterDocument
from corral.lifecycle import ClusterState
from corral.store.models import Cluster, ClusterSecret

# more changed nodes than this are read with the rest of the cluster (an IN list that
# long costs as much, and SQLite bounds how many parameters a query may have)
PARTIAL_READ_LIMIT = 500


@dataclass
class Snapshot:
    cluster_id: str
    version: int  # the cluster's context version when it was read
    owner: str
    doc: ClusterDocument
    secret: ClusterSecret
    blocked: dict[str, list[str]]  # group -> roles it still waits for
    peers: dict[str, list[Peer]]  # group -> the registered nodes it deals with
    hosts: tuple[tuple[str, str], ...]  # (name, address) of every registered node with one
    host_entries: tuple[str, ...]  # the same, each a HostEntry as JSON, made once for all views
    nodes: dict[str, Peer]  # every node, by node id
    trust: Trust  # what every node trusts and refuses, and until when
    group_versions: dict[str, int] = field(default_factory=dict)
    seen: dict[str, tuple] = field(default_factory=dict)  # group -> what it acts on

    @cached_property
    def cluster_files(self) -> list[FileItem]:
        """The files every node gets alike, made once for all their views."""
        return cluster_files(self.secret, self.owner, self.trust, self.accounts)

    @cached_property
    def autoscale(self) -> AutoscaleView | None:
        """The autoscaled group, as its scheduler's view tells it."""
        scaled = self.doc.autoscale
        if scaled is None:
            return None
        group = next(g for g in self.doc.nodes if g.group == scaled.group)
        return AutoscaleView(
            group=scaled.group,
            provides=list(group.provides),
            min=scaled.min,
            max=scaled.max,
            idle_seconds=int(scaled.idle.total_seconds()),
            cores=group.cores,
            memory_mib=group.memory_mib,
        )

    @cached_property
    def accounts(self) -> list[AccountView]:
        """The user accounts every node creates."""
        return [
            AccountView(name=a.name, uid=a.uid, gid=a.gid, ssh_keys=list(a.ssh_keys))
            for a in self.doc.accounts()
        ]

    @cached_property
    def known_hosts(self) -> str:
        return known_hosts(self.secret, self.trust)

    @cached_property
    def hosts_json(self) -> str:
        """The hosts as a JSON list of HostEntry, joined once for every view."""
        return "[" + ",".join(self.host_entries) + "]"

    def state_of(self, node_id: str) -> str | None:
        """A node's state, or None when it was not in the cluster when this was read."""
        node = self.nodes.get(node_id)
        return node.state if node is not None else None


def _peer_groups(doc: ClusterDocument) -> dict[str, set[str]]:
    """For each group, the groups it deals with: providers of its needs, and its consumers."""
    providers = provider_groups(doc)
    related: dict[str, set[str]] = {g.group: set() for g in doc.nodes}
    for g in doc.nodes:
        for need in g.requires:
            for provider in providers.get(need.role, ()):
                related[g.group].add(provider)
                related[provider].add(g.group)
    return related


def _seen(
    blocked: list[str], peers: list[Peer], hosts: tuple, trust: Trust, draining: tuple
) -> tuple:
    """What a group's nodes act on: a change of it is what wakes them. Every node acts on
    the cluster's trust (its lease's end, renewed certificates, nodes that left), and a
    node of the group asked to drain acts on that."""
    if blocked:  # a blocked node acts only on becoming unblocked, and on what ends trust
        return ("blocked", tuple(blocked), trust.refusals, draining)
    return (tuple(p.seen_as for p in peers), hosts, trust.key, draining)


def _draining(nodes: list[Peer], group: str) -> tuple:
    return tuple((p.id, p.drain_timeout) for p in nodes if p.group == group and p.draining)


def read_snapshot(
    cluster_id: str,
    version: int,
    owner: str,
    nodes: dict[str, Peer],
    doc: ClusterDocument,
    secret: ClusterSecret,
    lease_end: datetime,
    state: ClusterState,
) -> Snapshot:
    """`nodes` are every node of the cluster, by node id; `state` the cluster's."""
    providers = live_providers(nodes.values(), doc, running=state in RUNNING)
    blocked = blocked_by_group(doc, providers)
    by_group: dict[str, list[Peer]] = {}
    hosts = []
    ordered = sorted(nodes.values(), key=lambda p: p.name)
    for p in ordered:
        if p.state in REGISTERED:
            by_group.setdefault(p.group, []).append(p)
            if p.address:
                hosts.append((p.name, p.address))
    peers = {
        group: sorted((p for g in related for p in by_group.get(g, [])), key=lambda p: p.name)
        for group, related in _peer_groups(doc).items()
    }
    return Snapshot(
        cluster_id=cluster_id,
        version=version,
        owner=owner,
        doc=doc,
        secret=secret,
        blocked=blocked,
        peers=peers,
        hosts=tuple(hosts),
        host_entries=tuple(host_entry_json(name, address) for name, address in hosts),
        nodes=nodes,
        trust=trust_of(ordered, lease_end, secret.generation or 0),
    )


class Snapshots:
    """The latest snapshot of each live cluster, re-read only when `refresh` is called."""

    def __init__(self, store, documents, on_terminated: Callable[[str], None]) -> None:
        """`on_terminated(cluster_id)` is called when a read finds the cluster terminated."""
        self.store = store
        self.documents = documents
        self.on_terminated = on_terminated
        self._latest: dict[str, Snapshot] = {}
        self._lock = threading.Lock()

    def get(self, cluster_id: str) -> Snapshot:
        """The latest snapshot (read now if there is none yet)."""
        snapshot = self._latest.get(cluster_id)
        return snapshot if snapshot is not None else self._read(cluster_id)[0]

    def latest(self, cluster_id: str) -> Snapshot | None:
        """The latest snapshot if there is one, without reading the store."""
        return self._latest.get(cluster_id)

    def refresh(self, cluster_id: str, changed: set[str] | None = None) -> set[str]:
        """Re-read the cluster; returns the groups whose views changed since the last read.

        `changed` names the only nodes that may have changed since then (by node
        id); None means anything may have.
        """
        return self._read(cluster_id, changed)[1]

    def _read(self, cluster_id: str, changed: set[str] | None = None) -> tuple[Snapshot, set[str]]:
        with self._lock, self.store.session() as session:
            previous = self._latest.get(cluster_id)
            if previous is None or changed is None or len(changed) > PARTIAL_READ_LIMIT:
                cluster = session.get(Cluster, cluster_id)
                state, version = cluster.state, cluster.context_version
                snapshot = read_snapshot(
                    cluster_id,
                    version,
                    cluster.owner.name,
                    {p.id: p for p in read_peers(session, cluster_id)},
                    self.documents.of(cluster),
                    session.get(ClusterSecret, cluster_id),
                    cluster.lease_end,
                    state,
                )
            else:
                # a change of the cluster itself (its lease, its secrets) reads it whole
                state, version = session.execute(
                    select(Cluster.state, Cluster.context_version).where(Cluster.id == cluster_id)
                ).one()
                nodes = previous.nodes | {p.id: p for p in read_peers(session, cluster_id, changed)}
                snapshot = read_snapshot(
                    cluster_id,
                    version,
                    previous.owner,
                    nodes,
                    previous.doc,
                    previous.secret,
                    previous.trust.lease_end,
                    state,
                )
            groups = set()
            draining = [p for p in snapshot.nodes.values() if p.draining]
            for group, blocked in snapshot.blocked.items():
                seen = _seen(
                    blocked,
                    snapshot.peers[group],
                    snapshot.hosts,
                    snapshot.trust,
                    _draining(draining, group),
                )
                snapshot.seen[group] = seen
                if previous is not None and previous.seen.get(group) == seen:
                    snapshot.group_versions[group] = previous.group_versions[group]
                else:
                    snapshot.group_versions[group] = snapshot.version
                    groups.add(group)
            if state == ClusterState.TERMINATED:
                self._latest.pop(cluster_id, None)
                self.on_terminated(cluster_id)
            elif previous is None or previous.version <= snapshot.version:
                self._latest[cluster_id] = snapshot
            return snapshot, groups
