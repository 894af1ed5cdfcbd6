"""End to end on nspawn: how long a real cluster takes to be ready, against a bare boot.

The floor is one container booted from the same image by the same backend code, with the
context agent masked. The clusters are launched through the HTTP API of an in-process
service that serves its API and broker on real sockets, as `corral serve` does. Each
cluster's node events give the time every node spent in each phase.

Run alone with `python3 -m bench.nspawn_launch` (as root, on a machine that can run the
nspawn backend). Everything it creates is removed at the end, also when a step fails.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import yaml

from bench.section import Section
from corral.backends import network
from corral.backends.base import Backend, ImageRef, NodeSpec, Placement
from corral.backends.nspawn import NspawnBackend
from corral.images.bake import bake
from corral.images.recipe import RECIPES
from corral.images.store import ImageStore
from corral.service.config import ServiceConfig
from corral.service.process import Service
from corral.service.servers import ServersThread

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
BASE_CLUSTER = REPO / "examples" / "base-cluster.yaml"
IMAGE_CACHE = Path("/var/tmp/corral-test-images")  # the cache tests/conftest.py bakes into
IMAGE = "debian-12-slurm"

BARE_BOOTS = 5
# as many bare containers as a 1+2 cluster has nodes, booted at once: what the machine's
# cores allow three boots, before any contextualization
TOGETHER = 3
TOGETHER_RUNS = 3
WORKER_COUNTS = (2, 8)
CLUSTER_RUNS = 3  # per size
# away from the service's default 10.180.0.0/16, so a local service's clusters are safe
BARE_SUBNET = "10.179.255.0/24"
BARE_ADDRESS = "10.179.255.2"  # the first; containers booted together take the next ones
SERVICE_RANGE = "10.177.0.0/16"
# each node may use one core of CPU time; the host only has to offer 9 of them for 1+8 on 2
CPU_OVERCOMMIT = 8

BOOT_TIMEOUT = 120.0
READY_TIMEOUT = 600.0
TERMINATE_TIMEOUT = 180.0
POLL_SECONDS = 0.2

READY_TARGET_SECONDS = 60.0
FLOOR_RATIO_TARGET = 2.0

# (phase, state it starts at, state it ends at), from a node's state-change events
PHASES = (
    ("start", "pending", "booting"),
    ("boot", "booting", "registered"),
    ("wait", "registered", "configuring"),
    ("configure", "configuring", "ready"),
)
PHASE_LABELS = {
    "start": "start (pending → booting)",
    "boot": "boot (booting → registered)",
    "wait": "waiting for requirements (registered → configuring)",
    "configure": "configure (configuring → ready)",
}

METHOD = f"""\
**Floor: a bare container boot.** `NspawnBackend.boot` with a hand-made `NodeSpec`: the
same `{IMAGE}` image, overlay root, network namespace, veth pair and bridge
(`corral.backends.network`) and `systemd-nspawn --boot` command line as a cluster node,
but with `corral-agent.service` masked (a `/dev/null` symlink in the overlay's upper
directory, made before the boot). Timed from the `boot()` call (so overlay mount and
network setup are included, as they are for a node) until **sshd accepts a TCP
connection on port 22** at the container's address, polled every 50 ms from the host over
the bridge. sshd is ordered after the host-key unit, as the agent is, so this is the
moment the agent would have started. Also recorded: when `systemctl is-system-running
--wait`, run in the container through `nsenter` once sshd answered, returns (systemd's own
"boot finished"). One unrecorded warm-up boot first, then {BARE_BOOTS} boots; the figure is
the median.

**Three bare boots together.** {TOGETHER} such containers (addresses one apart) booted
at the same moment, one thread each, timed until the slowest accepts on port 22;
{TOGETHER_RUNS} runs, median. A 1+2 cluster boots as many containers at once on the same
cores, so this is its floor before any contextualization; it is reported beside the
target's single-boot floor, without a target of its own.

