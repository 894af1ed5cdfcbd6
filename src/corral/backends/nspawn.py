"""Real system containers: systemd-nspawn booting systemd from an appliance image.

Each node gets a copy-on-write root (overlayfs over the image's read-only rootfs),
its hostname, its bootstrap document as the system credential corral.bootstrap, a network
namespace on its cluster's bridge (backends/network.py), control groups that hold it to
its cores and memory (backends/cgroups.py), and its cluster's /home: one directory on
this machine, `homes/<cluster id>` under the backend's root, bind-mounted into every node
of the cluster and removed with the cluster's last node. `systemd-nspawn --boot` runs as
a process of its own session, so containers outlive the service; the machine records
are kept in a state file to find them again after a restart. What a container prints
(systemd's boot, its console) is kept apart from it (backends/consoles.py), so it can be
read after the container failed or was removed, until its cluster's clean_up.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from corral.backends import cgroups, network, outbound
from corral.backends.base import (
    Backend,
    Capability,
    Machine,
    MachineState,
    NodeSpec,
    Placement,
)
from corral.backends.consoles import Consoles, last_lines, read_tail
from corral.backends.machine_records import load_records, save_records
from corral.backends.processes import alive
from corral.errors import BackendError

log = logging.getLogger(__name__)

STOP_SECONDS = 20.0


@dataclass
class _Machine:
    node_id: str
    cluster_id: str
    node: str
    host: str
    address: str
    pid: int
    directory: str


class NspawnBackend(Backend):
    """systemd-nspawn containers on this machine, one bridge per cluster."""

    name = "nspawn"
    capabilities = frozenset(
        {
            Capability.RUNS_AGENT,
            Capability.GATEWAY_SERVICES,
            Capability.SHARED_HOME,
            Capability.LIMITS_RESOURCES,
            Capability.KEEPS_CONSOLES,
        }
    )

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.state_file = root / "machines.json"
        self.homes = root / "homes"
        self.consoles = Consoles(root)
        self._lock = threading.Lock()
        self._machines = self._load()

    @classmethod
    def detect(cls) -> str | None:
        if os.geteuid() != 0:
            return "backend nspawn needs root (network namespaces, overlay mounts)"
        if shutil.which("systemd-nspawn") is None:
            return "backend nspawn needs systemd-nspawn (apt install systemd-container)"
        return None

    @classmethod
    def from_options(cls, options: dict[str, str], data_dir: Path) -> NspawnBackend:
        """No options; containers live in `data_dir`/nspawn."""
        if options:
            raise ValueError(f"backend nspawn takes no options (got {', '.join(options)})")
        if reason := cls.detect():
            raise ValueError(reason)
        return cls(data_dir / "nspawn")

    # -- the interface -------------------------------------------------------------------

    def boot(self, spec: NodeSpec, placement: Placement) -> Machine:
        with self._lock:
            existing = self._machines.get(spec.node_id)
        if existing is not None:
            return self._view(existing)
        image = spec.image.rootfs
        if image is None or not image.is_dir():
            raise BackendError(
                f"{spec.name}: image {spec.image.name} ({spec.image.digest or 'no digest'}) "
                "is not in the image store",
                node=spec.name,
            )
        directory = self.root / spec.node_id
        if directory.exists():
            # a boot that a crash cut short before it was recorded: its container may run
            self._clean(spec.node_id, None, str(directory))
        try:
            merged = self._mount_root(directory, image)
            self._personalize(merged, spec)
            namespace = network.attach_node(
                spec.node_id, spec.cluster_id, placement.address, placement.subnet, spec.outbound
            )
            if spec.outbound:
                outbound.open_cluster(spec.cluster_id)
            pid = self._start(directory, merged, spec, namespace)
        except (OSError, BackendError) as exc:
            self._clean(spec.node_id, spec.cluster_id, str(directory))
            raise BackendError(f"{spec.name}: could not start its container: {exc}") from exc
        machine = _Machine(
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
            self._save()
        log.info(
            "nspawn: booting %s (%s) at %s, pid %d",
            spec.name,
            spec.node_id,
            placement.address,
            pid,
        )
        return self._view(machine)

    def terminate(self, node_id: str) -> None:
        with self._lock:
            container = self._machines.get(node_id)
        if container is None:
            # nothing recorded; still remove what a crash between steps may have left
            self._clean(node_id, None, str(self.root / node_id))
            return
        _stop(container.pid, container.directory)
        self._clean(node_id, container.cluster_id, container.directory)
        with self._lock:
            self._machines.pop(node_id, None)
            self._save()
        log.info("nspawn: terminated %s (%s)", container.node, node_id)

    def describe(self, node_id: str) -> Machine | None:
        with self._lock:
            container = self._machines.get(node_id)
        return self._view(container) if container else None

    def list_machines(self) -> list[Machine]:
        with self._lock:
            containers = list(self._machines.values())
        return [self._view(c) for c in containers]

    def console(self, node_id: str, max_bytes: int) -> bytes | None:
        with self._lock:
            container = self._machines.get(node_id)
        if container is not None:
            path = self.consoles.path(container.cluster_id, node_id)
        else:
            path = self.consoles.find(node_id)
        return None if path is None else read_tail(path, max_bytes)

    def clean_up(self, cluster_id: str) -> list[str]:
        """Remove the cluster's consoles, the last of it once its containers are gone."""
        self.consoles.remove_cluster(cluster_id)
        return []

    def service_address(self, placement: Placement) -> str:
        """Nodes reach the service at their cluster bridge's address."""
        return network.gateway_of(placement.subnet)

    def networks_in_use(self) -> list[ipaddress.IPv4Network]:
        """Whatever this machine routes: clusters' bridges live beside its other networks."""
        return [routed for routed, _ in network.routes()]

    # -- steps ---------------------------------------------------------------------------

    def _mount_root(self, directory: Path, image: Path) -> Path:
        upper, work, merged = directory / "upper", directory / "work", directory / "merged"
        for path in (upper, work, merged):
            path.mkdir(parents=True, exist_ok=True)
        if not os.path.ismount(merged):
            _run(
                "mount",
                "-t",
                "overlay",
                "overlay",
                "-o",
                f"lowerdir={image},upperdir={upper},workdir={work}",
                str(merged),
            )
        return merged

    def _personalize(self, merged: Path, spec: NodeSpec) -> None:
        (merged / "etc" / "hostname").write_text(spec.name + "\n")
        if spec.outbound:
            outbound.write_resolv_conf(merged, outbound.node_resolvers())

    def _start(self, directory: Path, merged: Path, spec: NodeSpec, namespace: str) -> int:
        machine = network.netns_name(spec.node_id)
        command = [
            "systemd-nspawn",
            "--quiet",
            "--boot",
            "--register=no",
            "--keep-unit",
            f"--directory={merged}",
            f"--machine={machine}",
            f"--hostname={spec.name}",
            f"--network-namespace-path={network.NETNS_DIR / namespace}",
            f"--bind={self._home(spec.cluster_id)}:/home",
            "--link-journal=no",
            "--resolv-conf=off",
            "--timezone=off",
            "--console=read-only",
        ]
        # the bootstrap document goes in as a system credential, from a memory file that
        # nspawn reads as it starts: the token is never on a disk, this machine's or the node's
        credential = os.memfd_create("corral-bootstrap")
        console = self.consoles.open(spec.cluster_id, spec.node_id)
        try:
            os.write(credential, spec.user_data)
            command.append(f"--load-credential=corral.bootstrap:/dev/fd/{credential}")
            process = subprocess.Popen(
                cgroups.entering(machine, command, cgroups.Limits(spec.cores, spec.memory_mib)),
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                pass_fds=(credential,),
                start_new_session=True,
            )
        finally:
            os.close(console)
            os.close(credential)
        return process.pid

    def _clean(self, node_id: str, cluster_id: str | None, directory: str) -> None:
        machine = network.netns_name(node_id)
        _kill_namespace(machine)
        cgroups.remove(machine)
        merged = Path(directory) / "merged"
        unmounted = subprocess.run(["umount", str(merged)], capture_output=True)
        if os.path.ismount(merged) and unmounted.returncode != 0:
            subprocess.run(["umount", "--lazy", str(merged)], capture_output=True)
        shutil.rmtree(directory, ignore_errors=True)
        network.detach_node(node_id)
        if cluster_id is not None:
            with self._lock:
                others = [
                    c
                    for c in self._machines.values()
                    if c.cluster_id == cluster_id and c.node_id != node_id
                ]
            if not others and not network.bridge_ports(cluster_id):
                outbound.close_cluster(cluster_id)
                network.remove_bridge(cluster_id)
            if not others:
                shutil.rmtree(self.homes / cluster_id, ignore_errors=True)

    def _home(self, cluster_id: str) -> Path:
        """The cluster's /home, made on its first node's boot (0755 root, as /home is)."""
        home = self.homes / cluster_id
        self.homes.mkdir(mode=0o700, exist_ok=True)  # no other user walks into any cluster's
        home.mkdir(mode=0o755, exist_ok=True)
        return home

    def _view(self, container: _Machine) -> Machine:
        if alive(container.pid, container.directory):
            return Machine(
                container.node_id, MachineState.RUNNING, container.host, container.address
            )
        tail = last_lines(self.consoles.path(container.cluster_id, container.node_id))
        return Machine(
            container.node_id,
            MachineState.STOPPED,
            container.host,
            container.address,
            f"its container exited: {tail}" if tail else "its container exited",
        )

    def _load(self) -> dict[str, _Machine]:
        return load_records(self.state_file, _Machine)

    def _save(self) -> None:
        save_records(self.state_file, self._machines)


def _run(*command: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise BackendError(f"{' '.join(command[:2])}: {result.stderr.strip()}")


def _stop(pid: int, directory: str) -> None:
    """Ask the container to power off (SIGTERM to nspawn), then kill it if it lingers."""
    if not alive(pid, directory):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_SECONDS
    while alive(pid, directory) and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive(pid, directory):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        time.sleep(0.2)
        alive(pid, directory)  # reaps it when it is our child


def _kill_namespace(netns: str) -> None:
    """SIGKILL every process in network namespace `netns`: what is left of the container.

    A container whose nspawn was killed keeps running, its systemd reparented to ours; it
    is found by the network namespace it still lives in.
    """
    for pid in network.processes_in(netns):
        log.warning("nspawn: killing pid %s, left in %s by a container", pid, netns)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
