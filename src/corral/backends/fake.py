"""A complete in-process backend for scale and fault tests.

Machines are records, not processes: one is `starting` until its boot delay has passed,
then `running`. Failures are injected per node name: `boot` makes boot() raise, `crash`
makes the machine end in `error` once its boot delay has passed. With a state file the
machines outlive the service process, as real containers would, so restart and
lease-enforcement tests mean something.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from corral.backends.base import Backend, BootSpec, Capability, Machine, MachineState
from corral.errors import BackendError

log = logging.getLogger(__name__)

FAILURE_MODES = ("boot", "crash")


@dataclass
class _FakeMachine:
    workspace_id: str
    node: str
    host: str
    address: str
    started_at: float
    fail: str | None


class FakeBackend(Backend):
    """In-process machines with a boot delay and failure injection.

    `fail` maps node-name glob patterns (`worker-1`, `worker-*`) to a failure mode.
    """

    name = "fake"
    capabilities = frozenset({Capability.ANY_IMAGE, Capability.OUTLIVES_SERVICE})

    def __init__(
        self,
        boot_delay: float = 0.2,
        fail: dict[str, str] | None = None,
        state_file: Path | None = None,
        clock=time.time,
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
        self._clock = clock
        self._lock = threading.Lock()
        self._machines: dict[str, _FakeMachine] = self._load()
        self.boots = 0
        self.terminations = 0

    @classmethod
    def from_options(cls, options: dict[str, str], data_dir: Path) -> FakeBackend:
        """Options: boot_delay=SECONDS, fail=NODE:MODE[,NODE:MODE], state_file=PATH.

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
        state_file = Path(options.pop("state_file", data_dir / "fake-machines.json"))
        if options:
            raise ValueError(
                f"fake backend: unknown option(s) {', '.join(sorted(options))} "
                "(known: boot_delay, fail, state_file)"
            )
        return cls(boot_delay, fail, state_file)

    def boot(self, spec: BootSpec) -> Machine:
        mode = self._failure_for(spec.node)
        if mode == "boot":
            raise BackendError(
                f"fake backend: injected boot failure for {spec.node}", node=spec.node
            )
        with self._lock:
            if spec.workspace_id not in self._machines:
                self._machines[spec.workspace_id] = _FakeMachine(
                    spec.workspace_id, spec.node, spec.host, spec.address, self._clock(), mode
                )
                self.boots += 1
                self._save()
            machine = self._machines[spec.workspace_id]
        log.info(
            "fake: booting %s (%s) on %s at %s",
            spec.node,
            spec.workspace_id,
            spec.host,
            spec.address,
        )
        return self._view(machine)

    def terminate(self, workspace_id: str) -> None:
        with self._lock:
            if self._machines.pop(workspace_id, None) is not None:
                self.terminations += 1
                self._save()
                log.info("fake: terminated %s", workspace_id)

    def describe(self, workspace_id: str) -> Machine | None:
        with self._lock:
            machine = self._machines.get(workspace_id)
        return self._view(machine) if machine else None

    def list_machines(self) -> list[Machine]:
        with self._lock:
            machines = list(self._machines.values())
        return [self._view(m) for m in machines]

    def _failure_for(self, node: str) -> str | None:
        for pattern, mode in self.fail.items():
            if fnmatch.fnmatchcase(node, pattern):
                return mode
        return None

    def _view(self, machine: _FakeMachine) -> Machine:
        booted = self._clock() - machine.started_at >= self.boot_delay
        if not booted:
            state, detail = MachineState.STARTING, ""
        elif machine.fail == "crash":
            state, detail = MachineState.ERROR, "injected crash during boot"
        else:
            state, detail = MachineState.RUNNING, ""
        return Machine(machine.workspace_id, state, machine.host, machine.address, detail)

    def _load(self) -> dict[str, _FakeMachine]:
        if not self.state_file or not self.state_file.exists():
            return {}
        records = json.loads(self.state_file.read_text())
        return {r["workspace_id"]: _FakeMachine(**r) for r in records}

    def _save(self) -> None:
        if not self.state_file:
            return
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps([asdict(m) for m in self._machines.values()]))
        os.replace(tmp, self.state_file)
