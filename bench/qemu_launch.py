"""End to end on qemu: how long a real cluster of VMs takes to be ready, against bare boots.

The same measurements as bench/nspawn_launch.py, whose functions this module uses, with
VMs instead of containers: the floor is one VM booted by the same backend code with no
bootstrap document, then three at once, then 1+2 clusters launched through the HTTP API
of an in-process service. Fewer runs than nspawn's, since an emulated (TCG) boot takes
tens of seconds.

Run alone with `python3 -m bench.qemu_launch` (as root, with qemu). Everything it creates
is removed at the end, also when a step fails.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import statistics
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.nspawn_launch import (
    BASE_CLUSTER,
    IMAGE,
    IMAGE_CACHE,
    ClusterRun,
    add_phase_figures,
    bare_node,
    boot_together,
    check_subnet_free,
    cpu_busy_fraction,
    ensure_image,
    register_image,
    served_service,
    stop_processes_under,
    time_cluster,
    wait_for_tcp,
)
from bench.section import Section
from corral.backends import kvm_probe, network
from corral.backends.qemu import QemuBackend
from corral.images.disk import vm_image
from corral.images.store import ImageStore
from corral.service.config import ServiceConfig

log = logging.getLogger(__name__)

BARE_BOOTS = 3
TOGETHER = 3  # as many VMs as a 1+2 cluster has nodes
TOGETHER_RUNS = 2
CLUSTER_RUNS = 2
# away from the service's default 10.180.0.0/16 and from bench/nspawn_launch.py's
BARE_SUBNET = "10.178.255.0/24"
BARE_ADDRESS = "10.178.255.2"  # the first; VMs booted together take the next ones
SERVICE_RANGE = "10.176.0.0/16"

BOOT_TIMEOUT = 600.0  # an emulated boot on a busy machine
STOP_SECONDS = 30.0  # the backend's default time to power off before it kills a VM
CONSOLE_BYTES = 1 << 20
READY_RATIO_TARGET = 1.5

METHOD = f"""\
**Floor: a bare VM boot.** `QemuBackend.boot` with a hand-made `NodeSpec`: the same
`{IMAGE}` image (its own kernel and initramfs, a qcow2 overlay of the image's disk), 1
core and 1024 MiB as the example's nodes, a tap on a bridge, but an empty bootstrap
document, so the agent finds nothing to do (sshd does not wait for it: it is ordered
after the host-key unit only). Timed from the `boot()` call until **sshd accepts a TCP
connection on port 22** at the VM's address, polled from the host over the bridge. The
VM's console gives two points on the guest's own clock (from the kernel's start): the
kernel running the initramfs (`Run /init`) and systemd starting on the root file system
(`running in system mode`). Then `terminate()`, timed: ACPI power-off, killed after
{STOP_SECONDS:g} s. The image's VM disk is made, and the accelerator chosen, before the
first timed boot; {BARE_BOOTS} boots, median.

**Three bare boots together.** {TOGETHER} such VMs booted at the same moment, one thread
each, timed until the slowest accepts on port 22; {TOGETHER_RUNS} runs, median. A 1+2
cluster boots as many VMs at once on the same cores: its floor before any
contextualization.

**Clusters.** One in-process `corral.service.process.Service` (backend qemu, engine tick
{ServiceConfig.tick_seconds} s, SQLite in a temporary data dir, images from
`{IMAGE_CACHE}`) served by `ServersThread`: API on 127.0.0.1, broker on 0.0.0.0 (VMs reach
it at their bridge's gateway). The service is given the accelerator the probe chose
(backend option `accel`), so its first VM does not probe again. `examples/base-cluster.yaml`
(1 head + 2 workers, 1 core and 1 GiB each) is launched with `POST /v1/clusters`
{CLUSTER_RUNS} times, one cluster at a time. **Ready** is timed from just before the POST
to the cluster's `launching → ready` event. Per node, from the cluster's events: *start*
(pending → booting: the overlay, tap and qemu started), *boot* (booting → registered:
the VM's boot until the agent's register call), *wait* (registered → configuring) and
*configure* (configuring → ready: role scripts); each the **slowest node** of a run,
median over runs. Then `DELETE` and the time until the cluster is `terminated`. The
ratio of ready to three bare boots together is the issue's target (≤ {READY_RATIO_TARGET:g}x)."""


@dataclass
class VmBoot:
    spawned_s: float  # boot() returned: overlay, tap and qemu started
    kernel_s: float | None  # guest clock: the kernel ran the initramfs
    systemd_s: float | None  # guest clock: systemd started on the root file system
    sshd_s: float  # sshd accepted TCP on port 22
    terminate_s: float


def run() -> Section:
    """Measure the floor, three together and the 1+2 cluster; return the figures."""
    digest = ensure_image()
    tag = f"bench-{secrets.token_hex(3)}"
    accelerator = choose_accelerator(digest)
    busy_before = cpu_busy_fraction()
    workdir = Path(tempfile.mkdtemp(prefix="corral-bench-qemu-"))
    created: list[tuple[str, list[str]]] = []  # (cluster id, node ids), for the last sweep
    bare = QemuBackend(workdir / "bare", accelerator.name, stop_seconds=STOP_SECONDS)
    others = OtherVms(workdir)
    others.start()
    try:
        alone, together = measure_bare_boots(bare, digest, tag)
        others.during = "the clusters"
        clusters = measure_clusters(workdir / "service", digest, tag, accelerator, created)
    finally:
        others.stop()
        sweep(bare, workdir, tag, created)
    section = build_section(accelerator, alone, together, clusters)
    section.raw["ran_under"] = bare.accelerator.name if bare.accelerator else None
    section.raw["cpu_busy_before"] = busy_before
    section.raw["load_average_after"] = os.getloadavg()
    seen = {step: sorted(names) for step, names in others.seen.items()}
    section.raw["other_vms"] = {"seen": seen, "share_of_run": others.share()}
    if seen:
        section.notes.append(
            f"the machine was busy: other qemu VMs than this benchmark's ran during "
            f"{others.share():.0%} of the run, sharing its {os.cpu_count()} cores ("
            + "; ".join(f"during {step}: {', '.join(names)}" for step, names in seen.items())
            + f"); {busy_before:.0%} of the CPU was busy in the second before it"
        )
    elif busy_before > 0.2:
        section.notes.append(
            f"the machine was not idle: {busy_before:.0%} of its CPU was busy in the second "
            "before the run"
        )
    return section


class OtherVms:
    """Looks every few seconds, while the run lasts, for qemu VMs on this machine that are
    not the run's (another engineer's tests): they share its cores and slow every boot."""

    def __init__(self, ours: Path, every: float = 2.0) -> None:
        self.ours = str(ours).encode()
        self.every = every
        self.during = "the bare boots"  # the step under way, set by the run
        self.seen: dict[str, set[str]] = {}  # step -> "pid name"
        self.samples = 0
        self.busy_samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="other-vms", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def share(self) -> float:
        """The share of samples that found another VM."""
        return self.busy_samples / self.samples if self.samples else 0.0

    def _watch(self) -> None:
        while not self._stop.is_set():
            found = self._look()
            self.samples += 1
            self.busy_samples += bool(found)
            if found:
                self.seen.setdefault(self.during, set()).update(found)
            self._stop.wait(self.every)

    def _look(self) -> list[str]:
        found = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                with contextlib.suppress(OSError):
                    argv = (proc / "cmdline").read_bytes().split(b"\0")
                    if argv[0].startswith(b"qemu-system") and self.ours not in b" ".join(argv):
                        name = (
                            argv[argv.index(b"-name") + 1].split(b",")[0]
                            if b"-name" in argv
                            else b"qemu without a name"
                        )
                        found.append(f"{name.decode(errors='replace')} (pid {proc.name})")
        return found


def choose_accelerator(digest: str) -> kvm_probe.Accelerator:
    """Make the image's VM disk if it is not made yet, and probe KVM, before any timing."""
    image = vm_image(ImageStore(IMAGE_CACHE).path(digest))
    with tempfile.TemporaryDirectory(prefix="corral-bench-kvm-") as probe:
        accelerator = kvm_probe.choose(image.kernel, Path(probe) / "verdict.json")
    log.info("VMs run under %s: %s", accelerator.name.upper(), accelerator.reason)
    return accelerator


# -- the floor -------------------------------------------------------------------------


def measure_bare_boots(
    backend: QemuBackend, digest: str, tag: str
) -> tuple[list[VmBoot], list[float]]:
    check_subnet_free(BARE_SUBNET)
    alone = [boot_bare(backend, digest, node_id, tag) for node_id in alone_ids(tag)]
    together = [
        boot_together(
            backend,
            [
                bare_node(digest, node_id, tag, i, BARE_ADDRESS, BARE_SUBNET)
                for i, node_id in enumerate(group)
            ],
            BOOT_TIMEOUT,
        )
        for group in together_ids(tag)
    ]
    return alone, together


def alone_ids(tag: str) -> list[str]:
    return [f"{tag}-bare-{i}" for i in range(BARE_BOOTS)]


def together_ids(tag: str) -> list[list[str]]:
    return [[f"{tag}-group{r}-{i}" for i in range(TOGETHER)] for r in range(TOGETHER_RUNS)]


def boot_bare(backend: QemuBackend, digest: str, node_id: str, tag: str) -> VmBoot:
    spec, placement = bare_node(digest, node_id, tag, 0, BARE_ADDRESS, BARE_SUBNET)
    started = time.monotonic()
    try:
        backend.boot(spec, placement)
        spawned = time.monotonic() - started
        wait_for_tcp(placement.address, 22, BOOT_TIMEOUT)
        sshd = time.monotonic() - started
        console = backend.console(node_id, CONSOLE_BYTES) or b""
    finally:
        stopping = time.monotonic()
        backend.terminate(node_id)
    boot = VmBoot(
        spawned,
        guest_seconds(console, b"Run /init as init process"),
        guest_seconds(console, b"running in system mode"),
        sshd,
        time.monotonic() - stopping,
    )
    log.info("bare VM %s: sshd after %.1f s, off in %.1f s", node_id, sshd, boot.terminate_s)
    return boot


def guest_seconds(console: bytes, marker: bytes) -> float | None:
    """The kernel's timestamp of the first console line holding `marker`."""
    found = re.search(rb"^\[\s*(\d+\.\d+)\][^\n]*" + re.escape(marker), console, re.MULTILINE)
    return float(found.group(1)) if found else None


# -- clusters --------------------------------------------------------------------------


def measure_clusters(
    data_dir: Path,
    digest: str,
    tag: str,
    accelerator: kvm_probe.Accelerator,
    created: list[tuple[str, list[str]]],
) -> list[ClusterRun]:
    options = {"accel": accelerator.name, "stop_seconds": f"{STOP_SECONDS:g}"}
    with served_service(data_dir, "qemu", SERVICE_RANGE, options) as client:
        register_image(client, digest)
        document = BASE_CLUSTER.read_text()
        return [
            time_cluster(client, document, f"{tag}-1p2-{attempt}", 2, created)
            for attempt in range(CLUSTER_RUNS)
        ]


# -- cleaning up -----------------------------------------------------------------------


def sweep(bare: QemuBackend, workdir: Path, tag: str, created: list[tuple[str, list[str]]]) -> None:
    """Remove whatever a failed step left: VMs, taps, bridges, files. The backends remove
    their own on the normal path (the service's end its VMs as it stops); this is for the
    others."""
    for machine in bare.list_machines():
        with contextlib.suppress(Exception):
            bare.terminate(machine.node_id)
    stop_processes_under(workdir, b"qemu-system")
    bare_ids = [*alone_ids(tag), *(n for group in together_ids(tag) for n in group)]
    for node_id in bare_ids:
        network.detach_tap(node_id)
    network.remove_bridge(f"{tag}-bare")
    for cluster_id, node_ids in created:
        for node_id in node_ids:
            network.detach_tap(node_id)
        network.remove_bridge(cluster_id)
    shutil.rmtree(workdir, ignore_errors=True)


# -- figures ---------------------------------------------------------------------------


def build_section(
    accelerator: kvm_probe.Accelerator,
    alone: list[VmBoot],
    together: list[float],
    clusters: list[ClusterRun],
) -> Section:
    section = Section(title=f"End to end on qemu ({accelerator.name.upper()})", method=METHOD)
    floor = statistics.median(b.sshd_s for b in alone)
    section.add("bare VM boot to sshd accepting (floor)", floor, "s")
    for measure, values in (
        ("bare VM: the kernel runs the initramfs (guest clock)", [b.kernel_s for b in alone]),
        ("bare VM: systemd starts on the root (guest clock)", [b.systemd_s for b in alone]),
    ):
        known = [v for v in values if v is not None]
        if known:
            section.add(measure, statistics.median(known), "s")
    stop = statistics.median(b.terminate_s for b in alone)
    section.add("bare VM terminate (ACPI power-off)", stop, "s")
    together_floor = statistics.median(together)
    section.add(f"{TOGETHER} bare VM boots together, the last to sshd", together_floor, "s")
    section.add(f"{TOGETHER} bare boots together / floor", together_floor / floor, "x")
    ready = statistics.median(r.ready_s for r in clusters)
    section.add("1+2 cluster ready", ready, "s")
    ratio = ready / together_floor
    section.add(
        f"1+2 ready / {TOGETHER} bare boots together",
        ratio,
        "x",
        f"≤ {READY_RATIO_TARGET:g}x",
        ratio <= READY_RATIO_TARGET,
    )
    section.add("1+2 ready / bare boot floor", ready / floor, "x")
    add_phase_figures(section, clusters, "1+2")
    section.notes.insert(
        0,
        f"accelerator {accelerator.name.upper()}: {accelerator.reason} "
        f"(kvm_probe; {os.cpu_count()} cores on this machine)",
    )
    section.raw = {
        "accelerator": asdict(accelerator),
        "bare_boots": [asdict(b) for b in alone],
        "bare_boots_together_s": together,
        "clusters": [asdict(r) for r in clusters],
        "floor_s": floor,
        "engine_tick_s": ServiceConfig.tick_seconds,
        "cpu_count": os.cpu_count(),
    }
    return section


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    run().show()
