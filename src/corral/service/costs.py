"""What clusters cost: each node's price, asked of its pool's backend when the node is
made, and what a cluster has cost so far and costs per hour now.

Prices are per node-hour, from the pool's price table (Backend.hourly_price); a pool
without prices gives none, and its clusters show no cost. A node costs from its creation
until it is terminated (its state_since then), or until now: the figures are estimates
from the price table, not a cloud's bill.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from corral.backends.base import Backend, ImageRef, NodeSpec
from corral.document import NodeGroup
from corral.lifecycle import NodeState

SECONDS_PER_HOUR = 3600.0
DECIMALS = 4  # a hundredth of a cent: small nodes cost fractions of a cent per hour


def hourly_price(backend: Backend, group: NodeGroup) -> float | None:
    """What an hour of one node of `group` costs in the pool `backend` drives, by the
    group's size and market; None where the pool has no prices."""
    spec = NodeSpec(
        node_id="",
        cluster_id="",
        name=f"{group.group}-0",
        image=ImageRef(group.image),
        cores=group.cores,
        memory_mib=group.memory_mib,
        market=group.market,
        max_price=group.max_price,
    )
    return backend.hourly_price(spec)


@dataclass(frozen=True)
class Estimate:
    """What a cluster's nodes cost per hour, and over its whole lease."""

    per_hour: float
    lease: float


def estimate(prices: Iterable[float | None], lease: timedelta) -> Estimate | None:
    """The estimate for nodes of these hourly prices held for `lease`; None when no node
    has a price."""
    known = [p for p in prices if p is not None]
    if not known:
        return None
    per_hour = sum(known)
    hours = lease.total_seconds() / SECONDS_PER_HOUR
    return Estimate(round(per_hour, DECIMALS), round(per_hour * hours, DECIMALS))


@dataclass
class Tally:
    """What one cluster's nodes have cost so far and cost per hour now; both None until
    a node with a price is added."""

    cost_so_far: float | None = None
    hourly_cost: float | None = None

    def add(
        self,
        price: float | None,
        created_at: datetime,
        state: NodeState,
        state_since: datetime,
        now: datetime,
    ) -> None:
        """Count one node: `price` per hour from `created_at` until it was terminated
        (`state_since`) or `now`."""
        if price is None:
            return
        ended = state == NodeState.TERMINATED
        end = state_since if ended else now
        hours = max(0.0, (end - created_at).total_seconds() / SECONDS_PER_HOUR)
        self.cost_so_far = (self.cost_so_far or 0.0) + price * hours
        self.hourly_cost = (self.hourly_cost or 0.0) + (0.0 if ended else price)

    def rounded(self) -> Tally:
        def keep(value: float | None) -> float | None:
            return None if value is None else round(value, DECIMALS)

        return Tally(keep(self.cost_so_far), keep(self.hourly_cost))
