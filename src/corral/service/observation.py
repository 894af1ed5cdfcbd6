"""What each pool's backend runs, listed no more often than the backend allows.

Listing machines is free on this machine and a rate-limited API call on a cloud, so each
backend says how often it may be asked (Backend.observe_every). Between two listings the
engine works from the last one, which can only say what was running then: a machine
missing from it may have booted since, so only a fresh listing says a machine is gone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from corral.backends.base import Machine
from corral.service.pools import Pools


@dataclass(frozen=True)
class Observation:
    """One pool's machines by node id, as last listed."""

    machines: dict[str, Machine]
    fresh: bool  # listed in this tick, after the busy nodes were taken: missing is gone


class Observer:
    """Lists each pool's machines at that pool's pace."""

    def __init__(self, pools: Pools, clock: Callable[[], float] = time.monotonic) -> None:
        self.pools = pools
        self.clock = clock
        self._last: dict[str, tuple[float, dict[str, Machine]]] = {}  # start of the listing

    def observe(self) -> dict[str, Observation]:
        """Every pool's observation, listing those whose pace allows it now."""
        now = self.clock()
        observed = {}
        for pool in self.pools:
            last = self._last.get(pool.name)
            if last is not None and now - last[0] < pool.backend.observe_every:
                observed[pool.name] = Observation(last[1], fresh=False)
                continue
            machines = {m.node_id: m for m in pool.backend.list_machines()}
            self._last[pool.name] = (now, machines)
            observed[pool.name] = Observation(machines, fresh=True)
        return observed
