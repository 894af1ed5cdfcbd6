"""The metadata service: a booting node fetches its bootstrap document by asking from its
own address, as with EC2's instance metadata or NoCloud's `seedfrom` URL.

A document (with a new single-use token) is given only to the address of a node that has
not registered yet; once it has, the address gets nothing more.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from corral.errors import NotFoundError
from corral.lifecycle import ClusterState, NodeState
from corral.store.models import Cluster, Workspace

router = APIRouter()

BOOTSTRAPPABLE = (NodeState.PENDING.value, NodeState.BOOTING.value)


def _service(request: Request) -> Any:
    return request.app.state.service


def _asking_node(session: Session, request: Request) -> Workspace:
    address = request.client.host if request.client else ""
    ws = session.scalars(
        select(Workspace)
        .join(Cluster)
        .where(
            Workspace.address == address,
            Workspace.state.in_(BOOTSTRAPPABLE),
            Cluster.state == ClusterState.LAUNCHING.value,
        )
    ).first()
    if ws is None:
        raise NotFoundError(f"no booting node has the address {address}", address=address)
    return ws


@router.get("/user-data")
def user_data(request: Request) -> Response:
    """The asking node's bootstrap document (JSON)."""
    service = _service(request)
    if service.engine.bootstrap is None:
        raise NotFoundError(f"backend {service.backend.name} runs no context agents")
    with service.store.session() as session:
        ws = _asking_node(session, request)
        document = service.engine.bootstrap.user_data(session, ws, service.engine.clock())
    return Response(document, media_type="application/json")


@router.get("/meta-data")
def meta_data(request: Request) -> PlainTextResponse:
    """NoCloud meta-data: the node's instance id and host name."""
    service = _service(request)
    with service.store.session() as session:
        ws = _asking_node(session, request)
        return PlainTextResponse(f"instance-id: {ws.id}\nlocal-hostname: {ws.name}\n")
