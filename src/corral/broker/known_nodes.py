"""Registered nodes by credential, kept in memory so a context request reads no store.

Every node asks for its context at least twice (its first view, then after each hold),
and what the broker needs to answer (who the node is, and what was issued to it at
registration) never changes after it registers. So it is read once: remembered at
registration, or read from the store on the first request after a restart. Whether
the node is still live comes from the cluster's snapshot, not from here. A cluster's
nodes are forgotten when the cluster is terminated.

A registration retried after a lost reply replaces the node's credential: the one it
replaced is retired, dropped from memory and never remembered again, even by a `find`
that read the store before the replacement was committed.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from corral.broker.credentials import node_for_credential, secret_digest
from corral.broker.peers import Peer, peer_of
from corral.store.database import Store
from corral.store.models import NodeSecret


@dataclass(frozen=True)
class KnownNode:
    cluster_id: str
    me: Peer  # as the node registered
    secret: NodeSecret | None  # what was issued to it then


class KnownNodes:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._by_cluster: dict[str, dict[str, KnownNode]] = {}  # cluster -> digest -> node
        self._cluster_of: dict[str, str] = {}  # digest -> cluster
        self._retired: dict[str, set[str]] = {}  # cluster -> digests of replaced credentials
        self._lock = threading.Lock()

    def remember(self, credential: str, node: KnownNode) -> None:
        digest = secret_digest(credential)
        with self._lock:
            if digest in self._retired.get(node.cluster_id, ()):
                return
            self._by_cluster.setdefault(node.cluster_id, {})[digest] = node
            self._cluster_of[digest] = node.cluster_id

    def retire(self, cluster_id: str, digest: str) -> None:
        """Forget the credential whose digest is `digest`, for good: it was replaced."""
        with self._lock:
            self._retired.setdefault(cluster_id, set()).add(digest)
            self._by_cluster.get(cluster_id, {}).pop(digest, None)
            self._cluster_of.pop(digest, None)

    def cached(self, credential: str | None) -> KnownNode | None:
        """The node if it is in memory; None means `find` must read the store."""
        if not credential:
            return None
        digest = secret_digest(credential)
        with self._lock:
            cluster_id = self._cluster_of.get(digest)
            return self._by_cluster[cluster_id][digest] if cluster_id else None

    def find(self, credential: str | None) -> KnownNode:
        """The node the credential acts for; raises AuthError for none, unknown or ended."""
        node = self.cached(credential)
        if node is not None:
            return node
        with self.store.session() as session:
            ws = node_for_credential(session, credential)
            node = KnownNode(ws.cluster_id, peer_of(ws), session.get(NodeSecret, ws.id))
        self.remember(credential, node)
        return node

    def forget_cluster(self, cluster_id: str) -> None:
        with self._lock:
            self._retired.pop(cluster_id, None)
            for digest in self._by_cluster.pop(cluster_id, {}):
                self._cluster_of.pop(digest, None)
