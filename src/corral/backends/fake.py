"""A complete in-process backend for scale and fault tests.

Machines are records, not processes: one is `starting` until its boot delay has passed,
then `running`. Failures are injected per node name: `boot` makes boot() raise, `crash`
makes the machine end in `error` once its boot delay has passed. With a state file the
machines outlive the service process, as real containers would, so restart and
lease-enforcement tests mean something. Each node has a console of a few lines (its boot,
its state, why its boot failed), kept in memory after the machine is gone until its
cluster's clean_up, as a real backend keeps a console.

Given an image directory (`agent_image`), each machine also gets a root directory copied
from it, an SSH host key and its bootstrap document, and runs the real context agent
on that root as a process of its own, so the whole contextualization path runs without
root privileges. Given `bootstrap_dir` instead, it only writes each machine's bootstrap
document there, as `<node id>.json`, for simulated agents (bench/) to pick up.

The service can be killed in the middle of a boot or a termination, so both are
idempotent across a crash, and nothing runs that no record names: a machine is recorded
before its agent starts and forgotten only after its processes have ended, and they are
found by the root directory they run in, not by a pid a crash may have left unrecorded.
"""

from __future__ import annotations

import contextlib
import fnmatch
import ipaddress
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from corral.backends.base import (
    Backend,
    Capability,
    Machine,
    MachineState,
    NodeSpec,
    Placement,
)
from corral.backends.machine_records import load_records, save_records
from corral.errors import BackendError

log = logging.getLogger(__name__)

FAILURE_MODES = ("boot", "crash")
# where a fake that places its machines itself takes their addresses (RFC 2544's range)
OWN_ADDRESSES = ipaddress.ip_network("198.18.0.0/15")
AGENT = Path(__file__).resolve().parent.parent / "agent.py"
# what the agent leaves under a machine's root when it powers the machine off (agent.py)
POWER_OFF_MARK = "run/corral/powered-off"
PRICE_OPTIONS = ("price_per_core_hour", "spot_price_per_core_hour")


@dataclass
class _FakeMachine:
    node_id: str
    node: str
    host: str
    address: str
    started_at: float
    fail: str | None
    root: str = ""  # the machine's root directory, when it runs an agent
    agent_pid: int = 0  # 0 until its agent has started (a crash may come in between)


@dataclass
class _Console:
    """What a fake machine's console printed, but for its current state."""

    cluster_id: str
    lines: list[str] = field(default_factory=list)


def _state_line(machine: Machine) -> str:
    """The console line a machine in this state prints."""
    if machine.state is MachineState.RUNNING:
        return "fake: running"
    return f"fake: {machine.state}" + (f": {machine.detail}" if machine.detail else "")


