"""The REST API under /v1; its OpenAPI description is served at /openapi.json.

Handlers are thin: authenticate, call an operation, turn records into schemas. Writes
hold the service's decision lock so they never race the engine; reading what a client
sent (a cluster document above all) happens before, outside the lock. Every answer that
is not a success is an ErrorView, the framework's own errors included, and every status
an operation can answer is in its description.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from http import HTTPStatus
from threading import Lock
from typing import Annotated, Protocol

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Row, select
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException

from corral import __version__, limits, names
from corral.backends.base import Backend, Capability
from corral.broker.issuance import issue_user_credentials
from corral.broker.known_nodes import KnownNodes
from corral.broker.peers import peer_of
from corral.broker.requirements import RUNNING, blocked_by_group, live_providers
from corral.broker.trust import trust_of
from corral.document import parse_with_warnings
from corral.errors import BadRequestError, ConflictError, CorralError, NotFoundError
from corral.http_status import status_for
from corral.images import records as image_records
from corral.images.store import ImageStore
from corral.lifecycle import ClusterState, NodeState
from corral.service import costs, inventory, quotas
from corral.service.auth import authenticate, require_admin
from corral.service.body_limit import BodyLimit
from corral.service.clusters import Clusters, LaunchRequest
from corral.service.config import ServiceConfig
from corral.service.documents import DocumentCache
from corral.service.engine import Engine
from corral.service.http_errors import bad_request
from corral.service.pools import Pools
from corral.service.schemas import (
    ClusterDetail,
    ClusterSummary,
    ConsoleView,
    CostEstimateView,
    CredentialsView,
    DocumentWarningView,
    ErrorView,
    EventView,
    ExtendBody,
    HealthView,
    HostBody,
    HostView,
    ImageBody,
    ImageRemovedView,
    ImageView,
    LaunchBody,
    LaunchedCluster,
    NewUserView,
    NodeView,
    PlacementView,
    PoolView,
    RemoveNodesBody,
    ReportView,
    ResizeBody,
    SkippedPoolView,
    UserBody,
    UserView,
)
from corral.store.database import Store
from corral.store.models import (
    Cluster,
    ClusterSecret,
    Event,
    Node,
    Report,
    User,
    utcnow,
)


class Service(Protocol):
    """What the API's handlers use of the service process (process.Service), which
    builds this app and so cannot be imported here."""

    instance: str  # tells this process apart from another on the same port
    config: ServiceConfig
    store: Store
    backend: Backend
    pools: Pools
    decisions: Lock  # held by every write, as by the engine's decisions
    clusters: Clusters
    documents: DocumentCache
    known_nodes: KnownNodes
    engine: Engine


ERROR_RESPONSES = {code: {"model": ErrorView} for code in (401, 403, 404, 409, 413, 422)}


router = APIRouter()
bearer = HTTPBearer(auto_error=False, description="a user's API token (`corral user add`)")


def create_app(service: Service) -> FastAPI:
    app = FastAPI(
        title="corral",
        version=__version__,
        description="One-click virtual clusters with leases and secure contextualization.",
    )
    app.state.service = service

    @app.exception_handler(CorralError)
    def corral_error(_request: Request, exc: CorralError) -> JSONResponse:
        return JSONResponse(exc.to_dict(), status_code=status_for(exc))

    @app.exception_handler(RequestValidationError)
    def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return corral_error(request, bad_request(exc.errors()))

    @app.exception_handler(HTTPException)
    def framework_error(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 400:  # a body FastAPI could not decode as JSON
            return corral_error(request, BadRequestError("body: cannot be read as JSON"))
        code = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "-")
        body = {"error": code, "message": str(exc.detail), "details": {}}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    app.include_router(router, prefix="/v1", responses=ERROR_RESPONSES)
    app.add_middleware(BodyLimit, max_bytes=limits.MAX_API_BODY_BYTES)
    return app


def _service(request: Request) -> Service:
    return request.app.state.service


def _session(request: Request) -> Iterator[Session]:
    with _service(request).store.session() as session:
        yield session


def _current_user(
    db: Annotated[Session, Depends(_session)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> User:
    return authenticate(db, credentials.credentials.strip() if credentials else None)


def _admin(user: Annotated[User, Depends(_current_user)]) -> User:
    require_admin(user)
    return user


Svc = Annotated[Service, Depends(_service)]
DB = Annotated[Session, Depends(_session)]
Caller = Annotated[User, Depends(_current_user)]
Admin = Annotated[User, Depends(_admin)]
# names in paths follow the rule for their kind (names.py), as they do everywhere else
ClusterRef = names.CLUSTER.type  # a cluster's id (`c-1a2b3c4d`) or name
NodeName = names.NODE.type
AccountName = names.ACCOUNT.type
ImageName = names.IMAGE.type


@router.get("/health")
def health(
    service: Svc,
) -> HealthView:
    return HealthView(
        status="ok",
        version=__version__,
        instance=service.instance,
        backend=service.backend.name,
        capabilities=sorted(service.backend.capabilities),
        pools=[
            PoolView(
                name=pool.name,
                backend=pool.backend.name,
                capabilities=sorted(pool.capabilities),
                default=pool is service.pools.default,
            )
            for pool in service.pools
        ],
    )


@router.get("/whoami")
def whoami(service: Svc, db: DB, user: Caller) -> UserView:
    return _user_view(service, db, user)


@router.post("/clusters", status_code=201)
def launch(service: Svc, body: LaunchBody, db: DB, user: Caller) -> LaunchedCluster:
    # parsing is bounded (limits.py) but not free: never under the lock every write waits on
    parsed = parse_with_warnings(body.document, body.source)
    request = LaunchRequest(
        document=parsed.document,
        name=body.name,
        pool=body.pool,
        lease=timedelta(seconds=body.lease_seconds) if body.lease_seconds else None,
        keep_on_failure=body.keep_on_failure,
    )
    with service.decisions:
        launched = service.clusters.launch(db, user, request)
        db.commit()
    service.engine.poke()
    cluster, choice = launched.cluster, launched.choice
    warnings = [DocumentWarningView(**asdict(w)) for w in parsed.warnings]
    placement = PlacementView(
        pool=choice.pool.name,
        skipped=[SkippedPoolView(pool=s.pool, reason=s.reason) for s in choice.skipped],
    )
    estimate = costs.estimate(
        [n.hourly_price for n in cluster.nodes], cluster.lease_end - cluster.lease_start
    )
    return LaunchedCluster(
        **_detail(service, db, cluster).model_dump(),
        warnings=warnings,
        placement=placement,
        estimated_cost=CostEstimateView(**asdict(estimate)) if estimate else None,
    )


@router.get("/clusters")
def list_clusters(service: Svc, db: DB, user: Caller, all: bool = False) -> list[ClusterSummary]:
    clusters = service.clusters.list(db, user, everyone=all)
    tallies = _node_tallies(db, [c.id for c in clusters])
    return [_summary(c, tallies.get(c.id, _NodeTally())) for c in clusters]


@router.get("/clusters/{ref}")
def get_cluster(service: Svc, ref: ClusterRef, db: DB, user: Caller) -> ClusterDetail:
    return _detail(service, db, service.clusters.find(db, user, ref, load_nodes=True))


@router.get("/clusters/{ref}/events")
def cluster_events(
    service: Svc,
    ref: ClusterRef,
    db: DB,
    user: Caller,
    since: Annotated[int, Query(ge=0, le=limits.MAX_EVENT_ID)] = 0,
) -> list[EventView]:
    cluster = service.clusters.find(db, user, ref)
    events = db.scalars(
        select(Event).where(Event.cluster_id == cluster.id, Event.id > since).order_by(Event.id)
    )
    return [EventView.model_validate(e, from_attributes=True) for e in events]


@router.get("/clusters/{ref}/nodes/{node}/logs")
def node_logs(
    ref: ClusterRef, node: NodeName, service: Svc, db: DB, user: Caller
) -> list[ReportView]:
    """Every report the node's agent made, kept after the node is gone."""
    cluster = service.clusters.find(db, user, ref)
    if not db.scalars(
        select(Node.id).where(Node.cluster_id == cluster.id, Node.name == node)
    ).first():
        raise NotFoundError(f"cluster {cluster.id} has no node {node}", node=node)
    reports = db.scalars(
        select(Report)
        .where(Report.cluster_id == cluster.id, Report.node == node)
        .order_by(Report.id)
    )
    return [ReportView.model_validate(r, from_attributes=True) for r in reports]


