"""Per-cluster networks on this machine: a bridge per cluster, a namespace per node.

Each cluster's bridge carries its subnet's first address (the gateway, where the broker
and metadata service answer); each node lives in a network namespace joined to that
bridge by a veth pair, with its address and a route to its own subnet only. No default
route, no NAT: node traffic cannot leave the machine, and one cluster's nodes have no
route to another's.

A cluster whose document asks for `network: {outbound: true}` is the exception: its
nodes also get a default route via the gateway, and outbound.py masquerades what they
send to anything but another cluster. Forwarding between clusters, from outside to a
node, and out of a cluster that did not ask stays dropped (outbound.py says how).

A VM (backends/qemu.py) joins its cluster's bridge by a tap device instead, and sets its
own address, given on its kernel's command line.

Names are derived from ids and kept under the kernel's 15-character limit.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
import subprocess
import threading
from pathlib import Path

from corral.errors import BackendError

log = logging.getLogger(__name__)

PREFIX = "crl"
# boots run in parallel; a cluster's first nodes must not race to create its bridge
_bridges = threading.Lock()
NETNS_DIR = Path("/run/netns")


def _short(text: str, size: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:size]


def gateway_of(subnet: str) -> str:
    """The first address of a cluster subnet, kept for its bridge (where the service listens)."""
    return str(next(ipaddress.ip_network(subnet).hosts()))


def bridge_name(cluster_id: str) -> str:
    return f"{PREFIX}b-{_short(cluster_id)}"


def netns_name(node_id: str) -> str:
    return f"{PREFIX}n-{_short(node_id)}"


def veth_name(node_id: str) -> str:
    """The host side of a node's veth pair (the node side is eth0 in its namespace)."""
    return f"{PREFIX}h-{_short(node_id)}"


def tap_name(node_id: str) -> str:
    """A VM's tap device on its cluster's bridge (the VM's network card is its other end)."""
    return f"{PREFIX}t-{_short(node_id)}"


