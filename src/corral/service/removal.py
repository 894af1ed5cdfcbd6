"""Taking nodes out of a running cluster: a resize that shrinks a group, and
`destroy CLUSTER NODE...`.

A ready node whose agent can drain it is drained first (`draining`: its roles' `drain`
hooks let its work end, up to a timeout), and removed once its agent says it is drained;
the others then run `leave` as for any node that goes. A node not ready yet is removed at
once. Removals are checked whole, like a launch: none is made when one would take a group
below its floor.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from sqlalchemy.orm import Session

from corral.document import ClusterDocument
from corral.errors import ConflictError
from corral.lifecycle import IN_GROUP, IN_PROGRESS, NodeState
from corral.store.models import Node
from corral.transitions import move_node


def floor_of(doc: ClusterDocument, group: str) -> int:
    """The fewest nodes a group may be left with: its `min` (autoscale's for the
    autoscaled group), or else one when another group requires a role it provides, and
    none when nothing needs it."""
    if doc.autoscale is not None and doc.autoscale.group == group:
        return doc.autoscale.min
    of_group = next(g for g in doc.nodes if g.group == group)
    if of_group.min is not None:
        return of_group.min
    required = {r.role for g in doc.nodes if g.group != group for r in g.requires}
    return 1 if required & set(of_group.provides) else 0


def choose(nodes: Sequence[Node], how_many: int) -> list[Node]:
    """Which of a group's nodes a shrink removes: those not ready yet first, then the
    newest (highest index) first."""
    held = [n for n in nodes if n.state in IN_GROUP]
    held.sort(key=lambda n: (n.state not in IN_PROGRESS, -n.index))
    return held[:how_many]


def check_floors(doc: ClusterDocument, nodes: Iterable[Node], removed: Sequence[Node]) -> None:
    """Raises ConflictError, naming the group and its floor, when removing `removed`
    would leave a group of the cluster (`nodes` are all of its nodes) below its floor."""
    held = Counter(n.group for n in nodes if n.state in IN_GROUP)
    taken = Counter(n.group for n in removed)
    for group, k in taken.items():
        floor = floor_of(doc, group)
        if held[group] - k < floor:
            raise ConflictError(
                f"group {group} has {held[group]} node(s); removing {k} would leave it "
                f"below its minimum of {floor}",
                field="count",
                group=group,
            )


def remove(session: Session, nodes: Sequence[Node], drain_seconds: int | None, why: str) -> None:
    """Start removing `nodes`: ready ones drain first when `drain_seconds` is given (their
    agent runs the drain hooks), the others go at once."""
    for node in nodes:
        if node.state is NodeState.READY and drain_seconds is not None:
            node.drain_timeout = drain_seconds
            node.failure = None  # an earlier removal's that failed
            move_node(session, node, NodeState.DRAINING, f"{why}; draining it first")
        else:
            move_node(session, node, NodeState.TERMINATING, why)


def counts_after(
    doc: ClusterDocument, nodes: Iterable[Node], removed: Sequence[Node]
) -> ClusterDocument:
    """The document with each group that loses nodes counting those it keeps (`nodes`
    are all of the cluster's)."""
    held = Counter(n.group for n in nodes if n.state in IN_GROUP)
    for group, k in Counter(n.group for n in removed).items():
        doc = doc.with_count(group, held[group] - k)
    return doc
