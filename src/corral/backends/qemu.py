"""Real virtual machines: qemu booting the image's own kernel, under KVM or emulated.

Each node is a VM with its document's cores and memory (the VM holds it to them), a
copy-on-write qcow2 overlay of the image's disk (images/disk.py), booted directly from
the image's kernel and initramfs with its hostname and address on the kernel command
line, and a virtio network card whose other end is a tap on its cluster's bridge
(backends/network.py): the same addresses and isolation as a container's. Its bootstrap
document reaches it as the systemd credential `corral.bootstrap` through qemu's fw_cfg,
from a memory file: it is never written to a disk, the host's or the VM's (so are a
cluster's resolvers, where it has a way out: network.outbound). The serial
console is logged to a file that `corral console` shows, kept after the VM is gone.

KVM where it works, else TCG (backends/kvm_probe.py decides, once per boot of this
machine for every service on it). qemu runs in a session of its own, so VMs outlive the
service; each one's pid is recorded, and its QMP socket and pidfile live in its
directory (backends/local_machines.py). Terminate asks the VM to power off (ACPI), and
kills it when it has not within `stop_seconds`.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import shlex
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

from corral.backends import kvm_probe, network, outbound
from corral.backends.base import Capability, NodeSpec, Placement
from corral.backends.consoles import last_lines
from corral.backends.local_machines import LocalMachine, LocalMachines
from corral.backends.processes import alive, kill
from corral.errors import BackendError, ImageError
from corral.images.disk import VmImage, vm_image

log = logging.getLogger(__name__)

QEMU = "qemu-system-x86_64"
VIRTIOFSD = "/usr/lib/qemu/virtiofsd"  # Debian's, with qemu-system-common
HOME_SOCKET = "home.sock"  # virtiofsd's, serving the cluster's /home to this VM
VIRTIOFSD_PIDFILE = "virtiofsd.pid"
STOP_SECONDS = 30.0
QMP_SECONDS = 5.0
OVERLAY = "overlay.qcow2"
QMP_SOCKET = "qmp.sock"
PIDFILE = "qemu.pid"
QEMU_LOG = "qemu.log"  # what qemu itself says (a bad option, a missing tap)
ACCELERATORS = ("auto", "kvm", "tcg")


class QemuBackend(LocalMachines):
    """qemu VMs on this machine, one bridge per cluster, a tap per VM."""

    name = "qemu"
    kind = "VM"
    capabilities = frozenset(
        {
            Capability.RUNS_AGENT,
            Capability.GATEWAY_SERVICES,
            Capability.LIMITS_RESOURCES,
            Capability.KEEPS_CONSOLES,
            Capability.SHARED_HOME,
        }
    )

    def __init__(
        self,
        root: Path,
        accel: str = "auto",
        append: str = "",
        stop_seconds: float = STOP_SECONDS,
    ) -> None:
        super().__init__(root)
        self.accel = accel
        self.append = append
        self.stop_seconds = stop_seconds
        self._probe = threading.Lock()  # apart: a probe takes seconds, listings must not wait
        self._accelerator: kvm_probe.Accelerator | None = None

    @classmethod
    def detect(cls) -> str | None:
        if os.geteuid() != 0:
            return "backend qemu needs root (tap devices on the clusters' bridges)"
        for tool, package in ((QEMU, "qemu-system-x86"), ("qemu-img", "qemu-utils")):
            if shutil.which(tool) is None:
                return f"backend qemu needs {tool} (apt install {package})"
        if shutil.which("mkfs.ext4") is None:
            return "backend qemu needs mkfs.ext4 (apt install e2fsprogs)"
        if not os.access(VIRTIOFSD, os.X_OK):
            return f"backend qemu needs {VIRTIOFSD} (apt install qemu-system-common)"
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
            shlex.split(append)
        except ValueError as exc:
            raise ValueError(f"backend qemu: append: {exc}") from None
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

    # -- steps ---------------------------------------------------------------------------

    def _start_machine(self, spec: NodeSpec, placement: Placement, directory: Path) -> int:
        assert spec.image.rootfs is not None  # LocalMachines.boot checked it
        try:
            image = vm_image(spec.image.rootfs)
        except ImageError as exc:
            raise BackendError(str(exc)) from exc
        accelerator = self._choose_accelerator(image.kernel)
        directory.mkdir(mode=0o700)
        _run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2",
             "-b", str(image.disk), str(directory / OVERLAY))  # fmt: skip
        tap = network.attach_tap(spec.node_id, spec.cluster_id, placement.subnet)
        if spec.outbound:
            outbound.open_cluster(spec.cluster_id)
        _serve_home(self._home(spec.cluster_id), directory)
        command = self._command(spec, placement, image, accelerator.name, tap, directory)
        return self._start(directory, command, _credentials(spec))

    def _choose_accelerator(self, kernel: Path) -> kvm_probe.Accelerator:
        with self._probe:
            if self._accelerator is None:
                if self.accel == "auto":
                    found = kvm_probe.choose(kernel)
                else:
                    found = kvm_probe.Accelerator(self.accel, "the pool's option accel")
                log.info("qemu: VMs run under %s: %s", found.name.upper(), found.reason)
                self._accelerator = found
            return self._accelerator

    def _command(
        self,
        spec: NodeSpec,
        placement: Placement,
        image: VmImage,
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
            # the cluster's /home by virtiofs, which needs the VM's memory shared with it
            "-object", f"memory-backend-memfd,id=mem,size={spec.memory_mib}M,share=on",
            "-numa", "node,memdev=mem",
            "-chardev", f"socket,id=home,path={directory / HOME_SOCKET}",
            "-device", "vhost-user-fs-pci,chardev=home,tag=home",
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

    def _start(self, directory: Path, command: list[str], credentials: dict[str, bytes]) -> int:
        """Start qemu in a session of its own. Each credential goes in by a memory file
        that qemu reads as it starts, and that is gone once qemu has it."""
        files = {name: os.memfd_create(f"corral-{name}") for name in credentials}
        try:
            for name, fd in files.items():
                os.write(fd, credentials[name])
                command = [
                    *command,
                    "-fw_cfg",
                    f"name=opt/io.systemd.credentials/{name},file=/dev/fd/{fd}",
                ]
            with open(directory / QEMU_LOG, "ab") as qemu_log:
                process = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=qemu_log,
                    stderr=subprocess.STDOUT,
                    pass_fds=tuple(files.values()),
                    start_new_session=True,
                )
        finally:
            for fd in files.values():
                os.close(fd)
        return process.pid

    def _console_path(self, cluster_id: str, node_id: str) -> Path:
        """The node's console, made 0600 before qemu opens it (and truncates it)."""
        os.close(self.consoles.open(cluster_id, node_id))
        return self.consoles.path(cluster_id, node_id)

    def _stop(self, vm: LocalMachine) -> None:
        """Press the VM's power button; kill it if it has not powered off in time."""
        if not alive(vm.pid, vm.directory):
            return
        if self.stop_seconds <= 0 or not self._powered_off(vm):
            kill(vm.pid, vm.directory)

    def _powered_off(self, vm: LocalMachine) -> bool:
        try:
            _qmp(Path(vm.directory) / QMP_SOCKET, "system_powerdown")
        except (OSError, ValueError) as exc:
            log.info("qemu: %s did not take the power-off (%s); killing it", vm.node, exc)
            return False
        deadline = time.monotonic() + self.stop_seconds
        while alive(vm.pid, vm.directory) and time.monotonic() < deadline:
            time.sleep(0.2)
        if alive(vm.pid, vm.directory):
            log.warning(
                "qemu: %s did not power off in %g s; killing it", vm.node, self.stop_seconds
            )
            return False
        return True

    def _clean(self, node_id: str, cluster_id: str | None, directory: str) -> None:
        # a VM no record owns, if it still runs (a boot cut short); virtiofsd ends with its
        # VM, unless the VM never started
        for pidfile in (PIDFILE, VIRTIOFSD_PIDFILE):
            if pid := _read_pid(Path(directory) / pidfile):
                kill(pid, directory)
        network.detach_tap(node_id)
        shutil.rmtree(directory, ignore_errors=True)
        if cluster_id is not None:
            self._release_cluster(node_id, cluster_id)

    def _last_words(self, vm: LocalMachine) -> str:
        """Its console's last lines, else what qemu itself said (a bad option, say)."""
        return super()._last_words(vm) or last_lines(Path(vm.directory) / QEMU_LOG)