@router.get("/clusters/{ref}/nodes/{node}/console")
def node_console(
    ref: ClusterRef,
    node: NodeName,
    service: Svc,
    db: DB,
    user: Caller,
    max_bytes: Annotated[
        int,
        Query(
            alias="bytes",
            ge=1,
            le=limits.MAX_CONSOLE_BYTES,
            description="how many of the console's last bytes to answer",
        ),
    ] = limits.DEFAULT_CONSOLE_BYTES,
) -> ConsoleView:
    """The end of what the node's console printed (its serial console, its container's
    output), kept after the node is gone until its cluster is destroyed, where its pool's
    backend keeps consoles."""
    cluster = service.clusters.find(db, user, ref)
    node_id = db.scalars(
        select(Node.id).where(Node.cluster_id == cluster.id, Node.name == node)
    ).first()
    if node_id is None:
        raise NotFoundError(f"cluster {cluster.id} has no node {node}", node=node)
    cluster_id, pool = cluster.id, service.pools.get(cluster.pool_name)
    db.close()  # the backend reads a file or asks a cloud: no connection held meanwhile
    backend = pool.backend
    if Capability.KEEPS_CONSOLES not in pool.capabilities:
        raise NotFoundError(
            f"backend {backend.name} keeps no console of its machines; see `corral logs`",
            backend=backend.name,
            node=node,
        )
    tail = backend.console(node_id, max_bytes + 1)  # one more tells whether there was more
    if tail is None:
        raise NotFoundError(
            f"no console of node {node} is kept (its machine never started, or its "
            "cluster was destroyed)",
            node=node,
        )
    truncated = len(tail) > max_bytes
    tail = tail[-max_bytes:]
    return ConsoleView(
        cluster=cluster_id,
        node=node,
        console=tail.decode(errors="replace"),
        truncated=truncated,
        bytes=len(tail),
    )


