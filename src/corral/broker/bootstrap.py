"""Each node's bootstrap document: where the broker is, how to know it, and a token.

It carries no other secret: the token is single-use, for this node alone, and expires.

A backend that boots a group's nodes in one call (a cloud's RunInstances) gives them one
user-data, so they get one document for the group: a launch key and the group's node
indexes. The node at launch index i is the i-th of them, and its token is derived from
the key and its name (`agent.launch_token`), so the document stays small at any count.
Every node of the launch can derive every other's token; each is still single-use and
short-lived, and spent by the first registration, which a node taken by another shows
as a refused registration of the real one.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from corral.agent import launch_token
from corral.broker.credentials import issue_bootstrap_token
from corral.broker.pki import BrokerIdentity
from corral.store.models import Node

BOOTSTRAP_FORMAT = 1


@dataclass(frozen=True)
class BootstrapIssuer:
    """Makes bootstrap documents. `broker_url_for(node)` is the broker's URL as that node
    reaches it, which the service decides (the issuer knows no addresses); `identity()`
    is the broker's TLS identity now (its certificate may have been renewed), whose two
    pins the document carries."""

    broker_url_for: Callable[[Node], str]
    identity: Callable[[], BrokerIdentity]
    token_lifetime: timedelta

    def user_data(self, session: Session, node: Node, now: datetime) -> bytes:
        """A bootstrap document for `node`, with a new token recorded in `session`."""
        token = issue_bootstrap_token(session, node.id, now, self.token_lifetime)
        document = self._common(node) | {"node": node.name, "token": token}
        return json.dumps(document, sort_keys=True).encode()

    def group_user_data(self, session: Session, nodes: Sequence[Node], now: datetime) -> bytes:
        """One bootstrap document for `nodes` (of one group, in launch order), with each
        node's derived token recorded in `session`."""
        key = secrets.token_urlsafe(32)
        for node in nodes:
            token = launch_token(key, node.name)
            issue_bootstrap_token(session, node.id, now, self.token_lifetime, token)
        launch = {"key": key, "group": nodes[0].group, "indexes": index_ranges(nodes)}
        document = self._common(nodes[0]) | {"launch": launch}
        return json.dumps(document, sort_keys=True).encode()

    def _common(self, node: Node) -> dict[str, object]:
        pins = self.identity()
        return {
            "corral": BOOTSTRAP_FORMAT,
            "broker": self.broker_url_for(node),
            "fingerprint": pins.fingerprint,
            "key_fingerprint": pins.key_fingerprint,
            "cluster": node.cluster_id,
        }


def index_ranges(nodes: Sequence[Node]) -> list[list[int]]:
    """The nodes' indexes, in order, as runs [first, last] of consecutive ones."""
    ranges: list[list[int]] = []
    for node in nodes:
        if ranges and ranges[-1][1] + 1 == node.index:
            ranges[-1][1] = node.index
        else:
            ranges.append([node.index, node.index])
    return ranges