def processes_in(netns: str) -> list[int]:
    """The pids of every process in network namespace `netns` (none if it does not exist)."""
    try:
        namespace = os.stat(NETNS_DIR / netns)
    except OSError:
        return []
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            inside = os.stat(proc / "ns" / "net")
        except OSError:  # it ended meanwhile
            continue
        if (inside.st_dev, inside.st_ino) == (namespace.st_dev, namespace.st_ino):
            found.append(int(proc.name))
    return found


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `ip ARGS`; raises BackendError with ip's own message when it fails."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise BackendError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def ip_batch(commands: list[str], namespace: str | None = None) -> None:
    """Run `ip` commands in one process (in `namespace`, if given); stops at the first
    that fails. A boot runs a dozen of them, and each process costs several ms."""
    where = ["-n", namespace] if namespace else []
    result = subprocess.run(
        ["ip", *where, "-batch", "-"],
        input="\n".join(commands) + "\n",
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise BackendError(f"ip {' '.join(where)} -batch: {result.stderr.strip()}")


def routes() -> list[tuple[ipaddress.IPv4Network, str]]:
    """Every IPv4 network this machine routes (any table), with the device it goes to.

    The default route, which covers every address, is left out.
    """
    listed = ip("-j", "-4", "route", "show", "table", "all")
    found = []
    for route in json.loads(listed.stdout or "[]"):
        destination = route.get("dst", "default")
        if destination == "default":
            continue
        network = ipaddress.ip_network(destination, strict=False)
        if network.prefixlen and isinstance(network, ipaddress.IPv4Network):
            found.append((network, route.get("dev", "?")))
    return found


def route_clash(subnet: str, own_device: str | None = None) -> str | None:
    """Why `subnet` cannot be a cluster's network here, or None: a route to any part of it
    through another device than `own_device` (another corral's cluster, a VPN, the LAN)."""
    wanted = ipaddress.ip_network(subnet)
    for network, device in routes():
        if device != own_device and network.overlaps(wanted):
            return f"{network} is already routed on this machine through {device}"
    return None


def link_exists(name: str) -> bool:
    return ip("link", "show", "dev", name, check=False).returncode == 0


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def ensure_bridge(cluster_id: str, subnet: str) -> str:
    """Create the cluster's bridge with the gateway address, if it is not there yet.

    Raises BackendError when some other device here already routes part of the subnet:
    the cluster's nodes could not reach the broker, nor each other, and must fail now.
    """
    name = bridge_name(cluster_id)
    network = ipaddress.ip_network(subnet)
    gateway = gateway_of(subnet)
    with _bridges:
        if link_exists(name):
            return name
        clash = route_clash(subnet, own_device=name)
        if clash is not None:
            raise BackendError(
                f"cluster network {subnet} cannot work here: {clash} "
                "(another corral service's cluster, or a network of this machine)"
            )
        ip_batch(
            [
                f"link add {name} type bridge",
                f"addr add {gateway}/{network.prefixlen} dev {name}",
                f"link set {name} up",
            ]
        )
    log.info("network: bridge %s for %s at %s", name, cluster_id, gateway)
    return name


def remove_bridge(cluster_id: str) -> None:
    name = bridge_name(cluster_id)
    with _bridges:
        if not link_exists(name):
            return
        ip("link", "del", name)
    log.info("network: removed bridge %s", name)


def bridge_ports(cluster_id: str) -> list[str]:
    result = ip("-o", "link", "show", "master", bridge_name(cluster_id), check=False)
    return [line.split(":")[1].strip().split("@")[0] for line in result.stdout.splitlines()]


def attach_node(
    node_id: str, cluster_id: str, address: str, subnet: str, outbound: bool = False
) -> str:
    """Make the node's namespace, joined to its cluster's bridge; returns the namespace.

    An `outbound` node also gets a default route via the gateway (its way out is NAT on
    this machine: outbound.py)."""
    namespace = netns_name(node_id)
    host_side = veth_name(node_id)
    prefix = ipaddress.ip_network(subnet).prefixlen
    way_out = [f"route add default via {gateway_of(subnet)}"] if outbound else []
    bridge = ensure_bridge(cluster_id, subnet)
    if not netns_exists(namespace):
        ip("netns", "add", namespace)
    if not link_exists(host_side):
        # the node's end is made as eth0 inside the namespace, never named on this machine
        ip_batch(
            [
                f"link add {host_side} type veth peer name eth0 netns {namespace}",
                f"link set dev {host_side} master {bridge} up",
            ]
        )
        ip_batch(
            [
                f"addr add {address}/{prefix} dev eth0",
                "link set eth0 up",
                "link set lo up",
                *way_out,
            ],
            namespace,
        )
    log.info("network: %s at %s in %s on %s", node_id, address, namespace, bridge)
    return namespace


def attach_tap(node_id: str, cluster_id: str, subnet: str) -> str:
    """Make the node's tap device, joined to its cluster's bridge; returns its name. The VM
    on its other end sets its own address (backends/qemu.py)."""
    tap = tap_name(node_id)
    bridge = ensure_bridge(cluster_id, subnet)
    if not link_exists(tap):
        ip_batch([f"tuntap add dev {tap} mode tap", f"link set dev {tap} master {bridge} up"])
    log.info("network: %s on tap %s on %s", node_id, tap, bridge)
    return tap


def detach_tap(node_id: str) -> None:
    """Remove the node's tap device, if it is there."""
    tap = tap_name(node_id)
    if link_exists(tap):
        ip("link", "del", tap)


def detach_node(node_id: str) -> None:
    """Remove the node's namespace and veth pair; what is already gone is fine."""
    host_side = veth_name(node_id)
    if link_exists(host_side):
        ip("link", "del", host_side)
    namespace = netns_name(node_id)
    if netns_exists(namespace):
        ip("netns", "del", namespace)
