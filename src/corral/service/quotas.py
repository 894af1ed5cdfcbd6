"""Per-user quotas: nodes held at once, and node-hours held in leases at once.

Node-hours held are the remaining lease of every live node a user has; a launch or an
extension adds its nodes times its hours. Limits come from the user's record, or the
service's defaults where the record leaves them empty.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from corral.errors import QuotaExceededError
from corral.lifecycle import NodeState
from corral.service.config import ServiceConfig
from corral.store.models import Cluster, Node, User


def usage(session: Session, user: User, now: datetime) -> tuple[int, float]:
    """(live nodes, node-hours left in their leases) of a user's clusters."""
    rows = session.execute(
        select(Cluster.lease_end, func.count(Node.id))
        .join(Node, Node.cluster_id == Cluster.id)
        .where(Cluster.owner_id == user.id, Node.state != NodeState.TERMINATED)
        .group_by(Cluster.id)
    ).all()
    nodes = sum(count for _, count in rows)
    hours = sum(count * max(0.0, (end - now).total_seconds() / 3600) for end, count in rows)
    return nodes, hours


def limits(user: User, config: ServiceConfig) -> tuple[int, float]:
    max_nodes = user.max_nodes if user.max_nodes is not None else config.default_max_nodes
    max_hours = (
        user.max_node_hours if user.max_node_hours is not None else config.default_max_node_hours
    )
    return max_nodes, max_hours


def check_quota(
    session: Session,
    user: User,
    config: ServiceConfig,
    now: datetime,
    add_nodes: int,
    add_node_hours: float,
) -> None:
    """Raise QuotaExceededError, saying needed and allowed, if the addition does not fit."""
    nodes, hours = usage(session, user, now)
    max_nodes, max_hours = limits(user, config)
    if nodes + add_nodes > max_nodes:
        raise QuotaExceededError(
            f"quota: user {user.name} may hold {max_nodes} node(s) at once; "
            f"holds {nodes}, this needs {add_nodes} more (available {max(0, max_nodes - nodes)})",
            quota="nodes",
            needed=add_nodes,
            used=nodes,
            limit=max_nodes,
        )
    if hours + add_node_hours > max_hours + 1e-9:
        raise QuotaExceededError(
            f"quota: user {user.name} may hold {max_hours:g} node-hours of leases at once; "
            f"holds {hours:.1f}, this needs {add_node_hours:.1f} more "
            f"(available {max(0.0, max_hours - hours):.1f})",
            quota="node-hours",
            needed=round(add_node_hours, 3),
            used=round(hours, 3),
            limit=max_hours,
        )


def node_hours(nodes: int, lease: timedelta) -> float:
    return nodes * lease.total_seconds() / 3600
