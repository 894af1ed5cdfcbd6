"""When a node's requirements are met, as a table: the providers' states in, what each
group is blocked on out; a running cluster does not wait for providers on their way."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from corral.broker.requirements import blocked_by_group, live_providers
from corral.document import parse_yaml
from corral.lifecycle import NodeState as S

DOC = parse_yaml(
    """
image: x
nodes:
  - {group: head, provides: [ctl], requires: [w]}
  - {group: worker, count: 2, provides: [w], requires: [{role: ctl, wait: ready}]}
"""
)


@dataclass
class Node:
    group: str
    state: S


def blocked(states: list[S], running: bool) -> dict[str, list[str]]:
    nodes = [Node("head", S.READY), *(Node("worker", s) for s in states)]
    return blocked_by_group(DOC, live_providers(nodes, DOC, running))


@pytest.mark.parametrize(
    ("workers", "running", "head_blocked_on"),
    [
        # a launch waits for every provider to register
        ([S.READY, S.BOOTING], False, ["w"]),
        ([S.READY, S.REGISTERED], False, []),
        # a running cluster's new provider (a resize's, a successor) blocks no one until it
        # has registered, and is then taken in (its consumers run `join`)
        ([S.READY, S.PENDING], True, []),
        ([S.READY, S.BOOTING], True, []),
        ([S.READY, S.REGISTERED], True, []),
        # but with no provider that has registered, the requirement is not met
        ([S.BOOTING], True, ["w"]),
        ([S.LOST, S.TERMINATING], True, ["w"]),
        ([], False, ["w"]),
    ],
)
def test_a_requirement_is_met_by_providers_that_registered(workers, running, head_blocked_on):
    assert blocked(workers, running)["head"] == head_blocked_on
    assert blocked(workers, running)["worker"] == []  # the head is ready
