"""A way out for the clusters that ask for it (`network: {outbound: true}`): NAT to the
service machine's networks, and its DNS resolvers.

A node of such a cluster has a default route via its bridge (network.py); this module
makes the machine route and masquerade that traffic, and gives the node a resolv.conf.
A cluster that does not ask gets none of it, and stays as closed as before.

The rules live in one nftables table, `inet corral`, shared by every corral service on
this machine: an `accept` in one table's forward chain does not stop a `drop` in
another's, so per-cluster or per-service tables could not work together. It holds

    set outbound       the bridges (crlb-*) of the clusters that have a way out
    chain forward      accept what goes back out of the corral bridge it came in on:
                       traffic between two nodes of one cluster, which passes here
                       (in and out of the bridge) where br_netfilter is loaded;
                       accept what enters from an outbound bridge for anything but a
                       corral bridge, and the replies to it (established, related);
                       drop every other packet to or from a corral bridge;
                       and, where corral turned forwarding on, drop every other packet
    chain postrouting  masquerade what leaves an outbound bridge for anything but a
                       corral bridge

Forwarding. Routed traffic needs `net.ipv4.ip_forward` = 1. Where it is 0, the first
outbound cluster turns it on (once the table is in place) and the forward chain then
ends with a rule, commented FORWARDING_WAS_OFF, that drops every forwarded packet the
rules above do not accept: the machine forwards nothing it did not forward before. The
last outbound cluster to go turns it off again (before the table goes). Where it was on
already, it stays on and other forwarding is left to the site. Either way a corral
bridge whose cluster has no way out forwards nothing, as with forwarding off, even when
a node's root adds routes of its own, and nothing from outside reaches a node.

Every change holds a file lock (several services may share this machine) and writes the
whole table in one nft transaction, so no packet ever sees half of it.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import logging
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from corral.backends import network
from corral.errors import BackendError

log = logging.getLogger(__name__)

TABLE = "corral"
BRIDGES = f"{network.PREFIX}b-*"  # every corral bridge, of any service on this machine
FORWARDING_WAS_OFF = "corral turned net.ipv4.ip_forward on: drop what it did not forward"
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
LOCK = Path("/run/lock/corral-outbound.lock")
HOST_RESOLV_CONF = Path("/etc/resolv.conf")
# systemd-resolved's upstream servers, where /etc/resolv.conf names its loopback stub
RESOLVED_UPSTREAM = Path("/run/systemd/resolve/resolv.conf")
_BRIDGE_NAME = re.compile(rf"^{network.PREFIX}b-[0-9a-f]{{8}}$")


@dataclass(frozen=True)
class Table:
    """What the table holds: the outbound clusters' bridges, and whether corral turned
    forwarding on (and so drops every other forwarded packet)."""

    bridges: frozenset[str]
    turned_forwarding_on: bool


def open_cluster(cluster_id: str) -> None:
    """Give the cluster's bridge a way out: NAT, and forwarding for it alone.

    Raises BackendError when nft is missing or refuses the rules.
    """
    bridge = network.bridge_name(cluster_id)
    with _locked():
        table = read_table()
        forwarding = _forwarding()
        if table is not None and bridge in table.bridges and forwarding:
            return
        present = table.bridges if table is not None else frozenset()
        # forwarding that is off now, whoever turned it off, is corral's to turn on
        turned_on = (table.turned_forwarding_on if table is not None else False) or not forwarding
        _nft(ruleset(Table(_existing(present) | {bridge}, turned_on)))
        if not forwarding:
            _set_forwarding(True)
            log.info("outbound: turned net.ipv4.ip_forward on (it was off)")
    log.info("outbound: NAT for cluster %s on %s", cluster_id, bridge)


def close_cluster(cluster_id: str) -> None:
    """Take the cluster's way out away, and the table with the last one (turning
    forwarding off again if corral turned it on). Nothing to take away is fine."""
    bridge = network.bridge_name(cluster_id)
    with _locked():
        table = read_table()
        if table is None:
            return
        left = _existing(table.bridges - {bridge})
        if left == table.bridges:
            return
        if left:
            _nft(ruleset(Table(left, table.turned_forwarding_on)))
        else:
            if table.turned_forwarding_on:
                _set_forwarding(False)  # before the rules that kept it narrow go
                log.info("outbound: turned net.ipv4.ip_forward off again")
            _nft(f"delete table inet {TABLE}\n")
    if bridge in table.bridges:
        log.info("outbound: removed NAT for cluster %s", cluster_id)


def read_table() -> Table | None:
    """The table as it is now, or None where there is none (or no nft at all)."""
    try:
        listed = subprocess.run(
            ["nft", "-j", "list", "table", "inet", TABLE], capture_output=True, text=True
        )
    except FileNotFoundError:
        return None
    if listed.returncode != 0:
        return None
    bridges: set[str] = set()
    turned_on = False
    for item in json.loads(listed.stdout).get("nftables", []):
        if "set" in item and item["set"].get("name") == "outbound":
            bridges.update(e for e in item["set"].get("elem", []) if isinstance(e, str))
        if "rule" in item and item["rule"].get("comment") == FORWARDING_WAS_OFF:
            turned_on = True
    return Table(frozenset(bridges), turned_on)


def ruleset(table: Table) -> str:
    """The nft script that replaces the table with `table`, in one transaction."""
    for bridge in table.bridges:
        if not _BRIDGE_NAME.match(bridge):
            raise BackendError(f"outbound: {bridge!r} is not a corral bridge")
    names = ", ".join(f'"{b}"' for b in sorted(table.bridges))
    elements = f" elements = {{ {names} }};" if names else ""
    last = f'\t\tdrop comment "{FORWARDING_WAS_OFF}"\n' if table.turned_forwarding_on else ""
    return (
        f"table inet {TABLE} {{}}\n"
        f"delete table inet {TABLE}\n"
        f"table inet {TABLE} {{\n"
        f"\tset outbound {{ type ifname;{elements} }}\n"
        "\tchain forward {\n"
        "\t\ttype filter hook forward priority filter; policy accept;\n"
        f'\t\tiifname "{BRIDGES}" meta pkttype {{ broadcast, multicast }} accept\n'
        f'\t\tiifname "{BRIDGES}" fib daddr . iif oif exists accept\n'
        f'\t\tiifname @outbound oifname != "{BRIDGES}" accept\n'
        f'\t\tiifname != "{BRIDGES}" oifname @outbound ct state established,related accept\n'
        f'\t\tiifname "{BRIDGES}" drop\n'
        f'\t\toifname "{BRIDGES}" drop\n'
        f"{last}"
        "\t}\n"
        "\tchain postrouting {\n"
        "\t\ttype nat hook postrouting priority srcnat; policy accept;\n"
        f'\t\tiifname @outbound oifname != "{BRIDGES}" masquerade\n'
        "\t}\n"
        "}\n"
    )


def _existing(bridges: frozenset[str]) -> frozenset[str]:
    """The bridges still on this machine: a crash may have left a gone cluster's name."""
    return frozenset(b for b in bridges if (Path("/sys/class/net") / b).exists())


