"""Real virtual machines: qemu booting the image's own kernel, under KVM or emulated.

Each node is a VM with its document's cores and memory (the VM holds it to them), a
copy-on-write qcow2 overlay of the image's disk (images/disk.py), booted directly from
the image's kernel and initramfs with its hostname and address on the kernel command
line, and a virtio network card whose other end is a tap on its cluster's bridge
(backends/network.py): the same addresses and isolation as a container's. Its bootstrap
document reaches it as the systemd credential `corral.bootstrap` through qemu's fw_cfg,
from a memory file: it is never written to a disk, the host's or the VM's. The serial
console is logged to a file that `corral console` shows, kept after the VM is gone.

KVM where it works, else TCG (backends/kvm_probe.py decides, once per boot of this
machine). qemu runs in a session of its own, so VMs outlive the service; each one's pid
is recorded, and its QMP socket lives in its directory. Terminate asks the VM to power
off (ACPI), and kills it when it has not within `stop_seconds`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from corral.backends import kvm_probe, network, outbound
from corral.backends.base import (
    Backend,
    Capability,
    Machine,
    MachineState,
    NodeSpec,
    Placement,
)
from corral.backends.machine_records import load_records, save_records
from corral.errors import BackendError, ImageError
from corral.images.disk import vm_image

log = logging.getLogger(__name__)

QEMU = "qemu-system-x86_64"
STOP_SECONDS = 30.0
QMP_SECONDS = 5.0
OVERLAY = "overlay.qcow2"
QMP_SOCKET = "qmp.sock"
PIDFILE = "qemu.pid"
QEMU_LOG = "qemu.log"  # what qemu itself says (a bad option, a missing tap)
ACCELERATORS = ("auto", "kvm", "tcg")


@dataclass
class _Machine:
    node_id: str
    cluster_id: str
    node: str
    host: str
    address: str
    pid: int
    directory: str


class QemuBackend(Backend):
    """qemu VMs on this machine, one bridge per cluster, a tap per VM."""

    name = "qemu"
    capabilities = frozenset(
        {Capability.RUNS_AGENT, Capability.GATEWAY_SERVICES, Capability.LIMITS_RESOURCES}
    )

    def __init__(
        self,
        root: Path,
        accel: str = "auto",
        append: str = "",
        stop_seconds: float = STOP_SECONDS,
    ) -> None:
        self.root = root
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.consoles = root / "consoles"
        self.state_file = root / "machines.json"
        self.accel = accel
        self.append = append
        self.stop_seconds = stop_seconds
        self._lock = threading.Lock()
        self._accelerator: kvm_probe.Accelerator | None = None
        self._machines = load_records(self.state_file, _Machine)

    @classmethod
    def detect(cls) -> str | None:
        if os.geteuid() != 0:
            return "backend qemu needs root (tap devices on the clusters' bridges)"
        for tool, package in ((QEMU, "qemu-system-x86"), ("qemu-img", "qemu-utils")):
            if shutil.which(tool) is None:
                return f"backend qemu needs {tool} (apt install {package})"
        if shutil.which("mkfs.ext4") is None:
            return "backend qemu needs mkfs.ext4 (apt install e2fsprogs)"
        return None

    @classmethod
    def from_options(cls, options: dict[str, str], data_dir: Path) -> QemuBackend:
        """Options: `accel` (auto, kvm or tcg; auto probes whether KVM works here),
        `append` (more kernel command line for every VM), `stop_seconds` (how long a VM
        has to power off before it is killed). VMs live in `data_dir`/qemu."""
        options = dict(options)
        accel = options.pop("accel", "auto")
        if accel not in ACCELERATORS:
            raise ValueError(f"backend qemu: accel must be one of {', '.join(ACCELERATORS)}")
        append = options.pop("append", "")
        if len(append) > 1024 or "\n" in append:
            raise ValueError("backend qemu: append must be one line of at most 1024 characters")
        try:
            stop_seconds = float(options.pop("stop_seconds", STOP_SECONDS))
        except ValueError:
            raise ValueError("backend qemu: stop_seconds must be a number") from None
        if not 0 <= stop_seconds <= 600:
            raise ValueError("backend qemu: stop_seconds must be between 0 and 600")
        if options:
            raise ValueError(f"backend qemu: unknown options {', '.join(sorted(options))}")
        if reason := cls.detect():
            raise ValueError(reason)
        return cls(data_dir / "qemu", accel, append, stop_seconds)

    @property
    def accelerator(self) -> kvm_probe.Accelerator | None:
        """What this backend's VMs run under, and why; None until its first boot chose."""
        return self._accelerator

    # -- the interface -------------------------------------------------------------------

    def boot(self, spec: NodeSpec, placement: Placement) -> Machine:
        with self._lock:
            existing = self._machines.get(spec.node_id)
        if existing is not None:
            return self._view(existing)
        rootfs = spec.image.rootfs
        if rootfs is None or not rootfs.is_dir():
            raise BackendError(
                f"{spec.name}: image {spec.image.name} ({spec.image.digest or 'no digest'}) "
                "is not in the image store",
                node=spec.name,
            )
        try:
            image = vm_image(rootfs)
        except ImageError as exc:
            raise BackendError(f"{spec.name}: {exc}", node=spec.name) from exc
        accelerator = self._choose_accelerator(image.kernel)
        directory = self.root / spec.node_id
        if directory.exists():
            # a boot that a crash cut short before it was recorded: its VM may run
            self._clean(spec.node_id, None, str(directory))
        try:
            directory.mkdir(mode=0o700)
            _run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2",
                 "-b", str(image.disk), str(directory / OVERLAY))  # fmt: skip
            tap = network.attach_tap(spec.node_id, spec.cluster_id, placement.subnet)
            if spec.outbound:
                outbound.open_cluster(spec.cluster_id)
            command = self._command(spec, placement, image, accelerator.name, tap, directory)
            pid = self._start(spec, directory, command)
        except (OSError, BackendError) as exc:
            self._clean(spec.node_id, spec.cluster_id, str(directory))
            raise BackendError(f"{spec.name}: could not start its VM: {exc}") from exc
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
            save_records(self.state_file, self._machines)
        log.info(
            "qemu: booting %s (%s) at %s under %s, pid %d",
            spec.name,
            spec.node_id,
            placement.address,
            accelerator.name,
            pid,
        )
        return self._view(machine)

    def terminate(self, node_id: str) -> None:
        with self._lock:
            vm = self._machines.get(node_id)
        if vm is None:
            # nothing recorded; still remove what a crash between steps may have left
            self._clean(node_id, None, str(self.root / node_id))
            return
        self._stop(vm)
        self._clean(node_id, vm.cluster_id, vm.directory)
        with self._lock:
            self._machines.pop(node_id, None)
            save_records(self.state_file, self._machines)
        log.info("qemu: terminated %s (%s)", vm.node, node_id)

    def describe(self, node_id: str) -> Machine | None:
        with self._lock:
            vm = self._machines.get(node_id)
        return self._view(vm) if vm else None

    def list_machines(self) -> list[Machine]:
        with self._lock:
            vms = list(self._machines.values())
        return [self._view(vm) for vm in vms]

    def service_address(self, placement: Placement) -> str:
        """Nodes reach the service at their cluster bridge's address."""
        return network.gateway_of(placement.subnet)

    def networks_in_use(self) -> list[ipaddress.IPv4Network]:
        """Whatever this machine routes: clusters' bridges live beside its other networks."""
        return [routed for routed, _ in network.routes()]

    def console(self, node_id: str, max_bytes: int) -> bytes | None:
        with self._lock:
            vm = self._machines.get(node_id)
        found = list(self.consoles.glob(f"*/{node_id}.log")) if vm is None else []
        path = self._console_path(vm.cluster_id, node_id) if vm else (found or [None])[0]
        if path is None:
            return None
        try:
            with open(path, "rb") as log_file:
                log_file.seek(max(0, os.fstat(log_file.fileno()).st_size - max_bytes))
                return log_file.read(max_bytes)
        except FileNotFoundError:
            return None

    def clean_up(self, cluster_id: str) -> list[str]:
        shutil.rmtree(self.consoles / cluster_id, ignore_errors=True)
        return []

    # -- steps ---------------------------------------------------------------------------

    def _choose_accelerator(self, kernel: Path) -> kvm_probe.Accelerator:
        with self._lock:
            if self._accelerator is None:
                if self.accel == "auto":
                    found = kvm_probe.choose(kernel, self.root / "accelerator.json")
                else:
                    found = kvm_probe.Accelerator(self.accel, "the pool's option accel")
                log.info("qemu: VMs run under %s: %s", found.name.upper(), found.reason)
                self._accelerator = found
            return self._accelerator

    def _command(
        self,
        spec: NodeSpec,
        placement: Placement,
        image,
        accel: str,
        tap: str,
        directory: Path,
    ) -> list[str]:
        subnet = ipaddress.ip_network(placement.subnet)
        gateway = network.gateway_of(placement.subnet) if spec.outbound else ""
        kernel_line = [
            "console=ttyS0",
            "root=/dev/vda",
            "rw",
            "panic=-1",  # a VM whose kernel gives up exits (with -no-reboot), and says why
            "net.ifnames=0",
            "ipv6.disable=1",
            f"systemd.hostname={spec.name}",
            f"ip={placement.address}::{gateway}:{subnet.netmask}::eth0:off",
            *shlex.split(self.append),
        ]
        return [
            QEMU,
            "-name", f"corral-{spec.name},debug-threads=on",
            "-accel", "tcg,thread=multi" if accel == "tcg" else "kvm",
            "-cpu", "max" if accel == "tcg" else "host",
            "-machine", "q35",
            "-smp", str(spec.cores),
            "-m", str(spec.memory_mib),
            "-nodefaults",
            "-no-user-config",
            "-display", "none",
            "-no-reboot",
            "-kernel", str(image.kernel),
            "-initrd", str(image.initrd),
            "-append", " ".join(kernel_line),
            "-drive", f"file={directory / OVERLAY},if=virtio,format=qcow2,discard=unmap",
            "-netdev", f"tap,id=net0,ifname={tap},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=net0,mac={_mac(spec.node_id)}",
            "-device", "virtio-rng-pci",  # entropy for its keys from the first second
            "-serial", f"file:{self._console_path(spec.cluster_id, spec.node_id)}",
            "-qmp", f"unix:{directory / QMP_SOCKET},server=on,wait=off",
            "-pidfile", str(directory / PIDFILE),
        ]  # fmt: skip

    def _start(self, spec: NodeSpec, directory: Path, command: list[str]) -> int:
        """Start qemu in a session of its own; the bootstrap document goes in by a memory
        file that qemu reads as it starts and that is gone once qemu has it."""
        credential = os.memfd_create("corral-bootstrap", os.MFD_CLOEXEC)
        try:
            os.write(credential, spec.user_data)
            os.set_inheritable(credential, True)
            command = [
                *command,
                "-fw_cfg",
                f"name=opt/io.systemd.credentials/corral.bootstrap,file=/dev/fd/{credential}",
            ]
            with open(directory / QEMU_LOG, "ab") as qemu_log:
                process = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=qemu_log,
                    stderr=subprocess.STDOUT,
                    pass_fds=(credential,),
                    start_new_session=True,
                )
        finally:
            os.close(credential)
        return process.pid

    def _console_path(self, cluster_id: str, node_id: str) -> Path:
        directory = self.consoles / cluster_id
        self.consoles.mkdir(mode=0o700, exist_ok=True)
        directory.mkdir(mode=0o700, exist_ok=True)
        return directory / f"{node_id}.log"

    def _stop(self, vm: _Machine) -> None:
        """Press the VM's power button; kill it if it has not powered off in time."""
        if not _alive(vm.pid, vm.directory):
            return
        deadline = time.monotonic() + self.stop_seconds
        try:
            _qmp(Path(vm.directory) / QMP_SOCKET, "system_powerdown")
        except (OSError, ValueError) as exc:
            log.info("qemu: %s did not take the power-off (%s); killing it", vm.node, exc)
            deadline = 0.0
        while _alive(vm.pid, vm.directory) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(vm.pid, vm.directory):
            if deadline:
                log.warning("qemu: %s did not power off in %g s; killing it", vm.node,
                            self.stop_seconds)  # fmt: skip
            with contextlib.suppress(ProcessLookupError):
                os.killpg(vm.pid, signal.SIGKILL)
            for _ in range(50):
                if not _alive(vm.pid, vm.directory):
                    break
                time.sleep(0.1)

    def _clean(self, node_id: str, cluster_id: str | None, directory: str) -> None:
        pid = _read_pid(Path(directory) / PIDFILE)
        if pid and _alive(pid, directory):  # a VM no record owns: a boot cut short
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            for _ in range(50):
                if not _alive(pid, directory):
                    break
                time.sleep(0.1)
        network.detach_tap(node_id)
        shutil.rmtree(directory, ignore_errors=True)
        if cluster_id is not None:
            with self._lock:
                others = [
                    vm
                    for vm in self._machines.values()
                    if vm.cluster_id == cluster_id and vm.node_id != node_id
                ]
            if not others and not network.bridge_ports(cluster_id):
                outbound.close_cluster(cluster_id)
                network.remove_bridge(cluster_id)

    def _view(self, vm: _Machine) -> Machine:
        if _alive(vm.pid, vm.directory):
            return Machine(vm.node_id, MachineState.RUNNING, vm.host, vm.address)
        said = self._console_tail(vm) or _tail(Path(vm.directory) / QEMU_LOG)
        return Machine(
            vm.node_id,
            MachineState.STOPPED,
            vm.host,
            vm.address,
            f"its VM exited: {said}" if said else "its VM exited",
        )

    def _console_tail(self, vm: _Machine) -> str:
        return _tail(self.consoles / vm.cluster_id / f"{vm.node_id}.log")


