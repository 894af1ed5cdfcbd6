"""Placing a cluster's nodes on hosts: all of them or none.

Each placement rule is a small predicate that says why it rejects a host. Nodes of one
group share a shape, so hosts are filtered once per group and nodes then go, one by one,
to the host with the most free cores (a heap), spreading a cluster across hosts.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable
from dataclasses import dataclass

from corral.errors import CapacityError
from corral.units import describe_size_mib, format_size_mib

log = logging.getLogger(__name__)


@dataclass
class HostCapacity:
    """A host as the scheduler sees it: what it has and what is still free."""

    name: str
    pool: str
    enabled: bool
    cores: int
    memory_mib: int
    free_cores: int
    free_memory_mib: int


@dataclass(frozen=True)
class NodeRequest:
    """One node to place."""

    node: str
    group: str
    pool: str
    cores: int
    memory_mib: int


# A filter returns None when the host passes, or the reason it does not.
HostFilter = Callable[[HostCapacity, NodeRequest], str | None]


def in_pool(host: HostCapacity, req: NodeRequest) -> str | None:
    return None if host.pool == req.pool else f"in pool {host.pool}, not {req.pool}"


def is_enabled(host: HostCapacity, req: NodeRequest) -> str | None:
    return None if host.enabled else "disabled"


def has_cores(host: HostCapacity, req: NodeRequest) -> str | None:
    if host.free_cores >= req.cores:
        return None
    return f"{host.free_cores} free cores < {req.cores}"


def has_memory(host: HostCapacity, req: NodeRequest) -> str | None:
    if host.free_memory_mib >= req.memory_mib:
        return None
    return f"{format_size_mib(host.free_memory_mib)} free < {format_size_mib(req.memory_mib)}"


FILTERS: tuple[HostFilter, ...] = (in_pool, is_enabled, has_cores, has_memory)


def _passes(host: HostCapacity, req: NodeRequest) -> bool:
    for rule in FILTERS:
        reason = rule(host, req)
        if reason is not None:
            log.debug("host %s rejected for %s: %s", host.name, req.node, reason)
            return False
    return True


def place(requests: list[NodeRequest], hosts: list[HostCapacity]) -> dict[str, str]:
    """Map every node to a host, or raise CapacityError saying what was needed and what is free.

    `hosts` is not modified.
    """
    free = {h.name: HostCapacity(**h.__dict__) for h in hosts}
    placement: dict[str, str] = {}
    unplaced: list[NodeRequest] = []
    by_shape: dict[tuple[str, int, int], list[NodeRequest]] = {}
    for req in requests:
        by_shape.setdefault((req.pool, req.cores, req.memory_mib), []).append(req)
    # biggest shapes first, so small nodes do not fragment the hosts big ones need; a shape
    # is as big as the larger of its shares of the biggest host's cores and memory
    most_cores = max((h.cores for h in hosts), default=1) or 1
    most_memory = max((h.memory_mib for h in hosts), default=1) or 1

    def size(shape: tuple[str, int, int]) -> float:
        return max(shape[1] / most_cores, shape[2] / most_memory)

    for _shape, reqs in sorted(by_shape.items(), key=lambda kv: -size(kv[0])):
        candidates = [h for h in free.values() if _passes(h, reqs[0])]
        heap = [(-h.free_cores, -h.free_memory_mib, h.name) for h in candidates]
        heapq.heapify(heap)
        for req in reqs:
            while heap:
                _, _, name = heapq.heappop(heap)
                host = free[name]
                if has_cores(host, req) is None and has_memory(host, req) is None:
                    host.free_cores -= req.cores
                    host.free_memory_mib -= req.memory_mib
                    placement[req.node] = name
                    heapq.heappush(heap, (-host.free_cores, -host.free_memory_mib, name))
                    break
            else:
                unplaced.append(req)
    if unplaced:
        raise _capacity_error(requests, hosts, unplaced)
    log.debug("placed %d node(s) on %d host(s)", len(placement), len(set(placement.values())))
    return placement


def _capacity_error(
    requests: list[NodeRequest], hosts: list[HostCapacity], unplaced: list[NodeRequest]
) -> CapacityError:
    pool = requests[0].pool
    usable = [h for h in hosts if h.pool == pool and h.enabled]
    need_cores = sum(r.cores for r in requests)
    need_mem = sum(r.memory_mib for r in requests)
    free_cores = sum(h.free_cores for h in usable)
    free_mem = sum(h.free_memory_mib for h in usable)
    names = ", ".join(r.node for r in unplaced[:5]) + (" ..." if len(unplaced) > 5 else "")
    if usable:
        largest = max(usable, key=lambda h: (h.free_cores, h.free_memory_mib))
        largest_text = (
            f"; largest free host {largest.name}: {largest.free_cores} cores, "
            f"{describe_size_mib(max(largest.free_memory_mib, 0))}"
        )
    else:
        largest_text = ""
    return CapacityError(
        f"no room for {len(unplaced)} of {len(requests)} node(s) ({names}) in pool {pool}: "
        f"needed {need_cores} cores and {describe_size_mib(need_mem)}, available "
        f"{free_cores} cores and {describe_size_mib(max(free_mem, 0))} on {len(usable)} "
        f"host(s){largest_text}",
        pool=pool,
        needed={"nodes": len(requests), "cores": need_cores, "memory_mib": need_mem},
        available={"hosts": len(usable), "cores": free_cores, "memory_mib": free_mem},
        unplaced=[r.node for r in unplaced],
    )