@router.post("/clusters/{ref}/credentials")
def credentials(ref: ClusterRef, service: Svc, db: DB, user: Caller) -> CredentialsView:
    """Issue the caller a certificate and SSH key for the cluster, with its trust anchors."""
    cluster = service.clusters.find(db, user, ref, load_nodes=True)
    if not cluster.state.is_live or cluster.state == ClusterState.TERMINATING:
        raise ConflictError(f"cluster {cluster.id} is {cluster.state}")
    peers = [peer_of(w) for w in cluster.nodes]
    secret = db.get(ClusterSecret, cluster.id)
    departed = trust_of(peers, cluster.lease_end, secret.generation).departed_host_keys
    issued = issue_user_credentials(secret, cluster, user.name, list(departed))
    return CredentialsView(cluster=cluster.id, **asdict(issued))


@router.post("/clusters/{ref}/extend")
def extend(service: Svc, ref: ClusterRef, body: ExtendBody, db: DB, user: Caller) -> ClusterDetail:
    with service.decisions:
        cluster = service.clusters.extend(db, user, ref, timedelta(seconds=body.seconds))
        db.commit()
    # its nodes' certificates were renewed: the broker reads them from the store again
    service.known_nodes.forget_cluster(cluster.id)
    return _detail(service, db, cluster)