class FakeBackend(Backend):
    """In-process machines with a boot delay and failure injection.

    `fail` maps node-name glob patterns (`worker-1`, `worker-*`) to a failure mode.
    With `price_per_core_hour` its pool has prices: a node costs that per core and hour,
    or `spot_price_per_core_hour` on the spot market (default: the same).
    """

    name = "fake"
    capabilities = frozenset({Capability.ANY_IMAGE, Capability.KEEPS_CONSOLES})

    def __init__(
        self,
        boot_delay: float = 0.2,
        fail: dict[str, str] | None = None,
        state_file: Path | None = None,
        clock=time.time,
        agent_image: Path | None = None,
        roots: Path | None = None,
        bootstrap_dir: Path | None = None,
        places_itself: bool = False,
        price_per_core_hour: float | None = None,
        spot_price_per_core_hour: float | None = None,
    ) -> None:
        for pattern, mode in (fail or {}).items():
            if mode not in FAILURE_MODES:
                raise ValueError(
                    f"fake backend: failure mode for {pattern!r} must be one of "
                    f"{', '.join(FAILURE_MODES)}, not {mode!r}"
                )
        self.boot_delay = boot_delay
        self.fail = dict(fail or {})
        self.state_file = state_file
        self.agent_image = agent_image
        self.roots = roots
        if agent_image is not None:
            if roots is None:
                raise ValueError("fake backend: agent_image needs a directory for machine roots")
            if not agent_image.is_dir():
                raise ValueError(f"fake backend: agent_image {agent_image} is not a directory")
            self.capabilities = self.capabilities | {Capability.RUNS_AGENT}
        self.bootstrap_dir = bootstrap_dir
        if bootstrap_dir is not None:
            if agent_image is not None:
                raise ValueError("fake backend: give agent_image or bootstrap_dir, not both")
            bootstrap_dir.mkdir(parents=True, exist_ok=True)
            self.capabilities = self.capabilities | {Capability.RUNS_AGENT}
        if places_itself:  # as a cloud does: it gives each machine an address of its own
            self.capabilities = self.capabilities | {Capability.PLACES_ITSELF}
        if spot_price_per_core_hour is not None and price_per_core_hour is None:
            raise ValueError("fake backend: spot_price_per_core_hour needs price_per_core_hour")
        self.price_per_core_hour = price_per_core_hour
        self.spot_price_per_core_hour = spot_price_per_core_hour
        self._clock = clock
        self._lock = threading.Lock()
        self._machines: dict[str, _FakeMachine] = self._load()
        self._consoles: dict[str, _Console] = {}
        self.boots = 0
        self.terminations = 0

    @classmethod
    def from_options(cls, options: dict[str, str], data_dir: Path) -> FakeBackend:
        """Options: boot_delay=SECONDS, fail=NODE:MODE[,NODE:MODE], state_file=PATH (empty: none),
        agent_image=DIR (run the agent on a copy of DIR per machine), bootstrap_dir=DIR
        (write each machine's bootstrap document there for agents run elsewhere),
        places_itself=true (choose each machine's address, from OWN_ADDRESSES, as a cloud
        does, rather than take the one the service gives), price_per_core_hour=PRICE and
        spot_price_per_core_hour=PRICE (give the pool prices).

        Machines are kept in `data_dir`/fake-machines.json unless state_file says otherwise.
        """
        options = dict(options)
        try:
            boot_delay = float(options.pop("boot_delay", "0.2"))
        except ValueError:
            raise ValueError("fake backend: boot_delay must be a number of seconds") from None
        fail = {}
        for item in filter(None, options.pop("fail", "").split(",")):
            pattern, _, mode = item.partition(":")
            fail[pattern] = mode or "boot"
        # an empty state_file keeps machines in memory only: they end with the service
        state_path = options.pop("state_file", str(data_dir / "fake-machines.json"))
        state_file = Path(state_path) if state_path else None
        agent_image = options.pop("agent_image", None)
        bootstrap_dir = options.pop("bootstrap_dir", None)
        places_itself = options.pop("places_itself", "false")
        if places_itself not in ("true", "false"):
            raise ValueError("fake backend: places_itself must be true or false")
        prices = [_price_option(options, key) for key in PRICE_OPTIONS]
        if options:
            raise ValueError(
                f"fake backend: unknown option(s) {', '.join(sorted(options))} "
                "(known: boot_delay, fail, state_file, agent_image, bootstrap_dir, "
                f"places_itself, {', '.join(PRICE_OPTIONS)})"
            )
        return cls(
            boot_delay,
            fail,
            state_file,
            agent_image=Path(agent_image) if agent_image else None,
            roots=data_dir / "fake-roots",
            bootstrap_dir=Path(bootstrap_dir) if bootstrap_dir else None,
            places_itself=places_itself == "true",
            price_per_core_hour=prices[0],
            spot_price_per_core_hour=prices[1],
        )

    def hourly_price(self, spec: NodeSpec) -> float | None:
        rate = self.price_per_core_hour
        if spec.market == "spot" and self.spot_price_per_core_hour is not None:
            rate = self.spot_price_per_core_hour
        return None if rate is None else rate * spec.cores

    def boot(self, spec: NodeSpec, placement: Placement) -> Machine:
        mode = self._failure_for(spec.name)
        with self._lock:
            console = self._consoles.setdefault(spec.node_id, _Console(spec.cluster_id))
            console.lines.append(f"fake: booting {spec.name}")
            if mode == "boot":
                console.lines.append(f"fake: boot failed: injected boot failure for {spec.name}")
        if mode == "boot":
            raise BackendError(
                f"fake backend: injected boot failure for {spec.name}", node=spec.name
            )
        with self._lock:
            machine = self._machines.get(spec.node_id)
            if machine is None:
                address = placement.address
                if Capability.PLACES_ITSELF in self.capabilities:
                    address = self._own_address()
                machine = _FakeMachine(
                    spec.node_id, spec.name, placement.host, address, self._clock(), mode
                )
                if self.agent_image is not None and mode is None:
                    machine.root = str(self.roots / spec.node_id)
                self._machines[spec.node_id] = machine
                self.boots += 1
                self._save()  # before anything runs: a crash from here on leaves it recorded
            if self.bootstrap_dir is not None and mode is None:
                handed = self.bootstrap_dir / f"{spec.node_id}.json"
                if not handed.exists():  # a machine keeps the document it booted with
                    _write_private(handed, spec.user_data)
            if machine.root and not machine.agent_pid:
                # a new machine, or a crash between recording it and recording its agent:
                # an agent found on its root is that machine's, and keeps its bootstrap
                running = _processes_in(machine.root) if os.path.isdir(machine.root) else []
                machine.agent_pid = running[0] if running else self._start_agent(spec)
                self._save()
        log.info(
            "fake: booting %s (%s) on %s at %s",
            spec.name,
            spec.node_id,
            placement.host,
            machine.address,
        )
        return self._view(machine)

    def terminate(self, node_id: str) -> None:
        with self._lock:
            machine = self._machines.get(node_id)
        if self.bootstrap_dir is not None:
            (self.bootstrap_dir / f"{node_id}.json").unlink(missing_ok=True)
        root = self.roots / node_id if self.roots is not None else None
        if root is not None and root.is_dir():  # also when no record names it any more
            _stop_processes(str(root))
            shutil.rmtree(root, ignore_errors=True)
        with self._lock:  # forgotten last: a crash before this leaves it to terminate again
            forgotten = self._machines.pop(node_id, None)
            if forgotten is not None:
                self.terminations += 1
                self._save()
                if (console := self._consoles.get(node_id)) is not None:
                    console.lines += [_state_line(self._view(forgotten)), "fake: terminated"]
        if machine is not None:
            log.info("fake: terminated %s", node_id)

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
            console = self._consoles.get(node_id)
            machine = self._machines.get(node_id)
            if console is None:
                return None
            lines = list(console.lines)
        if machine is not None:
            lines.append(_state_line(self._view(machine)))
        text = "".join(line + "\n" for line in lines).encode()
        return text[-max_bytes:] if max_bytes > 0 else b""

    def clean_up(self, cluster_id: str) -> list[str]:
        """Forget the cluster's consoles, all that is left of it once its machines are gone."""
        with self._lock:
            for node_id in [n for n, c in self._consoles.items() if c.cluster_id == cluster_id]:
                del self._consoles[node_id]
        return []

    def _start_agent(self, spec: NodeSpec) -> int:
        """Make the machine's root from the image and start its agent; the agent's pid."""
        root = self.roots / spec.node_id
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(self.agent_image, root, symlinks=True)
        (root / "etc").mkdir(exist_ok=True)
        (root / "etc" / "hostname").write_text(spec.name + "\n")
        _write_host_key(root / "etc" / "ssh", spec.name)
        state = root / "var" / "lib" / "corral"
        state.mkdir(parents=True, exist_ok=True)
        _write_private(state / "bootstrap.json", spec.user_data)
        log_dir = root / "var" / "log"
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / "corral-agent.log", "ab") as agent_log:
            process = subprocess.Popen(
                [sys.executable, str(AGENT), "--root", str(root), "--poll-wait", "20"],
                cwd=root,  # how its processes are found again (_processes_in)
                stdin=subprocess.DEVNULL,
                stdout=agent_log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives the service, as a machine would
            )
        return process.pid

    def _own_address(self) -> str:
        """The first address of OWN_ADDRESSES no machine of this backend holds."""
        taken = {m.address for m in self._machines.values()}
        hosts = OWN_ADDRESSES.hosts()
        return str(next(a for a in hosts if str(a) not in taken))

    def _failure_for(self, node: str) -> str | None:
        for pattern, mode in self.fail.items():
            if fnmatch.fnmatchcase(node, pattern):
                return mode
        return None

    def _view(self, machine: _FakeMachine) -> Machine:
        booted = self._clock() - machine.started_at >= self.boot_delay
        if not booted:
            state, detail = MachineState.STARTING, ""
        elif machine.root and (Path(machine.root) / POWER_OFF_MARK).exists():
            state, detail = MachineState.STOPPED, "it powered itself off: its lease ended"
        elif machine.fail == "crash":
            state, detail = MachineState.ERROR, "injected crash during boot"
        else:
            state, detail = MachineState.RUNNING, ""
        return Machine(machine.node_id, state, machine.host, machine.address, detail)

    def _load(self) -> dict[str, _FakeMachine]:
        return load_records(self.state_file, _FakeMachine)

    def _save(self) -> None:
        save_records(self.state_file, self._machines)


