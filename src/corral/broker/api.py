"""The broker's HTTPS API under /broker/v1: register, context (long-poll), report.

Nodes authenticate with their bootstrap token once, then with their credential. A node
reads only its own view and reports only for itself. Registrations and reports are
written through the service's group commit (store/group_commit.py): under its decision
lock, as API writes are, so they never race the engine, and a burst in one transaction.

Three endpoints called by every node of every cluster: a bare ASGI app dispatches them
by method and path, they read requests and write replies through broker/http.py, and
they validate their bodies with the pydantic schemas themselves, since a framework's
routing, middleware and response re-validation cost more per request than the broker's
own work.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from corral import agent
from corral.agent import AGENT_PATH
from corral.broker.credentials import (
    issue_credential,
    refuse_ended,
    secret_digest,
    spend_bootstrap_token,
)
from corral.broker.http import Call, Reply, json_reply
from corral.broker.issuance import issue_node_secret
from corral.broker.known_nodes import KnownNode, KnownNodes
from corral.broker.liveness import Liveness
from corral.broker.notifier import ContextNotifier
from corral.broker.peers import Peer, peer_of
from corral.broker.schemas import RegisterBody, ReportBody, ScaleBody
from corral.broker.snapshots import Snapshots
from corral.broker.views import view_json
from corral.errors import BadRequestError, ConflictError, CorralError, NotFoundError
from corral.http_status import status_for
from corral.lifecycle import IN_PROGRESS, NodeState
from corral.limits import MAX_BROKER_BODY_BYTES
from corral.store.group_commit import GroupCommit
from corral.store.models import (
    BootstrapToken,
    Cluster,
    ClusterSecret,
    Node,
    NodeSecret,
    Report,
    utcnow,
)
from corral.transitions import move_node, record_node_event

log = logging.getLogger(__name__)

PREFIX = "/broker/v1"
MAX_WAIT_SECONDS = 60.0
Body = TypeVar("Body", bound=BaseModel)


@dataclass(frozen=True)
class BrokerParts:
    """What the broker's endpoints use of the process they run in, and nothing more."""

    writes: GroupCommit  # registrations and reports, under the service's decision lock
    snapshots: Snapshots
    known_nodes: KnownNodes
    notifier: ContextNotifier
    node_settled: Callable[[], None]  # a node reported ready or failed: decide on it now
    liveness: Liveness  # when each node was last heard, for the engine's heartbeat
    # (cluster id, asking node's id, action, names) -> the names acted on; raises
    # CorralError when refused (the service's autoscaling, which the broker only carries)
    scale: Callable[[str, str, str, list[str]], list[str]]


Endpoint = Callable[[Call, BrokerParts], Awaitable[Reply]]


