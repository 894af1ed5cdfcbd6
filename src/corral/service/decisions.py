"""The engine's decisions, as pure functions: state in, decision out.

The engine (engine.py) reads the store and the backends, asks these functions what to
do, and writes what they answer. Nothing here reads a clock, a store or a backend, so
each rule is tested as a table (tests/test_decisions.py).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from corral.backends.base import Machine, MachineState
from corral.broker.liveness import Heard
from corral.document import ClusterDocument, Policy
from corral.lifecycle import IN_PROGRESS, ClusterState, NodeState
from corral.units import format_duration

FAILING = frozenset({NodeState.FAILED, NodeState.LOST})
GONE = frozenset({NodeState.TERMINATING, NodeState.TERMINATED})
# a node in these states has a machine its backend should be running
RUNNING = frozenset(
    {
        NodeState.BOOTING,
        NodeState.REGISTERED,
        NodeState.CONFIGURING,
        NodeState.READY,
        NodeState.DRAINING,
    }
)
# a draining node whose agent has not said how its drain ended by its timeout and this
# much more is kept, as a drain that failed
DRAIN_REPORT_GRACE = timedelta(seconds=60)


@dataclass
class NodeRecord:
    """A node as a tick reads it: plain values, not an ORM object.

    A tick reads every live node but changes few, so only the nodes it moves or boots
    are loaded as ORM objects (see `Engine._move`).
    """

    id: str
    cluster_id: str
    name: str
    group: str
    state: NodeState
    state_since: datetime
    registered_at: datetime | None
    failure: str | None
    failure_phase: str | None
    address: str | None
    drain_timeout: int | None


@dataclass(frozen=True)
class Move:
    """A node to move to `target`, and why."""

    target: NodeState
    reason: str


@dataclass(frozen=True)
class PolicyOutcome:
    """What a cluster's policy asks for now; all empty when nothing is to be done."""

    ready: str | None = None  # the cluster is ready, for this reason
    failure: str | None = None  # the cluster fails, with this cause
    drop: tuple[str, ...] = ()  # ids of failed nodes the cluster goes on without
    degraded: str | None = None  # a cluster that was ready goes on degraded, for this cause
    add: tuple[tuple[str, int], ...] = ()  # (group, how many) successors of lost nodes to add


def react_to_machine(
    node: NodeRecord,
    machine: Machine | None,
    policy: Policy,
    now: datetime,
    runs_agents: bool,
) -> Move | None:
    """How a node moves on what its backend reports of its machine (None: it is gone),
    and on the policy's timeouts; None when it stays as it is."""
    state = node.state
    if state not in RUNNING:
        return None
    if machine is None:
        return Move(NodeState.LOST, "the backend no longer has this machine")
    if machine.state is MachineState.ERROR:
        return Move(NodeState.FAILED, machine.detail or "the backend reports an error")
    if machine.state is MachineState.STOPPED:
        return Move(NodeState.LOST, machine.detail or "the machine stopped")
    if state is NodeState.BOOTING and machine.state is MachineState.RUNNING and not runs_agents:
        return Move(NodeState.READY, "running (this backend runs no context agent)")
    if state is NodeState.BOOTING and now - node.state_since > policy.boot_timeout:
        waited = "its agent to register" if runs_agents else "the machine to run"
        return Move(
            NodeState.FAILED,
            f"boot timed out after {format_duration(policy.boot_timeout)} waiting for {waited}",
        )
    if state is NodeState.DRAINING and node.drain_timeout is not None:
        allowed = timedelta(seconds=node.drain_timeout) + DRAIN_REPORT_GRACE
        if now - node.state_since > allowed:
            return Move(
                NodeState.READY,
                f"removal failed: its agent did not report its drain within "
                f"{format_duration(allowed)}; it stays, drained",
            )
    if (
        state in (NodeState.REGISTERED, NodeState.CONFIGURING)
        and node.registered_at is not None
        and now - node.registered_at > policy.context_timeout
    ):
        return Move(
            NodeState.FAILED,
            f"contextualization timed out after {format_duration(policy.context_timeout)} "
            f"(still {state})",
        )
    return None


def silent_agent(
    node: NodeRecord, heard: Heard, heartbeat: timedelta, policy: Policy, now: datetime
) -> Move | None:
    """A ready node whose agent has not been heard for longer than the heartbeat is lost;
    None while it is heard. An agent that said it runs a role script (a `join` or `leave`
    hook) is silent until the script ends, so it has the context timeout instead.

    Only ready nodes: before that the boot and context timeouts bound a node's silence.
    A node whose machine is gone is react_to_machine's to move, first."""
    if node.state is not NodeState.READY:
        return None
    silent = now - heard.at
    limit, of = heartbeat, f"heartbeat {format_duration(heartbeat)}"
    if heard.running_script:
        limit = max(heartbeat, policy.context_timeout)
        of = f"running a role script; context timeout {format_duration(limit)}"
    if silent <= limit:
        return None
    said = format_duration(timedelta(seconds=math.ceil(silent.total_seconds())))  # > limit
    return Move(NodeState.LOST, f"its agent was silent for {said} ({of})")


