"""What a service is configured with, and where its files live."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from corral.backends.base import Capability
from corral.backends.registry import backend_class

DEFAULT_PORT = 8470
DEFAULT_BROKER_PORT = 8471
DEFAULT_METADATA_PORT = 8472


def split_listen(listen: str) -> tuple[str, int]:
    """HOST:PORT into its parts; raises ValueError naming the text otherwise."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"a listen address must be HOST:PORT, not {listen!r}")
    return host, int(port)


def default_backend() -> str:
    """$CORRAL_BACKEND, else real containers where this machine can run them, else fake."""
    if env := os.environ.get("CORRAL_BACKEND"):
        return env
    return "nspawn" if backend_class("nspawn").detect() is None else "fake"


def default_data_dir() -> Path:
    """The user's data directory for corral ($CORRAL_HOME, else XDG data home)."""
    if env := os.environ.get("CORRAL_HOME"):
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "corral"


def machine_cores() -> int:
    return os.cpu_count() or 1


def machine_memory_mib() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 1024


@dataclass(frozen=True)
class HostConfig:
    """A host a site lists for a pool: its name and what it offers."""

    name: str
    cores: int
    memory_mib: int


@dataclass(frozen=True)
class PoolConfig:
    """One pool: its backend and options, hosts, addresses and limits.

    A pool that lists no hosts gets one for this machine, named after the pool.
    """

    name: str
    backend: str
    # values of the backend's secret_options are never shown: see `shown_options`
    options: dict[str, str] = field(default_factory=dict, repr=False)
    address_range: str = "10.180.0.0/16"
    subnet_prefix: int = 24
    hosts: tuple[HostConfig, ...] = ()
    max_nodes: int | None = None  # live nodes of every cluster in the pool together
    broker_url: str | None = None  # what its nodes are told; None: the service's own
    # whether its clusters may ask for `network: {outbound: true}` (NAT to the outside)
    allow_outbound: bool = True

    def shown_options(self) -> dict[str, str]:
        """The options as they may be logged or shown: secret values hidden."""
        secret = backend_class(self.backend).secret_options
        return {k: ("<secret>" if k in secret else v) for k, v in self.options.items()}


@dataclass
class ServiceConfig:
    """Settings of one service process; every field has a working default for local use."""

    data_dir: Path = field(default_factory=default_data_dir)
    db_url: str | None = None  # None: SQLite file in data_dir
    listen: str = f"127.0.0.1:{DEFAULT_PORT}"
    broker_listen: str = f"127.0.0.1:{DEFAULT_BROKER_PORT}"
    broker_url: str | None = None  # what nodes are told; None: from broker_listen
    # the metadata service (plain HTTP, cluster-facing like the broker); None: not served
    metadata_listen: str | None = None
    # proxies whose X-Forwarded-For the API believes; none unless a site puts one in front
    trusted_proxies: tuple[str, ...] = ()
    bootstrap_token_lifetime: timedelta = timedelta(minutes=10)
    # the broker's own certificate; renewed with the same key once a third of it is left
    broker_cert_lifetime: timedelta = timedelta(days=90)
    # the pools, from a configuration file (config_file.py); none: one pool from the
    # shorthand below, as `corral serve --backend ... --backend-option ...` gives it
    pools: tuple[PoolConfig, ...] = ()
    default_pool: str | None = None  # None: the first pool
    # where clusters whose document names no pool may run, in order (overflow); empty:
    # the default pool alone
    overflow: tuple[str, ...] = ()
    backend: str = field(default_factory=lambda: default_backend())
    backend_options: dict[str, str] = field(default_factory=dict, repr=False)
    pool: str = "local"
    address_range: str = "10.180.0.0/16"
    subnet_prefix: int = 24
    allow_outbound: bool = True
    # containers share cores well; the local host offers this many cores per real core
    cpu_overcommit: int = 4
    default_lease: timedelta = timedelta(hours=2)
    max_lease: timedelta = timedelta(hours=48)
    lease_warning: timedelta = timedelta(minutes=10)
    default_max_nodes: int = 64
    default_max_node_hours: float = 1024.0
    tick_seconds: float = 0.5
    # a ready node whose agent the broker has not heard for this long is lost
    heartbeat: timedelta = timedelta(seconds=90)
    backend_workers: int = 8
    # one service acts on a store (store/hold.py): it renews its hold this often, and a
    # hold not renewed for hold_ttl may be taken over by another service
    hold_renew_every: timedelta = timedelta(seconds=2)
    hold_ttl: timedelta = timedelta(seconds=15)

    def pool_configs(self) -> tuple[PoolConfig, ...]:
        """The configured pools, or the one the shorthand fields describe."""
        if self.pools:
            return self.pools
        shorthand = PoolConfig(
            self.pool,
            self.backend,
            self.backend_options,
            self.address_range,
            self.subnet_prefix,
            allow_outbound=self.allow_outbound,
        )
        return (shorthand,)

    def nodes_reach_service_at_gateways(self) -> bool:
        """Whether some pool's nodes reach the service at their bridge's address, so the
        broker must listen on every address (Capability.GATEWAY_SERVICES)."""
        return any(
            Capability.GATEWAY_SERVICES in backend_class(p.backend).capabilities
            for p in self.pool_configs()
        )

    @property
    def default_pool_name(self) -> str:
        return self.default_pool or self.pool_configs()[0].name

    @property
    def default_pool_order(self) -> list[str]:
        """The pools a cluster that names none may run in, in order."""
        return list(self.overflow) or [self.default_pool_name]

    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{self.data_dir / 'corral.db'}"

    def advertised_broker_url(self, address: str | None = None) -> str:
        """The broker URL nodes are given: at `address` where their backend says they reach
        the service there, else at the broker's listen address."""
        if self.broker_url:
            return self.broker_url.rstrip("/")
        host, port = split_listen(self.broker_listen)
        return f"https://{address or host}:{port}/broker/v1"

    @property
    def admin_token_file(self) -> Path:
        return self.data_dir / "admin.token"
