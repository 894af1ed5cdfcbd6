"""Real system containers: systemd-nspawn booting systemd from an appliance image.

Each node gets a copy-on-write root (overlayfs over the image's read-only rootfs),
its hostname, its bootstrap document as the system credential corral.bootstrap, a network
namespace on its cluster's bridge (backends/network.py), control groups that hold it to
its cores and memory (backends/cgroups.py), and its cluster's /home: one directory on
this machine, `homes/<cluster id>` under the backend's root, bind-mounted into every node
of the cluster and removed with the cluster's last node. `systemd-nspawn --boot` runs as
a process of its own session, so containers outlive the service and a restarted one finds
them again, and what a container prints is kept after it (backends/local_machines.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from corral.backends import cgroups, network, outbound
from corral.backends.base import Capability, NodeSpec, Placement
from corral.backends.local_machines import LocalMachine, LocalMachines
from corral.backends.processes import alive, kill
from corral.errors import BackendError

log = logging.getLogger(__name__)

STOP_SECONDS = 20.0


class NspawnBackend(LocalMachines):
    """systemd-nspawn containers on this machine, one bridge per cluster."""

    name = "nspawn"
    kind = "container"
    capabilities = frozenset(
        {
            Capability.RUNS_AGENT,
            Capability.GATEWAY_SERVICES,
            Capability.SHARED_HOME,
            Capability.LIMITS_RESOURCES,
            Capability.KEEPS_CONSOLES,
        }
    )

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

    # -- steps ---------------------------------------------------------------------------

    def _start_machine(self, spec: NodeSpec, placement: Placement, directory: Path) -> int:
        merged = self._mount_root(directory, spec.image.rootfs)
        self._personalize(merged, spec)
        namespace = network.attach_node(
            spec.node_id, spec.cluster_id, placement.address, placement.subnet, spec.outbound
        )
        if spec.outbound:
            outbound.open_cluster(spec.cluster_id)
        return self._start(directory, merged, spec, namespace)

    def _stop(self, container: LocalMachine) -> None:
        _stop(container.pid, container.directory)

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
            self._release_cluster(node_id, cluster_id)


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
    kill(pid, directory)


def _kill_namespace(netns: str) -> None:
    """SIGKILL every process in network namespace `netns`: what is left of the container.

    A container whose nspawn was killed keeps running, its systemd reparented to ours; it
    is found by the network namespace it still lives in.
    """
    for pid in network.processes_in(netns):
        log.warning("nspawn: killing pid %s, left in %s by a container", pid, netns)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
