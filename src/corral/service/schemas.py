"""The REST API's payloads: what requests carry and what responses promise.

These shapes are the stable `--json` output of the CLI; add fields, never rename them.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, model_validator

from corral import limits, names


class LaunchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    document: str = Field(
        description="the cluster document, YAML or Nimbus cluster.xml, "
        f"at most {limits.MAX_DOCUMENT_BYTES} bytes as UTF-8"
    )
    source: str = Field(
        "<document>",
        max_length=limits.MAX_SOURCE_CHARS,
        pattern=r"^[^\x00-\x1f\x7f]*$",  # echoed in messages: no control characters
        description="the file name, for error messages",
    )
    name: names.CLUSTER.type | None = Field(None, description="overrides the document's name")
    pool: names.ACCOUNT.type | None = Field(
        None, description="the one pool to run in; overrides the document's and the site's order"
    )
    lease_seconds: float | None = Field(
        None,
        gt=0,
        le=limits.MAX_DURATION_SECONDS,
        allow_inf_nan=False,
        description="overrides the document's lease",
    )
    keep_on_failure: bool = Field(False, description="keep a failed launch's nodes running")


DrainSeconds = Field(
    None,
    gt=0,
    le=limits.MAX_DURATION_SECONDS,
    allow_inf_nan=False,
    description="how long each removed node may take to let its work end (its roles' "
    "drain hooks); default: the document's policy.drain_timeout",
)


class ResizeBody(BaseModel):
    """Give `count` nodes to a group, or `by` more (negative: fewer); exactly one of them."""

    model_config = ConfigDict(extra="forbid")

    group: names.GROUP.type = Field(description="the group to resize")
    count: int | None = Field(
        None, ge=0, le=limits.MAX_GROUP_COUNT, description="how many nodes the group should have"
    )
    by: int | None = Field(
        None,
        ge=-limits.MAX_GROUP_COUNT,
        le=limits.MAX_GROUP_COUNT,
        description="how many nodes to add (negative: to remove)",
    )
    drain_seconds: float | None = DrainSeconds

    @model_validator(mode="after")
    def _one_size(self) -> ResizeBody:
        if (self.count is None) == (self.by is None):
            raise ValueError("give exactly one of count and by")
        return self


class RemoveNodesBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    nodes: list[names.NODE.type] = Field(
        min_length=1, max_length=limits.MAX_GROUP_COUNT, description="the nodes to remove"
    )
    drain_seconds: float | None = DrainSeconds


class ExtendBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seconds: float = Field(
        gt=0,
        le=limits.MAX_DURATION_SECONDS,
        allow_inf_nan=False,
        description="how much later the lease should end",
    )


class UserBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: names.ACCOUNT.type
    admin: bool = False
    max_nodes: int | None = Field(None, ge=0, le=limits.MAX_QUOTA_NODES)
    max_node_hours: float | None = Field(
        None, ge=0, le=limits.MAX_QUOTA_NODE_HOURS, allow_inf_nan=False
    )


class HostBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: names.ACCOUNT.type
    pool: names.ACCOUNT.type = "local"
    cores: int = Field(gt=0, le=limits.MAX_HOST_CORES)
    memory_mib: int = Field(gt=0, le=limits.MAX_HOST_MEMORY_MIB)


class ImageBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: names.IMAGE.type
    digest: str = Field(
        pattern=r"^sha256:[0-9a-f]{64}$", description="an image in the service's image store"
    )
    size_bytes: int | None = Field(
        None, ge=0, le=limits.MAX_IMAGE_BYTES, description="default: what the store measured"
    )
    replace: bool = Field(False, description="point an existing name at another digest")


class NodeView(BaseModel):
    id: str
    name: str
    group: str
    state: str
    state_since: datetime
    host: str
    address: str | None
    machine_id: str = Field(
        "", description="the backend's own name for the node's machine (an EC2 instance id)"
    )
    image: str
    cores: int
    memory_mib: int
    login: bool
    blocked_on: list[str] = Field(
        default_factory=list, description="roles a registered node still waits for"
    )
    failure: str | None = None
    failure_phase: str | None = None


class ClusterSummary(BaseModel):
    id: str
    name: str
    owner: str
    state: str
    node_count: int
    ready_count: int
    lease_start: datetime
    lease_end: datetime
    lease_left_seconds: float
    created_at: datetime
    failure: str | None = None
    pool: str = Field(description="the pool the cluster runs in")
    cost_so_far: float | None = Field(
        None,
        description="what its nodes have cost so far, by its pool's prices: each node's "
        "hourly price from its creation until it was terminated, or now; null where its "
        "pool has no prices",
    )
    hourly_cost: float | None = Field(
        None,
        description="what its nodes that are not terminated cost per hour now; null where "
        "its pool has no prices",
    )


class ClusterDetail(ClusterSummary):
    subnet: str | None
    policy: str
    keep_on_failure: bool
    users: list[str] = Field([], description="the user accounts on every node")
    login_user: str = Field(
        "root",
        description="the account `corral ssh` logs in to: the owner's, else the first user's, "
        "else root",
    )
    nodes: list[NodeView]


class DocumentWarningView(BaseModel):
    field: str = Field(description="the element or field, like workspace[1].ctx.requires.role")
    message: str
    line: int | None = None


class SkippedPoolView(BaseModel):
    pool: str
    reason: str = Field(description="why the pool could not take the cluster")


class PlacementView(BaseModel):
    pool: str = Field(description="the pool the cluster went to")
    skipped: list[SkippedPoolView] = Field(
        default_factory=list,
        description="the pools before it in the cluster's order, each with why it could not "
        "take the cluster",
    )


class CostEstimateView(BaseModel):
    per_hour: float = Field(description="what the cluster's nodes cost per hour")
    lease: float = Field(description="what they cost over the whole lease")


class LaunchedCluster(ClusterDetail):
    warnings: list[DocumentWarningView] = Field(
        default_factory=list,
        description="what reading the document accepted but dropped or ignored "
        "(Nimbus cluster.xml constructs), each with its line",
    )
    placement: PlacementView | None = Field(
        None, description="the pool the cluster went to, and the pools passed over"
    )
    estimated_cost: CostEstimateView | None = Field(
        None, description="by its pool's prices; null where its pool has no prices"
    )


class EventView(BaseModel):
    id: int
    at: datetime
    subject: str
    kind: str
    from_state: str | None
    to_state: str | None
    reason: str


class ReportView(BaseModel):
    at: datetime
    node: str
    phase: str
    role: str
    state: str
    exit_code: int | None
    log_tail: str
    version: int


class ConsoleView(BaseModel):
    """The end of what a node's console printed (`corral console`)."""

    cluster: str
    node: str
    console: str = Field(description="its last bytes as UTF-8, undecodable bytes replaced")
    truncated: bool = Field(description="true when the console printed more before these bytes")
    bytes: int = Field(description="how many bytes of the console `console` holds")


