"""Bootstrap tokens and node credentials: made here, shown once, stored as hashes.

A bootstrap token lets one node register once, within its lifetime (at most ten
minutes). Registering spends it and gives the node a credential that acts for that node
alone for as long as its cluster lives.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from corral.errors import AuthError
from corral.lifecycle import NodeState
from corral.store.models import BootstrapToken, Workspace

MAX_TOKEN_LIFETIME = timedelta(minutes=10)


def secret_digest(secret: str) -> str:
    """What the store keeps of a token or credential (and what memory is keyed by)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def issue_bootstrap_token(
    session: Session, workspace_id: str, now: datetime, lifetime: timedelta
) -> str:
    """A new single-use token for one workspace; its lifetime is capped at ten minutes."""
    token = "bt_" + secrets.token_urlsafe(32)
    session.add(
        BootstrapToken(
            token_hash=secret_digest(token),
            workspace_id=workspace_id,
            expires_at=now + min(lifetime, MAX_TOKEN_LIFETIME),
        )
    )
    return token


def spend_bootstrap_token(
    session: Session, token: str, cluster_id: str, node: str, now: datetime
) -> Workspace:
    """Spend a token for `node` of `cluster_id`; return that workspace.

    Raises AuthError, saying which, for an unknown, spent, expired or misdirected token.
    """
    record = session.get(BootstrapToken, secret_digest(token)) if token else None
    if record is None:
        raise AuthError("unknown bootstrap token")
    ws = record.workspace
    if ws is None or ws.cluster_id != cluster_id or ws.name != node:
        raise AuthError("this bootstrap token belongs to another node")
    if record.used_at is not None:
        raise AuthError(f"the bootstrap token of {node} was already used")
    if now >= record.expires_at:
        raise AuthError(f"the bootstrap token of {node} expired at {record.expires_at:%H:%M:%S}")
    if not NodeState(ws.state).is_live or ws.state == NodeState.TERMINATING.value:
        raise AuthError(f"node {node} is {ws.state}")
    record.used_at = now
    return ws


def issue_credential(ws: Workspace) -> str:
    credential = "nc_" + secrets.token_urlsafe(32)
    ws.credential_hash = secret_digest(credential)
    return credential


def node_for_credential(session: Session, credential: str | None) -> Workspace:
    """The workspace a credential acts for; raises AuthError if none or if it has ended."""
    if not credential:
        raise AuthError("no node credential given")
    digest = secret_digest(credential)
    ws = session.scalars(select(Workspace).where(Workspace.credential_hash == digest)).first()
    if ws is None or not hmac.compare_digest(ws.credential_hash or "", digest):
        raise AuthError("unknown node credential")
    refuse_ended(ws.name, ws.state)
    return ws


_ENDED = (NodeState.LOST.value, NodeState.TERMINATING.value, NodeState.TERMINATED.value)


def refuse_ended(node: str, state: str | None) -> None:
    """Raises AuthError when a node in `state` may no longer act with its credential: once
    it is lost or being removed, it is trusted no more (a lost machine that comes back
    is not the node the cluster knew)."""
    if state in _ENDED:
        raise AuthError(f"node {node} is {state}")