def reported_address(node: NodeRecord, machine: Machine | None) -> str | None:
    """The address a backend that places machines itself reports for a node the service
    gave none; None when there is nothing to record."""
    if machine is None or not machine.address or node.address:
        return None
    return machine.address


def apply_policy(
    state: ClusterState, members: Sequence[NodeRecord], doc: ClusterDocument
) -> PolicyOutcome:
    """What the cluster's policy makes of its nodes' states.

    While it launches, all-or-nothing fails on the first failed node, and best-effort goes
    on without failed nodes while every group can still reach its minimum. Once it was
    ready, a cluster goes on without the nodes it loses, degraded; it fails only when no
    node is left.
    """
    if state not in (ClusterState.LAUNCHING, ClusterState.READY, ClusterState.DEGRADED):
        return PolicyOutcome()
    failing = [n for n in members if n.state in FAILING]
    if state is not ClusterState.LAUNCHING:
        return _after_launch(state, members, failing, doc)
    if doc.policy.mode == "best-effort":
        return _best_effort(state, members, failing, doc)
    if failing:
        return PolicyOutcome(failure=describe_failures(failing))
    if state is ClusterState.LAUNCHING and all(n.state == NodeState.READY for n in members):
        return PolicyOutcome(ready="every node is ready")
    return PolicyOutcome()


def _best_effort(
    state: ClusterState,
    members: Sequence[NodeRecord],
    failing: list[NodeRecord],
    doc: ClusterDocument,
) -> PolicyOutcome:
    by_group: dict[str, list[NodeRecord]] = {}
    for node in members:
        by_group.setdefault(node.group, []).append(node)
    waiting = False
    for group in doc.nodes:
        of_group = by_group.get(group.group, [])
        ready = sum(1 for n in of_group if n.state == NodeState.READY)
        hopeful = sum(1 for n in of_group if n.state in IN_PROGRESS)
        if ready + hopeful < group.min_ready:
            cause = describe_failures([n for n in of_group if n.failure is not None])
            return PolicyOutcome(
                failure=f"group {group.group} cannot reach its minimum of {group.min_ready} "
                f"ready node(s) ({ready} ready): {cause}"
            )
        waiting = waiting or ready < group.min_ready  # still possible, not there yet
    ready = None if waiting else "every group has its minimum ready"
    return PolicyOutcome(ready=ready, drop=tuple(n.id for n in failing))


def _after_launch(
    state: ClusterState,
    members: Sequence[NodeRecord],
    failing: list[NodeRecord],
    doc: ClusterDocument,
) -> PolicyOutcome:
    """A cluster that was ready goes on without the nodes it loses. A lost node (its
    machine vanished or stopped) of a group with `replace: true` gets one successor,
    once: a successor that fails is not replaced in turn. The cluster is ready again when
    every group has as many ready nodes as the document asks."""
    if not failing:
        if state is ClusterState.DEGRADED and _all_there(members, doc):
            return PolicyOutcome(ready="every group has all its nodes ready again")
        return PolicyOutcome()
    if all(n.state in FAILING or n.state in GONE for n in members):
        return PolicyOutcome(failure=f"no node is left: {describe_failures(failing)}")
    replaced = {g.group for g in doc.nodes if g.replace}
    successors = Counter(n.group for n in failing if n.state is NodeState.LOST)
    add = tuple(sorted((g, k) for g, k in successors.items() if g in replaced))
    then = f"; replacing {', '.join(f'{k} of {g}' for g, k in add)}" if add else ""
    return PolicyOutcome(
        degraded=f"going on without {describe_failures(failing)}{then}",
        drop=tuple(n.id for n in failing),
        add=add,
    )


def _all_there(members: Sequence[NodeRecord], doc: ClusterDocument) -> bool:
    ready = Counter(n.group for n in members if n.state is NodeState.READY)
    busy = any(n.state in IN_PROGRESS for n in members)
    return not busy and all(ready[g.group] >= g.count for g in doc.nodes)


def describe_failures(failing: Sequence[NodeRecord]) -> str:
    if not failing:
        return "no node failed, but too few are left"
    parts = [
        f"node {n.name} {n.state} in phase {n.failure_phase}: {n.failure}" for n in failing[:5]
    ]
    more = f"; and {len(failing) - 5} more" if len(failing) > 5 else ""
    return "; ".join(parts) + more
