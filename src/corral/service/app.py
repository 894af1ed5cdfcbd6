"""One service process: store, backend, engine and API wired together.

On start the service makes sure its pool exists (with a host for this machine when the
pool has none) and that there is an admin, whose token it writes root-only into its data
directory for the local CLI.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import threading
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import func, select

from corral.backends.base import Backend, Capability
from corral.backends.registry import load_backend
from corral.broker.api import BrokerApp
from corral.broker.bootstrap import BootstrapIssuer
from corral.broker.known_nodes import KnownNodes
from corral.broker.notifier import ContextNotifier
from corral.broker.pki import load_or_create_broker_identity
from corral.broker.snapshots import Snapshots
from corral.errors import ConflictError
from corral.lifecycle import ClusterState
from corral.service import inventory
from corral.service.api import create_app
from corral.service.clusters import Clusters
from corral.service.config import (
    ServiceConfig,
    machine_cores,
    machine_memory_mib,
    split_listen,
)
from corral.service.documents import DocumentCache
from corral.service.engine import Engine
from corral.store.database import Store
from corral.store.group_commit import GroupCommit
from corral.store.models import Cluster, Host, User, utcnow

log = logging.getLogger(__name__)

LOCAL_HOST = "local"


class Service:
    """Everything one `corral serve` runs; `start()` and `stop()` run the engine."""

    def __init__(
        self,
        config: ServiceConfig,
        backend: Backend | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.config = config
        # tells this process apart from another service that later takes the same port
        self.instance = secrets.token_hex(8)
        config.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(config.data_dir, 0o700)
        self.store = Store(config.database_url)
        self.backend = backend or load_backend(
            config.backend, config.backend_options, config.data_dir
        )
        self.decisions = threading.Lock()
        self.writes = GroupCommit(self.store, self.decisions)
        self._prepare()
        self.documents = DocumentCache()
        self.known_nodes = KnownNodes(self.store)
        self.snapshots = Snapshots(self.store, self.documents, self._forget_cluster)
        self.notifier = ContextNotifier(self.snapshots.refresh)
        self.notifier.watch(self.store.sessions)
        broker_host, _ = split_listen(config.broker_listen)
        self.broker_identity = load_or_create_broker_identity(
            config.data_dir / "broker", ["localhost"], [broker_host] if _is_ip(broker_host) else []
        )
        at_gateway = Capability.GATEWAY_SERVICES in self.backend.capabilities
        if at_gateway and broker_host not in ("0.0.0.0", "::"):
            raise ValueError(
                f"backend {self.backend.name}: nodes reach the broker at their cluster's "
                f"gateway, so it must listen on all addresses (--broker-listen "
                f"0.0.0.0:PORT), not {config.broker_listen}"
            )
        issuer = BootstrapIssuer(
            config.advertised_broker_url(at_gateway),
            self.broker_identity.fingerprint,
            config.bootstrap_token_lifetime,
        )
        self.clusters = Clusters(config, self.backend.capabilities)
        self.engine = Engine(
            self.store, self.backend, config, self.writes, self.documents, issuer, clock
        )
        self.app = create_app(self)
        self.broker_app = BrokerApp(self)

    def _forget_cluster(self, cluster_id: str) -> None:
        """The broker found the cluster terminated: let go of what it kept in memory."""
        self.known_nodes.forget_cluster(cluster_id)
        self.notifier.forget(cluster_id)

    def start(self) -> None:
        self.engine.start()
        log.info("corral service: backend %s, store %s", self.backend.name, self._store_name())

    def stop(self) -> None:
        self.engine.stop()
        self.writes.stop()
        self.backend.close()
        self.store.close()

    def _store_name(self) -> str:
        return self.store.engine.url.render_as_string(hide_password=True)

    def _prepare(self) -> None:
        cfg = self.config
        with self.store.session() as session:
            pool = inventory.ensure_pool(
                session, cfg.pool, self.backend.name, cfg.address_range, cfg.subnet_prefix
            )
            if pool.backend != self.backend.name:
                live = session.scalar(
                    select(func.count(Cluster.id)).where(
                        Cluster.pool_name == pool.name,
                        Cluster.state != ClusterState.TERMINATED.value,
                    )
                )
                if live:
                    raise ConflictError(
                        f"pool {pool.name} runs {live} live cluster(s) on backend "
                        f"{pool.backend}; destroy them before serving it with {self.backend.name}"
                    )
                pool.backend = self.backend.name
            if not session.scalar(select(func.count(Host.name)).where(Host.removed_at.is_(None))):
                inventory.add_host(
                    session,
                    LOCAL_HOST,
                    pool.name,
                    machine_cores() * cfg.cpu_overcommit,
                    machine_memory_mib(),
                )
            if not session.scalar(select(func.count()).select_from(User)):
                _, token = inventory.add_user(session, "admin", is_admin=True)
                self._write_admin_token(token)

    def _write_admin_token(self, token: str) -> None:
        path = self.config.admin_token_file
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(token + "\n")
        log.info("created user admin; its token is in %s", path)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
