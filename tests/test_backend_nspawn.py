"""The backend contract against real systemd-nspawn containers (as root, slow)."""

from __future__ import annotations

import ipaddress
import itertools
import os
import random

import pytest
from backend_contract import BackendContract, BootOrder

from corral.backends import network
from corral.backends.base import ImageRef, NodeSpec, Placement
from corral.backends.nspawn import NspawnBackend
from corral.images.store import ImageStore

pytestmark = pytest.mark.slow


def free_subnet() -> ipaddress.IPv4Network:
    """A /24 nothing on this machine routes, away from the ranges services default to."""
    taken = [n for n, _ in network.routes()]
    candidates = (
        ipaddress.ip_network(f"10.{random.randrange(224, 232)}.{i}.0/24") for i in range(256)
    )
    return next(s for s in candidates if not any(s.overlaps(n) for n in taken))


class TestNspawnBackendContract(BackendContract):
    boot_timeout = 60.0
    console_shows = "Reached target"  # systemd's boot, as the container printed it
    poll_interval = 0.2

    @pytest.fixture
    def backend(self, tmp_path):
        if reason := NspawnBackend.detect():
            pytest.fail(reason)  # CI runs as root with systemd-container installed
        backend = NspawnBackend(tmp_path / "nspawn")
        yield backend
        for machine in backend.list_machines():
            backend.terminate(machine.node_id)
        backend.close()

    @pytest.fixture
    def spec_factory(self, baked, request):
        cache, digest = baked
        image = ImageRef("debian-12-slurm", digest, ImageStore(cache).path(digest))
        cluster = f"c-contract{os.getpid()}-{random.randrange(1 << 16):04x}"
        subnet = free_subnet()
        hosts = itertools.islice(subnet.hosts(), 1, None)  # the first is the bridge's
        ids = itertools.count()

        def spec(node: str) -> BootOrder:
            node_spec = NodeSpec(f"n-{cluster}-{next(ids)}", cluster, node, image, 1, 512)
            return BootOrder(node_spec, Placement("local", "local", str(next(hosts)), str(subnet)))

        yield spec
        network.remove_bridge(cluster)
        assert not network.link_exists(network.bridge_name(cluster))
