"""What the backends that run machines on this machine share (nspawn's containers, qemu's
VMs): each machine is a process of its own session, so it outlives the service; it is
recorded (pid and directory) in a state file, so a restarted service finds it again;
it lives on its cluster's bridge (backends/network.py), where it reaches the service at
the gateway; the cluster's /home is one directory here, `homes/<cluster id>` under the
backend's root, which every machine of the cluster mounts and which goes with its last
machine; and what its console prints is kept apart (backends/consoles.py) until its
cluster's clean_up.

A backend says how a machine starts (`_start_machine`), stops (`_stop`) and is removed
(`_clean`); this class does the rest of the interface.
"""

from __future__ import annotations

import abc
import ipaddress
import logging
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from corral.backends import network, outbound
from corral.backends.base import Backend, Machine, MachineState, NodeSpec, Placement
from corral.backends.consoles import Consoles, last_lines, read_tail
from corral.backends.machine_records import load_records, save_records
from corral.backends.processes import alive
from corral.errors import BackendError

log = logging.getLogger(__name__)


@dataclass
class LocalMachine:
    node_id: str
    cluster_id: str
    node: str
    host: str
    address: str
    pid: int
    directory: str


class LocalMachines(Backend):
    """Machines on this machine, one bridge per cluster; see the module docstring."""

    kind: ClassVar[str]  # what a machine is called in messages: "container", "VM"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.state_file = root / "machines.json"
        self.consoles = Consoles(root)
        self.homes = root / "homes"
        self._lock = threading.Lock()
        self._machines = load_records(self.state_file, LocalMachine)

    # -- what each backend does its own way ----------------------------------------------

    @abc.abstractmethod
    def _start_machine(self, spec: NodeSpec, placement: Placement, directory: Path) -> int:
        """Make and start the node's machine in `directory`; returns its process's pid."""

    @abc.abstractmethod
    def _stop(self, machine: LocalMachine) -> None:
        """Power the machine off, or kill it when it does not go in time."""

    @abc.abstractmethod
    def _clean(self, node_id: str, cluster_id: str | None, directory: str) -> None:
        """Remove what is left of a machine (also one a crash left half-made), and with
        the last of its cluster the cluster's bridge and /home (`_release_cluster`)."""

    # -- the interface -------------------------------------------------------------------

    def boot(self, spec: NodeSpec, placement: Placement) -> Machine:
        with self._lock:
            existing = self._machines.get(spec.node_id)
        if existing is not None:
            return self._view(existing)
        if spec.image.rootfs is None or not spec.image.rootfs.is_dir():
            raise BackendError(
                f"{spec.name}: image {spec.image.name} ({spec.image.digest or 'no digest'}) "
                "is not in the image store",
                node=spec.name,
            )
        directory = self.root / spec.node_id
        if directory.exists():
            # a boot that a crash cut short before it was recorded: its machine may run
            self._clean(spec.node_id, None, str(directory))
        try:
            pid = self._start_machine(spec, placement, directory)
        except (OSError, BackendError) as exc:
            self._clean(spec.node_id, spec.cluster_id, str(directory))
            raise BackendError(f"{spec.name}: could not start its {self.kind}: {exc}") from exc
        machine = LocalMachine(
            spec.node_id,
            spec.cluster_id,
            spec.name,
            placement.host,
            placement.address,
            pid,
            str(directory),
        )
        with self._lock:
            self._machines[spec.node_id] = machine
            save_records(self.state_file, self._machines)
        log.info(
            "%s: booting %s (%s) at %s, pid %d",
            self.name,
            spec.name,
            spec.node_id,
            placement.address,
            pid,
        )
        return self._view(machine)

    def terminate(self, node_id: str) -> None:
        with self._lock:
            machine = self._machines.get(node_id)
        if machine is None:
            # nothing recorded; still remove what a crash between steps may have left
            self._clean(node_id, None, str(self.root / node_id))
            return
        self._stop(machine)
        self._clean(node_id, machine.cluster_id, machine.directory)
        with self._lock:
            self._machines.pop(node_id, None)
            save_records(self.state_file, self._machines)
        log.info("%s: terminated %s (%s)", self.name, machine.node, node_id)

    def describe(self, node_id: str) -> Machine | None:
        with self._lock:
            machine = self._machines.get(node_id)
        return self._view(machine) if machine else None

    def list_machines(self) -> list[Machine]:
        with self._lock:
            machines = list(self._machines.values())
        return [self._view(m) for m in machines]

    def console(self, node_id: str, max_bytes: int) -> bytes | None:
        with self._lock:
            machine = self._machines.get(node_id)
        if machine is not None:
            path = self.consoles.path(machine.cluster_id, node_id)
        else:
            path = self.consoles.find(node_id)
        return None if path is None else read_tail(path, max_bytes)

    def clean_up(self, cluster_id: str) -> list[str]:
        """Remove the cluster's consoles, the last of it once its machines are gone."""
        self.consoles.remove_cluster(cluster_id)
        return []

    def service_address(self, placement: Placement) -> str:
        """Nodes reach the service at their cluster bridge's address."""
        return network.gateway_of(placement.subnet)

    def networks_in_use(self) -> list[ipaddress.IPv4Network]:
        """Whatever this machine routes: clusters' bridges live beside its other networks."""
        return [routed for routed, _ in network.routes()]

    # -- shared steps --------------------------------------------------------------------

    def _home(self, cluster_id: str) -> Path:
        """The cluster's /home, made on its first node's boot (0755 root, as /home is)."""
        home = self.homes / cluster_id
        self.homes.mkdir(mode=0o700, exist_ok=True)  # no other user walks into any cluster's
        home.mkdir(mode=0o755, exist_ok=True)
        return home

    def _release_cluster(self, node_id: str, cluster_id: str) -> None:
        """When `node_id` was the cluster's last machine here, remove the cluster's
        bridge (and its way out) and its /home."""
        with self._lock:
            if any(
                m.cluster_id == cluster_id and m.node_id != node_id for m in self._machines.values()
            ):
                return
        if not network.bridge_ports(cluster_id):
            outbound.close_cluster(cluster_id)
            network.remove_bridge(cluster_id)
        shutil.rmtree(self.homes / cluster_id, ignore_errors=True)

    def _last_words(self, machine: LocalMachine) -> str:
        """Why a machine that exited did, as its console's last lines say."""
        return last_lines(self.consoles.path(machine.cluster_id, machine.node_id))

    def _view(self, machine: LocalMachine) -> Machine:
        if alive(machine.pid, machine.directory):
            return Machine(machine.node_id, MachineState.RUNNING, machine.host, machine.address)
        said = self._last_words(machine)
        exited = f"its {self.kind} exited"
        return Machine(
            machine.node_id,
            MachineState.STOPPED,
            machine.host,
            machine.address,
            f"{exited}: {said}" if said else exited,
        )
