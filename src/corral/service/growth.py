"""New nodes for a cluster that already runs: the successors of lost nodes, and a
resize's. They are placed, addressed, priced and recorded as a launch's are, in the
cluster's own pool, with the group's next indexes, and the engine boots them like any
pending node.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from corral.backends.base import Capability
from corral.document import ClusterDocument, NodeGroup
from corral.lifecycle import NodeState
from corral.service import costs
from corral.service.addresses import allocate_addresses
from corral.service.ids import new_id
from corral.service.inventory import host_capacities
from corral.service.pools import Pool
from corral.service.scheduler import NodeRequest, place
from corral.store.models import Cluster, Image, Node
from corral.store.models import Pool as PoolRow
from corral.transitions import record_node


def pending_node(
    cluster_id: str,
    group: NodeGroup,
    index: int,
    host: str,
    digest: str,
    now: datetime,
    hourly_price: float | None = None,
) -> Node:
    """A new node record of `group`, placed on `host`, waiting to boot, costing
    `hourly_price` (None: its pool has no prices)."""
    return Node(
        id=new_id("w", 5),
        cluster_id=cluster_id,
        name=f"{group.group}-{index}",
        group=group.group,
        index=index,
        host_name=host,
        image=group.image,
        image_digest=digest,
        cores=group.cores,
        memory_mib=group.memory_mib,
        login=group.login,
        state=NodeState.PENDING,
        state_since=now,
        created_at=now,
        hourly_price=hourly_price,
    )


def add_nodes(
    session: Session,
    cluster: Cluster,
    doc: ClusterDocument,
    pool: Pool,
    group_name: str,
    count: int,
    reason: str,
    now: datetime,
    indexes: list[int] | None = None,
) -> list[Node]:
    """Add `count` pending nodes to `group_name` of `cluster`, with the group's next
    indexes, or with `indexes` (an autoscaled group's names come back); they keep the
    image digest the cluster was launched with.

    Raises CapacityError when the pool's hosts or addresses cannot take them (nothing is
    added then).
    """
    group = next(g for g in doc.nodes if g.group == group_name)
    if indexes is None:
        last = session.scalar(
            select(func.max(Node.index)).where(
                Node.cluster_id == cluster.id, Node.group == group_name
            )
        )
        start = 0 if last is None else last + 1
        indexes = list(range(start, start + count))
    names = {index: f"{group_name}-{index}" for index in indexes}
    requests = [
        NodeRequest(name, group_name, pool.name, group.cores, group.memory_mib)
        for name in names.values()
    ]
    placement = place(requests, host_capacities(session, pool.name))
    # the digest the cluster was launched with; an autoscaled group that started with no
    # node takes its image's from the cluster's other nodes, or the image's now
    digest = session.scalar(
        select(Node.image_digest).where(Node.cluster_id == cluster.id, Node.image == group.image)
    ) or session.scalar(select(Image.digest).where(Image.name == group.image))
    price = costs.hourly_price(pool.backend, group)  # what the pool charges now
    nodes = [
        pending_node(cluster.id, group, index, placement[name], digest or "", now, price)
        for index, name in names.items()
    ]
    session.add_all(nodes)
    session.flush()
    if Capability.PLACES_ITSELF not in pool.capabilities:
        pool_row = session.get(PoolRow, pool.name)
        addresses = allocate_addresses(session, pool_row, cluster.subnet, [n.id for n in nodes])
        for node in nodes:
            node.address = addresses[node.id]
    for node in nodes:
        at = f" at {node.address}" if node.address else ""
        placed = f"{reason}; placed on {node.host_name}{at}"
        record_node(session, node, None, NodeState.PENDING, placed)
    return nodes
