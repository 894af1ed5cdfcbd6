"""The `corral` command end to end: real services on real sockets, real subprocesses.

Each test that needs a service gets its own `corral serve` and data directory, so the
tests neither see nor disturb each other's clusters.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from served import ServedCorral, client_env, corral, end_agents, end_process, fake_machines

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
BASE = EXAMPLES / "base-cluster.yaml"
BAD = EXAMPLES / "bad-cluster.yaml"
NIMBUS = EXAMPLES / "nimbus-cluster.xml"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedCorral]:
    """One service for the tests that need no special backend; each uses its own users."""
    with ServedCorral(tmp_path_factory.mktemp("served")) as service:
        yield service


def ok_text(result) -> str:
    """What a successful command printed (with its stderr in the failure message)."""
    assert result.returncode == 0, (
        f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    return result.stdout


def ok(result) -> Any:
    """The JSON a successful command printed (with its stderr in the failure message)."""
    return json.loads(ok_text(result))


def launch(env: dict[str, str], *extra: str, document: Path = BASE) -> dict[str, Any]:
    return ok(corral("run", "--cluster", str(document), "--hours", "1", "--json", *extra, env=env))


def status(env: dict[str, str], cluster_id: str) -> dict[str, Any]:
    return ok(corral("status", cluster_id, "--json", env=env))


def wait_for(predicate, what: str, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.3)


def add_user(served: ServedCorral, name: str, *options: str) -> str:
    result = corral("user", "add", name, *options, env=served.env())
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, f"expected only the token on stdout, got {result.stdout!r}"
    return lines[0].strip()


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# -- validate ----------------------------------------------------------------------------


def test_validate_points_at_the_bad_field_and_its_line(tmp_path: Path) -> None:
    lines = BAD.read_text().splitlines()
    (line,) = [n for n, text in enumerate(lines, 1) if text.strip().startswith("corez:")]

    result = corral("validate", str(BAD), env=client_env(tmp_path))

    assert result.returncode == 3
    assert "nodes[1].corez" in result.stderr
    assert f"line {line}" in result.stderr
    assert result.stdout == ""


def test_validate_accepts_a_good_document(tmp_path: Path) -> None:
    result = corral("validate", str(BASE), env=client_env(tmp_path))

    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout


def test_validate_converts_a_nimbus_cluster_xml(tmp_path: Path) -> None:
    view = ok(corral("validate", str(NIMBUS), "--json", env=client_env(tmp_path)))

    assert view["valid"] is True
    groups = {g["group"]: g for g in view["document"]["nodes"]}
    assert set(groups) == {"head-node", "compute-nodes"}
    assert groups["head-node"]["count"] == 1
    assert groups["head-node"]["login"] is True
    assert set(groups["head-node"]["provides"]) == {"torqueserver", "nfsserver"}
    assert groups["compute-nodes"]["count"] == 2
    assert set(groups["compute-nodes"]["requires"]) == {"torqueserver", "nfsserver"}
    assert groups["head-node"]["data"]["users"].startswith("alice ssh-ed25519")
    assert view["warnings"] == []


def test_validate_names_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-cluster.yaml"

    result = corral("validate", str(missing), env=client_env(tmp_path))

    assert result.returncode == 3
    assert str(missing) in result.stderr


# -- a local service started on first use ------------------------------------------------


def _autostarted_pids(data_dir: Path) -> set[int]:
    """Processes serving `data_dir`: the one service.json names, and any `serve` whose
    command line names this (unique, per-test) data directory."""
    pids = set()
    state = data_dir / "service.json"
    if state.exists():
        with contextlib.suppress(ValueError, KeyError):
            pids.add(int(json.loads(state.read_text())["pid"]))
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in argv and os.fsencode(data_dir) in argv:
            pids.add(int(proc.name))
    return pids


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """A CORRAL_HOME whose autostarted service is ended afterwards, pass or fail."""
    data_dir = tmp_path / "home"
    try:
        yield data_dir
    finally:
        for pid in _autostarted_pids(data_dir):
            end_process(pid)
        end_agents(data_dir)


def test_run_without_a_service_starts_a_local_one(home: Path) -> None:
    env = client_env(home)

    result = corral("run", "--cluster", str(BASE), "--hours", "1", "--json", env=env)

    assert result.returncode == 0, result.stderr
    assert "started a local" in result.stderr
    cluster = json.loads(result.stdout)
    assert cluster["state"] == "ready"
    cluster_id = cluster["id"]
    assert (home / "service.json").exists()
    assert (home / "admin.token").exists()

    view = status(env, cluster_id)
    assert view["id"] == cluster_id
    assert view["state"] == "ready"
    nodes = {n["name"]: n for n in view["nodes"]}
    assert set(nodes) == {"head-0", "worker-0", "worker-1"}
    for node in nodes.values():
        assert node["state"] == "ready"
        assert node["host"]
    assert {m["node_id"] for m in fake_machines(home)} == {n["id"] for n in view["nodes"]}

    listed = ok(corral("list", "--json", env=env))
    assert cluster_id in [c["id"] for c in listed]

    for _ in range(2):  # destroying an ended cluster succeeds and changes nothing
        result = corral("destroy", cluster_id, env=env)
        assert result.returncode == 0, result.stderr
        assert "terminated" in result.stdout
    assert status(env, cluster_id)["state"] == "terminated"
    assert fake_machines(home) == []


def test_a_dead_local_service_is_replaced_not_confused_with_another(
    home: Path, tmp_path: Path
) -> None:
    env = client_env(home)
    ok(corral("list", "--json", env=env))  # starts home's local service
    recorded = json.loads((home / "service.json").read_text())
    end_process(recorded["pid"])  # as if it crashed: SIGTERM removes the file, so put it back
    (home / "service.json").write_text(json.dumps(recorded))
    with ServedCorral(tmp_path / "other") as other:
        # another data directory's service now answers where home's used to
        recorded["url"] = other.url
        (home / "service.json").write_text(json.dumps(recorded))

        result = corral("list", "--json", env=env)

        assert result.returncode == 0, result.stderr
        assert "started a local" in result.stderr
        assert json.loads((home / "service.json").read_text())["url"] != other.url


# -- refusals ----------------------------------------------------------------------------


def test_a_cluster_bigger_than_the_hosts_is_refused(served: ServedCorral, tmp_path: Path) -> None:
    carol = served.env(add_user(served, "carol"))
    (host,) = ok(corral("host", "list", "--json", env=carol))
    workers = 40
    cores = math.ceil((host["free_cores"] + 1) / workers)  # 40 workers always too many
    document = tmp_path / "too-big.yaml"
    document.write_text(
        "name: too-big\n"
        "lease: 1h\n"
        "image: debian-12\n"
        "nodes:\n"
        "  - group: worker\n"
        f"    count: {workers}\n"
        f"    cores: {cores}\n"
        "    memory: 256MiB\n"
    )

    result = corral("run", "--cluster", str(document), env=carol)

    assert result.returncode == 6, result.stderr
    assert "needed" in result.stderr
    assert "available" in result.stderr
    assert ok(corral("list", "--json", env=carol)) == []
    everyone = ok(corral("list", "--all", "--json", env=served.env()))
    assert [c for c in everyone if c["owner"] == "carol"] == []


def test_a_cluster_beyond_the_users_quota_is_refused(served: ServedCorral) -> None:
    dave = served.env(add_user(served, "dave", "--max-nodes", "2"))

    result = corral("run", "--cluster", str(BASE), "--hours", "1", env=dave)

    assert result.returncode == 6, result.stderr
    assert "quota" in result.stderr
    assert "2 node" in result.stderr
    assert ok(corral("list", "--json", env=dave)) == []
    everyone = ok(corral("list", "--all", "--json", env=served.env()))
    assert [c for c in everyone if c["owner"] == "dave"] == []


# -- pools -------------------------------------------------------------------------------


def test_a_launch_into_a_pool_that_does_not_exist_is_refused_naming_it(
    served: ServedCorral,
) -> None:
    frank = served.env(add_user(served, "frank"))

    result = corral("run", "--cluster", str(BASE), "--hours", "1", "--pool", "nowhere", env=frank)

    assert result.returncode == 4, result.stderr
    assert "pool" in result.stderr
    assert "nowhere" in result.stderr
    assert ok(corral("list", "--json", env=frank)) == []

    as_json = corral("run", "--cluster", str(BASE), "--pool", "nowhere", "--json", env=frank)
    assert as_json.returncode == 4, as_json.stderr
    assert json.loads(as_json.stdout)["details"]["pool"] == "nowhere"


def test_the_pool_given_to_run_overrides_the_documents(
    served: ServedCorral, tmp_path: Path
) -> None:
    gina = served.env(add_user(served, "gina"))
    elsewhere = tmp_path / "elsewhere.yaml"
    elsewhere.write_text(BASE.read_text() + "pool: elsewhere\n")

    refused = corral("run", "--cluster", str(elsewhere), "--hours", "1", env=gina)
    assert refused.returncode == 4, refused.stderr
    assert "elsewhere" in refused.stderr

    cluster = launch(gina, "--pool", "local", document=elsewhere)

    assert cluster["state"] == "ready"
    assert cluster["pool"] == "local"
    assert "pool local," in ok_text(corral("status", cluster["id"], env=gina))
    ok_text(corral("destroy", cluster["id"], "--yes", env=gina))  # the next tests need room


def test_a_pool_name_is_checked_before_any_request(tmp_path: Path) -> None:
    # no service is configured or started: the name is refused first
    result = corral("run", "--cluster", str(BASE), "--pool", "Not A Pool", env=client_env(tmp_path))

    assert result.returncode == 2
    assert "--pool" in result.stderr
    assert not (tmp_path / "service.json").exists()


# -- users see only their own clusters ---------------------------------------------------


def test_users_cannot_see_or_touch_each_others_clusters(served: ServedCorral) -> None:
    alice = served.env(add_user(served, "alice"))
    bob = served.env(add_user(served, "bob"))
    cluster = launch(alice)
    assert cluster["state"] == "ready"

    for command in (
        ["status", cluster["id"]],
        ["extend", cluster["id"], "--hours", "1"],
        ["destroy", cluster["id"], "--yes"],
    ):
        result = corral(*command, env=bob)
        assert result.returncode == 4, (command, result.stderr)
        assert cluster["id"] in result.stderr

    view = status(alice, cluster["id"])
    assert view["state"] == "ready"
    assert view["lease_end"] == cluster["lease_end"]
    assert all(n["state"] == "ready" for n in view["nodes"])
    assert ok(corral("list", "--json", env=bob)) == []

    stranger = served.env("not-a-token-anyone-was-given")
    result = corral("list", "--json", env=stranger)
    assert result.returncode == 5, result.stderr


# -- failures ----------------------------------------------------------------------------


def test_a_failed_boot_names_the_node_and_removes_the_cluster(tmp_path: Path) -> None:
    """A failed launch's nodes are removed; its record, and what its nodes' consoles
    printed, stay until it is destroyed."""
    with ServedCorral(tmp_path / "service", "--backend-option", "fail=worker-1:boot") as served:
        env = served.env()

        result = corral("run", "--cluster", str(BASE), "--hours", "1", "--json", env=env)

        assert result.returncode == 7, result.stderr
        assert "worker-1" in result.stderr
        assert "boot" in result.stderr
        cluster_id = json.loads(result.stdout)["id"]
        assert f"corral console {cluster_id} NODE" in result.stderr
        view = status(env, cluster_id)
        assert view["state"] == "failed"
        assert view["failure"] and "worker-1" in view["failure"]
        assert {n["state"] for n in view["nodes"]} == {"terminated"}
        (worker,) = [n for n in view["nodes"] if n["name"] == "worker-1"]
        assert worker["failure_phase"] == "boot"
        assert fake_machines(served.data_dir) == []

        shown = ok_text(corral("console", cluster_id, "worker-1", env=env))
        assert "fake: booting worker-1\n" in shown
        assert "fake: boot failed: injected boot failure for worker-1" in shown
        head = ok(corral("console", cluster_id, "head-0", "--json", env=env))
        assert head["node"] == "head-0" and head["cluster"] == cluster_id
        assert head["console"].endswith("fake: terminated\n")
        assert head["bytes"] == len(head["console"].encode()) and not head["truncated"]

        ok(corral("destroy", cluster_id, "--yes", "--json", env=env))
        assert status(env, cluster_id)["state"] == "terminated"
        gone = corral("console", cluster_id, "worker-1", env=env)
        assert gone.returncode != 0
        assert "no console of node worker-1 is kept" in gone.stderr


def test_keep_on_failure_keeps_the_nodes_that_booted(tmp_path: Path) -> None:
    with ServedCorral(tmp_path / "service", "--backend-option", "fail=worker-1:boot") as served:
        env = served.env()

        result = corral(
            "run", "--cluster", str(BASE), "--hours", "1", "--keep-on-failure", "--json", env=env
        )

        assert result.returncode == 7, result.stderr
        assert "worker-1" in result.stderr
        assert "boot" in result.stderr
        cluster_id = json.loads(result.stdout)["id"]

        def survivors_ready() -> dict[str, Any] | None:
            view = status(env, cluster_id)
            states = {n["name"]: n["state"] for n in view["nodes"]}
            return view if states["head-0"] == states["worker-0"] == "ready" else None

        view = wait_for(survivors_ready, "head-0 and worker-0 to be ready")
        assert view["state"] == "failed"
        nodes = {n["name"]: n for n in view["nodes"]}
        assert nodes["worker-1"]["state"] == "failed"
        assert nodes["worker-1"]["failure_phase"] == "boot"
        kept = {m["node_id"] for m in fake_machines(served.data_dir)}
        assert kept == {nodes["head-0"]["id"], nodes["worker-0"]["id"]}

        result = corral("destroy", cluster_id, "--yes", env=env)
        assert result.returncode == 0, result.stderr
        assert status(env, cluster_id)["state"] == "terminated"
        assert fake_machines(served.data_dir) == []


# -- leases ------------------------------------------------------------------------------


def test_console_shows_a_running_nodes_console_and_its_end(served: ServedCorral) -> None:
    env = served.env(add_user(served, "console-reader"))
    cluster_id = launch(env)["id"]

    shown = ok_text(corral("console", cluster_id, "worker-0", env=env))
    assert shown == "fake: booting worker-0\nfake: running\n"
    cut = ok_text(corral("console", cluster_id, "worker-0", "--bytes", "14", env=env))
    assert cut == "(last 14 bytes; earlier output cut)\nfake: running\n"

    refused = corral("console", cluster_id, "worker-0", "--bytes", "0", env=env)
    assert refused.returncode == 2 and "--bytes" in refused.stderr
    missing = corral("console", cluster_id, "worker-9", env=env)
    assert missing.returncode != 0
    assert f"cluster {cluster_id} has no node worker-9" in missing.stderr
    ok_text(corral("destroy", cluster_id, "--yes", env=env))  # the next tests need room


def test_extend_moves_the_lease_end_an_hour_later(served: ServedCorral) -> None:
    erin = served.env(add_user(served, "erin"))
    cluster = launch(erin)
    before = parse_time(cluster["lease_end"])

    extended = ok(corral("extend", cluster["id"], "--hours", "1", "--json", env=erin))

    view = ok(corral("status", cluster["id"], "--events", "--json", env=erin))
    after = parse_time(view["lease_end"])
    assert parse_time(extended["lease_end"]) == after
    assert abs((after - before).total_seconds() - 3600) < 5
    assert view["lease_left_seconds"] > 3600 + 3000
    assert any(e["kind"] == "lease-extended" for e in view["events"])


def test_resize_and_destroy_nodes_change_a_group_from_the_command_line(tmp_path: Path) -> None:
    with ServedCorral(tmp_path) as own:  # the shared service's capacity is others' to use
        _resize_and_destroy_nodes(own.env(add_user(own, "ines")))


def _resize_and_destroy_nodes(env: dict[str, str]) -> None:
    cluster = launch(env)

    def workers(view: dict[str, Any]) -> list[str]:
        live = ("pending", "booting", "registered", "configuring", "ready")
        return sorted(
            n["name"] for n in view["nodes"] if n["group"] == "worker" and n["state"] in live
        )

    grown = ok(corral("resize", cluster["id"], "worker=+2", "--json", env=env))
    assert workers(grown) == ["worker-0", "worker-1", "worker-2", "worker-3"]
    shrunk = ok(corral("resize", cluster["id"], "worker=-1", "--json", env=env))
    assert workers(shrunk) == ["worker-0", "worker-1", "worker-2"]
    text = ok_text(corral("destroy", cluster["id"], "worker-0", "worker-2", env=env))
    assert "worker has 1 node(s): worker-1" in text
    assert workers(status(env, cluster["id"])) == ["worker-1"]
    refused = corral("destroy", cluster["id"], "worker-1", env=env)
    assert refused.returncode == 1 and "below its minimum of 1" in refused.stderr, refused
    for change in ("worker", "worker=", "worker=+-1", "worker=1.5", "worker=--1"):
        bad = corral("resize", cluster["id"], change, env=env)
        assert bad.returncode == 2, (change, bad.stderr)
    nameless = corral("resize", cluster["id"], "=2", env=env)
    assert nameless.returncode == 1 and "group: not a group name" in nameless.stderr
    whole = corral("destroy", cluster["id"], "--drain-timeout", "1m", "--yes", env=env)
    assert whole.returncode == 2 and "for removing NODEs" in whole.stderr
    assert workers(status(env, cluster["id"])) == ["worker-1"]
