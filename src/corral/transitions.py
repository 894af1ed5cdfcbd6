"""Moving a cluster or node to a new state: checked against the table, and logged.

Every change appends an Event, so the history of a node survives the node. The service
(launches, the engine) and the broker (registrations, reports) both move nodes, so this
sits below them both, next to the table it applies (lifecycle.py).
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from corral.lifecycle import (
    ClusterState,
    NodeState,
    check_cluster_transition,
    check_node_transition,
)
from corral.store.models import Cluster, Event, Node, utcnow

log = logging.getLogger(__name__)

# the phase a node was in, named for users, when it failed from a given state
PHASE_OF: dict[NodeState, str] = {
    NodeState.PENDING: "boot",
    NodeState.BOOTING: "boot",
    NodeState.REGISTERED: "register",
    NodeState.CONFIGURING: "configure",
    NodeState.READY: "run",
    NodeState.DRAINING: "drain",
    NodeState.FAILED: "run",
    NodeState.LOST: "run",
    NodeState.TERMINATING: "terminate",
    NodeState.TERMINATED: "terminate",
}


def move_node(session: Session, node: Node, target: NodeState, reason: str) -> None:
    """Move a node to `target`; raises IllegalTransitionError if the table forbids it."""
    current = NodeState(node.state)  # a record made outside may hold the value's text
    check_node_transition(current, target, node.name)
    now = utcnow()
    node.state = target
    node.state_since = now
    failing = (NodeState.FAILED, NodeState.LOST)
    if target in failing and current not in failing:  # keep the first cause
        node.failure = reason
        node.failure_phase = PHASE_OF[current]
    if current is NodeState.DRAINING:
        node.drain_timeout = None
        if target is NodeState.READY:  # its removal failed: it stays, saying why
            node.failure = reason
            record(session, node.cluster, "removal-failed", f"node {node.name}: {reason}")
    record_node(session, node, current, target, reason)
    bump_context(session, node.cluster, node.id)
    log.debug("node %s/%s: %s -> %s (%s)", node.cluster_id, node.name, current, target, reason)


def bump_context(session: Session, cluster: Cluster, node: str | None = None) -> None:
    """Note that the cluster's context views may have changed; long-polls wake on commit.

    `node` is the node id of the one node that changed; without it, anything in the
    cluster may have. The broker re-reads just the nodes named, unless one call named none.
    """
    cluster.context_version = (cluster.context_version or 0) + 1
    changed = session.info.setdefault("changed_contexts", {})
    add_changed_nodes(changed, cluster.id, None if node is None else {node})


def add_changed_nodes(
    changed: dict[str, set[str] | None], cluster_id: str, nodes: set[str] | None
) -> None:
    """Add `nodes` to those known changed in `cluster_id`; None, the whole cluster, wins."""
    if nodes is None:
        changed[cluster_id] = None
    elif changed.get(cluster_id, set()) is not None:
        changed.setdefault(cluster_id, set()).update(nodes)


def record_node(
    session: Session,
    node: Node,
    from_state: NodeState | None,
    to_state: NodeState,
    reason: str,
) -> None:
    """Append a node's state-change event (from_state is None for its first state)."""
    session.add(
        Event(
            at=node.state_since,
            cluster_id=node.cluster_id,
            node_id=node.id,
            subject=node.name,
            kind="state",
            from_state=from_state.value if from_state else None,
            to_state=to_state.value,
            reason=reason,
        )
    )


def record_node_event(session: Session, node: Node, kind: str, reason: str) -> None:
    """Append an event of a node that does not change its state."""
    session.add(
        Event(
            at=utcnow(),
            cluster_id=node.cluster_id,
            node_id=node.id,
            subject=node.name,
            kind=kind,
            reason=reason,
        )
    )


def move_cluster(session: Session, cluster: Cluster, target: ClusterState, reason: str) -> None:
    """Move a cluster to `target`; raises IllegalTransitionError if the table forbids it."""
    current = ClusterState(cluster.state)
    check_cluster_transition(current, target, cluster.id)
    cluster.state = target
    if target in (ClusterState.FAILED, ClusterState.DEGRADED):
        cluster.failure = reason  # what it lost: `status` shows it
    record(session, cluster, "state", reason, current.value, target.value)
    bump_context(session, cluster)  # the broker re-reads it, and lets go of it once terminated
    log.info("cluster %s (%s): %s -> %s: %s", cluster.id, cluster.name, current, target, reason)


def record(
    session: Session,
    cluster: Cluster,
    kind: str,
    reason: str,
    from_state: str | None = None,
    to_state: str | None = None,
) -> None:
    """Append a cluster-level event that is not necessarily a state change."""
    session.add(
        Event(
            at=utcnow(),
            cluster_id=cluster.id,
            subject="cluster",
            kind=kind,
            from_state=from_state,
            to_state=to_state,
            reason=reason,
        )
    )
