"""The fake backend: the backend contract, failure injection, persistence, options."""

from __future__ import annotations

import itertools
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import pytest
from backend_contract import BackendContract, BootOrder
from served import end_agents, end_process, process_alive

from corral.backends.base import Capability, ImageRef, MachineState, NodeSpec, Placement
from corral.backends.fake import FakeBackend
from corral.backends.registry import load_backend
from corral.errors import BackendError


class ManualClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_spec_factory():
    ids = itertools.count()

    def spec(node: str) -> BootOrder:
        n = next(ids)
        return BootOrder(
            NodeSpec(
                node_id=f"w{n:04}",
                cluster_id="c1",
                name=node,
                image=ImageRef("debian"),
                cores=1,
                memory_mib=512,
                user_data=b"token",
            ),
            Placement("local", "host-a", f"10.9.0.{n + 2}", "10.9.0.0/24"),
        )

    return spec


@pytest.fixture
def spec_factory():
    return make_spec_factory()


@pytest.fixture
def clock():
    return ManualClock()


class TestFakeBackendContract(BackendContract):
    boot_timeout = 2.0
    console_shows = "fake: running"

    @pytest.fixture
    def backend(self):
        backend = FakeBackend(boot_delay=0.05)
        yield backend
        backend.close()


class TestFakeBackendWithStateFileContract(BackendContract):
    boot_timeout = 2.0
    console_shows = "fake: running"

    @pytest.fixture
    def backend(self, tmp_path):
        backend = FakeBackend(boot_delay=0.05, state_file=tmp_path / "machines.json")
        yield backend
        backend.close()


# --- booting and failures --------------------------------------------------------------


def test_a_machine_is_starting_until_its_boot_delay_has_passed(spec_factory, clock):
    backend = FakeBackend(boot_delay=5, clock=clock)
    spec = spec_factory("worker-0")
    assert backend.boot(*spec).state is MachineState.STARTING
    clock.advance(4.9)
    assert backend.describe(spec.node_id).state is MachineState.STARTING
    clock.advance(0.1)
    machine = backend.describe(spec.node_id)
    assert machine.state is MachineState.RUNNING
    assert machine.address == spec.placement.address
    assert machine.detail == ""


def test_injected_boot_failure_raises_naming_the_node(spec_factory, clock):
    backend = FakeBackend(boot_delay=0, fail={"worker-1": "boot"}, clock=clock)
    spec = spec_factory("worker-1")
    with pytest.raises(BackendError) as caught:
        backend.boot(*spec)
    assert "worker-1" in caught.value.message
    assert caught.value.details["node"] == "worker-1"
    assert backend.describe(spec.node_id) is None
    assert backend.list_machines() == []


def test_injected_crash_ends_in_error_after_the_boot_delay(spec_factory, clock):
    backend = FakeBackend(boot_delay=2, fail={"worker-1": "crash"}, clock=clock)
    spec = spec_factory("worker-1")
    assert backend.boot(*spec).state is MachineState.STARTING
    clock.advance(1)
    assert backend.describe(spec.node_id).state is MachineState.STARTING
    clock.advance(1)
    machine = backend.describe(spec.node_id)
    assert machine.state is MachineState.ERROR
    assert machine.detail
    # the crashed machine still exists until it is terminated
    assert [m.state for m in backend.list_machines()] == [MachineState.ERROR]
    backend.terminate(spec.node_id)
    assert backend.list_machines() == []


def test_a_failed_boots_console_says_why_until_its_clusters_clean_up(spec_factory, clock):
    backend = FakeBackend(boot_delay=0, fail={"worker-1": "boot"}, clock=clock)
    failed, other = spec_factory("worker-1"), spec_factory("worker-2")
    with pytest.raises(BackendError):
        backend.boot(*failed)
    assert backend.console(failed.node_id, 1024) == (
        b"fake: booting worker-1\nfake: boot failed: injected boot failure for worker-1\n"
    )
    backend.boot(*other)
    backend.terminate(other.node_id)
    assert backend.console(other.node_id, 1024) == (
        b"fake: booting worker-2\nfake: running\nfake: terminated\n"
    )
    assert backend.clean_up("another-cluster") == []
    assert backend.console(failed.node_id, 1024) is not None
    assert backend.clean_up(failed.spec.cluster_id) == []
    assert backend.console(failed.node_id, 1024) is None
    assert backend.console(other.node_id, 1024) is None


def test_failures_match_node_names_by_glob(spec_factory, clock):
    backend = FakeBackend(boot_delay=0, fail={"worker-*": "boot"}, clock=clock)
    for node in ("worker-0", "worker-12"):
        with pytest.raises(BackendError, match=node):
            backend.boot(*spec_factory(node))
    for node in ("master-0", "workers"):
        spec = spec_factory(node)
        backend.boot(*spec)
        assert backend.describe(spec.node_id).state is MachineState.RUNNING


def test_unknown_failure_mode_is_refused_naming_it():
    with pytest.raises(ValueError) as caught:
        FakeBackend(fail={"worker-1": "explode"})
    assert "explode" in str(caught.value)
    assert "worker-1" in str(caught.value)


