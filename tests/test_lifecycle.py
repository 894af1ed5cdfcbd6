"""The node and cluster state machines: what the tables allow, forbid, and always permit."""

from __future__ import annotations

from collections import deque

import pytest

from corral.errors import IllegalTransitionError
from corral.lifecycle import (
    CLUSTER_TRANSITIONS,
    NODE_TRANSITIONS,
    ClusterState,
    NodeState,
    check_cluster_transition,
    check_node_transition,
)

N = NodeState
C = ClusterState

ALLOWED_NODE = [(src, dst) for src, targets in NODE_TRANSITIONS.items() for dst in targets]
ALLOWED_CLUSTER = [(src, dst) for src, targets in CLUSTER_TRANSITIONS.items() for dst in targets]

FORBIDDEN_NODE = [
    *[(N.TERMINATED, target) for target in NodeState],
    (N.READY, N.PENDING),
    (N.PENDING, N.READY),
    (N.TERMINATING, N.READY),
    (N.LOST, N.READY),
    (N.FAILED, N.READY),
    (N.BOOTING, N.PENDING),
    (N.PENDING, N.TERMINATED),  # removal always goes through terminating
    (N.READY, N.READY),
]

FORBIDDEN_CLUSTER = [
    *[(C.TERMINATED, target) for target in ClusterState],
    (C.READY, C.LAUNCHING),
    (C.FAILED, C.READY),
    (C.TERMINATING, C.READY),
    (C.LAUNCHING, C.TERMINATED),
]


def _ids(pairs):
    return [f"{src}->{dst}" for src, dst in pairs]


# --- nodes -----------------------------------------------------------------------------


@pytest.mark.parametrize(("current", "target"), ALLOWED_NODE, ids=_ids(ALLOWED_NODE))
def test_allowed_node_transition_passes(current, target):
    assert check_node_transition(current, target, "worker-1") is None


@pytest.mark.parametrize(("current", "target"), FORBIDDEN_NODE, ids=_ids(FORBIDDEN_NODE))
def test_forbidden_node_transition_raises_naming_node_and_states(current, target):
    with pytest.raises(IllegalTransitionError) as caught:
        check_node_transition(current, target, "worker-7")
    error = caught.value
    assert "worker-7" in error.message
    assert str(current) in error.message
    assert str(target) in error.message
    assert error.details["node"] == "worker-7"
    assert error.details["current"] == current.value
    assert error.details["target"] == target.value


def test_forbidden_node_transition_without_a_name_still_reads():
    with pytest.raises(IllegalTransitionError) as caught:
        check_node_transition(N.READY, N.PENDING)
    assert "node ?" in caught.value.message
    assert "ready" in caught.value.message and "pending" in caught.value.message


def _node_allows(current, target):
    """True if the table allows the move; a state missing from the table raises KeyError."""
    try:
        check_node_transition(current, target, "n")
    except IllegalTransitionError:
        return False
    return True


def _cluster_allows(current, target):
    try:
        check_cluster_transition(current, target, "c")
    except IllegalTransitionError:
        return False
    return True


@pytest.mark.parametrize("current", list(NodeState))
def test_every_node_state_has_a_table_entry(current):
    # a missing entry would surface as KeyError instead of the typed error
    allowed = {target for target in NodeState if _node_allows(current, target)}
    assert allowed <= set(NodeState)


def _reachable(transitions, start):
    seen = {start}
    queue = deque([start])
    while queue:
        for nxt in transitions[queue.popleft()]:
            if nxt not in seen:
                seen.add(nxt)
                queue.append(nxt)
    return seen


@pytest.mark.parametrize("start", [s for s in NodeState if not s.is_final])
def test_terminated_is_reachable_from_every_non_final_node_state(start):
    assert N.TERMINATED in _reachable(NODE_TRANSITIONS, start)


@pytest.mark.parametrize("start", [s for s in ClusterState if s is not C.TERMINATED])
def test_terminated_is_reachable_from_every_live_cluster_state(start):
    assert C.TERMINATED in _reachable(CLUSTER_TRANSITIONS, start)


@pytest.mark.parametrize("state", list(NodeState))
def test_node_is_final_exactly_when_it_can_go_nowhere(state):
    can_move = any(_node_allows(state, target) for target in NodeState)
    assert state.is_final is not can_move


@pytest.mark.parametrize("state", [s for s in NodeState if s.is_live and s is not N.TERMINATING])
def test_every_live_node_can_be_asked_to_terminate(state):
    # destroy and lease expiry must work whatever a node is doing
    assert _node_allows(state, N.TERMINATING)


@pytest.mark.parametrize("state", list(NodeState))
def test_node_is_live_until_terminated(state):
    assert state.is_live is (state is not N.TERMINATED)


def test_node_on_its_way_out_still_holds_capacity():
    # failed, lost and terminating nodes keep their address until the backend removed them
    assert all(s.is_live for s in (N.FAILED, N.LOST, N.TERMINATING))


def test_a_live_node_never_comes_back_after_terminated():
    assert _reachable(NODE_TRANSITIONS, N.TERMINATED) == {N.TERMINATED}


# --- clusters --------------------------------------------------------------------------


@pytest.mark.parametrize(("current", "target"), ALLOWED_CLUSTER, ids=_ids(ALLOWED_CLUSTER))
def test_allowed_cluster_transition_passes(current, target):
    assert check_cluster_transition(current, target, "c-abc") is None


@pytest.mark.parametrize(("current", "target"), FORBIDDEN_CLUSTER, ids=_ids(FORBIDDEN_CLUSTER))
def test_forbidden_cluster_transition_raises_naming_cluster_and_states(current, target):
    with pytest.raises(IllegalTransitionError) as caught:
        check_cluster_transition(current, target, "c-abc")
    error = caught.value
    assert "c-abc" in error.message
    assert str(current) in error.message
    assert str(target) in error.message
    assert error.details["cluster"] == "c-abc"
    assert error.details["current"] == current.value
    assert error.details["target"] == target.value


@pytest.mark.parametrize("current", list(ClusterState))
def test_every_cluster_state_has_a_table_entry(current):
    allowed = {target for target in ClusterState if _cluster_allows(current, target)}
    assert allowed <= set(ClusterState)


@pytest.mark.parametrize("state", list(ClusterState))
def test_cluster_is_live_until_terminated(state):
    assert state.is_live is (state is not C.TERMINATED)


@pytest.mark.parametrize("state", [s for s in ClusterState if s.is_live and s is not C.TERMINATING])
def test_every_live_cluster_can_be_asked_to_terminate(state):
    assert _cluster_allows(state, C.TERMINATING)


def test_a_terminated_cluster_allows_nothing():
    assert not any(_cluster_allows(C.TERMINATED, target) for target in ClusterState)
