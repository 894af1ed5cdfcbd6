"""Choosing the pool a new cluster runs in: the pools it may use, in order, and the first
where every check passes (overflow).

A cluster never spans pools: nodes in two pools would need a network between them, which
corral cannot make. Each pool is checked as a launch always was (outbound access, images,
its node limit, a placement on its hosts' free cores and memory, a subnet with addresses
for every node), and nothing is written while checking; the first pool that passes takes
the whole cluster, and each pool passed over is named with why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from corral.backends.base import Capability
from corral.document import ClusterDocument
from corral.errors import CapacityError, CorralError, NotFoundError, RefusedError
from corral.lifecycle import NodeState
from corral.service.addresses import check_room_for, free_subnet
from corral.service.inventory import host_capacities
from corral.service.pools import Pool, Pools
from corral.service.scheduler import NodeRequest, place
from corral.store.models import Cluster, Image, Node
from corral.store.models import Pool as PoolRow
from corral.units import describe_size_mib

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Skipped:
    """A pool a cluster did not go to, and why, in a few words."""

    pool: str
    reason: str


@dataclass(frozen=True)
class PoolChoice:
    """Where a cluster fits: its pool, a host for each node, and its subnet (None where
    the pool's backend gives its machines their addresses), with the pools passed over."""

    pool: Pool
    hosts: dict[str, str]  # node name -> host
    subnet: str | None
    skipped: tuple[Skipped, ...] = ()

    def reasons(self) -> str:
        """Why the pools before it were passed over, or empty."""
        return "; ".join(s.reason for s in self.skipped)


def pool_order(chosen: str | None, doc: ClusterDocument, site_order: list[str]) -> list[str]:
    """The pools a cluster may run in, in order: the one its launch names, else its
    document's (`pools` or `pool`), else the site's (`overflow`, or the default pool)."""
    if chosen is not None:
        return [chosen]
    return doc.pool_order or site_order


def choose_pool(
    session: Session, pools: Pools, order: list[str], doc: ClusterDocument
) -> PoolChoice:
    """The first pool of `order` that takes the whole cluster; writes nothing.

    Raises NotFoundError naming a pool of `order` the service does not have. With one
    pool in `order`, raises what its checks raise (RefusedError for outbound access,
    NotFoundError for an image, CapacityError); with several that all refuse, a
    CapacityError naming each pool and why (details: `pools`, each `{pool, reason}`).
    """
    candidates = [pools.get(name) for name in order]
    skipped: list[Skipped] = []
    for pool in candidates:
        try:
            hosts, subnet = _fit(session, pool, doc)
        except (RefusedError, NotFoundError) as exc:
            if len(candidates) == 1:
                raise
            skipped.append(Skipped(pool.name, _why(pool.name, exc)))
            log.debug("pool %s passed over: %s", pool.name, exc.message)
            continue
        return PoolChoice(pool, hosts, subnet, tuple(skipped))
    raise CapacityError(
        "no pool can take the cluster: " + "; ".join(s.reason for s in skipped),
        pools=[{"pool": s.pool, "reason": s.reason} for s in skipped],
    )


def _fit(session: Session, pool: Pool, doc: ClusterDocument) -> tuple[dict[str, str], str | None]:
    """A host for each node and a free subnet in `pool`, or raise why it cannot take
    the cluster."""
    check_outbound(doc, pool)
    check_images(session, doc, pool)
    check_pool_limit(session, pool, doc.total_nodes)
    requests = [
        NodeRequest(node, group.group, pool.name, group.cores, group.memory_mib)
        for group in doc.nodes
        for node in group.node_names()
    ]
    hosts = place(requests, host_capacities(session, pool.name))
    if Capability.PLACES_ITSELF in pool.capabilities:
        return hosts, None
    pool_row = session.get(PoolRow, pool.name)
    subnet = free_subnet(session, pool_row, pool.networks_in_use())
    check_room_for(pool_row, subnet, doc.total_nodes)
    return hosts, subnet


def _why(pool: str, exc: CorralError) -> str:
    """A pool's refusal in a few words that name the pool."""
    needed, available = exc.details.get("needed"), exc.details.get("available")
    if isinstance(needed, dict) and isinstance(available, dict):  # the scheduler's
        if available["cores"] < needed["cores"]:
            return (
                f"pool {pool} has room for {max(available['cores'], 0)} of the "
                f"{needed['cores']} cores asked"
            )
        if available["memory_mib"] < needed["memory_mib"]:
            return (
                f"pool {pool} has room for {describe_size_mib(max(available['memory_mib'], 0))} "
                f"of the {describe_size_mib(needed['memory_mib'])} of memory asked"
            )
        return f"pool {pool} has no host with room for {exc.details['unplaced'][0]}"
    if exc.details.get("field") == "network.outbound":
        return f"pool {pool} does not allow outbound access"
    if "image" in exc.details:
        return f"pool {pool} has no image {exc.details['image']}"
    return exc.message


def check_outbound(doc: ClusterDocument, pool: Pool) -> None:
    """Raises RefusedError when the document asks for a way out that the pool's site
    forbids (`allow_outbound: false`)."""
    if doc.network.outbound and not pool.config.allow_outbound:
        raise RefusedError(
            f"network.outbound: pool {pool.name} does not allow outbound access "
            "(its site forbids it); launch without it, or in another pool",
            field="network.outbound",
            pool=pool.name,
        )


def check_images(session: Session, doc: ClusterDocument, pool: Pool) -> None:
    """Raises NotFoundError naming a group's image the image store does not have, or,
    for a backend that boots images of its own (AMIs), one it has none for."""
    for i, group in enumerate(doc.nodes):
        if Capability.ANY_IMAGE in pool.capabilities:
            missing = pool.backend.missing_image(group.image)
            if missing:
                raise NotFoundError(
                    f"nodes[{i}].image: pool {pool.name} {missing}",
                    field=f"nodes[{i}].image",
                    image=group.image,
                )
        elif session.get(Image, group.image) is None:
            raise NotFoundError(
                f"nodes[{i}].image: no image {group.image!r} "
                "(see `corral image list`; bake or import it first)",
                field=f"nodes[{i}].image",
                image=group.image,
            )


def check_pool_limit(session: Session, pool: Pool, adding: int) -> None:
    """Raises CapacityError when `adding` nodes would take the pool past its limit."""
    limit = pool.config.max_nodes
    if limit is None:
        return
    live = session.scalar(
        select(func.count(Node.id))
        .join(Cluster)
        .where(Cluster.pool_name == pool.name, Node.state != NodeState.TERMINATED)
    )
    if live + adding > limit:
        raise CapacityError(
            f"pool {pool.name} runs {live} of its {limit} nodes; {adding} more do not fit",
            pool=pool.name,
        )
