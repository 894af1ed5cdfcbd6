"""kill -9 of the service at any moment of a launch, then a restart: the cluster ends ready.

A real `corral serve` runs the fake backend with real agents, one process per node. Each
of LAUNCHES launches of NODES nodes is SIGKILLed once at a seeded random moment between
the answer to its POST and the moment it would be ready (as long as the quicker of two
launches that are not killed took), one moment in each of LAUNCHES equal slices of that
time: before any boot, during the boots, the registrations and the reports. The service
is restarted at once on the same data directory and ports; then every cluster must
become ready with no node stuck, and after `destroy` nothing of it may be left: no agent
process, no fake machine, every node terminated, every address and its subnet released.

The seed and each launch's timings are printed; CORRAL_KILL_SEED=N draws the same moments.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from collections import Counter
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest
from served import ServedCorral, fake_machines, processes_running
from test_contextualization import make_image

LAUNCHES = 20
NODES = 50
READY_TIMEOUT = 120.0
GONE_TIMEOUT = 60.0

DOCUMENT = f"""
name: kill
image: test
nodes:
  - group: head
    memory: 64MiB
    provides: [controller]
    requires: [worker]
  - group: worker
    count: {NODES - 1}
    memory: 64MiB
    provides: [worker]
    requires: [controller]
"""


def agents_on(roots: Path) -> set[int]:
    """Pids of the agents whose machine roots are under `roots`."""
    return set(processes_running(os.fsencode(str(roots) + "/"), b"agent.py"))


class Launches:
    """One service and its API client, launching and destroying the cluster above."""

    def __init__(self, served: ServedCorral) -> None:
        self.served = served
        self.api = httpx.Client(
            base_url=served.url + "/v1",
            headers={"Authorization": f"Bearer {served.token}"},
            timeout=30,
        )

    def __enter__(self) -> Launches:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.api.close()

    def launch(self) -> str:
        response = self.api.post("/clusters", json={"document": DOCUMENT})
        assert response.status_code == 201, response.text
        return response.json()["id"]

    def view(self, cluster_id: str) -> dict[str, Any]:
        response = self.api.get(f"/clusters/{cluster_id}")
        response.raise_for_status()
        return response.json()

    def wait(self, cluster_id: str, states: set[str], timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            view = self.view(cluster_id)
            if view["state"] in states:
                return view
            if time.monotonic() > deadline:
                nodes = Counter(n["state"] for n in view["nodes"])
                raise AssertionError(
                    f"cluster {cluster_id} still {view['state']} after {timeout:g} s "
                    f"(nodes: {dict(nodes)}); the service's log ends:\n" + self.served.log_tail(40)
                )
            time.sleep(0.2)

    def destroy(self, cluster_id: str) -> dict[str, Any]:
        self.api.delete(f"/clusters/{cluster_id}").raise_for_status()
        return self.wait(cluster_id, {"terminated"}, GONE_TIMEOUT)


def allocations(data_dir: Path, cluster_id: str, node_ids: list[str]) -> list[tuple]:
    """Rows of the service's database that still hold an address or a subnet for a cluster."""
    marks = ",".join("?" * len(node_ids))
    with closing(sqlite3.connect(data_dir / "corral.db")) as db:
        addresses = db.execute(
            f"SELECT address FROM address_allocations WHERE node_id IN ({marks})",
            node_ids,
        ).fetchall()
        subnets = db.execute(
            "SELECT subnet FROM subnet_allocations WHERE cluster_id = ?", (cluster_id,)
        ).fetchall()
    return addresses + subnets


def assert_nothing_left(served: ServedCorral, view: dict[str, Any]) -> None:
    assert view["state"] == "terminated"
    assert {n["state"] for n in view["nodes"]} == {"terminated"}
    ids = {n["id"] for n in view["nodes"]}
    assert not ids & {m["node_id"] for m in fake_machines(served.data_dir)}
    roots = served.data_dir / "fake-roots"
    assert not [p.name for p in roots.iterdir() if p.name in ids]
    assert not agents_on(roots), "agents outlived their machines"
    assert allocations(served.data_dir, view["id"], sorted(ids)) == []


def phase_of(view: dict[str, Any]) -> str:
    """The furthest-behind part of a launch that a kill interrupted."""
    states = {n["state"] for n in view["nodes"]}
    for state, phase in (
        ("pending", "boots"),
        ("booting", "registrations"),
        ("registered", "reports"),
        ("configuring", "reports"),
    ):
        if state in states:
            return phase
    return "after ready" if view["state"] == "ready" else "the ready decision"


@pytest.mark.slow
def test_a_service_killed_at_any_moment_of_a_launch_gets_every_cluster_ready(tmp_path):
    seed = int(os.environ.get("CORRAL_KILL_SEED") or random.randrange(1 << 32))
    print(f"\nCORRAL_KILL_SEED={seed}: {LAUNCHES} launches of {NODES} nodes")
    chance = random.Random(seed)
    image = make_image(tmp_path / "image")
    served = ServedCorral(tmp_path / "svc", "--backend-option", f"agent_image={image}")
    started = time.monotonic()
    with served, Launches(served) as launches:
        host = {"name": "big", "pool": "local", "cores": NODES, "memory_mib": NODES * 64}
        launches.api.post("/hosts", json=host).raise_for_status()

        # launches left alone say how long one takes (the first also warms the caches)
        spans = []
        for _ in range(2):
            cluster_id = launches.launch()
            posted = time.monotonic()
            view = launches.wait(cluster_id, {"ready", "failed"}, READY_TIMEOUT)
            assert view["state"] == "ready", view["failure"]
            spans.append(time.monotonic() - posted)
            assert_nothing_left(served, launches.destroy(cluster_id))
        span = min(spans)
        print(
            "launches not killed: ready "
            + ", ".join(f"{s:.2f}" for s in spans)
            + " s after the POST"
        )

        # one kill in each of LAUNCHES equal slices of a launch, at a random point of it
        moments = [(i + chance.random()) / LAUNCHES * span for i in range(LAUNCHES)]
        chance.shuffle(moments)
        phases: Counter[str] = Counter()
        for number, moment in enumerate(moments, 1):
            cluster_id = launches.launch()
            posted = time.monotonic()
            time.sleep(max(0.0, posted + moment - time.monotonic()))
            at_kill = launches.view(cluster_id)  # what the kill interrupts, give or take
            served.kill()
            killed = time.monotonic()
            served.start()
            restarted = time.monotonic()
            view = launches.wait(cluster_id, {"ready", "failed"}, READY_TIMEOUT)
            ready = time.monotonic()
            phases[phase_of(at_kill)] += 1
            nodes = Counter(n["state"] for n in at_kill["nodes"])
            print(
                f"launch {number:2}: killed {killed - posted:5.2f} s after the POST, during "
                f"{phase_of(at_kill)} {dict(sorted(nodes.items()))}; up again in "
                f"{restarted - killed:.2f} s; ready {ready - restarted:5.2f} s after the restart"
            )
            assert view["state"] == "ready", view["failure"]
            assert {n["state"] for n in view["nodes"]} == {"ready"}
            assert_nothing_left(served, launches.destroy(cluster_id))
    print(f"kills during: {dict(phases)}; whole test {time.monotonic() - started:.1f} s")