def _serve_home(home: Path, directory: Path) -> None:
    """Start virtiofsd serving the cluster's /home on the VM's socket, and wait for it."""
    socket_path = directory / HOME_SOCKET
    with open(directory / "virtiofsd.log", "ab") as output:
        process = subprocess.Popen(
            [VIRTIOFSD, f"--socket-path={socket_path}", "-o", f"source={home}",
             "-o", "sandbox=chroot", "-o", "cache=none", "-o", "log_level=warn"],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    (directory / VIRTIOFSD_PIDFILE).write_text(f"{process.pid}\n")
    deadline = time.monotonic() + QMP_SECONDS
    while not socket_path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            said = last_lines(directory / "virtiofsd.log")
            raise BackendError(f"virtiofsd did not serve /home: {said or 'no socket'}")
        time.sleep(0.02)


def _credentials(spec: NodeSpec) -> dict[str, bytes]:
    """What the VM's systemd gets as credentials: its bootstrap document, and with a way
    out its host's resolvers (the image's corral-vm-resolvers.service installs them)."""
    found = {"corral.bootstrap": spec.user_data}
    resolvers = outbound.node_resolvers() if spec.outbound else None
    if resolvers is not None:
        found["corral.resolv.conf"] = resolvers.resolv_conf().encode()
    return found


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
