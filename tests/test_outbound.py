"""A way out for clusters that ask for it (`network: {outbound: true}`), and for no other.

The document field, the site's setting and the engine's order run in-process on the
fake backend. The network tests need root and nft: network namespaces stand in for
nodes, joined to their clusters' bridges as the nspawn backend joins them, and a
namespace of the test's own stands in for the outside, with a veth to this machine, an
address in a /24 of its own and a web server. Everything a test makes (namespaces,
links, the nft table, processes) has a unique name and is removed, also when it fails.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import random
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from inprocess import admin_token, api, wait_for
from sqlalchemy import func, select

from corral.backends import network, outbound
from corral.backends.fake import FakeBackend
from corral.document import parse_document
from corral.errors import DocumentError
from corral.images.store import ImageStore
from corral.service.config import PoolConfig, ServiceConfig
from corral.service.config_file import read_config_file
from corral.store.models import Cluster, Event, Image, Node, SubnetAllocation

OUTBOUND = "image: x\nnetwork: {outbound: true}\nnodes: [{group: head}, {group: worker}]\n"
CLOSED = "image: x\nnodes: [{group: head}]\n"


# -- the document and the site ----------------------------------------------------------


def test_a_document_keeps_its_way_out_only_when_it_asks_for_one():
    asked = parse_document(OUTBOUND)
    assert asked.network.outbound
    assert asked.to_dict()["network"] == {"outbound": True}
    assert type(asked).from_json(asked.to_json()) == asked
    closed = parse_document(CLOSED)
    assert not closed.network.outbound
    assert "network" not in closed.to_dict()  # stored documents stay as they were
    with pytest.raises(DocumentError, match=r"line 2: network.outbund: unknown field"):
        parse_document("image: x\nnetwork: {outbund: true}\nnodes: [{group: head}]\n")


def test_a_site_forbids_outbound_per_pool_in_its_file(tmp_path):
    path = tmp_path / "corral.yaml"
    path.write_text(
        "pools:\n"
        "  - {name: open, backend: fake}\n"
        "  - {name: closed, backend: fake, address_range: 10.181.0.0/16, allow_outbound: false}\n"
    )
    config = ServiceConfig()
    read_config_file(path, config)
    assert [(p.name, p.allow_outbound) for p in config.pool_configs()] == [
        ("open", True),
        ("closed", False),
    ]
    assert ServiceConfig(allow_outbound=False).pool_configs()[0].allow_outbound is False


def rows(service) -> dict[str, int]:
    with service.store.session() as session:
        return {
            model.__tablename__: session.scalar(select(func.count()).select_from(model))
            for model in (Cluster, Node, Event, SubnetAllocation)
        }


def test_a_launch_asking_for_a_way_out_where_it_is_forbidden_is_refused_and_creates_nothing(
    make_service,
):
    fast = {"boot_delay": "0.05"}
    service = make_service(
        pools=(
            PoolConfig("closed", "fake", fast, "10.190.0.0/16", allow_outbound=False),
            PoolConfig("open", "fake", fast, "10.191.0.0/16"),
        )
    )
    client = api(service, admin_token(service))
    before = rows(service)
    refused = client.post("/v1/clusters", json={"document": OUTBOUND})
    assert refused.status_code == 409, refused.text
    body = refused.json()
    assert body["error"] == "refused"
    assert body["message"].startswith("network.outbound: pool closed does not allow")
    assert body["details"] == {"field": "network.outbound", "pool": "closed"}
    assert rows(service) == before
    assert service.pools.get("closed").backend.list_machines() == []
    # the same pool takes a cluster that does not ask, and another pool takes this one
    for text, pool in ((CLOSED, "closed"), (OUTBOUND, "open")):
        created = client.post("/v1/clusters", json={"document": text, "pool": pool})
        assert created.status_code == 201, created.text


class SpecsKept(FakeBackend):
    """The fake backend, keeping every NodeSpec it is asked to boot."""

    def __init__(self) -> None:
        super().__init__(boot_delay=0.05)
        self.specs = []

    def boot(self, spec, placement):
        self.specs.append(spec)
        return super().boot(spec, placement)


def test_the_engine_tells_the_backend_which_nodes_have_a_way_out(make_service):
    backend = SpecsKept()
    service = make_service(backend=backend)
    client = api(service, admin_token(service))
    launched = {}
    for text in (OUTBOUND, CLOSED):
        created = client.post("/v1/clusters", json={"document": text})
        assert created.status_code == 201, created.text
        launched[created.json()["id"]] = "network: {outbound: true}" in text
    wait_for(lambda: len(backend.specs) == 3)
    assert {(s.cluster_id, s.outbound) for s in backend.specs} == set(launched.items())


# -- DNS --------------------------------------------------------------------------------


def test_an_outbound_node_is_given_the_resolvers_of_this_machine_it_can_reach(tmp_path):
    host = tmp_path / "resolv.conf"
    upstream = tmp_path / "upstream.conf"
    host.write_text("nameserver 10.1.2.3\nnameserver 127.0.0.1\nsearch lab.example\n")
    found = outbound.node_resolvers(host, upstream)
    assert (found.nameservers, found.search) == (("10.1.2.3",), ("lab.example",))
    # systemd-resolved's stub answers on loopback only: its upstream servers are used
    host.write_text("nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n")
    upstream.write_text("nameserver 192.0.2.53\nnameserver 2001:db8::53\nsearch lab.example\n")
    found = outbound.node_resolvers(host, upstream)
    assert found.nameservers == ("192.0.2.53",)  # nodes have no IPv6
    assert found.source == upstream
    assert found.resolv_conf().splitlines()[1:] == ["nameserver 192.0.2.53", "search lab.example"]


def test_without_a_resolver_a_node_can_reach_it_keeps_its_images_and_the_log_says_so(
    tmp_path, caplog
):
    host = tmp_path / "resolv.conf"
    host.write_text("nameserver 127.0.0.53\n")
    with caplog.at_level(logging.WARNING, logger="corral.backends.outbound"):
        found = outbound.node_resolvers(host, tmp_path / "no-resolved.conf")
    assert found is None
    assert "no resolver of this machine can be reached from a node" in caplog.text
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "resolv.conf").write_text("# the image's\n")
    outbound.write_resolv_conf(root, found)
    assert (root / "etc" / "resolv.conf").read_text() == "# the image's\n"


def test_an_images_resolv_conf_link_is_replaced_never_followed(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    outside_the_root = tmp_path / "stub-resolv.conf"
    outside_the_root.write_text("nameserver 127.0.0.53\n")
    (root / "etc" / "resolv.conf").symlink_to(outside_the_root)
    resolvers = outbound.Resolvers(("10.1.2.3",), (), Path("/etc/resolv.conf"))
    outbound.write_resolv_conf(root, resolvers)
    written = root / "etc" / "resolv.conf"
    assert not written.is_symlink()
    assert written.read_text() == resolvers.resolv_conf()
    assert outside_the_root.read_text() == "nameserver 127.0.0.53\n"


# -- the network ------------------------------------------------------------------------


PROBE = (
    "import sys, urllib.request\n"
    "try:\n"
    "    print(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode())\n"
    "except OSError as exc:\n"
    "    print('unreachable', exc)\n"
)
PAGE = "hello from outside"
# http.server's own HTTPServer looks its address up in DNS first, which takes seconds in
# a namespace whose default route leads nowhere
SERVER = (
    "import functools, http.server, socketserver, sys\n"
    "class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):\n"
    "    allow_reuse_address = True\n"
    "handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[3])\n"
    "Server((sys.argv[1], int(sys.argv[2])), handler).serve_forever()\n"
)


def free_subnets(count: int) -> list[ipaddress.IPv4Network]:
    """`count` /24s that nothing on this machine routes, picked at random."""
    taken = [n for n, _ in network.routes()]
    found: list[ipaddress.IPv4Network] = []
    while len(found) < count:
        subnet = ipaddress.ip_network(
            f"10.{random.randrange(232, 240)}.{random.randrange(256)}.0/24"
        )
        if not any(subnet.overlaps(n) for n in taken + found):
            found.append(subnet)
    return found


@dataclass
class NodeNamespace:
    namespace: str
    address: str
    cluster_id: str
    gateway: str


class Lab:
    """Namespaces, links and servers for one test; `close` removes every one of them."""

    def __init__(self, tmp_path: Path, site_forwards: bool = False) -> None:
        self.tmp_path = tmp_path
        self.site_forwards = site_forwards
        self.tag = secrets.token_hex(3)
        self.subnets = free_subnets(5)  # the outsides' (0, 4) and three clusters'(1-3)
        self.servers: list[subprocess.Popen] = []
        self.namespaces: list[str] = []
        self.links: list[str] = []
        self.nodes: list[tuple[str, str]] = []  # (node id, cluster id)

    def outside(self, second: bool = False) -> tuple[str, str]:
        """A network beyond this machine: a namespace with a veth to this machine, an
        address, a default route via this machine and a web server; (namespace, URL)."""
        subnet = self.subnets[4 if second else 0]
        host_address, address = list(subnet.hosts())[:2]
        namespace = f"crlt-out{int(second)}-{self.tag}"
        link = f"crlt{int(second)}-{self.tag}"
        self._ip("netns", "add", namespace)
        self.namespaces.append(namespace)
        self._ip(
            "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", namespace
        )  # fmt: skip
        self.links.append(link)
        self._ip("addr", "add", f"{host_address}/24", "dev", link)
        self._ip("link", "set", link, "up")
        inside = ["-n", namespace]
        self._ip(*inside, "addr", "add", f"{address}/24", "dev", "eth0")
        self._ip(*inside, "link", "set", "eth0", "up")
        self._ip(*inside, "link", "set", "lo", "up")
        # a neighbour that routes everything through this machine, corral's clusters too
        self._ip(*inside, "route", "add", "default", "via", str(host_address))
        return namespace, self.serve(namespace, str(address), PAGE)

    def node(self, cluster: int, outbound_: bool) -> NodeNamespace:
        """A node of test cluster `cluster` (1..3), as the nspawn backend attaches one."""
        subnet = self.subnets[cluster]
        cluster_id = f"c-ob{self.tag}{cluster}"
        node_id = f"w-ob{self.tag}{cluster}{len(self.nodes)}"
        address = str(list(subnet.hosts())[1 + len(self.nodes)])
        self.nodes.append((node_id, cluster_id))
        namespace = network.attach_node(node_id, cluster_id, address, str(subnet), outbound_)
        if outbound_:
            outbound.open_cluster(cluster_id)
        return NodeNamespace(namespace, address, cluster_id, network.gateway_of(str(subnet)))

    def serve(self, namespace: str, address: str, page: str) -> str:
        """A web server in `namespace` at `address`, serving `page`; its URL."""
        directory = self.tmp_path / f"www-{namespace}"
        directory.mkdir()
        (directory / "index.html").write_text(page)
        port = random.randrange(20000, 30000)
        command = [sys.executable, "-c", SERVER, address, str(port), str(directory)]
        server = subprocess.Popen(
            ["ip", "netns", "exec", namespace, *command],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.servers.append(server)
        deadline = time.monotonic() + 10
        while True:  # this machine reaches every test address directly
            try:
                socket.create_connection((address, port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.05)
        return f"http://{address}:{port}/"

    def fetch(self, namespace: str, url: str) -> str:
        """What `url` gives from inside `namespace`, or `unreachable ...`."""
        probe = subprocess.run(
            ["ip", "netns", "exec", namespace, sys.executable, "-c", PROBE, url],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert probe.returncode == 0, probe.stderr
        return probe.stdout.strip()

    def close(self) -> None:
        """Remove everything the lab made; again is fine."""
        for server in self.servers:
            server.kill()
            server.wait()
        clusters = sorted({cluster_id for _, cluster_id in self.nodes})
        for cluster_id in clusters:
            outbound.close_cluster(cluster_id)
        for node_id, _ in self.nodes:
            network.detach_node(node_id)
        for cluster_id in clusters:
            network.remove_bridge(cluster_id)
        for link in self.links:
            subprocess.run(["ip", "link", "del", link], capture_output=True)
        for namespace in self.namespaces:
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)

    @staticmethod
    def _ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)


@contextlib.contextmanager
def lab_on(tmp_path: Path, site_forwards: bool) -> Iterator[Lab]:
    """A Lab; with `site_forwards`, on a machine whose forwarding was on before corral."""
    forwarding = outbound.IP_FORWARD.read_text()
    made = Lab(tmp_path, site_forwards)
    try:
        if site_forwards:
            outbound.IP_FORWARD.write_text("1\n")
        yield made
        made.close()
        # with the last outbound cluster, the table goes and forwarding is as it was
        assert outbound.read_table() is None
        assert outbound.IP_FORWARD.read_text() == ("1\n" if site_forwards else forwarding)
    finally:
        made.close()
        outbound.IP_FORWARD.write_text(forwarding)
    assert not any(made.tag in n for n in _namespaces())


@pytest.fixture(params=["forwarding-off", "forwarding-on"])
def lab(request, tmp_path):
    """A Lab on this machine as it is (forwarding off), and as on a site where forwarding
    is on already (a router, a container host): there corral's rules alone keep clusters
    closed, and other forwarding is the site's."""
    with lab_on(tmp_path, request.param == "forwarding-on") as made:
        yield made