class CredentialsView(BaseModel):
    """What a user needs to trust a cluster's nodes and be trusted by them (secret: 0600)."""

    cluster: str
    ca_cert_pem: str
    user_cert_pem: str
    user_key_pem: str = Field(repr=False)
    ssh_known_hosts: str
    ssh_user_key: str = Field(repr=False)
    ssh_user_public: str
    ssh_user_cert: str
    valid_until: datetime = Field(description="when these credentials end: the lease's end")


class UserView(BaseModel):
    name: str
    admin: bool
    max_nodes: int
    max_node_hours: float
    nodes_in_use: int
    node_hours_held: float


class NewUserView(UserView):
    token: str = Field(description="shown once; the service keeps only its hash")


class HostView(BaseModel):
    name: str
    pool: str
    enabled: bool
    cores: int
    memory_mib: int
    free_cores: int
    free_memory_mib: int


class ImageView(BaseModel):
    name: str
    digest: str
    size_bytes: int
    created_at: datetime


class ImageRemovedView(ImageView):
    other_names: list[str] = Field(
        description="names that still point to the digest; its files stay while there are any"
    )


class PoolView(BaseModel):
    name: str
    backend: str
    capabilities: list[str]
    default: bool = Field(description="clusters that name no pool go here")


class HealthView(BaseModel):
    status: str
    version: str
    instance: str
    backend: str = Field(description="the default pool's backend")
    capabilities: list[str] = Field(description="the default pool's backend's capabilities")
    pools: list[PoolView] = Field(default_factory=list)


class ErrorView(BaseModel):
    error: str
    message: str
    details: dict[str, object] = {}
