"""The metadata service: a booting node fetches its bootstrap document by asking from its
own address, as with EC2's instance metadata or NoCloud's `seedfrom` URL.

It is an app of its own, served only on the cluster-facing metadata listener and never on
the API's, with no proxy headers believed: the address a request comes from is the real
peer of the connection. A document (with a new single-use token) is given only to the
address of a node that has not registered yet; once it has, the address gets nothing
more. A node is given at most MAX_BOOTSTRAP_TOKENS tokens in all, so asking again and
again mints no tokens without bound.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from corral.broker.bootstrap import BootstrapIssuer
from corral.errors import CorralError, NotFoundError, TooManyRequestsError
from corral.http_status import status_for
from corral.lifecycle import ClusterState, NodeState
from corral.store.database import Store
from corral.store.group_commit import GroupCommit
from corral.store.models import BootstrapToken, Cluster, Node

BOOTSTRAPPABLE = (NodeState.PENDING, NodeState.BOOTING)
# the boot job's token, and a few more for a node whose first fetch went astray
MAX_BOOTSTRAP_TOKENS = 4


def create_metadata_app(
    bootstrap: BootstrapIssuer,
    runs_agents: Callable[[str], bool],
    store: Store,
    writes: GroupCommit,
    clock: Callable[[], datetime],
) -> FastAPI:
    """The metadata app. A node of a pool whose backend runs no context agents
    (`runs_agents(pool)` is false) gets 404; documents are issued through `writes`, at
    `clock()`."""
    app = FastAPI(title="corral metadata", openapi_url=None, docs_url=None, redoc_url=None)

    @app.exception_handler(CorralError)
    def corral_error(_request: Request, exc: CorralError) -> JSONResponse:
        return JSONResponse(exc.to_dict(), status_code=status_for(exc))

    @app.get("/metadata/v1/user-data")
    def user_data(request: Request) -> Response:
        """The asking node's bootstrap document (JSON), with a new token."""

        def issue(session: Session) -> bytes:
            node = _asking_node(session, request)
            if not runs_agents(node.cluster.pool_name):
                raise NotFoundError(f"pool {node.cluster.pool_name} runs no context agents")
            issued = session.scalar(select(func.count()).where(BootstrapToken.node_id == node.id))
            if issued >= MAX_BOOTSTRAP_TOKENS:
                raise TooManyRequestsError(
                    f"node {node.name} was given {issued} bootstrap documents already; "
                    "it gets no more",
                    node=node.name,
                )
            return bootstrap.user_data(session, node, clock())

        return Response(writes.write_from_thread(issue), media_type="application/json")

    @app.get("/metadata/v1/meta-data")
    def meta_data(request: Request) -> PlainTextResponse:
        """NoCloud meta-data: the node's instance id and host name."""
        with store.session() as session:
            node = _asking_node(session, request)
            return PlainTextResponse(f"instance-id: {node.id}\nlocal-hostname: {node.name}\n")

    return app


def _asking_node(session: Session, request: Request) -> Node:
    """The booting node whose address the request comes from; raises NotFoundError."""
    address = request.client.host if request.client else ""
    node = session.scalars(
        select(Node)
        .join(Cluster)
        .where(
            Node.address == address,
            Node.state.in_(BOOTSTRAPPABLE),
            Cluster.state == ClusterState.LAUNCHING,
        )
    ).first()
    if node is None:
        raise NotFoundError(f"no booting node has the address {address!r}", address=address)
    return node
