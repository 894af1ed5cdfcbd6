"""When a node's requirements are met: which groups provide a role, and who blocks whom.

A requirement is met when every live provider of the role has registered (or, with
`wait: ready`, is ready). Once the cluster runs (ready or degraded), a provider on its
way (a resize's or a successor) is not waited for until it has registered: the nodes
that require it go on, and take it in with their `join` then, rather than block
meanwhile. The broker judges it on a snapshot's peers, the API on the store's node
records, so it is judged on anything with a group and a state.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, TypeVar

from corral.broker.trust import GONE, REGISTERED
from corral.document import ClusterDocument
from corral.lifecycle import ClusterState, NodeState

UNREGISTERED = frozenset({NodeState.PENDING, NodeState.BOOTING})
RUNNING = frozenset({ClusterState.READY, ClusterState.DEGRADED})


class Provider(Protocol):
    """A node record or a snapshot's peer: what requirements are judged on."""

    group: str
    state: NodeState


N = TypeVar("N", bound=Provider)


def provider_groups(doc: ClusterDocument) -> dict[str, list[str]]:
    """Each role the document's groups provide, with those groups in document order."""
    provided_by: dict[str, list[str]] = {}
    for g in doc.nodes:
        for role in g.provides:
            provided_by.setdefault(role, []).append(g.group)
    return provided_by


def live_providers(
    nodes: Iterable[N], doc: ClusterDocument, running: bool = False
) -> dict[str, list[N]]:
    """Each role's providers that may still provide it, in one pass over the nodes; of a
    `running` cluster, only those that have registered."""
    provided_by = provider_groups(doc)
    ignored = GONE | UNREGISTERED if running else GONE
    by_group: dict[str, list[N]] = {}
    for w in nodes:
        if w.state not in ignored:  # states are StrEnums: a plain string compares as its state
            by_group.setdefault(w.group, []).append(w)
    return {
        role: [w for group in groups for w in by_group.get(group, [])]
        for role, groups in provided_by.items()
    }


def blocked_by_group(doc: ClusterDocument, providers: dict[str, list[N]]) -> dict[str, list[str]]:
    """For each group, the required roles whose providers are not far enough yet."""
    met: dict[tuple[str, str], bool] = {}
    blocked: dict[str, list[str]] = {}
    elastic = doc.elastic_roles()  # the autoscaled group may have no node at all
    for g in doc.nodes:
        blocked[g.group] = []
        for need in g.requires:
            key = (need.role, need.wait)
            if key not in met:
                enough = {NodeState.READY} if need.wait == "ready" else REGISTERED
                role_providers = providers.get(need.role, [])
                if not role_providers:
                    met[key] = need.role in elastic
                else:
                    met[key] = all(w.state in enough for w in role_providers)
            if not met[key]:
                blocked[g.group].append(need.role)
    return blocked
