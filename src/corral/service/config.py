"""What a service is configured with, and where its files live."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

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
    if os.geteuid() == 0 and shutil.which("systemd-nspawn"):
        return "nspawn"
    return "fake"


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
    backend: str = field(default_factory=lambda: default_backend())
    backend_options: dict[str, str] = field(default_factory=dict)
    pool: str = "local"
    address_range: str = "10.180.0.0/16"
    subnet_prefix: int = 24
    # containers share cores well; the local host offers this many cores per real core
    cpu_overcommit: int = 4
    default_lease: timedelta = timedelta(hours=2)
    max_lease: timedelta = timedelta(hours=48)
    lease_warning: timedelta = timedelta(minutes=10)
    default_max_nodes: int = 64
    default_max_node_hours: float = 1024.0
    tick_seconds: float = 0.5
    backend_workers: int = 8
    # one service acts on a store (store/hold.py): it renews its hold this often, and a
    # hold not renewed for hold_ttl may be taken over by another service
    hold_renew_every: timedelta = timedelta(seconds=2)
    hold_ttl: timedelta = timedelta(seconds=15)

    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{self.data_dir / 'corral.db'}"

    def advertised_broker_url(self, at_gateway: bool = False) -> str:
        """The broker URL nodes are given; `{gateway}` stands for their subnet's gateway."""
        if self.broker_url:
            return self.broker_url.rstrip("/")
        host, port = split_listen(self.broker_listen)
        return f"https://{'{gateway}' if at_gateway else host}:{port}/broker/v1"

    @property
    def admin_token_file(self) -> Path:
        return self.data_dir / "admin.token"