def _nft(script: str) -> None:
    """Run an nft script as one transaction; raises BackendError saying what failed."""
    try:
        result = subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True)
    except FileNotFoundError:
        raise BackendError(
            "outbound access needs nft on the service machine (apt install nftables)"
        ) from None
    if result.returncode != 0:
        raise BackendError(f"outbound: nft refused the rules: {result.stderr.strip()}")


def _forwarding() -> bool:
    return IP_FORWARD.read_text().strip() != "0"


def _set_forwarding(on: bool) -> None:
    IP_FORWARD.write_text("1\n" if on else "0\n")


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """Hold the machine-wide lock every corral process takes to change the table."""
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# -- DNS -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resolvers:
    """Name servers a node can reach through NAT, and the search domains beside them."""

    nameservers: tuple[str, ...]
    search: tuple[str, ...]
    source: Path  # the file they were read from

    def resolv_conf(self) -> str:
        lines = [f"# written by corral for an outbound node: the resolvers of {self.source}"]
        lines += [f"nameserver {address}" for address in self.nameservers]
        if self.search:
            lines.append(f"search {' '.join(self.search)}")
        return "\n".join(lines) + "\n"


def node_resolvers(
    host: Path = HOST_RESOLV_CONF, upstream: Path = RESOLVED_UPSTREAM
) -> Resolvers | None:
    """The service machine's resolvers, as a node can reach them, or None (and a warning
    in the log) when it has none a node can reach.

    A resolver on loopback (systemd-resolved's 127.0.0.53, a local dnsmasq) answers on the
    machine only; then systemd-resolved's upstream list is used, where there is one.
    Nodes have IPv4 alone, so IPv6 resolvers are left out too.
    """
    for path in (host, upstream):
        found = _read_resolvers(path)
        if found is not None and found.nameservers:
            return found
    log.warning(
        "outbound: no resolver of this machine can be reached from a node (%s names none "
        "but loopback or IPv6 ones, and %s has none); outbound nodes keep their image's "
        "resolv.conf",
        host,
        upstream,
    )
    return None


def _read_resolvers(path: Path) -> Resolvers | None:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    nameservers: list[str] = []
    search: tuple[str, ...] = ()
    for line in text.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) >= 2 and words[0] == "nameserver":
            try:
                address = ipaddress.ip_address(words[1])
            except ValueError:
                continue
            if address.version == 4 and not address.is_loopback and not address.is_unspecified:
                nameservers.append(str(address))
        elif words and words[0] in ("search", "domain"):
            search = tuple(words[1:])  # the last one wins, as in the resolver
    return Resolvers(tuple(dict.fromkeys(nameservers)), search, path)


def write_resolv_conf(root: Path, resolvers: Resolvers | None) -> None:
    """Give the node whose root is `root` these resolvers; with None, leave its image's.

    An image's /etc/resolv.conf may be a symlink (to resolved's stub, say): it is replaced
    by a file, never followed, since an absolute link would point into this machine.
    """
    if resolvers is None:
        return
    path = root / "etc" / "resolv.conf"
    if path.is_symlink():
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as out:
        out.write(resolvers.resolv_conf())
