"""Handing out subnets (one per cluster) and addresses (one per node) from a pool.

The allocation tables' keys make handing one out twice impossible; releasing deletes the
row, so the address is free for the next cluster.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from corral.backends.network import gateway_of
from corral.errors import CapacityError
from corral.store.models import AddressAllocation, Pool, SubnetAllocation


def free_subnet(session: Session, pool: Pool, in_use: Sequence[ipaddress.IPv4Network] = ()) -> str:
    """A subnet of the pool no cluster holds and that overlaps none of `in_use` (what the
    backend's hosts route already), reserving nothing; raises CapacityError when none is
    left."""
    taken = set(
        session.scalars(
            select(SubnetAllocation.subnet).where(SubnetAllocation.pool_name == pool.name)
        )
    )
    for subnet in ipaddress.ip_network(pool.address_range).subnets(new_prefix=pool.subnet_prefix):
        if str(subnet) not in taken and not any(subnet.overlaps(n) for n in in_use):
            return str(subnet)
    raise CapacityError(
        f"pool {pool.name}: every /{pool.subnet_prefix} subnet of {pool.address_range} is in use "
        "(by its clusters, or routed on its hosts already)",
        pool=pool.name,
    )


def allocate_subnet(
    session: Session,
    pool: Pool,
    cluster_id: str,
    in_use: Sequence[ipaddress.IPv4Network] = (),
) -> str:
    """Reserve a free subnet of the pool for a cluster (see `free_subnet`)."""
    subnet = free_subnet(session, pool, in_use)
    reserve_subnet(session, pool, subnet, cluster_id)
    return subnet


def reserve_subnet(session: Session, pool: Pool, subnet: str, cluster_id: str) -> None:
    """Hand `subnet`, found free by `free_subnet`, to a cluster."""
    session.add(SubnetAllocation(pool_name=pool.name, subnet=subnet, cluster_id=cluster_id))


def check_room_for(pool: Pool, subnet: str, nodes: int) -> None:
    """Raises CapacityError when a new cluster's subnet has fewer addresses than `nodes`
    (its first is the cluster's gateway)."""
    room = ipaddress.ip_network(subnet).num_addresses - 3  # network, broadcast, gateway
    if nodes > room:
        raise CapacityError(
            f"pool {pool.name} gives a cluster {room} addresses (/{pool.subnet_prefix}); "
            f"{nodes} nodes do not fit",
            pool=pool.name,
        )


def allocate_addresses(
    session: Session, pool: Pool, subnet: str, node_ids: list[str]
) -> dict[str, str]:
    """Give each node a free address of the cluster's subnet (never the gateway)."""
    taken = set(
        session.scalars(
            select(AddressAllocation.address).where(AddressAllocation.pool_name == pool.name)
        )
    )
    taken.add(gateway_of(subnet))
    free = (str(a) for a in ipaddress.ip_network(subnet).hosts() if str(a) not in taken)
    result: dict[str, str] = {}
    for node_id in node_ids:
        address = next(free, None)
        if address is None:
            raise CapacityError(
                f"subnet {subnet} of pool {pool.name} has no address left for "
                f"{len(node_ids)} node(s)",
                pool=pool.name,
            )
        session.add(AddressAllocation(pool_name=pool.name, address=address, node_id=node_id))
        result[node_id] = address
    return result


def release_address(session: Session, node_id: str) -> None:
    session.execute(delete(AddressAllocation).where(AddressAllocation.node_id == node_id))


def release_subnet(session: Session, cluster_id: str) -> None:
    session.execute(delete(SubnetAllocation).where(SubnetAllocation.cluster_id == cluster_id))