def _write_host_key(ssh_dir: Path, node: str) -> None:
    ssh_dir.mkdir(parents=True, exist_ok=True)
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    fd = os.open(ssh_dir / "ssh_host_ed25519_key", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(private)
    (ssh_dir / "ssh_host_ed25519_key.pub").write_bytes(public + f" root@{node}\n".encode())


def _processes_in(root: str) -> list[int]:
    """Pids of the processes of a machine: its agent and role scripts, whoever started
    them, run in its root directory (read from /proc, which knows it from the fork on,
    while a command line is empty until exec has finished)."""
    wanted = {root, root + " (deleted)"}
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = os.readlink(proc / "cwd")
        except OSError:  # it ended meanwhile, or is not ours to read
            continue
        if cwd in wanted and _running(int(proc.name)):
            pids.append(int(proc.name))
    return sorted(pids)


def _stop_processes(root: str) -> None:
    """End every process of a machine: SIGTERM, then SIGKILL to those alive after 5 s."""
    pids = _processes_in(root)
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 1.0)):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while pids and time.monotonic() < deadline:
            pids = [pid for pid in pids if _running(pid)]
            if pids:
                time.sleep(0.05)


def _running(pid: int) -> bool:
    """True while `pid` has not exited; reaps it if it is our child and has."""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG) != (0, 0):
            return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _write_private(path: Path, data: bytes) -> None:
    """Write `data` readable by its owner only, from the first byte on."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, path)


def _price_option(options: dict[str, str], key: str) -> float | None:
    """Take option `key`, a price per core and hour, out of `options`; None if absent."""
    text = options.pop(key, None)
    if text is None:
        return None
    try:
        price = float(text)
    except ValueError:
        price = -1.0
    if not 0 <= price < float("inf"):
        raise ValueError(f"fake backend: {key} must be a price of 0 or more, not {text!r}")
    return price
