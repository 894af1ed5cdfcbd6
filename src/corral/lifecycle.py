"""The two lifecycles corral tracks: a node (one node) and a cluster.

Each is an enum whose members say what the state means, a table of allowed
transitions, and one function that checks a transition against the table.
"""

from __future__ import annotations

from enum import StrEnum

from corral.errors import IllegalTransitionError


class NodeState(StrEnum):
    PENDING = "pending"  # placed on a host with an address; the backend has not been asked yet
    BOOTING = "booting"  # the backend was asked to boot it and has not reported it running
    REGISTERED = "registered"  # its agent registered with the broker
    CONFIGURING = "configuring"  # its requirements are met and its role scripts are running
    READY = "ready"  # running and configured; part of a usable cluster
    DRAINING = "draining"  # to be removed: its roles' drain hooks let its work end first
    FAILED = "failed"  # boot, contextualization or a role script failed; the cause is recorded
    LOST = "lost"  # the service expected it running but its backend no longer knows it
    TERMINATING = "terminating"  # the backend was asked to remove it
    TERMINATED = "terminated"  # removed; its address and capacity are released

    @property
    def is_live(self) -> bool:
        """True while the node holds capacity, an address and a lease."""
        return self not in (NodeState.TERMINATED,)

    @property
    def is_final(self) -> bool:
        return self is NodeState.TERMINATED


_ENDING = {NodeState.FAILED, NodeState.LOST, NodeState.TERMINATING}

# a node in these states is still on its way to ready
IN_PROGRESS = frozenset(
    {NodeState.PENDING, NodeState.BOOTING, NodeState.REGISTERED, NodeState.CONFIGURING}
)
# a node in these states holds its place in its group (what a resize counts)
IN_GROUP = IN_PROGRESS | {NodeState.READY}
# a node in these states is on its way out
LEAVING = frozenset({NodeState.DRAINING, NodeState.TERMINATING})

NODE_TRANSITIONS: dict[NodeState, frozenset[NodeState]] = {
    NodeState.PENDING: frozenset({NodeState.BOOTING} | _ENDING),
    # booting -> ready is taken when the node runs no agent (fake machines without one);
    # the broker path goes through registered and configuring.
    NodeState.BOOTING: frozenset({NodeState.REGISTERED, NodeState.READY} | _ENDING),
    NodeState.REGISTERED: frozenset({NodeState.CONFIGURING, NodeState.READY} | _ENDING),
    NodeState.CONFIGURING: frozenset({NodeState.READY} | _ENDING),
    # a ready node re-configures when membership changes
    NodeState.READY: frozenset({NodeState.CONFIGURING, NodeState.DRAINING} | _ENDING),
    # drained, it is removed; a drain that failed leaves it ready (and drained in its
    # scheduler), saying why
    NodeState.DRAINING: frozenset({NodeState.READY} | _ENDING),
    NodeState.FAILED: frozenset({NodeState.TERMINATING, NodeState.LOST}),
    NodeState.LOST: frozenset({NodeState.TERMINATING}),
    NodeState.TERMINATING: frozenset({NodeState.TERMINATED, NodeState.FAILED}),
    NodeState.TERMINATED: frozenset(),
}


class ClusterState(StrEnum):
    LAUNCHING = "launching"  # its nodes are booting or contextualizing; the policy is not met yet
    READY = "ready"  # the document's policy is met; the cluster is usable
    DEGRADED = "degraded"  # it was ready, then lost nodes; it goes on with the others
    FAILED = "failed"  # the policy can no longer be met; the cause names the node and phase
    TERMINATING = "terminating"  # destroy was asked or the lease ended; nodes are being removed
    TERMINATED = "terminated"  # every node is terminated and every address released

    @property
    def is_live(self) -> bool:
        return self is not ClusterState.TERMINATED


CLUSTER_TRANSITIONS: dict[ClusterState, frozenset[ClusterState]] = {
    ClusterState.LAUNCHING: frozenset(
        {ClusterState.READY, ClusterState.FAILED, ClusterState.TERMINATING}
    ),
    # all-or-nothing is the launch's policy: a ready cluster that loses nodes goes on
    # without them, and fails only when none is left
    ClusterState.READY: frozenset(
        {ClusterState.DEGRADED, ClusterState.FAILED, ClusterState.TERMINATING}
    ),
    # ready again once successors of its lost nodes are (groups with `replace: true`)
    ClusterState.DEGRADED: frozenset(
        {ClusterState.READY, ClusterState.FAILED, ClusterState.TERMINATING}
    ),
    ClusterState.FAILED: frozenset({ClusterState.TERMINATING}),
    ClusterState.TERMINATING: frozenset({ClusterState.TERMINATED}),
    ClusterState.TERMINATED: frozenset(),
}


def check_node_transition(current: NodeState, target: NodeState, node: str = "") -> None:
    """Raise IllegalTransitionError unless a node may move from `current` to `target`."""
    if target not in NODE_TRANSITIONS[current]:
        raise IllegalTransitionError(
            f"node {node or '?'}: cannot go from {current} to {target}",
            node=node,
            current=str(current),
            target=str(target),
        )


def check_cluster_transition(
    current: ClusterState, target: ClusterState, cluster: str = ""
) -> None:
    """Raise IllegalTransitionError unless a cluster may move from `current` to `target`."""
    if target not in CLUSTER_TRANSITIONS[current]:
        raise IllegalTransitionError(
            f"cluster {cluster or '?'}: cannot go from {current} to {target}",
            cluster=cluster,
            current=str(current),
            target=str(target),
        )
