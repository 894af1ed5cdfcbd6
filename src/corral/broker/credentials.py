"""Bootstrap tokens and node credentials: made here, shown once, stored as hashes.

A bootstrap token lets one node register once, within its lifetime (at most ten
minutes). Registering spends it and gives the node a credential that acts for that node
alone for as long as its cluster lives.

A registration retried after a lost reply (the service died, or the connection broke,
after it committed and before the node read the answer) gets back in, and nothing else
does: a spent token is taken again only before it expires, for the node it was issued
to, while that node is still `registered` (where the lost registration left it) and from
the identity it registered with (hostname and SSH host keys). The node then gets a new
credential, which replaces the one it never received.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from corral.broker.schemas import Identity
from corral.errors import AuthError
from corral.lifecycle import NodeState
from corral.store.models import BootstrapToken, Node

MAX_TOKEN_LIFETIME = timedelta(minutes=10)


def secret_digest(secret: str) -> str:
    """What the store keeps of a token or credential (and what memory is keyed by)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def issue_bootstrap_token(
    session: Session, node_id: str, now: datetime, lifetime: timedelta, token: str | None = None
) -> str:
    """A new single-use token for one node (`token`, derived by its caller, or a random
    one); its lifetime is capped at ten minutes."""
    token = token or "bt_" + secrets.token_urlsafe(32)
    session.add(
        BootstrapToken(
            token_hash=secret_digest(token),
            node_id=node_id,
            expires_at=now + min(lifetime, MAX_TOKEN_LIFETIME),
        )
    )
    return token


@dataclass(frozen=True)
class Spent:
    """A token spent by a registration: its node, and whether it had been spent before."""

    node: Node
    again: bool  # a registration retried after its reply was lost


def spend_bootstrap_token(
    session: Session, token: str, cluster_id: str, node: str, identity: Identity, now: datetime
) -> Spent:
    """Spend a token for `node` of `cluster_id`, or take it again for a retried registration.

    Raises AuthError, saying which, for an unknown, expired or misdirected token, a node
    that has ended, and a spent token whose registration is not being retried (see the
    module's docstring for the rule).
    """
    record = session.get(BootstrapToken, secret_digest(token)) if token else None
    if record is None:
        raise AuthError("unknown bootstrap token")
    ws = record.node
    if ws is None or ws.cluster_id != cluster_id or ws.name != node:
        raise AuthError("this bootstrap token belongs to another node")
    if now >= record.expires_at:
        used = " was already used and" if record.used_at is not None else ""
        raise AuthError(
            f"the bootstrap token of {node}{used} expired at {record.expires_at:%H:%M:%S}"
        )
    if not ws.state.is_live or ws.state == NodeState.TERMINATING:
        raise AuthError(f"node {node} is {ws.state}")
    if record.used_at is None:
        record.used_at = now
        return Spent(ws, again=False)
    if ws.state != NodeState.REGISTERED:
        raise AuthError(
            f"the bootstrap token of {node} was already used, and {node} is {ws.state}: "
            "its registration was answered"
        )
    if not _same_identity(ws, identity):
        raise AuthError(
            f"the bootstrap token of {node} was already used, by a node with another "
            "hostname or other SSH host keys"
        )
    return Spent(ws, again=True)


def _same_identity(node: Node, identity: Identity) -> bool:
    """True when `identity` is the one `node` registered with (key comments aside)."""
    registered = json.loads(node.ssh_host_keys or "[]")
    return node.hostname == identity.hostname and _keys(registered) == _keys(identity.ssh_host_keys)


def _keys(lines: list[str]) -> set[tuple[str, ...]]:
    """Each OpenSSH public key line as its type and key, without its comment."""
    return {tuple(line.split()[:2]) for line in lines}


def issue_credential(node: Node) -> str:
    """A new credential for `node`; it replaces any the node had, which no longer works."""
    credential = "nc_" + secrets.token_urlsafe(32)
    node.credential_hash = secret_digest(credential)
    return credential


def node_for_credential(session: Session, credential: str | None) -> Node:
    """The node a credential acts for; raises AuthError if none or if it has ended."""
    if not credential:
        raise AuthError("no node credential given")
    digest = secret_digest(credential)
    node = session.scalars(select(Node).where(Node.credential_hash == digest)).first()
    if node is None or not hmac.compare_digest(node.credential_hash or "", digest):
        raise AuthError("unknown node credential")
    refuse_ended(node.name, node.state)
    return node


_ENDED = (NodeState.LOST, NodeState.TERMINATING, NodeState.TERMINATED)


def refuse_ended(node: str, state: str | None) -> None:
    """Raises AuthError when a node in `state` may no longer act with its credential: once
    it is lost or being removed, it is trusted no more (a lost machine that comes back
    is not the node the cluster knew)."""
    if state in _ENDED:
        raise AuthError(f"node {node} is {state}")
