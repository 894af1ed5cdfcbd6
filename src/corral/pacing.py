"""Spacing a repeated piece of work by what it cost, so it takes a bounded share of a core.

The engine's tick reads every live node, and the broker's re-read of a cluster every node
of it; both run again on every change, and changes come in bursts. Starting the next run
no sooner than `factor` times the last run's length after it ended keeps such work to
1/(factor+1) of a core however large the store, while a change after a quiet spell waits
only `least`.
"""

from __future__ import annotations

from dataclasses import dataclass

# a fifth of a core for the engine's ticks and the broker's re-reads of one cluster
SPACING_FACTOR = 4.0


@dataclass(frozen=True)
class Spacing:
    """When the next run may start, after one that ended at `ended` and took `took`."""

    factor: float = SPACING_FACTOR
    least: float = 0.0  # the shortest gap, however cheap the run

    def next_start(self, ended: float, took: float) -> float:
        return ended + max(self.least, self.factor * took)
