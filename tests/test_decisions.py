"""The engine's decisions as tables: a node's state and its machine in, a move out; a
cluster's nodes in, what its policy asks for out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from corral.backends.base import Machine, MachineState
from corral.broker.liveness import Heard
from corral.document import parse_yaml
from corral.lifecycle import ClusterState, NodeState
from corral.service.decisions import (
    Move,
    NodeRecord,
    PolicyOutcome,
    apply_policy,
    react_to_machine,
    silent_agent,
)

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
POLICY = parse_yaml(
    "image: x\npolicy: {boot_timeout: 5m, context_timeout: 10m}\nnodes: [{group: head}]\n"
).policy


def node(
    state: NodeState,
    since: timedelta = timedelta(0),
    registered: timedelta | None = None,
    group: str = "worker",
    name: str = "worker-0",
    failure: str | None = None,
    drain_timeout: int | None = None,
) -> NodeRecord:
    return NodeRecord(
        id=f"n-{name}",
        cluster_id="c-1",
        name=name,
        group=group,
        state=state,
        state_since=NOW - since,
        registered_at=NOW - registered if registered is not None else None,
        failure=failure,
        failure_phase="boot" if failure else None,
        address="10.0.0.2",
        drain_timeout=drain_timeout,
    )


def machine(state: MachineState, detail: str = "") -> Machine:
    return Machine("n-worker-0", state, "local", "10.0.0.2", detail)


RUNNING = machine(MachineState.RUNNING)


@pytest.mark.parametrize(
    ("record", "seen", "agents", "expected"),
    [
        # nodes with no machine yet, or none any more, are not the machine's to move
        (node(NodeState.PENDING), None, True, None),
        (node(NodeState.TERMINATING), None, True, None),
        (node(NodeState.FAILED), None, True, None),
        # a machine that is gone, stopped or broken
        (
            node(NodeState.READY),
            None,
            True,
            Move(NodeState.LOST, "the backend no longer has this machine"),
        ),
        (
            node(NodeState.READY),
            machine(MachineState.STOPPED, "it powered itself off: its lease ended"),
            True,
            Move(NodeState.LOST, "it powered itself off: its lease ended"),
        ),
        (
            node(NodeState.BOOTING),
            machine(MachineState.STOPPED),
            True,
            Move(NodeState.LOST, "the machine stopped"),
        ),
        (
            node(NodeState.CONFIGURING),
            machine(MachineState.ERROR, "disk full"),
            True,
            Move(NodeState.FAILED, "disk full"),
        ),
        # a backend without agents: running is ready
        (
            node(NodeState.BOOTING),
            RUNNING,
            False,
            Move(NodeState.READY, "running (this backend runs no context agent)"),
        ),
        (node(NodeState.BOOTING), RUNNING, True, None),
        (node(NodeState.BOOTING), machine(MachineState.STARTING), False, None),
        # timeouts
        (node(NodeState.BOOTING, since=timedelta(minutes=4)), RUNNING, True, None),
        (
            node(NodeState.BOOTING, since=timedelta(minutes=6)),
            RUNNING,
            True,
            Move(NodeState.FAILED, "boot timed out after 5m waiting for its agent to register"),
        ),
        (
            node(NodeState.BOOTING, since=timedelta(minutes=6)),
            machine(MachineState.STARTING),
            False,
            Move(NodeState.FAILED, "boot timed out after 5m waiting for the machine to run"),
        ),
        (node(NodeState.CONFIGURING, registered=timedelta(minutes=9)), RUNNING, True, None),
        (
            node(NodeState.REGISTERED, registered=timedelta(minutes=11)),
            RUNNING,
            True,
            Move(NodeState.FAILED, "contextualization timed out after 10m (still registered)"),
        ),
        (node(NodeState.READY, registered=timedelta(hours=5)), RUNNING, True, None),
        # a draining node waits for its agent's word up to its timeout and a minute more
        (
            node(NodeState.DRAINING, since=timedelta(seconds=80), drain_timeout=30),
            RUNNING,
            True,
            None,
        ),
        (
            node(NodeState.DRAINING, since=timedelta(seconds=91), drain_timeout=30),
            RUNNING,
            True,
            Move(
                NodeState.READY,
                "removal failed: its agent did not report its drain within 1m30s; "
                "it stays, drained",
            ),
        ),
        # and is lost like any other when its machine goes
        (
            node(NodeState.DRAINING, drain_timeout=30),
            None,
            True,
            Move(NodeState.LOST, "the backend no longer has this machine"),
        ),
    ],
)
def test_a_node_reacts_to_its_machine(record, seen, agents, expected):
    assert react_to_machine(record, seen, POLICY, NOW, agents) == expected


ALL_OR_NOTHING = parse_yaml("image: x\nnodes: [{group: head}, {group: worker, count: 2}]\n")
REPLACED = parse_yaml(
    "image: x\nnodes: [{group: head}, {group: worker, count: 2, replace: true}]\n"
)
BEST_EFFORT = parse_yaml(
    "image: x\npolicy: {mode: best-effort}\n"
    "nodes: [{group: head}, {group: worker, count: 3, min: 2}]\n"
)


def members(head: NodeState, *workers: NodeState) -> list[NodeRecord]:
    return [node(head, group="head", name="head-0")] + [
        node(s, name=f"worker-{i}", failure="it broke" if s in (F, L) else None)
        for i, s in enumerate(workers)
    ]


R, B, F, P = NodeState.READY, NodeState.BOOTING, NodeState.FAILED, NodeState.PENDING
L, T = NodeState.LOST, NodeState.TERMINATING
LAUNCHING, READY, DEGRADED = ClusterState.LAUNCHING, ClusterState.READY, ClusterState.DEGRADED


@pytest.mark.parametrize(
    ("doc", "state", "nodes", "expected"),
    [
        (ALL_OR_NOTHING, LAUNCHING, members(R, R, B), PolicyOutcome()),
        (ALL_OR_NOTHING, LAUNCHING, members(R, R, R), PolicyOutcome(ready="every node is ready")),
        (ALL_OR_NOTHING, READY, members(R, R, R), PolicyOutcome()),
        (
            ALL_OR_NOTHING,
            LAUNCHING,
            members(R, R, F),
            PolicyOutcome(failure="node worker-1 failed in phase boot: it broke"),
        ),
        # all-or-nothing is the launch's policy: a ready cluster goes on without lost nodes
        (
            ALL_OR_NOTHING,
            READY,
            members(R, F, R),
            PolicyOutcome(
                degraded="going on without node worker-0 failed in phase boot: it broke",
                drop=("n-worker-0",),
            ),
        ),
        (
            ALL_OR_NOTHING,
            DEGRADED,
            members(R, T, L),
            PolicyOutcome(
                degraded="going on without node worker-1 lost in phase boot: it broke",
                drop=("n-worker-1",),
            ),
        ),
        (ALL_OR_NOTHING, DEGRADED, members(R, T, R), PolicyOutcome()),
        # replace: true gives each lost node of its group one successor, once
        (
            REPLACED,
            READY,
            members(R, R, L),
            PolicyOutcome(
                degraded="going on without node worker-1 lost in phase boot: it broke; "
                "replacing 1 of worker",
                drop=("n-worker-1",),
                add=(("worker", 1),),
            ),
        ),
        (
            REPLACED,
            DEGRADED,
            members(R, R, NodeState.TERMINATED, F),
            PolicyOutcome(
                degraded="going on without node worker-2 failed in phase boot: it broke",
                drop=("n-worker-2",),
            ),
        ),
        (REPLACED, DEGRADED, members(R, R, NodeState.TERMINATED, B), PolicyOutcome()),
        (
            REPLACED,
            DEGRADED,
            members(R, R, NodeState.TERMINATED, R),
            PolicyOutcome(ready="every group has all its nodes ready again"),
        ),
        (
            ALL_OR_NOTHING,
            READY,
            members(L, T, F, NodeState.TERMINATED),
            PolicyOutcome(
                failure="no node is left: node head-0 lost in phase None: None; "
                "node worker-1 failed in phase boot: it broke"
            ),
        ),
        (ALL_OR_NOTHING, ClusterState.TERMINATING, members(R, F, F), PolicyOutcome()),
        # best effort: on without failed nodes while each group can reach its minimum
        (BEST_EFFORT, LAUNCHING, members(R, R, B, P), PolicyOutcome()),
        (
            BEST_EFFORT,
            LAUNCHING,
            members(R, R, R, F),
            PolicyOutcome(ready="every group has its minimum ready", drop=("n-worker-2",)),
        ),
        (BEST_EFFORT, LAUNCHING, members(R, R, B, F), PolicyOutcome(drop=("n-worker-2",))),
        (
            BEST_EFFORT,
            READY,
            members(R, R, R, F),
            PolicyOutcome(
                degraded="going on without node worker-2 failed in phase boot: it broke",
                drop=("n-worker-2",),
            ),
        ),
        (
            BEST_EFFORT,
            LAUNCHING,
            members(R, R, F, F),
            PolicyOutcome(
                failure="group worker cannot reach its minimum of 2 ready node(s) (1 ready): "
                "node worker-1 failed in phase boot: it broke; "
                "node worker-2 failed in phase boot: it broke"
            ),
        ),
        (
            BEST_EFFORT,
            LAUNCHING,
            members(F, R, R, R),
            PolicyOutcome(
                failure="group head cannot reach its minimum of 1 ready node(s) (0 ready): "
                "no node failed, but too few are left"
            ),
        ),
    ],
)
def test_a_cluster_policy_decides_from_its_nodes(doc, state, nodes, expected):
    assert apply_policy(state, nodes, doc) == expected


HEARTBEAT = timedelta(seconds=90)


def heard(ago: timedelta, running_script: bool = False) -> Heard:
    return Heard(NOW - ago, running_script)


@pytest.mark.parametrize(
    ("record", "last", "expected"),
    [
        (node(NodeState.READY), heard(timedelta(seconds=90)), None),
        (
            node(NodeState.READY),
            heard(timedelta(seconds=95)),
            Move(NodeState.LOST, "its agent was silent for 1m35s (heartbeat 1m30s)"),
        ),
        (
            node(NodeState.READY),
            heard(timedelta(seconds=90.2)),
            Move(NodeState.LOST, "its agent was silent for 1m31s (heartbeat 1m30s)"),
        ),
        # before it is ready, the boot and context timeouts bound a node's silence
        (node(NodeState.BOOTING), heard(timedelta(minutes=4)), None),
        (node(NodeState.REGISTERED), heard(timedelta(minutes=4)), None),
        (node(NodeState.CONFIGURING), heard(timedelta(minutes=4)), None),
        # lost, failed or leaving nodes are no longer the heartbeat's
        (node(NodeState.LOST), heard(timedelta(hours=1)), None),
        (node(NodeState.TERMINATING), heard(timedelta(hours=1)), None),
        # an agent running a join or leave hook is silent until it ends
        (node(NodeState.READY), heard(timedelta(minutes=9), running_script=True), None),
        (
            node(NodeState.READY),
            heard(timedelta(minutes=11), running_script=True),
            Move(
                NodeState.LOST,
                "its agent was silent for 11m (running a role script; context timeout 10m)",
            ),
        ),
    ],
)
def test_a_ready_node_whose_agent_is_silent_past_the_heartbeat_is_lost(record, last, expected):
    assert silent_agent(record, last, HEARTBEAT, POLICY, NOW) == expected
