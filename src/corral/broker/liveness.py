"""When the broker last heard each node's agent, kept in memory for the engine's heartbeat.

An agent that is ready keeps long-polling its context, so a live agent is heard at least
once per hold; the broker holds a poll at most a third of the heartbeat (`longest_hold`),
so it is heard several times per heartbeat whatever wait it asked for. The engine counts
an agent silent for longer than the heartbeat as lost (decisions.silent_agent).

A node is heard when a request it authenticated reaches the broker: its registration, the
start of each context poll, each report. The end of a held poll is not counted: the
broker speaks then, and a frozen agent's connection stays open to receive it.

Hearing a node costs one dict write and no store write. Nothing is heard before the
service started, so every node counts as heard at the service's start: a restart grants
each node one heartbeat to be heard again, and never loses a node by itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class Heard:
    """The last word of a node's agent: when, and whether it said it was running a role
    script (it is silent until the script ends, which may take up to its timeout)."""

    at: datetime
    running_script: bool = False


class Liveness:
    """When each node was last heard, by cluster; thread-safe through the GIL's atomic
    dict operations (the broker writes on its event loop, the engine reads on its thread)."""

    def __init__(self, heartbeat: timedelta, clock: Callable[[], datetime]) -> None:
        self.heartbeat = heartbeat
        self.clock = clock
        self.started = Heard(clock())  # the grace after a (re)start
        self._heard: dict[str, dict[str, Heard]] = {}  # cluster -> node -> last word

    @property
    def longest_hold(self) -> float:
        """The longest the broker holds a context poll, in seconds."""
        return self.heartbeat.total_seconds() / 3

    def heard(self, cluster_id: str, node_id: str, running_script: bool = False) -> None:
        """The node's agent was heard now."""
        heard = Heard(self.clock(), running_script)
        nodes = self._heard.get(cluster_id)
        if nodes is None:
            nodes = self._heard.setdefault(cluster_id, {})
        nodes[node_id] = heard

    def last_heard(self, cluster_id: str, node_id: str) -> Heard:
        """The node's last word, or the service's start if it has said nothing since."""
        return self._heard.get(cluster_id, {}).get(node_id, self.started)

    def forget_cluster(self, cluster_id: str) -> None:
        self._heard.pop(cluster_id, None)
