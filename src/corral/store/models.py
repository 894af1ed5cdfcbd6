"""Tables: users, pools and hosts, images, clusters, nodes, allocations, events.

Every state change of a cluster or node appends an Event row; nothing updates or
deletes events.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from corral.lifecycle import ClusterState, NodeState


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Timestamps stored as UTC and always read back timezone-aware (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use timezone-aware UTC")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    pass


def _states(states: type[StrEnum], name: str) -> Enum:
    """A lifecycle's states as stored: their values as text, which a CHECK keeps to the
    enum's; read back as the enum's members."""
    return Enum(
        states,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        values_callable=lambda enum: [member.value for member in enum],
        validate_strings=True,
    )


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    max_nodes: Mapped[int | None] = mapped_column(Integer)  # None: the service default
    max_node_hours: Mapped[float | None]  # None: the service default
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Pool(Base):
    __tablename__ = "pools"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    backend: Mapped[str] = mapped_column(String(32))
    address_range: Mapped[str] = mapped_column(String(64))  # e.g. 10.180.0.0/16
    subnet_prefix: Mapped[int] = mapped_column(Integer)  # each cluster gets one subnet this size

    hosts: Mapped[list[Host]] = relationship(back_populates="pool")


class Host(Base):
    __tablename__ = "hosts"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    pool_name: Mapped[str] = mapped_column(ForeignKey("pools.name"))
    cores: Mapped[int] = mapped_column(Integer)
    memory_mib: Mapped[int] = mapped_column(Integer)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # set by `host remove`: the row stays while terminated nodes name the host
    removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    pool: Mapped[Pool] = relationship(back_populates="hosts")


class Image(Base):
    __tablename__ = "images"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    digest: Mapped[str] = mapped_column(String(80))
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)  # images pass 2 GiB
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Cluster(Base):
    __tablename__ = "clusters"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    state: Mapped[ClusterState] = mapped_column(_states(ClusterState, "cluster_state"))
    # the parsed document as canonical JSON (ClusterDocument.to_dict), read back without YAML
    document: Mapped[str] = mapped_column(Text)
    pool_name: Mapped[str] = mapped_column(ForeignKey("pools.name"))
    subnet: Mapped[str | None] = mapped_column(String(64))
    lease_start: Mapped[datetime] = mapped_column(UTCDateTime)
    lease_end: Mapped[datetime] = mapped_column(UTCDateTime)
    lease_warned: Mapped[bool] = mapped_column(Boolean, default=False)
    keep_on_failure: Mapped[bool] = mapped_column(Boolean, default=False)
    failure: Mapped[str | None] = mapped_column(Text)
    # bumped on every change a node's context view may depend on; agents long-poll it
    context_version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    owner: Mapped[User] = relationship()
    nodes: Mapped[list[Node]] = relationship(
        back_populates="cluster", order_by="Node.group, Node.index"
    )

    __table_args__ = (Index("ix_clusters_owner_state", "owner_id", "state"),)


class Node(Base):
    __tablename__ = "nodes"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    cluster_id: Mapped[str] = mapped_column(ForeignKey("clusters.id"))
    name: Mapped[str] = mapped_column(String(64))  # <group>-<index>
    group: Mapped[str] = mapped_column(String(32))
    index: Mapped[int] = mapped_column(Integer)
    host_name: Mapped[str] = mapped_column(ForeignKey("hosts.name"))
    image: Mapped[str] = mapped_column(String(128))
    image_digest: Mapped[str] = mapped_column(String(80), default="")  # pinned at launch
    cores: Mapped[int] = mapped_column(Integer)
    memory_mib: Mapped[int] = mapped_column(Integer)
    login: Mapped[bool] = mapped_column(Boolean, default=False)  # users log in here
    address: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[NodeState] = mapped_column(_states(NodeState, "node_state"))
    state_since: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    failure: Mapped[str | None] = mapped_column(Text)  # cause of the last failure, if any
    failure_phase: Mapped[str | None] = mapped_column(String(16))  # boot, register, configure, run
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # what its agent said when it registered
    credential_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    registered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    hostname: Mapped[str | None] = mapped_column(String(255))  # as it said; never certified
    ssh_host_keys: Mapped[str | None] = mapped_column(Text)  # JSON list of key lines
    # the public half of the root key the broker made it (login nodes only): revoked when
    # the node leaves
    ssh_root_key: Mapped[str | None] = mapped_column(Text)
    # while it is draining: how long its roles' drain hooks may wait, in seconds
    drain_timeout: Mapped[int | None] = mapped_column(Integer)
    # the backend's own name for its machine (an EC2 instance id); empty where it has none
    machine_id: Mapped[str] = mapped_column(String(64), default="", server_default="")
    # what an hour of it costs in its pool's price table at launch; None: no prices there
    hourly_price: Mapped[float | None] = mapped_column(Float)

    cluster: Mapped[Cluster] = relationship(back_populates="nodes")

    __table_args__ = (
        # a name is used again once its node is terminated (autoscaled groups)
        Index(
            "ix_nodes_live_name",
            "cluster_id",
            "name",
            unique=True,
            sqlite_where=text("state != 'terminated'"),
            postgresql_where=text("state != 'terminated'"),
        ),
        Index("ix_nodes_state", "state"),
        Index("ix_nodes_host", "host_name", "state"),
    )


class SubnetAllocation(Base):
    """A cluster's subnet inside its pool's range; the unique key forbids handing it out twice."""

    __tablename__ = "subnet_allocations"

    pool_name: Mapped[str] = mapped_column(ForeignKey("pools.name"), primary_key=True)
    subnet: Mapped[str] = mapped_column(String(64), primary_key=True)
    cluster_id: Mapped[str] = mapped_column(ForeignKey("clusters.id"), unique=True)


class AddressAllocation(Base):
    """A node's address; the primary key forbids handing one address out twice."""

    __tablename__ = "address_allocations"

    pool_name: Mapped[str] = mapped_column(ForeignKey("pools.name"), primary_key=True)
    address: Mapped[str] = mapped_column(String(64), primary_key=True)
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"), unique=True)