# --- the state file --------------------------------------------------------------------


def test_machines_outlive_the_backend_through_the_state_file(tmp_path, spec_factory, clock):
    state_file = tmp_path / "machines.json"
    first = FakeBackend(boot_delay=1, state_file=state_file, clock=clock)
    a, b = spec_factory("worker-0"), spec_factory("worker-1")
    first.boot(*a)
    first.boot(*b)
    first.close()

    clock.advance(1)
    second = FakeBackend(boot_delay=1, state_file=state_file, clock=clock)
    assert sorted(m.node_id for m in second.list_machines()) == [
        a.node_id,
        b.node_id,
    ]
    machine = second.describe(a.node_id)
    assert machine.state is MachineState.RUNNING
    assert (machine.host, machine.address) == (a.placement.host, a.placement.address)

    second.terminate(a.node_id)
    third = FakeBackend(boot_delay=1, state_file=state_file, clock=clock)
    assert [m.node_id for m in third.list_machines()] == [b.node_id]


def test_an_injected_crash_survives_a_restart(tmp_path, spec_factory, clock):
    state_file = tmp_path / "machines.json"
    first = FakeBackend(boot_delay=1, fail={"db-*": "crash"}, state_file=state_file, clock=clock)
    spec = spec_factory("db-0")
    first.boot(*spec)
    clock.advance(1)
    second = FakeBackend(boot_delay=1, state_file=state_file, clock=clock)
    assert second.describe(spec.node_id).state is MachineState.ERROR


def test_without_a_state_file_machines_die_with_the_backend(spec_factory, clock):
    first = FakeBackend(boot_delay=0, clock=clock)
    first.boot(*spec_factory("worker-0"))
    assert FakeBackend(boot_delay=0, clock=clock).list_machines() == []


# --- options and the registry ----------------------------------------------------------


def test_from_options_reads_boot_delay(tmp_path, spec_factory):
    (tmp_path / "slow").mkdir()
    (tmp_path / "quick").mkdir()
    slow = FakeBackend.from_options({"boot_delay": "3600"}, tmp_path / "slow")
    quick = FakeBackend.from_options({"boot_delay": "0"}, tmp_path / "quick")
    assert slow.boot(*spec_factory("worker-0")).state is MachineState.STARTING
    assert quick.boot(*spec_factory("worker-0")).state is MachineState.RUNNING


def test_from_options_reads_failures_with_boot_as_the_default_mode(tmp_path, spec_factory):
    backend = FakeBackend.from_options(
        {"boot_delay": "0", "fail": "worker-1:crash,master-*"}, tmp_path
    )
    crashed = spec_factory("worker-1")
    backend.boot(*crashed)
    assert backend.describe(crashed.node_id).state is MachineState.ERROR
    with pytest.raises(BackendError, match="master-0"):
        backend.boot(*spec_factory("master-0"))
    fine = spec_factory("worker-2")
    backend.boot(*fine)
    assert backend.describe(fine.node_id).state is MachineState.RUNNING


def test_from_options_reads_state_file(tmp_path, spec_factory):
    options = {"boot_delay": "0", "state_file": str(tmp_path / "elsewhere.json")}
    spec = spec_factory("worker-0")
    FakeBackend.from_options(options, tmp_path / "data-a").boot(*spec)
    again = FakeBackend.from_options(options, tmp_path / "data-b")
    assert [m.node_id for m in again.list_machines()] == [spec.node_id]


def test_from_options_keeps_machines_in_the_data_dir_by_default(tmp_path, spec_factory):
    spec = spec_factory("worker-0")
    FakeBackend.from_options({"boot_delay": "0"}, tmp_path).boot(*spec)
    again = FakeBackend.from_options({}, tmp_path)
    assert [m.node_id for m in again.list_machines()] == [spec.node_id]
    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    assert FakeBackend.from_options({}, elsewhere).list_machines() == []


def test_from_options_rejects_unknown_options_naming_them(tmp_path):
    with pytest.raises(ValueError) as caught:
        FakeBackend.from_options({"colour": "red", "boot_delay": "0", "speed": "9"}, tmp_path)
    message = str(caught.value)
    assert "colour" in message and "speed" in message
    assert "boot_delay" in message  # the known ones are listed as a hint


def test_from_options_rejects_a_bad_failure_mode_naming_it(tmp_path):
    with pytest.raises(ValueError) as caught:
        FakeBackend.from_options({"fail": "worker-1:explode"}, tmp_path)
    assert "explode" in str(caught.value)
    assert "worker-1" in str(caught.value)


def test_from_options_rejects_a_boot_delay_that_is_not_a_number(tmp_path):
    with pytest.raises(ValueError, match="boot_delay"):
        FakeBackend.from_options({"boot_delay": "soon"}, tmp_path)


def test_registry_builds_the_fake_backend(tmp_path, spec_factory):
    backend = load_backend("fake", {"boot_delay": "0"}, tmp_path)
    spec = spec_factory("worker-0")
    assert backend.boot(*spec).state is MachineState.RUNNING
    assert load_backend("fake", {}, tmp_path).describe(spec.node_id) is not None


