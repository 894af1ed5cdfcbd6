"""Leases end on the service's clock, with no client running, even across a service crash.

Two services run side by side to save time: one throughout, one SIGKILLed ten seconds
after its launch and restarted fifteen seconds later, still inside the one-minute lease.
After the launches no `corral` client runs until the lease has expired.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from served import ServedCorral, corral, fake_machines

BASE = Path(__file__).resolve().parent.parent / "examples" / "base-cluster.yaml"
LEASE_SECONDS = 60
KILL_AFTER = 10
DOWN_FOR = 15
GRACE = 15  # after expiry, time the service has to remove everything


def ok(result) -> Any:
    assert result.returncode == 0, (
        f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    return json.loads(result.stdout)


def launch(served: ServedCorral, *extra: str) -> dict[str, Any]:
    return ok(corral("run", "--cluster", str(BASE), *extra, "--json", env=served.env()))


def sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))


def allocations(data_dir: Path, cluster_id: str, node_ids: list[str]) -> tuple[list, list]:
    """Rows of the service's database that still hold addresses or a subnet for a cluster."""
    marks = ",".join("?" * len(node_ids))
    with closing(sqlite3.connect(data_dir / "corral.db")) as db:
        addresses = db.execute(
            f"SELECT address, node_id FROM address_allocations WHERE node_id IN ({marks})",
            node_ids,
        ).fetchall()
        subnets = db.execute(
            "SELECT subnet FROM subnet_allocations WHERE cluster_id = ?", (cluster_id,)
        ).fetchall()
    return addresses, subnets


def assert_lease_ended_everything(served: ServedCorral, launched: dict[str, Any]) -> None:
    env = served.env()
    view = ok(corral("status", launched["id"], "--events", "--json", env=env))

    assert view["state"] == "terminated", view
    assert len(view["nodes"]) == 3
    assert {n["state"] for n in view["nodes"]} == {"terminated"}
    ending = [
        e
        for e in view["events"]
        if e["subject"] == "cluster" and e["kind"] == "state" and e["to_state"] == "terminating"
    ]
    assert len(ending) == 1, view["events"]
    assert "lease expired" in ending[0]["reason"]

    node_ids = [n["id"] for n in view["nodes"]]
    left = {m["node_id"] for m in fake_machines(served.data_dir)}
    assert left.isdisjoint(node_ids)
    assert allocations(served.data_dir, launched["id"], node_ids) == ([], [])


def assert_subnet_is_reused(served: ServedCorral, old_subnet: str) -> None:
    env = served.env()
    again = launch(served, "--hours", "1")
    try:
        assert again["state"] == "ready"
        assert again["subnet"] == old_subnet
    finally:
        result = corral("destroy", again["id"], "--yes", env=env)
        assert result.returncode == 0, result.stderr


@pytest.fixture
def services(tmp_path: Path) -> Iterator[tuple[ServedCorral, ServedCorral]]:
    steady = ServedCorral(tmp_path / "steady")
    crashing = ServedCorral(tmp_path / "crashing")
    try:
        yield steady.start(), crashing.start()
    finally:
        steady.stop()
        crashing.stop()


@pytest.mark.slow
def test_an_expired_lease_removes_the_cluster_with_no_client_running(
    services: tuple[ServedCorral, ServedCorral],
) -> None:
    steady, crashing = services
    steady_cluster = launch(steady, "--lease", "1m")
    crashing_cluster = launch(crashing, "--lease", "1m")
    launched_at = time.monotonic()
    for cluster in (steady_cluster, crashing_cluster):
        assert cluster["state"] == "ready"
        assert LEASE_SECONDS - 10 < cluster["lease_left_seconds"] <= LEASE_SECONDS

    # from here until the checks, no corral client runs: only the services' own clocks
    sleep_until(launched_at + KILL_AFTER)
    crashing.kill()
    assert {m["node_id"] for m in fake_machines(crashing.data_dir)} == {
        n["id"] for n in crashing_cluster["nodes"]
    }, "the crashed service's machines should outlive it"
    sleep_until(launched_at + KILL_AFTER + DOWN_FOR)
    crashing.start()
    assert time.monotonic() < launched_at + LEASE_SECONDS - 10, "restarted too late to matter"
    sleep_until(launched_at + LEASE_SECONDS + GRACE)

    for served, launched in ((steady, steady_cluster), (crashing, crashing_cluster)):
        assert_lease_ended_everything(served, launched)
        assert_subnet_is_reused(served, launched["subnet"])