class BrokerApp:
    """The broker's ASGI app: each route's endpoint, and errors as JSON naming the cause."""

    def __init__(self, parts: BrokerParts) -> None:
        self.parts = parts
        self.routes: dict[str, tuple[str, Endpoint]] = {
            PREFIX + "/register": ("POST", register),
            PREFIX + "/context": ("GET", context),
            PREFIX + "/report": ("POST", report),
            PREFIX + "/scale": ("POST", scale),
            PREFIX + AGENT_PATH: ("GET", agent_program),
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        method, endpoint = self.routes.get(scope["path"], (None, None))
        try:
            if endpoint is None:
                raise NotFoundError(f"the broker has no {scope['path']}")
            if scope["method"] != method:
                message = f"{scope['path']} takes {method}, not {scope['method']}"
                reply = json_reply(
                    {"error": "method-not-allowed", "message": message, "details": {}},
                    status=405,
                    allow=method,
                )
            else:
                reply = await endpoint(Call(scope, receive), self.parts)
        except CorralError as exc:
            reply = json_reply(exc.to_dict(), status=status_for(exc))
        await reply.send(send)


async def _body(request: Call, schema: type[Body]) -> Body:
    """The request's JSON body as `schema`; raises BadRequestError naming the field."""
    try:
        return schema.model_validate_json(await request.body(MAX_BROKER_BODY_BYTES))
    except ValidationError as exc:
        problems = [
            {"field": ".".join(str(part) for part in e["loc"]) or "body", "message": e["msg"]}
            for e in exc.errors(include_url=False, include_input=False)
        ]
        first = problems[0]
        raise BadRequestError(f"{first['field']}: {first['message']}", problems=problems) from None


def _number(request: Call, name: str, kind: type[int] | type[float]) -> int | float:
    """A query parameter at least zero (zero when absent); raises BadRequestError."""
    text = request.query(name) or "0"
    try:
        value = kind(text)
    except ValueError:
        value = -1
    if not value >= 0:
        raise BadRequestError(f"{name}: expected a number at least 0, got {text!r}")
    return value


async def _known_node(request: Call, broker: BrokerParts) -> KnownNode:
    """The node whose credential the request bears; raises AuthError for none or unknown."""
    authorization = request.header(b"authorization")
    scheme, _, credential = authorization.partition(" ")
    credential = credential.strip() if scheme.lower() == "bearer" else None
    return broker.known_nodes.cached(credential) or await run_in_threadpool(
        broker.known_nodes.find, credential
    )


async def register(request: Call, broker: BrokerParts) -> Reply:
    body = await _body(request, RegisterBody)
    # the cluster too: moving the node bumps its context version
    reads = [
        (BootstrapToken, secret_digest(body.token)),
        (ClusterSecret, body.cluster),
        (Cluster, body.cluster),
    ]
    registered = await broker.writes.write(partial(_register, body), reads)
    credential, known = registered.credential, registered.known
    broker.known_nodes.remember(credential, known)
    broker.liveness.heard(known.cluster_id, known.me.id)
    if registered.replaced:
        broker.known_nodes.retire(known.cluster_id, registered.replaced)
    again = " again (its first reply was lost)" if registered.replaced else ""
    log.info("broker: %s/%s registered%s", body.cluster, body.node, again)
    # nothing is settled: none of the engine's decisions turns on a node registering
    # the first view comes with the credential, saving every node a request
    snapshot = broker.snapshots.latest(body.cluster) or await run_in_threadpool(
        broker.snapshots.get, body.cluster
    )
    version = snapshot.group_versions[known.me.group]
    view = view_json(snapshot, known.me, known.secret)
    reply = f'{{"credential":{json.dumps(credential)},"version":{version},"view":{view}}}'
    return Reply(reply.encode())  # a RegisterReply


@dataclass(frozen=True)
class _Registered:
    credential: str  # sensitive: shown to the node once
    known: KnownNode
    replaced: str | None  # digest of the credential a retried registration replaced


def _register(body: RegisterBody, session: Session) -> _Registered:
    now = utcnow()
    spent = spend_bootstrap_token(session, body.token, body.cluster, body.node, body.identity, now)
    node = spent.node
    if spent.again:  # the node keeps its state and what was issued to it
        replaced = node.credential_hash
        credential = issue_credential(node)
        record_node_event(
            session, node, "registered-again", "its agent registered again: the reply was lost"
        )
        known = KnownNode(node.cluster_id, peer_of(node), session.get(NodeSecret, node.id))
        return _Registered(credential, known, replaced)
    state = node.state
    if state is NodeState.PENDING:  # the agent can be quicker than the boot job's record
        move_node(session, node, NodeState.BOOTING, "its agent called before the boot was recorded")
    elif state is not NodeState.BOOTING:
        raise ConflictError(f"node {node.name} is {node.state}; it cannot register now")
    node.hostname = body.identity.hostname
    node.ssh_host_keys = json.dumps(body.identity.ssh_host_keys)
    node.registered_at = now
    secret = session.get(ClusterSecret, node.cluster_id)
    try:
        node_secret = issue_node_secret(secret, node, node.cluster.lease_end)
    except ValueError as exc:
        raise ConflictError(f"node {node.name}: {exc}") from exc
    session.add(node_secret)  # new: a token registers its node once
    credential = issue_credential(node)
    move_node(session, node, NodeState.REGISTERED, f"agent registered (hostname {node.hostname!r})")
    return _Registered(credential, KnownNode(node.cluster_id, peer_of(node), node_secret), None)


async def context(request: Call, broker: BrokerParts) -> Reply:
    since = _number(request, "since", int)
    wait = min(_number(request, "wait", float), MAX_WAIT_SECONDS, broker.liveness.longest_hold)
    deadline = time.monotonic() + wait
    known = await _known_node(request, broker)
    me = known.me
    broker.liveness.heard(known.cluster_id, me.id)
    while True:
        waiters = broker.notifier.waiter(known.cluster_id, me.group)  # before reading
        snapshot = broker.snapshots.latest(known.cluster_id) or await run_in_threadpool(
            broker.snapshots.get, known.cluster_id
        )
        # also after a long hold; no state yet when it registered after the snapshot
        refuse_ended(me.name, snapshot.state_of(me.id))
        remaining = deadline - time.monotonic()
        closing = broker.notifier.closing
        if snapshot.group_versions[me.group] > since or remaining <= 0 or closing:
            view = view_json(snapshot, me, known.secret)
            return Reply(view.encode())  # a ContextView
        await broker.notifier.wait(waiters, remaining)


async def report(request: Call, broker: BrokerParts) -> Reply:
    body = await _body(request, ReportBody)
    known = await _known_node(request, broker)
    # until the script it starts ends, the agent is silent
    broker.liveness.heard(known.cluster_id, known.me.id, running_script=body.state == "running")
    reads = [(Node, known.me.id), (Cluster, known.cluster_id)]
    state = await broker.writes.write(partial(_record, body, known.me), reads)
    # what the engine decides on
    if state in (NodeState.READY, NodeState.FAILED, NodeState.LOST, NodeState.TERMINATING):
        broker.node_settled()
    return _ALREADY_RECORDED if state is None else _RECORDED


def _apply_drain(session, node: Node, body: ReportBody) -> None:
    """A draining node's whole drain (a `drain` report with no role) removes it, or,
    failed, leaves it ready and drained in its scheduler, saying why."""
    if body.phase != "drain" or body.role:
        return
    if body.state == "ok":
        move_node(session, node, NodeState.TERMINATING, "drained: its work has ended")
        return
    last = body.log_tail.strip().splitlines()[-1:] or ["its drain hooks failed"]
    move_node(session, node, NodeState.READY, f"removal failed: {last[0][:300]}; it stays")


async def agent_program(request: Call, broker: BrokerParts) -> Reply:
    """The one-file agent, for a node of a stock image to install (backends/cloud_init.py);
    public, as it holds no secret: the node checks the broker's certificate it comes over."""
    return _AGENT_PROGRAM


_AGENT_PROGRAM = Reply(Path(agent.__file__).read_bytes(), content_type=b"text/x-python")


async def scale(request: Call, broker: BrokerParts) -> Reply:
    """The cluster's scheduler, on its node, asks for nodes or gives them back."""
    body = await _body(request, ScaleBody)
    known = await _known_node(request, broker)
    broker.liveness.heard(known.cluster_id, known.me.id)
    done = await run_in_threadpool(
        broker.scale, known.cluster_id, known.me.id, body.action, body.nodes
    )
    if done:
        broker.node_settled()  # the engine boots or removes them now
    return json_reply({"action": body.action, "nodes": done})


_RECORDED = json_reply({"status": "recorded"})
_ALREADY_RECORDED = json_reply({"status": "already recorded"})


def _record(body: ReportBody, me: Peer, session: Session) -> NodeState | None:
    """Store the report and move its node; the node's state after it, or None if the same
    report was stored before (the unique key on reports says which)."""
    node = session.get(Node, me.id)
    refuse_ended(node.name, node.state)
    insert = _INSERT_REPORT[session.get_bind().dialect.name]
    row = {
        "at": utcnow(),
        "cluster_id": node.cluster_id,
        "node_id": node.id,
        "node": node.name,
        "phase": body.phase,
        "role": body.role,
        "state": body.state,
        "exit_code": body.exit_code,
        "log_tail": body.log_tail,
        "version": body.version,
    }
    if session.connection().execute(insert, row).first() is None:
        return None
    _apply(session, node, body)
    return node.state


# built once: a statement built per report costs more than running it; the unique key of
# reports makes a report sent again insert nothing and return no row
_INSERT_REPORT = {
    name: insert(Report.__table__).on_conflict_do_nothing().returning(Report.id)
    for name, insert in (("sqlite", sqlite.insert), ("postgresql", postgresql.insert))
}


def _apply(session, node: Node, body: ReportBody) -> None:
    """Move the node as its report says (see the protocol's `report`)."""
    state = node.state
    if body.phase == "interruption":
        if state in (*IN_PROGRESS, NodeState.READY, NodeState.DRAINING):
            notice = body.log_tail.strip()[:300] or "its cloud takes the machine back"
            move_node(session, node, NodeState.LOST, f"interrupted: {notice}")
        return
    if state is NodeState.DRAINING:
        _apply_drain(session, node, body)
        return
    if state not in (NodeState.REGISTERED, NodeState.CONFIGURING, NodeState.READY):
        return
    if body.phase == "drain":  # late, from a drain the service stopped waiting for
        return
    if body.state == "failed":
        what = f"{body.phase} of role {body.role}" if body.role else f"agent ({body.phase})"
        last = body.log_tail.strip().splitlines()[-1:] or [""]
        move_node(
            session,
            node,
            NodeState.FAILED,
            f"{what} exited {body.exit_code}" + (f": {last[0][:300]}" if last[0] else ""),
        )
    elif body.phase == "node" and body.state == "ready" and state is not NodeState.READY:
        move_node(session, node, NodeState.READY, "agent reports every role configured")
    elif body.state == "running" and state is NodeState.REGISTERED:
        move_node(session, node, NodeState.CONFIGURING, f"{body.phase} of role {body.role} started")