class Event(Base):
    """One state change: of a cluster (node_id empty) or of one of its nodes."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    cluster_id: Mapped[str] = mapped_column(ForeignKey("clusters.id"))
    node_id: Mapped[str | None] = mapped_column(ForeignKey("nodes.id"))
    subject: Mapped[str] = mapped_column(String(64))  # node name, or "cluster"
    kind: Mapped[str] = mapped_column(String(32))  # "state", "lease-warning", "lease-extended"
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str | None] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")

    __table_args__ = (Index("ix_events_cluster", "cluster_id", "id"),)


class ClusterSecret(Base):
    """A cluster's authorities and shared secrets. Sensitive: never logged, never shown."""

    __tablename__ = "cluster_secrets"

    cluster_id: Mapped[str] = mapped_column(ForeignKey("clusters.id"), primary_key=True)
    ca_cert_pem: Mapped[str] = mapped_column(Text)
    ca_key_pem: Mapped[str] = mapped_column(Text)
    # signs the nodes' host keys
    ssh_host_ca_private: Mapped[str] = mapped_column(Text)
    ssh_host_ca_public: Mapped[str] = mapped_column(Text)
    # signs the keys that log in: users', and login nodes' root keys
    ssh_user_ca_private: Mapped[str] = mapped_column(Text)
    ssh_user_ca_public: Mapped[str] = mapped_column(Text)
    munge_key_b64: Mapped[str] = mapped_column(Text)
    # how many times the cluster's certificates were renewed (an extension renews them)
    generation: Mapped[int] = mapped_column(Integer, default=0)


class NodeSecret(Base):
    """What the broker issued a node when it registered. Sensitive."""

    __tablename__ = "node_secrets"

    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"), primary_key=True)
    tls_cert_pem: Mapped[str] = mapped_column(Text)
    tls_key_pem: Mapped[str] = mapped_column(Text)
    ssh_host_cert: Mapped[str] = mapped_column(Text)
    # a login node's root key, certified to log in as root on the cluster's other nodes
    ssh_root_key: Mapped[str] = mapped_column(Text, default="")
    ssh_root_cert: Mapped[str] = mapped_column(Text, default="")


class BootstrapToken(Base):
    """A single-use, short-lived token for one node's first registration (hash only)."""

    __tablename__ = "bootstrap_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # read with the token: registering always needs both, and a burst's tokens come in one query
    node: Mapped[Node] = relationship(lazy="joined")


class Report(Base):
    """One result an agent reported: a role script's run, or the node's final word."""

    __tablename__ = "reports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    cluster_id: Mapped[str] = mapped_column(ForeignKey("clusters.id"))
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"))
    node: Mapped[str] = mapped_column(String(64))
    phase: Mapped[str] = mapped_column(String(16))  # configure, join, leave, node
    role: Mapped[str] = mapped_column(String(64), default="")
    state: Mapped[str] = mapped_column(String(16))  # running, ok, failed, ready
    exit_code: Mapped[int | None] = mapped_column(Integer)
    log_tail: Mapped[str] = mapped_column(Text, default="")
    version: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (
        UniqueConstraint("node_id", "phase", "role", "version", "state"),
        Index("ix_reports_node", "cluster_id", "node", "id"),
    )


class StoreHolder(Base):
    """The one service that acts on this store's machines (store/hold.py); at most one row.

    Renewed by its holder every few seconds; a row whose heartbeat is older than the
    hold's time-to-live, or whose process is known dead, may be taken over.
    """

    __tablename__ = "store_holder"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)  # always 1
    instance: Mapped[str] = mapped_column(String(32))  # the service's instance id
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    # boot id and pid namespace of the holder: where these match, its pid means something
    pid_space: Mapped[str] = mapped_column(String(128))
    # the holder's start time in clock ticks since boot (/proc/PID/stat): pids are reused
    process_start: Mapped[int | None] = mapped_column(BigInteger)
    api_url: Mapped[str] = mapped_column(String(255))
    since: Mapped[datetime] = mapped_column(UTCDateTime)
    heartbeat: Mapped[datetime] = mapped_column(UTCDateTime)