def _mac(node_id: str) -> str:
    """A locally administered MAC address of the node's own (qemu's 52:54:00 prefix)."""
    digest = network.tap_name(node_id)[-6:]
    return "52:54:00:" + ":".join(digest[i : i + 2] for i in range(0, 6, 2))


def _qmp(path: Path, command: str) -> dict:
    """Run one QMP command on the VM whose QMP socket is `path`; returns its answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(QMP_SECONDS)
        connection.connect(str(path))
        stream = connection.makefile("rwb")
        json.loads(stream.readline())  # the greeting
        for execute in ("qmp_capabilities", command):
            stream.write(json.dumps({"execute": execute}).encode() + b"\n")
            stream.flush()
            while True:
                answer = json.loads(stream.readline() or b"null")
                if answer is None:
                    raise ValueError("QMP closed the connection")
                if "error" in answer:
                    raise ValueError(answer["error"].get("desc", "QMP error"))
                if "return" in answer:
                    break  # events (POWERDOWN) may come before it
        return answer


def _run(*command: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise BackendError(f"{command[0]}: {(result.stderr or result.stdout).strip()}")


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int, directory: str) -> bool:
    """True while `pid` is the qemu of the VM in `directory` (pids are recycled)."""
    try:
        # our own child keeps its pid until we reap it; its command line is no test, since
        # it is Python's until it execs qemu
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        pass  # started by an earlier run of the service, or reaped: ask /proc
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return directory.encode() in command and "\nState:\tZ" not in status


def _tail(path: Path, lines: int = 3) -> str:
    try:
        with open(path, "rb") as log_file:
            log_file.seek(max(0, os.fstat(log_file.fileno()).st_size - 4096))
            text = log_file.read().decode(errors="replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.splitlines()[-lines:] if line.strip())
