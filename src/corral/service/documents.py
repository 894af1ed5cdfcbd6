"""Parsed cluster documents, cached by cluster: the store keeps their canonical JSON."""

from __future__ import annotations

import threading

from corral.document import ClusterDocument
from corral.store.models import Cluster


class DocumentCache:
    def __init__(self) -> None:
        self._docs: dict[str, ClusterDocument] = {}
        self._lock = threading.Lock()

    def of(self, cluster: Cluster) -> ClusterDocument:
        with self._lock:
            doc = self._docs.get(cluster.id)
        if doc is None:
            doc = ClusterDocument.from_json(cluster.document, cluster.id)
            with self._lock:
                self._docs[cluster.id] = doc
        return doc

    def forget(self, cluster_id: str) -> None:
        with self._lock:
            self._docs.pop(cluster_id, None)