**Clusters.** One in-process `corral.service.process.Service` (backend nspawn, default engine
tick {ServiceConfig.tick_seconds} s as `corral serve` has, SQLite in a temporary data dir,
images from `{IMAGE_CACHE}`) served by `ServersThread`: API on 127.0.0.1, broker on
0.0.0.0. `examples/base-cluster.yaml` (1 head + 2 workers) and the same document with 8
workers are launched with `POST /v1/clusters` over HTTP, {CLUSTER_RUNS} times each,
one cluster at a time. **Ready** is timed from just before the POST to the timestamp of
the cluster's `launching → ready` event (same host clock; the poll that saw it is kept
in `raw` as `ready_polled_s`). Per node, from `GET /v1/clusters/{{id}}/events`: *start*
pending → booting (engine picks the node up and `backend.boot` returns), *boot* booting →
registered (container boot until the agent's register call), *wait* registered →
configuring (until the node's requirements are met and its first role script starts),
*configure* configuring → ready (role scripts). For each phase the figure is the
**slowest node** of a run, median over runs. Phases do not add up along one node: the
head requires every worker registered and the workers require the head registered, so
the critical path is the slowest boot, then the head's configure until slurmctld
listens, alongside which the workers prepare munge and sshd, then the workers' slurmd
fetching its configuration (each node's state times after the POST are in `raw` as
`timeline`). Then `DELETE` and the time until the
cluster is `terminated`. The host offers {CPU_OVERCOMMIT} cores per real core so a 1+8
cluster fits (each node is still held to one core of CPU time, which 9 nodes share on 2)."""


@dataclass
class BareBoot:
    spawned_s: float  # boot() returned: overlay, network and nspawn started
    sshd_s: float  # sshd accepted TCP on port 22
    running_s: float  # `systemctl is-system-running --wait` returned
    system_state: str
    terminate_s: float


@dataclass
class ClusterRun:
    workers: int
    cluster_id: str
    ready_s: float
    ready_polled_s: float
    nodes: dict[str, dict[str, float]] = field(default_factory=dict)  # node -> phase -> s
    # node -> state -> seconds after the POST when the node first entered that state
    timeline: dict[str, dict[str, float]] = field(default_factory=dict)
    terminated_s: float = 0.0


def run() -> Section:
    """Bake if needed, measure the floor and both cluster sizes, and return the figures."""
    digest = ensure_image()
    tag = f"bench-{secrets.token_hex(3)}"
    busy_before = cpu_busy_fraction()
    workdir = Path(tempfile.mkdtemp(prefix="corral-bench-nspawn-"))
    created: list[tuple[str, list[str]]] = []  # (cluster id, node ids), for the last sweep
    try:
        bare, together = measure_bare_boots(workdir / "bare", digest, tag)
        clusters = measure_clusters(workdir / "service", digest, tag, created)
    finally:
        sweep(workdir, tag, created)
    section = build_section(bare, together, clusters)
    section.raw["cpu_busy_before"] = busy_before
    section.raw["load_average_after"] = os.getloadavg()
    if busy_before > 0.2:
        section.notes.append(
            f"the machine was not idle: {busy_before:.0%} of its CPU was busy in the second "
            "before the run, and other work shares the CPU with the containers"
        )
    return section


def cpu_busy_fraction(seconds: float = 1.0) -> float:
    """How busy all CPUs were over the next `seconds`, from /proc/stat (0.0 to 1.0)."""

    def sample() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        idle = values[3] + values[4]  # idle and iowait
        return sum(values), idle

    total_before, idle_before = sample()
    time.sleep(seconds)
    total_after, idle_after = sample()
    total = total_after - total_before
    return 1 - (idle_after - idle_before) / total if total else 0.0


def ensure_image() -> str:
    IMAGE_CACHE.mkdir(parents=True, exist_ok=True)
    return bake(RECIPES[IMAGE], ImageStore(IMAGE_CACHE), progress=log.info)


# -- the floor -------------------------------------------------------------------------


def measure_bare_boots(root: Path, digest: str, tag: str) -> tuple[list[BareBoot], list[float]]:
    """Single bare boots, then groups of TOGETHER booted at once (the slowest of each)."""
    backend = NspawnBackend(root)
    check_subnet_free(BARE_SUBNET)
    boot_bare(backend, digest, f"{tag}-warmup", tag)
    alone = [boot_bare(backend, digest, f"{tag}-bare-{i}", tag) for i in range(BARE_BOOTS)]
    together = [
        boot_bare_together(backend, digest, [f"{tag}-group{r}-{i}" for i in range(TOGETHER)], tag)
        for r in range(TOGETHER_RUNS)
    ]
    return alone, together


def check_subnet_free(subnet: str) -> None:
    prefix = subnet.rsplit(".", 1)[0] + "."
    addresses = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True).stdout
    if prefix in addresses:
        raise RuntimeError(f"{subnet} is in use on this machine; the bare boot needs it")


def bare_spec(
    backend: NspawnBackend, digest: str, node_id: str, tag: str, index: int = 0
) -> tuple[NodeSpec, Placement]:
    """A node and its placement, its agent masked, at the `index`th bare address."""
    # the backend mounts its overlay over an existing upper directory, so a unit masked
    # here is masked in the container from its first instant
    mask_unit(backend.root / node_id / "upper", "corral-agent.service")
    return bare_node(digest, node_id, tag, index, BARE_ADDRESS, BARE_SUBNET)


def bare_node(
    digest: str, node_id: str, tag: str, index: int, first_address: str, subnet: str
) -> tuple[NodeSpec, Placement]:
    """A node of the example's size with no bootstrap document, and its placement at the
    `index`th address from `first_address`, for any backend that boots on a bridge."""
    prefix, first = first_address.rsplit(".", 1)
    spec = NodeSpec(
        node_id=node_id,
        cluster_id=f"{tag}-bare",
        name=f"bare-{index}",
        image=ImageRef(IMAGE, digest, ImageStore(IMAGE_CACHE).path(digest)),
        cores=1,
        memory_mib=1024,
    )
    return spec, Placement("local", "local", f"{prefix}.{int(first) + index}", subnet)


def boot_bare(backend: NspawnBackend, digest: str, node_id: str, tag: str) -> BareBoot:
    spec = bare_spec(backend, digest, node_id, tag)
    started = time.monotonic()
    try:
        backend.boot(*spec)
        spawned = time.monotonic() - started
        wait_for_tcp(BARE_ADDRESS, 22, BOOT_TIMEOUT)
        sshd = time.monotonic() - started
        state = wait_system_running(node_id)
        running = time.monotonic() - started
    finally:
        stopping = time.monotonic()
        backend.terminate(node_id)
    boot = BareBoot(spawned, sshd, running, state, time.monotonic() - stopping)
    log.info("bare boot %s: sshd after %.2f s, %s after %.2f s", node_id, sshd, state, running)
    return boot


def boot_bare_together(backend: NspawnBackend, digest: str, node_ids: list[str], tag: str) -> float:
    """Seconds from booting all of `node_ids` at once until the last accepts ssh."""
    nodes = [bare_spec(backend, digest, w, tag, i) for i, w in enumerate(node_ids)]
    return boot_together(backend, nodes, BOOT_TIMEOUT)


def boot_together(
    backend: Backend, nodes: list[tuple[NodeSpec, Placement]], timeout: float
) -> float:
    """Seconds from booting all of `nodes` at once, one thread each, until the last accepts
    TCP on port 22; then all are terminated, together too."""

    def boot(node: tuple[NodeSpec, Placement]) -> None:
        backend.boot(*node)
        wait_for_tcp(node[1].address, 22, timeout)

    started = time.monotonic()
    try:
        with ThreadPoolExecutor(len(nodes)) as pool:
            for booted in [pool.submit(boot, node) for node in nodes]:
                booted.result()
        slowest = time.monotonic() - started
    finally:
        with ThreadPoolExecutor(len(nodes)) as pool:
            list(pool.map(backend.terminate, [spec.node_id for spec, _ in nodes]))
    log.info("%d bare boots together: the last sshd after %.2f s", len(nodes), slowest)
    return slowest


def mask_unit(upper: Path, unit: str) -> None:
    units = upper / "etc" / "systemd" / "system"
    units.mkdir(parents=True, exist_ok=True)
    (units / unit).symlink_to("/dev/null")


def wait_for_tcp(address: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((address, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing accepted {address}:{port} in {timeout:g} s") from None
            time.sleep(0.05)


def wait_system_running(node_id: str) -> str:
    """systemd's own verdict on the boot, asked inside the container once it is done."""
    init = container_init_pid(node_id)
    result = subprocess.run(
        ["nsenter", f"--target={init}", "--all", "systemctl", "is-system-running", "--wait"],
        capture_output=True,
        text=True,
        timeout=BOOT_TIMEOUT,
    )
    return result.stdout.strip() or result.stderr.strip()


def container_init_pid(node_id: str) -> int:
    """The container's systemd: the child of the systemd-nspawn running this node."""
    machine = f"--machine={network.netns_name(node_id)}"
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().decode().split("\0")
            children = (proc / "task" / proc.name / "children").read_text().split()
        except OSError:
            continue
        if argv[0].endswith("systemd-nspawn") and machine in argv and children:
            return int(children[0])
    raise RuntimeError(f"no systemd-nspawn with a container for {node_id}")


# -- clusters --------------------------------------------------------------------------


def measure_clusters(
    data_dir: Path, digest: str, tag: str, created: list[tuple[str, list[str]]]
) -> list[ClusterRun]:
    runs = []
    with served_service(data_dir) as client:
        register_image(client, digest)
        for workers in WORKER_COUNTS:
            document = with_workers(BASE_CLUSTER.read_text(), workers)
            for attempt in range(CLUSTER_RUNS):
                name = f"{tag}-1p{workers}-{attempt}"
                runs.append(time_cluster(client, document, name, workers, created))
    return runs


@contextlib.contextmanager
def served_service(
    data_dir: Path,
    backend: str = "nspawn",
    address_range: str = SERVICE_RANGE,
    backend_options: dict[str, str] | None = None,
) -> Iterator[httpx.Client]:
    """A service of `backend` listening on free ports; stopped, with its machines, on exit."""
    data_dir.mkdir(parents=True)
    (data_dir / "images").symlink_to(IMAGE_CACHE)
    config = ServiceConfig(
        data_dir=data_dir,
        backend=backend,
        backend_options=dict(backend_options or {}),
        listen=f"127.0.0.1:{free_port('127.0.0.1')}",
        # nodes reach the broker at their bridge's address
        broker_listen=f"0.0.0.0:{free_port('0.0.0.0')}",
        address_range=address_range,
        cpu_overcommit=CPU_OVERCOMMIT,
    )
    service = Service(config)
    service.start()
    servers = None
    try:
        servers = ServersThread(service).start()
        token = config.admin_token_file.read_text().strip()
        with httpx.Client(
            base_url=f"http://{config.listen}/v1",
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        ) as client:
            yield client
    finally:
        if servers is not None:
            servers.stop()
        service.stop()
        for machine in service.backend.list_machines():
            service.backend.terminate(machine.node_id)


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def register_image(client: httpx.Client, digest: str) -> None:
    answer = client.post("/images", json={"name": IMAGE, "digest": digest})
    expect_success(answer, "register the image")


def with_workers(document: str, workers: int) -> str:
    parsed = yaml.safe_load(document)
    group = next(g for g in parsed["nodes"] if g["group"] == "worker")
    group["count"] = workers
    return yaml.safe_dump(parsed, sort_keys=False)


def time_cluster(
    client: httpx.Client,
    document: str,
    name: str,
    workers: int,
    created: list[tuple[str, list[str]]],
) -> ClusterRun:
    """Launch, wait until ready, read the node phases, destroy and wait until terminated."""
    posted_at = datetime.now(UTC)
    started = time.monotonic()
    answer = client.post(
        "/clusters", json={"document": document, "name": name, "lease_seconds": 3600}
    )
    expect_success(answer, f"launch {name}")
    cluster = answer.json()
    created.append((cluster["id"], [n["id"] for n in cluster["nodes"]]))
    try:
        view = wait_for_state(client, cluster["id"], lambda s: s != "launching", READY_TIMEOUT)
        polled = time.monotonic() - started
        events = client.get(f"/clusters/{cluster['id']}/events").json()
        if view["state"] != "ready":
            raise RuntimeError(f"cluster {name} ended {view['state']}: {view.get('failure')}")
    finally:
        terminated = destroy(client, cluster["id"])
    run = ClusterRun(
        workers=workers,
        cluster_id=cluster["id"],
        ready_s=seconds_since(posted_at, cluster_ready_at(events)),
        ready_polled_s=polled,
        nodes=node_phases(events),
        timeline={
            node: {state: seconds_since(posted_at, at) for state, at in states.items()}
            for node, states in node_states(events).items()
        },
        terminated_s=terminated,
    )
    log.info("cluster %s (1+%d): ready after %.1f s", name, workers, run.ready_s)
    return run


def expect_success(answer: httpx.Response, doing: str) -> None:
    if answer.is_error:
        raise RuntimeError(f"could not {doing}: HTTP {answer.status_code}: {answer.text}")


def wait_for_state(
    client: httpx.Client, cluster_id: str, done: Callable[[str], bool], timeout: float
) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        view = client.get(f"/clusters/{cluster_id}").json()
        if done(view["state"]):
            return view
        if time.monotonic() > deadline:
            raise TimeoutError(f"cluster {cluster_id} still {view['state']} after {timeout:g} s")
        time.sleep(POLL_SECONDS)


def destroy(client: httpx.Client, cluster_id: str) -> float:
    """Destroy the cluster; seconds until it was terminated."""
    started = time.monotonic()
    expect_success(client.delete(f"/clusters/{cluster_id}"), f"destroy {cluster_id}")
    wait_for_state(client, cluster_id, lambda s: s == "terminated", TERMINATE_TIMEOUT)
    return time.monotonic() - started


def node_states(events: list[dict]) -> dict[str, dict[str, datetime]]:
    """Node name -> state -> when the node first entered it."""
    reached: dict[str, dict[str, datetime]] = {}
    for event in events:
        if event["kind"] == "state" and event["subject"] != "cluster":
            states = reached.setdefault(event["subject"], {})
            states.setdefault(event["to_state"], datetime.fromisoformat(event["at"]))
    return reached


def node_phases(events: list[dict]) -> dict[str, dict[str, float]]:
    return {
        node: {
            phase: (states[end] - states[begin]).total_seconds()
            for phase, begin, end in PHASES
            if begin in states and end in states
        }
        for node, states in node_states(events).items()
    }


def cluster_ready_at(events: list[dict]) -> datetime:
    return next(
        datetime.fromisoformat(e["at"])
        for e in events
        if e["subject"] == "cluster" and e["kind"] == "state" and e["to_state"] == "ready"
    )


def seconds_since(start: datetime, end: datetime) -> float:
    return (end - start).total_seconds()


# -- cleaning up -----------------------------------------------------------------------


def sweep(workdir: Path, tag: str, created: list[tuple[str, list[str]]]) -> None:
    """Remove whatever a failed step left: containers, mounts, links, namespaces, files.

    The backends remove their own on the normal path; this is for the others.
    """
    stop_processes_under(workdir, b"systemd-nspawn")
    unmount_under(workdir)
    for cluster_id, node_ids in created:
        for node_id in node_ids:
            network.detach_node(node_id)
        network.remove_bridge(cluster_id)
    for node_id in [f"{tag}-warmup", *(f"{tag}-bare-{i}" for i in range(BARE_BOOTS))]:
        network.detach_node(node_id)
    network.remove_bridge(f"{tag}-bare")
    shutil.rmtree(workdir, ignore_errors=True)


def stop_processes_under(workdir: Path, program: bytes) -> None:
    """Kill the session of every `program` whose command line names `workdir`: containers
    or VMs a failed step left behind (both run in sessions of their own)."""
    marker = str(workdir).encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (proc / "cmdline").read_bytes()
            if argv.startswith(program) and marker in argv:
                log.warning("killing a %s left behind: pid %s", program.decode(), proc.name)
                os.killpg(int(proc.name), signal.SIGKILL)


def unmount_under(workdir: Path) -> None:
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount in reversed(mounts):
        if mount.startswith(str(workdir)):
            subprocess.run(["umount", "--lazy", mount], capture_output=True)


# -- figures ---------------------------------------------------------------------------


def build_section(
    bare: list[BareBoot], together: list[float], clusters: list[ClusterRun]
) -> Section:
    section = Section(title="End to end on nspawn", method=METHOD)
    floor = statistics.median(b.sshd_s for b in bare)
    section.add("bare container boot to sshd accepting (floor)", floor, "s")
    section.add(
        "bare container boot to systemd running", statistics.median(b.running_s for b in bare), "s"
    )
    together_floor = statistics.median(together)
    section.add(f"{TOGETHER} bare boots together, the last to sshd", together_floor, "s")
    section.add(f"{TOGETHER} bare boots together / floor", together_floor / floor, "x")
    for workers in WORKER_COUNTS:
        runs = [r for r in clusters if r.workers == workers]
        add_cluster_figures(section, runs, f"1+{workers}", floor, together_floor)
    section.raw = {
        "bare_boots": [asdict(b) for b in bare],
        "bare_boots_together_s": together,
        "clusters": [asdict(r) for r in clusters],
        "floor_s": floor,
        "engine_tick_s": ServiceConfig.tick_seconds,
        "cpu_count": os.cpu_count(),
    }
    return section


def add_cluster_figures(
    section: Section, runs: list[ClusterRun], size: str, floor: float, together_floor: float
) -> None:
    ready = statistics.median(r.ready_s for r in runs)
    if size == "1+2":
        section.add(
            "1+2 cluster ready",
            ready,
            "s",
            f"< {READY_TARGET_SECONDS:g} s",
            ready < READY_TARGET_SECONDS,
        )
        ratio = ready / floor
        section.add(
            "1+2 ready / bare boot floor",
            ratio,
            "x",
            f"< {FLOOR_RATIO_TARGET:g}x",
            ratio < FLOOR_RATIO_TARGET,
        )
        section.add(f"1+2 ready / {TOGETHER} bare boots together", ready / together_floor, "x")
    else:
        section.add(f"{size} cluster ready", ready, "s")
    add_phase_figures(section, runs, size)


def add_phase_figures(section: Section, runs: list[ClusterRun], size: str) -> None:
    """Each phase's slowest node, the destroy, and every run's ready time as a note."""
    for phase, label in PHASE_LABELS.items():
        slowest = [max(n.get(phase, 0.0) for n in r.nodes.values()) for r in runs]
        section.add(f"{size}: {label}, slowest node", statistics.median(slowest), "s")
    section.add(
        f"{size}: destroy → terminated", statistics.median(r.terminated_s for r in runs), "s"
    )
    section.notes.append(
        f"{size}: {len(runs)} run(s), ready after "
        + ", ".join(f"{r.ready_s:.1f}" for r in runs)
        + " s"
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    run().show()
