"""Cluster networks beside what this machine already routes (another corral service's
clusters, a VPN): a subnet routed here is never handed out, and a bridge whose subnet
turns out to be routed here already is refused at once, saying why.

Needs root: each test makes a bridge of its own, with a route to a subnet picked
unused, and removes both, also when it fails.
"""

from __future__ import annotations

import ipaddress
import random
import secrets
import subprocess

import pytest
from inprocess import admin_token, api, wait_for

from corral.backends import network
from corral.backends.nspawn import NspawnBackend
from corral.errors import BackendError
from corral.store.models import Image


@pytest.fixture
def routed_elsewhere():
    """A /24 routed on this machine through a bridge of its own (as another service's bridge
    would be): (the /24, the device's name)."""
    taken = [n for n, _ in network.routes()]
    while True:
        # the first /24 of its /23, so that a pool of that /23 would hand it out first
        third = random.randrange(0, 256, 2)
        subnet = ipaddress.ip_network(f"10.{random.randrange(232, 240)}.{third}.0/24")
        if not any(subnet.overlaps(n) for n in taken):
            break
    device = f"crlt-{secrets.token_hex(3)}"
    subprocess.run(["ip", "link", "add", device, "type", "bridge"], check=True)
    try:
        gateway = next(subnet.hosts())
        subprocess.run(["ip", "addr", "add", f"{gateway}/24", "dev", device], check=True)
        subprocess.run(["ip", "link", "set", device, "up"], check=True)
        yield subnet, device
    finally:
        subprocess.run(["ip", "link", "del", device], check=False)


def test_the_routes_of_this_machine_are_read(routed_elsewhere):
    subnet, device = routed_elsewhere
    assert (subnet, device) in network.routes()
    assert network.route_clash(str(subnet)) == (
        f"{subnet} is already routed on this machine through {device}"
    )
    assert network.route_clash(str(subnet), own_device=device) is None


def test_a_launch_is_never_given_a_subnet_routed_here(make_service, tmp_path, routed_elsewhere):
    subnet, _ = routed_elsewhere
    backend = NspawnBackend(tmp_path / "nspawn")
    # the pool's range starts with the routed /24, as a second service's range would
    service = make_service(
        backend=backend, backend_name="nspawn", address_range=str(subnet.supernet(new_prefix=23))
    )
    with service.store.session() as session:
        session.add(Image(name="test", digest="sha256:" + "0" * 64))
    client = api(service, admin_token(service))
    document = "image: test\nnodes: [{group: head}]\n"
    created = client.post("/v1/clusters", json={"document": document})
    assert created.status_code == 201, created.text
    given = ipaddress.ip_network(created.json()["subnet"])
    assert given == list(subnet.supernet(new_prefix=23).subnets(new_prefix=24))[1]
    # (its image has no files: the node fails to boot, and the cluster's nodes go)
    client.delete(f"/v1/clusters/{created.json()['id']}")
    wait_for(
        lambda: client.get(f"/v1/clusters/{created.json()['id']}").json()["state"] == "terminated",
        timeout=30,
    )


def test_a_bridge_for_a_subnet_routed_here_is_refused_saying_why(routed_elsewhere):
    subnet, device = routed_elsewhere
    cluster_id = f"c-test{secrets.token_hex(2)}"
    try:
        with pytest.raises(BackendError, match=f"routed on this machine through {device}"):
            network.ensure_bridge(cluster_id, str(subnet))
        assert not network.link_exists(network.bridge_name(cluster_id))
    finally:
        network.remove_bridge(cluster_id)  # were it made after all