def test_registry_passes_options_through(tmp_path):
    with pytest.raises(ValueError, match="colour"):
        load_backend("fake", {"colour": "red"}, tmp_path)


def test_registry_rejects_an_unknown_backend_listing_the_known_ones(tmp_path):
    with pytest.raises(ValueError) as caught:
        load_backend("nope", {}, tmp_path)
    assert "nope" in str(caught.value)
    assert "fake" in str(caught.value)


def test_bootstrap_dir_hands_each_machine_its_bootstrap_owner_only_until_terminated(
    tmp_path, spec_factory
):
    backend = FakeBackend.from_options({"bootstrap_dir": str(tmp_path / "boot")}, tmp_path)
    assert Capability.RUNS_AGENT in backend.capabilities
    machine = backend.boot(*spec_factory("worker-0"))
    written = tmp_path / "boot" / f"{machine.node_id}.json"
    assert written.read_bytes() == b"token"
    assert written.stat().st_mode & 0o777 == 0o600
    backend.terminate(machine.node_id)
    assert not written.exists()


def test_bootstrap_dir_and_agent_image_are_refused_together(tmp_path):
    (tmp_path / "image").mkdir()
    options = {"bootstrap_dir": str(tmp_path / "boot"), "agent_image": str(tmp_path / "image")}
    with pytest.raises(ValueError, match="not both"):
        FakeBackend.from_options(options, tmp_path)


# --- a service killed in the middle of a boot or a termination -------------------------

# what an agent gets from its bootstrap: a broker nobody answers at, so it keeps retrying
WAITING = json.dumps(
    {
        "corral": 1,
        "broker": "https://127.0.0.1:1/broker/v1",
        "fingerprint": "sha256:" + "0" * 64,
        "cluster": "c1",
        "node": "worker-0",
        "token": "bt_for-the-test",
    }
).encode()


def agents_on(root: Path) -> list[int]:
    """Pids of the agent processes that run on `root`."""
    time.sleep(0.2)  # a command line reads empty until its process has finished exec
    wanted = b"\0--root\0" + os.fsencode(str(root)) + b"\0"
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and wanted in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return [pid for pid in pids if process_alive(pid)]


@pytest.fixture
def with_agents(tmp_path, spec_factory):
    """Backends that run real agents on `tmp_path`; each agent ends with the test."""
    image = tmp_path / "image"
    (image / "etc").mkdir(parents=True)
    order = spec_factory("worker-0")
    spec = order._replace(spec=replace(order.spec, user_data=WAITING))

    def backend() -> FakeBackend:  # one service process after another, on the same files
        return FakeBackend.from_options({"agent_image": str(image)}, tmp_path)

    yield backend, spec, tmp_path / "fake-roots" / spec.node_id
    end_agents(tmp_path)


def crash_forgets(tmp_path, node_id: str, *, agent: bool) -> None:
    """Leave the state file as a crash would have: without the machine, or without its agent."""
    state = tmp_path / "fake-machines.json"
    records = [r for r in json.loads(state.read_text()) if r["node_id"] != node_id or agent]
    for record in records:
        record["agent_pid"] = 0
    state.write_text(json.dumps(records))


def test_a_boot_again_after_a_crash_adopts_the_agent_that_runs_no_record_named(with_agents):
    backend, spec, root = with_agents
    first = backend()
    first.boot(*spec)
    (started,) = agents_on(root)
    # killed after the agent started and before it was recorded: the engine boots again
    crash_forgets(root.parent.parent, spec.node_id, agent=False)
    second = backend()
    assert second.list_machines() == []
    second.boot(replace(spec.spec, user_data=WAITING.replace(b"bt_for", b"bt_new")), spec.placement)
    assert agents_on(root) == [started]  # one machine, one agent
    second.terminate(spec.node_id)
    assert agents_on(root) == [] and not root.exists()


def test_a_boot_again_after_a_crash_starts_the_agent_a_recorded_machine_never_got(with_agents):
    backend, spec, root = with_agents
    first = backend()
    first.boot(*spec)
    for pid in agents_on(root):  # as if it had never started
        end_process(pid)
    # killed after the machine was recorded and before its agent started
    crash_forgets(root.parent.parent, spec.node_id, agent=True)
    second = backend()
    assert [m.node_id for m in second.list_machines()] == [spec.node_id]
    second.boot(*spec)
    assert len(agents_on(root)) == 1
    second.terminate(spec.node_id)
    assert agents_on(root) == []


def test_terminate_after_a_crash_ends_the_agent_no_record_names(with_agents):
    backend, spec, root = with_agents
    first = backend()
    first.boot(*spec)
    assert len(agents_on(root)) == 1
    # killed after the machine was forgotten and before its agent was ended
    crash_forgets(root.parent.parent, spec.node_id, agent=False)
    second = backend()
    second.terminate(spec.node_id)  # the engine's job, run again after the restart
    assert agents_on(root) == [] and not root.exists()
    assert second.list_machines() == []
