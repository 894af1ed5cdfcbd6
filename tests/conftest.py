"""Shared fixtures: in-process services on a real SQLite store, and the baked appliance."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from authorities import LEASE_END
from inprocess import free_port

from corral.backends.base import Backend
from corral.broker.issuance import create_cluster_authority
from corral.broker.pki import ClusterAuthority
from corral.images.bake import bake
from corral.images.recipe import RECIPES
from corral.images.store import ImageStore
from corral.service.config import ServiceConfig
from corral.service.process import Service
from corral.service.servers import ServersThread
from corral.store.models import utcnow


@pytest.fixture
def make_service(tmp_path: Path) -> Iterator[Callable[..., Service]]:
    """Start services on `tmp_path`; each is stopped at teardown, also when a test fails.

    With `serve=True` the service also listens: its API over HTTP and its broker over
    HTTPS, on free ports of 127.0.0.1 (what agents need). At teardown every machine its
    backend still runs is removed, so no agent process outlives the test.
    """
    started: list[tuple[Service, ServersThread | None]] = []

    def make(
        backend_options: dict[str, str] | None = None,
        clock: Callable = utcnow,
        data_dir: Path | None = None,
        serve: bool = False,
        backend: Backend | None = None,
        backend_name: str = "fake",
        backends: dict[str, Backend] | None = None,
        **settings: Any,
    ) -> Service:
        settings.setdefault("listen", f"127.0.0.1:{free_port()}")
        # nodes that reach the broker at their bridge need it listening on every address
        at_gateways = ServiceConfig(backend=backend_name).nodes_reach_service_at_gateways()
        broker_host = "0.0.0.0" if at_gateways else "127.0.0.1"
        settings.setdefault("broker_listen", f"{broker_host}:{free_port()}")
        settings.setdefault("metadata_listen", f"{broker_host}:{free_port()}")
        if backend_name == "fake":
            backend_options = {"boot_delay": "0.05", **(backend_options or {})}
        config = ServiceConfig(
            data_dir=data_dir or tmp_path / "service",
            tick_seconds=0.05,
            backend=backend_name,
            backend_options=backend_options or {},
            **settings,
        )
        service = Service(config, backend=backend, clock=clock, backends=backends)
        service.start()
        servers = ServersThread(service).start() if serve else None
        started.append((service, servers))
        return service

    def stop(service: Service) -> None:
        """Stop one service (and its servers) now; its machines keep running."""
        for entry in started:
            if entry[0] is service and entry[1] is not None:
                entry[1].stop()
        service.stop()

    make.stop = stop  # type: ignore[attr-defined]
    yield make
    for service, servers in started:
        if servers is not None:
            servers.stop()
        service.stop()
    for service, _ in started:
        for pool in service.pools:
            for machine in pool.backend.list_machines():
                pool.backend.terminate(machine.node_id)


@pytest.fixture(scope="module")
def authority() -> ClusterAuthority:
    """A cluster's authority, its certificates ending at authorities.LEASE_END."""
    return create_cluster_authority("c-1a2b3c4d", LEASE_END)


@pytest.fixture(scope="module")
def other_authority() -> ClusterAuthority:
    """Another cluster's authority."""
    return create_cluster_authority("c-99999999", LEASE_END)


IMAGE_CACHE = Path("/var/tmp/corral-test-images")


@pytest.fixture(scope="session")
def baked() -> tuple[Path, str]:
    """The base-cluster image, baked once per recipe digest and kept between runs.

    Returns the image store's directory and the digest. Baking needs root and mmdebstrap.
    """
    IMAGE_CACHE.mkdir(parents=True, exist_ok=True)
    store = ImageStore(IMAGE_CACHE)
    digest = bake(RECIPES["debian-12-slurm"], store, progress=lambda line: None)
    return IMAGE_CACHE, digest
