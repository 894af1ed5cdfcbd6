"""The contract every backend keeps, as tests each backend's test module inherits.

A backend's tests subclass BackendContract and provide two fixtures:

    backend        a Backend ready to boot machines (closed and cleaned up by the fixture)
    spec_factory   a callable `spec_factory(node)` returning a BootOrder for a new node
                   id on a host the backend can use

and may set `boot_timeout` (seconds) to how long a machine may take to report running,
and `console_shows` to what a booted machine's console prints, for a backend that keeps
consoles (Capability.KEEPS_CONSOLES).
This module's name keeps pytest from collecting the class on its own.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import pytest

from corral.backends.base import (
    Backend,
    Capability,
    Machine,
    MachineState,
    NodeSpec,
    Placement,
)


class BootOrder(NamedTuple):
    """A node and its placement: what `Backend.boot` takes (as `boot(*order)`)."""

    spec: NodeSpec
    placement: Placement

    @property
    def node_id(self) -> str:
        return self.spec.node_id


class BackendContract:
    boot_timeout: float = 10.0
    poll_interval: float = 0.02
    console_shows: str = ""

    @pytest.fixture
    def boot(self, backend: Backend):
        """Boot through the backend and terminate whatever a test left behind."""
        booted: list[str] = []

        def _boot(spec):
            booted.append(spec.node_id)
            return backend.boot(*spec)

        yield _boot
        for node_id in booted:
            backend.terminate(node_id)

    def wait_for(self, backend: Backend, node_id: str, state: MachineState) -> Machine:
        deadline = time.monotonic() + self.boot_timeout
        while True:
            machine = backend.describe(node_id)
            if machine is not None and machine.state is state:
                return machine
            if time.monotonic() > deadline:
                pytest.fail(f"{node_id} not {state} after {self.boot_timeout}s (last: {machine})")
            time.sleep(self.poll_interval)

    @staticmethod
    def listed(backend: Backend) -> list[str]:
        return [m.node_id for m in backend.list_machines()]

    # --- the contract ------------------------------------------------------------------

    def test_boot_returns_a_machine_for_the_node(self, backend, spec_factory, boot):
        spec = spec_factory("worker-0")
        machine = boot(spec)
        assert isinstance(machine, Machine)
        assert machine.node_id == spec.node_id
        assert machine.host == spec.placement.host
        assert machine.state in (MachineState.STARTING, MachineState.RUNNING)

    def test_a_booted_machine_reports_running(self, backend, spec_factory, boot):
        spec = spec_factory("worker-0")
        boot(spec)
        machine = self.wait_for(backend, spec.node_id, MachineState.RUNNING)
        assert machine.node_id == spec.node_id
        assert machine.host == spec.placement.host

    def test_a_booted_machine_is_listed(self, backend, spec_factory, boot):
        first, second = spec_factory("worker-0"), spec_factory("worker-1")
        boot(first)
        boot(second)
        ids = self.listed(backend)
        assert first.node_id in ids
        assert second.node_id in ids

    def test_terminate_removes_the_machine(self, backend, spec_factory, boot):
        gone, kept = spec_factory("worker-0"), spec_factory("worker-1")
        boot(gone)
        boot(kept)
        self.wait_for(backend, gone.node_id, MachineState.RUNNING)
        backend.terminate(gone.node_id)
        assert backend.describe(gone.node_id) is None
        assert gone.node_id not in self.listed(backend)
        # the other machine is untouched
        assert backend.describe(kept.node_id) is not None
        assert kept.node_id in self.listed(backend)

    def test_terminate_of_a_starting_machine_removes_it(self, backend, spec_factory, boot):
        spec = spec_factory("worker-0")
        boot(spec)
        backend.terminate(spec.node_id)
        assert backend.describe(spec.node_id) is None
        assert spec.node_id not in self.listed(backend)

    def test_terminate_twice_is_fine(self, backend, spec_factory, boot):
        spec = spec_factory("worker-0")
        boot(spec)
        backend.terminate(spec.node_id)
        backend.terminate(spec.node_id)
        assert backend.describe(spec.node_id) is None

    def test_terminate_of_an_unknown_machine_is_fine(self, backend, spec_factory):
        unknown = spec_factory("worker-0").node_id
        backend.terminate(unknown)
        assert backend.describe(unknown) is None
        assert unknown not in self.listed(backend)

    def test_describe_of_an_unknown_machine_is_none(self, backend, spec_factory):
        assert backend.describe(spec_factory("worker-0").node_id) is None

    def test_booting_the_same_workspace_twice_makes_one_machine(self, backend, spec_factory, boot):
        spec = spec_factory("worker-0")
        boot(spec)
        again = boot(spec)
        assert again.node_id == spec.node_id
        assert self.listed(backend).count(spec.node_id) == 1
        backend.terminate(spec.node_id)
        assert backend.describe(spec.node_id) is None

    def test_a_kept_console_outlives_its_machine_until_its_clusters_clean_up(
        self, backend, spec_factory, boot
    ):
        order = spec_factory("worker-0")
        if Capability.KEEPS_CONSOLES not in backend.capabilities:
            assert backend.console(order.node_id, 1024) is None
            return
        boot(order)

        def printed() -> str:
            return (backend.console(order.node_id, 1 << 20) or b"").decode(errors="replace")

        deadline = time.monotonic() + self.boot_timeout
        while self.console_shows not in printed():
            if time.monotonic() > deadline:
                tail = printed()[-2000:]
                pytest.fail(f"console without {self.console_shows!r} after boot:\n{tail}")
            time.sleep(self.poll_interval)
        assert backend.console(order.node_id, 5) == printed().encode()[-5:]

        backend.terminate(order.node_id)
        assert backend.describe(order.node_id) is None
        assert self.console_shows in printed()
        assert backend.clean_up(order.spec.cluster_id) == []
        assert backend.console(order.node_id, 1024) is None