@router.post("/clusters/{ref}/resize")
def resize(service: Svc, ref: ClusterRef, body: ResizeBody, db: DB, user: Caller) -> ClusterDetail:
    """Grow or shrink a group; removed nodes are drained first."""
    drain = _drain_timeout(body.drain_seconds)
    with service.decisions:
        cluster = service.clusters.resize(db, user, ref, body.group, body.count, body.by, drain)
        db.commit()
    service.documents.forget(cluster.id)  # its group's count changed
    service.engine.poke()
    return _detail(service, db, cluster)


@router.post("/clusters/{ref}/nodes/remove")
def remove_nodes(
    service: Svc, ref: ClusterRef, body: RemoveNodesBody, db: DB, user: Caller
) -> ClusterDetail:
    """Remove chosen nodes of a running cluster, drained first."""
    drain = _drain_timeout(body.drain_seconds)
    with service.decisions:
        cluster = service.clusters.remove_nodes(db, user, ref, body.nodes, drain)
        db.commit()
    service.documents.forget(cluster.id)
    service.engine.poke()
    return _detail(service, db, cluster)


def _drain_timeout(seconds: float | None) -> timedelta | None:
    return None if seconds is None else timedelta(seconds=seconds)


@router.delete("/clusters/{ref}", status_code=202)
def destroy(service: Svc, ref: ClusterRef, db: DB, user: Caller) -> ClusterDetail:
    with service.decisions:
        cluster = service.clusters.destroy(db, user, ref)
        db.commit()
    service.engine.poke()
    return _detail(service, db, cluster)


@router.get("/users")
def list_users(service: Svc, db: DB, _admin: Admin) -> list[UserView]:
    users = db.scalars(select(User).where(~User.token_hash.startswith("removed:")))
    return [_user_view(service, db, u) for u in users]


@router.post("/users", status_code=201)
def add_user(service: Svc, body: UserBody, db: DB, _admin: Admin) -> NewUserView:
    user, token = inventory.add_user(db, body.name, body.admin, body.max_nodes, body.max_node_hours)
    return NewUserView(**_user_view(service, db, user).model_dump(), token=token)


@router.delete("/users/{name}", status_code=204)
def remove_user(name: AccountName, db: DB, _admin: Admin) -> None:
    inventory.remove_user(db, name)


@router.get("/hosts")
def list_hosts(db: DB, _user: Caller) -> list[HostView]:
    return [HostView(**asdict(h)) for h in inventory.host_capacities(db)]


@router.post("/hosts", status_code=201)
def add_host(service: Svc, body: HostBody, db: DB, _admin: Admin) -> HostView:
    with service.decisions:
        inventory.add_host(db, body.name, body.pool, body.cores, body.memory_mib)
        db.flush()
    (view,) = [h for h in inventory.host_capacities(db, body.pool) if h.name == body.name]
    return HostView(**asdict(view))


@router.delete("/hosts/{name}", status_code=204)
def remove_host(service: Svc, name: AccountName, db: DB, _admin: Admin) -> None:
    with service.decisions:
        inventory.remove_host(db, name)
        db.commit()


@router.get("/images")
def list_images(db: DB, _user: Caller) -> list[ImageView]:
    return [
        ImageView.model_validate(i, from_attributes=True) for i in image_records.list_images(db)
    ]


@router.post("/images", status_code=201)
def register_image(
    service: Svc, body: ImageBody, db: DB, response: Response, _admin: Admin
) -> ImageView:
    """Name an image of the service's image store (201), or confirm the name (200)."""
    store = ImageStore.of_data_dir(service.config.data_dir)
    with service.decisions:
        image, changed = image_records.register(
            db, store, body.name, body.digest, body.size_bytes, body.replace
        )
        view = ImageView.model_validate(image, from_attributes=True)
        db.commit()
    if not changed:
        response.status_code = 200
    return view