def _namespaces() -> list[str]:
    listed = subprocess.run(["ip", "netns"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in listed.splitlines() if line.strip()]


def test_an_outbound_node_reaches_the_outside_and_a_closed_one_does_not(lab):
    _, url = lab.outside()
    out = lab.node(1, outbound_=True)
    closed = lab.node(2, outbound_=False)
    assert lab.fetch(out.namespace, url) == PAGE
    assert lab.fetch(closed.namespace, url).startswith("unreachable")
    # forwarding is on now: a closed node's root that adds a default route of its own
    # still gets nowhere
    add_default_route(closed)
    assert lab.fetch(closed.namespace, url).startswith("unreachable")


def test_an_outbound_cluster_still_cannot_reach_another_cluster(lab):
    out = lab.node(1, outbound_=True)
    neighbour = lab.node(1, outbound_=True)
    other_out = lab.node(2, outbound_=True)
    closed = lab.node(3, outbound_=False)
    for target in (other_out, closed):
        url = lab.serve(target.namespace, target.address, "a node")
        assert lab.fetch(out.namespace, url).startswith("unreachable")
    # nor the other way, even with a route of the closed node's root's own
    add_default_route(closed)
    url = lab.serve(out.namespace, out.address, "a node")
    assert lab.fetch(other_out.namespace, url).startswith("unreachable")
    assert lab.fetch(closed.namespace, url).startswith("unreachable")
    assert lab.fetch(neighbour.namespace, url) == "a node"  # within the cluster it works


def test_the_outside_cannot_reach_a_node(lab):
    outside, _ = lab.outside()
    out = lab.node(1, outbound_=True)
    closed = lab.node(2, outbound_=False)
    for target in (out, closed):
        url = lab.serve(target.namespace, target.address, "a node")
        assert lab.fetch(outside, url).startswith("unreachable")


def test_other_forwarding_on_this_machine_is_as_it_was(lab):
    first, _ = lab.outside()
    _, url = lab.outside(second=True)
    lab.node(1, outbound_=True)  # forwarding is on now, if it was off
    # two networks this machine did not route between before, it does not now; where the
    # site routed between them, it still does
    reached = lab.fetch(first, url)
    assert reached == PAGE if lab.site_forwards else reached.startswith("unreachable")


def add_default_route(node: NodeNamespace) -> None:
    """What a node's root could do: route everything via the bridge's gateway."""
    subprocess.run(
        ["ip", "-n", node.namespace, "route", "add", "default", "via", node.gateway], check=True
    )


# -- a real cluster ---------------------------------------------------------------------

SOCKET_PROBE = (
    "import socket, sys\n"
    "try:\n"
    "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()\n"
    "    print('reached')\n"
    "except OSError as exc:\n"
    "    print('unreachable', exc)\n"
)


def in_container(node_id: str, *command: str) -> str:
    """Run `command` inside the node's container (its files, its network); its output."""
    init = min(network.processes_in(network.netns_name(node_id)))
    ran = subprocess.run(
        ["nsenter", "-t", str(init), "-m", "-u", "-i", "-n", "-p", "--", *command],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert ran.returncode == 0, ran.stderr
    return ran.stdout


@pytest.mark.slow
def test_a_real_outbound_node_reaches_the_outside_and_a_closed_one_does_not(
    make_service, baked, tmp_path
):
    cache, digest = baked
    data_dir = tmp_path / "svc"
    data_dir.mkdir()
    (data_dir / "images").symlink_to(cache)
    forwarding = outbound.IP_FORWARD.read_text()
    with lab_on(tmp_path, site_forwards=False) as lab:
        _, url = lab.outside()
        service = make_service(data_dir=data_dir, serve=True, backend_name="nspawn")
        with service.store.session() as session:
            session.add(Image(name="debian-12-slurm", digest=digest))
        client = api(service, admin_token(service))
        clusters = {}
        for text in (OUTBOUND, CLOSED):
            text = text.replace("image: x", "image: debian-12-slurm")
            created = client.post("/v1/clusters", json={"document": text})
            assert created.status_code == 201, created.text
            clusters["network" in text] = created.json()["id"]

        def view(cluster_id: str) -> dict:
            return client.get(f"/v1/clusters/{cluster_id}").json()

        for cluster_id in clusters.values():
            wait_for(lambda c=cluster_id: view(c)["state"] != "launching", timeout=300, interval=1)
            assert view(cluster_id)["state"] == "ready", view(cluster_id)
        out, closed = view(clusters[True])["nodes"], view(clusters[False])["nodes"][0]

        python = ["python3", "-c", PROBE, url]
        assert in_container(out[0]["id"], *python).strip() == PAGE
        assert in_container(closed["id"], *python).startswith("unreachable")
        resolvers = outbound.node_resolvers()
        image_has = (ImageStore(cache).path(digest) / "etc" / "resolv.conf").read_text()
        expected = resolvers.resolv_conf() if resolvers else image_has
        assert in_container(out[0]["id"], "cat", "/etc/resolv.conf") == expected
        assert in_container(closed["id"], "cat", "/etc/resolv.conf") == image_has
        # its own cluster's nodes, yes (sshd listens on each); another cluster's, no
        ssh = ["python3", "-c", SOCKET_PROBE]
        assert in_container(out[0]["id"], *ssh, out[1]["address"], "22").startswith("reached")
        assert in_container(out[0]["id"], *ssh, closed["address"], "22").startswith("unreach")

        for cluster_id in clusters.values():
            client.delete(f"/v1/clusters/{cluster_id}")
        for cluster_id in clusters.values():
            wait_for(lambda c=cluster_id: view(c)["state"] == "terminated", timeout=120, interval=1)
        # the way out went with the cluster's last node
        assert outbound.read_table() is None
        assert outbound.IP_FORWARD.read_text() == forwarding
