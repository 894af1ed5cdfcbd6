"""One `corral serve` process wired together: store, pools of backends, engine, broker and
the apps that serve them (the API, the broker's and the metadata app; servers.py serves
them).

This is the one module that knows every part; each part gets only the collaborators it
uses (the broker's endpoints a BrokerParts, the metadata app its issuer and store).

On start the service makes sure its pools exist (with a host for this machine when a
pool has none) and that there is an admin, whose token it writes root-only into its data
directory for the local CLI. Before that it claims its store (store/hold.py): a second
service on the same store refuses to start, naming the one that holds it, and a service
that another has taken the store from stops its engine at once.
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
from corral.broker.api import BrokerApp, BrokerParts
from corral.broker.bootstrap import BootstrapIssuer
from corral.broker.known_nodes import KnownNodes
from corral.broker.liveness import Liveness
from corral.broker.notifier import ContextNotifier
from corral.broker.pki import BrokerIdentity, load_or_create_broker_identity
from corral.broker.snapshots import Snapshots
from corral.errors import StoreHeldError
from corral.service import inventory
from corral.service.api import create_app
from corral.service.auth import write_token_file
from corral.service.clusters import Clusters
from corral.service.config import ServiceConfig, split_listen
from corral.service.documents import DocumentCache
from corral.service.engine import Engine
from corral.service.metadata import create_metadata_app
from corral.service.pools import Pools
from corral.store.database import Store
from corral.store.group_commit import GroupCommit
from corral.store.hold import StoreHold
from corral.store.models import User, utcnow

log = logging.getLogger(__name__)


class Service:
    """Everything one `corral serve` runs; `start()` and `stop()` run the engine."""

    def __init__(
        self,
        config: ServiceConfig,
        backend: Backend | None = None,
        clock: Callable[[], datetime] = utcnow,
        backends: dict[str, Backend] | None = None,
    ) -> None:
        """`backend` is the default pool's backend and `backends` any pool's, by name, when
        they are built outside (tests inject fakes); otherwise each pool builds its own."""
        self.config = config
        # tells this process apart from another service that later takes the same port
        self.instance = secrets.token_hex(8)
        config.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(config.data_dir, 0o700)
        self.store = Store(config.database_url)
        # only one service acts on a store's machines: refuse while another holds it
        self.hold = StoreHold(
            self.store,
            self.instance,
            f"http://{config.listen}",
            config.hold_ttl,
            config.hold_renew_every,
        )
        # whoever serves this service stops serving when it loses its store (servers.py)
        self.on_store_lost: Callable[[], None] | None = None
        try:
            self.hold.claim()
            given = dict(backends or {})
            if backend is not None:
                given[config.default_pool_name] = backend
            self._build(given, clock)
        except BaseException:
            if (pools := getattr(self, "pools", None)) is not None:
                pools.close()  # built before what failed
            self.hold.release()
            self.store.close()
            raise
        self.hold.on_lost = self._lost_store

    def _build(self, given: dict[str, Backend], clock: Callable[[], datetime]) -> None:
        """Pools, engine, broker and API: what only the store's holder may set going."""
        config = self.config
        self.pools = Pools(config, given)
        self.decisions = threading.Lock()
        self.writes = GroupCommit(self.store, self.decisions)
        self._prepare()
        self.documents = DocumentCache()
        self.known_nodes = KnownNodes(self.store)
        self.liveness = Liveness(config.heartbeat, clock)
        self.snapshots = Snapshots(self.store, self.documents, self._forget_cluster)
        self.notifier = ContextNotifier(self.snapshots.refresh)
        self.notifier.watch(self.store.sessions)
        broker_host, _ = split_listen(config.broker_listen)
        self.broker_identity = self.renew_broker_identity()
        for pool in self.pools:
            at_gateway = Capability.GATEWAY_SERVICES in pool.capabilities
            if at_gateway and broker_host not in ("0.0.0.0", "::"):
                raise ValueError(
                    f"pool {pool.name}: backend {pool.backend.name}'s nodes reach the broker "
                    f"at their cluster's gateway, so it must listen on all addresses "
                    f"(--broker-listen 0.0.0.0:PORT), not {config.broker_listen}"
                )
        issuer = BootstrapIssuer(
            self.pools.broker_url_for,
            lambda: self.broker_identity,
            config.bootstrap_token_lifetime,
        )
        self.clusters = Clusters(config, self.pools)
        self.engine = Engine(
            self.store,
            self.pools,
            config,
            self.writes,
            self.documents,
            issuer,
            clock,
            self.liveness,
        )
        self.app = create_app(self)
        self.broker_app = BrokerApp(
            BrokerParts(
                self.writes,
                self.snapshots,
                self.known_nodes,
                self.notifier,
                self.engine.poke,
                self.liveness,
                self._scale,
            )
        )
        self.metadata_app = create_metadata_app(
            issuer, self.engine.runs_agents, self.store, self.writes, clock
        )

    def renew_broker_identity(self) -> BrokerIdentity:
        """The broker's TLS identity, its certificate renewed (same key) when a third of its
        lifetime is left; made on first use."""
        host, _ = split_listen(self.config.broker_listen)
        self.broker_identity = load_or_create_broker_identity(
            self.config.data_dir / "broker",
            ["localhost"],
            [host] if _is_ip(host) else [],
            self.config.broker_cert_lifetime,
        )
        return self.broker_identity

    def _scale(self, cluster_id: str, asker_id: str, action: str, names: list[str]) -> list[str]:
        """A cluster's scheduler scales its autoscaled group (the broker's /scale)."""
        with self.decisions, self.store.session() as session:
            done = self.clusters.scale(session, cluster_id, asker_id, action, names)
            session.commit()
        if done:
            self.documents.forget(cluster_id)  # its group's count changed
        return done

    def _forget_cluster(self, cluster_id: str) -> None:
        """The broker found the cluster terminated: let go of what it kept in memory."""
        self.known_nodes.forget_cluster(cluster_id)
        self.liveness.forget_cluster(cluster_id)
        self.notifier.forget(cluster_id)

    def start(self) -> None:
        """Run the engine; raises StoreHeldError if another service took the store over."""
        if self.hold.lost is not None:
            raise self.hold.lost
        self.engine.start()
        for line in self.pools.describe():
            log.info("corral service: %s", line)
        log.info("corral service: store %s", self._store_name())

    @property
    def backend(self) -> Backend:
        """The default pool's backend."""
        return self.pools.default.backend

    def stop(self) -> None:
        self.engine.stop()
        self.writes.stop()
        self.hold.release()  # once the engine has stopped: the next holder acts alone
        self.pools.close()
        self.store.close()

    def _lost_store(self, _error: StoreHeldError) -> None:
        """Another service holds the store now: act on no machine from here on."""
        self.engine.stop()
        if self.on_store_lost is not None:
            self.on_store_lost()

    def _store_name(self) -> str:
        return self.store.engine.url.render_as_string(hide_password=True)

    def _prepare(self) -> None:
        with self.store.session() as session:
            self.pools.ensure_in_store(session)
            if not session.scalar(select(func.count()).select_from(User)):
                _, token = inventory.add_user(session, "admin", is_admin=True)
                self._write_admin_token(token)

    def _write_admin_token(self, token: str) -> None:
        write_token_file(self.config.admin_token_file, token)
        log.info("created user admin; its token is in %s", self.config.admin_token_file)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