@router.delete("/images/{name}")
def remove_image(service: Svc, name: ImageName, db: DB, _admin: Admin) -> ImageRemovedView:
    """Forget an image name; its files stay in the store (`corral image delete` removes them)."""
    with service.decisions:
        image, others = image_records.remove(db, name)
        view = ImageRemovedView(
            **ImageView.model_validate(image, from_attributes=True).model_dump(),
            other_names=others,
        )
        db.commit()
    return view


@dataclass
class _NodeTally:
    """A cluster's nodes in a list: how many, how many ready, and what they cost."""

    nodes: int = 0
    ready: int = 0
    cost: costs.Tally = field(default_factory=costs.Tally)

    def add(self, node: Node | Row, now: datetime) -> None:
        self.nodes += 1
        self.ready += node.state == NodeState.READY
        self.cost.add(node.hourly_price, node.created_at, node.state, node.state_since, now)


def _node_tallies(db: Session, cluster_ids: list[str]) -> dict[str, _NodeTally]:
    """Each cluster's node tally (live or all nodes), in one query."""
    tallies: dict[str, _NodeTally] = {}
    now = utcnow()
    rows = db.execute(
        select(
            Node.cluster_id, Node.state, Node.hourly_price, Node.created_at, Node.state_since
        ).where(Node.cluster_id.in_(cluster_ids))
    )
    for row in rows:
        tallies.setdefault(row.cluster_id, _NodeTally()).add(row, now)
    return tallies


def _summary(cluster: Cluster, tally: _NodeTally) -> ClusterSummary:
    cost = tally.cost.rounded()
    return ClusterSummary(
        id=cluster.id,
        name=cluster.name,
        owner=cluster.owner.name,
        state=cluster.state,
        node_count=tally.nodes,
        ready_count=tally.ready,
        lease_start=cluster.lease_start,
        lease_end=cluster.lease_end,
        lease_left_seconds=max(0.0, (cluster.lease_end - utcnow()).total_seconds()),
        created_at=cluster.created_at,
        failure=cluster.failure,
        pool=cluster.pool_name,
        cost_so_far=cost.cost_so_far,
        hourly_cost=cost.hourly_cost,
    )


def _detail(service: Service, db: Session, cluster: Cluster) -> ClusterDetail:
    doc = service.documents.of(cluster)
    running = cluster.state in RUNNING
    blocked = blocked_by_group(doc, live_providers(cluster.nodes, doc, running))
    nodes = [
        NodeView(
            id=w.id,
            name=w.name,
            group=w.group,
            state=w.state,
            state_since=w.state_since,
            host=w.host_name,
            address=w.address,
            machine_id=w.machine_id,
            image=w.image,
            cores=w.cores,
            memory_mib=w.memory_mib,
            login=w.login,
            blocked_on=blocked[w.group] if w.state == NodeState.REGISTERED else [],
            failure=w.failure,
            failure_phase=w.failure_phase,
        )
        for w in cluster.nodes
    ]
    tally = _NodeTally()
    now = utcnow()
    for node in cluster.nodes:
        tally.add(node, now)
    summary = _summary(cluster, tally)
    accounts = [a.name for a in doc.accounts()]
    return ClusterDetail(
        **summary.model_dump(),
        subnet=cluster.subnet,
        policy=doc.policy.mode,
        keep_on_failure=cluster.keep_on_failure,
        users=accounts,
        login_user=_login_user(cluster.owner.name, accounts),
        nodes=nodes,
    )


def _login_user(owner: str, accounts: list[str]) -> str:
    """The account `corral ssh` logs in to: the owner's own, else the first, else root."""
    if owner in accounts:
        return owner
    return accounts[0] if accounts else "root"


def _user_view(service: Service, db: Session, user: User) -> UserView:
    max_nodes, max_hours = quotas.limits(user, service.config)
    nodes, hours = quotas.usage(db, user, utcnow())
    return UserView(
        name=user.name,
        admin=user.is_admin,
        max_nodes=max_nodes,
        max_node_hours=max_hours,
        nodes_in_use=nodes,
        node_hours_held=round(hours, 3),
    )
