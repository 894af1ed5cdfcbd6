"""What other nodes learn of one node (a Peer), read from the store as plain rows."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from corral.broker.schemas import Member
from corral.lifecycle import NodeState
from corral.store.models import Node


@dataclass(frozen=True)
class Peer:
    """What other nodes learn of one node."""

    id: str
    name: str
    group: str
    state: NodeState
    address: str | None
    hostname: str | None
    login: bool
    ssh_root_key: str | None  # a login node's root key (public), once registered
    cores: int
    memory_mib: int
    drain_timeout: int | None  # seconds its drain hooks may wait, while it is draining
    ssh_host_keys: tuple[str, ...]

    @property
    def seen_as(self) -> tuple:
        """What a peer's view holds of this node and acts on (not its state)."""
        return (self.name, self.address, self.hostname, self.ssh_host_keys)

    @property
    def draining(self) -> bool:
        return self.state == NodeState.DRAINING

    def member(self) -> Member:
        return Member(
            name=self.name,
            group=self.group,
            address=self.address,
            hostname=self.hostname,
            ssh_host_keys=list(self.ssh_host_keys),
            state=self.state,
            cores=self.cores,
            memory_mib=self.memory_mib,
        )


_PEER_COLUMNS = (
    Node.id,
    Node.name,
    Node.group,
    Node.state,
    Node.address,
    Node.hostname,
    Node.login,
    Node.ssh_root_key,
    Node.cores,
    Node.memory_mib,
    Node.drain_timeout,
    Node.ssh_host_keys,
)


def _peer(values: Sequence) -> Peer:
    """A peer from the values of _PEER_COLUMNS, in that order."""
    *fields, keys = values
    return Peer(*fields, tuple(json.loads(keys or "[]")))


def peer_of(node: Node) -> Peer:
    """The peer a node record is."""
    return _peer(tuple(getattr(node, column.key) for column in _PEER_COLUMNS))


def read_peers(session: Session, cluster_id: str, only: set[str] | None = None) -> list[Peer]:
    """The cluster's nodes (or those of them in `only`) as plain rows, not ORM objects."""
    query = select(*_PEER_COLUMNS).where(Node.cluster_id == cluster_id)
    if only is not None:
        query = query.where(Node.id.in_(only))
    return [_peer(row) for row in session.execute(query)]
