"""Each node's bootstrap document: where the broker is, how to know it, and a token.

It carries no other secret: the token is single-use, for this node alone, and expires.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

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
        pins = self.identity()
        document = {
            "corral": BOOTSTRAP_FORMAT,
            "broker": self.broker_url_for(node),
            "fingerprint": pins.fingerprint,
            "key_fingerprint": pins.key_fingerprint,
            "cluster": node.cluster_id,
            "node": node.name,
            "token": token,
        }
        return json.dumps(document, sort_keys=True).encode()
