"""One node joining a running N-node cluster: what it costs the nodes already there.

A real service (own process, SQLite store, fake backend) launches the swarm's cluster
(bench/broker_swarm.py: a controller and N-1 workers that require it ready) and runs a
simulated agent per node until all are ready; the agents then keep following their
views, as real agents do, counting each new view per node. Once the cluster is `ready`
and quiet, two kinds of change are measured, one at a time, each followed by a quiet
spell that would catch any later wake-up:

- an extend, the fan-out reference: every node's view changes (its lease's end and
  renewed certificates) and nothing joins. Timed from the extend's reply, so the
  renewal of every node's certificates in the API request is left out: what remains is
  one re-read of the cluster and a new view delivered to each of N long-polling nodes.
- joins: `POST /v1/clusters/{id}/resize` grows the workers by one; once the fake backend
  has written the new node's bootstrap document, one more simulated agent registers,
  reports and keeps following. Timed from the resize request until the new node is
  ready and every node that was there has its new view.

Which existing views change on a join: a worker's view lists every registered host of
the cluster (its /etc/hosts), and the head's lists the workers as members, since it
requires slurm-worker; so every existing node should get one new view. (The head used
to get two: the new worker, pending, blocked its requirement until it registered; a
running cluster no longer waits for providers on their way, requirements.py.) The new
node's agent starts BOOT_SECONDS after its bootstrap document, as after a boot; started
at once, its registration could fall into the same re-read as its pending record and
hide such a second wake-up.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

from bench.broker_swarm import Tally, _await_boots, _settled_state, _ssh_key, simulated_agent
from bench.section import Section
from bench.service import ServiceProcess, add_capacity, slurm_like_document

SIZES = (100, 1000)
JOINS = 5
# the new node's agent starts this long after its bootstrap document is written, as after
# a boot: with none, its registration can land in the same re-read as its pending record
BOOT_SECONDS = 0.5
QUIET = 2.0  # seconds after a change is delivered, to catch any further wake-up
DELIVERY_TIMEOUT = 60.0


@dataclass
class Swarm:
    """The following agents: the cluster's first nodes, and one per join since."""

    tls: ssl.SSLContext
    tallies: list[Tally] = field(default_factory=list)
    tasks: list[asyncio.Task] = field(default_factory=list)

    def start(self, boots: list[dict]) -> Tally:
        tally = Tally()
        self.tallies.append(tally)
        self.tasks += [
            asyncio.create_task(simulated_agent(boot, self.tls, _ssh_key(), tally))
            for boot in boots
        ]
        return tally

    def check(self) -> None:
        failed = [t for t in self.tasks if t.done() and t.exception() is not None]
        if failed:
            raise failed[0].exception()

    def ready(self) -> set[str]:
        return {node for tally in self.tallies for node in tally.ready_at}

    def wakes(self) -> Counter[str]:
        return sum((tally.wakes for tally in self.tallies), Counter())

    def new_views(self) -> dict[str, list[tuple[float, int, int, int, bool]]]:
        return {node: seen for tally in self.tallies for node, seen in tally.new_views.items()}

    def unchanged(self) -> int:
        return sum(tally.unchanged for tally in self.tallies)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def _until(condition, swarm: Swarm, what: str, seconds: float = DELIVERY_TIMEOUT) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        swarm.check()
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {seconds:.0f} s waiting for {what}")
        await asyncio.sleep(0.005)


@dataclass
class Before:
    """Where the followers stood, and the service's CPU, when a change was asked for."""

    wakes: Counter[str]
    unchanged: int
    at: float
    cpu: float

    @classmethod
    def take(cls, service: ServiceProcess, swarm: Swarm) -> Before:
        return cls(swarm.wakes(), swarm.unchanged(), time.monotonic(), service.cpu_seconds())


async def _delivery(
    service: ServiceProcess, swarm: Swarm, existing: set[str], before: Before
) -> dict:
    """Wait until every node of `existing` has a new view since `before`, then a quiet
    spell; what the existing nodes saw, and the service's CPU until delivery."""
    # when the first existing worker had its new view, and the service's CPU then (not the
    # head: on a join it is woken early, see the module's docstring)
    first: list[float] = []
    workers = {n for n in existing if n.startswith("worker-")}

    def delivered() -> bool:
        wakes = swarm.wakes()
        woke = {n for n in existing if wakes[n] > before.wakes[n]}
        if not first and woke & workers:
            first[:] = [time.monotonic(), service.cpu_seconds()]
        return len(woke) == len(existing)

    await _until(delivered, swarm, "the new views")
    cpu_delivered = service.cpu_seconds()
    await asyncio.sleep(QUIET)
    cpu_quiet = service.cpu_seconds()
    after = swarm.wakes()
    wakes = [after[n] - before.wakes[n] for n in existing]
    views = swarm.new_views()
    return {
        "first_view_s": first[0] - before.at,
        "to_all_views_s": max(views[n][-1][0] for n in existing) - before.at,
        "cpu_to_delivery_ms": (cpu_delivered - before.cpu) * 1000,
        "fan_out_cpu_ms": (cpu_delivered - first[1]) * 1000,  # first worker's view to the last
        "quiet_cpu_ms": (cpu_quiet - cpu_delivered) * 1000,
        "wakes_max": max(wakes),
        "wakes_mean": statistics.fmean(wakes),
        "head_wakes": after["head-0"] - before.wakes["head-0"],
        "worker_wakes_max": max(
            after[n] - before.wakes[n] for n in existing if n.startswith("worker-")
        ),
        "woken": {
            group: sum(
                1 for n in existing if n.startswith(group + "-") and after[n] > before.wakes[n]
            )
            for group in ("head", "worker")
        },
        "hosts_listed": sorted({views[n][-1][2] for n in existing}),
        "head_members": views["head-0"][-1][3],
        # the nodes woken more than once: each new view's time from the change, version,
        # hosts, members and whether it was satisfied
        "woken_again": {
            n: [
                (round(t - before.at, 4), *rest)
                for t, *rest in views[n][-(after[n] - before.wakes[n]) :]
            ]
            for n in existing
            if after[n] - before.wakes[n] > 1
        },
        "unchanged_holds": swarm.unchanged() - before.unchanged,
    }


async def _extend(service: ServiceProcess, client, cluster_id: str, swarm: Swarm) -> dict:
    existing = swarm.ready()
    before = Before.take(service, swarm)
    response = await asyncio.to_thread(
        client.post, f"/v1/clusters/{cluster_id}/extend", json={"seconds": 3600}
    )
    response.raise_for_status()
    request = {"request_s": time.monotonic() - before.at}
    request["request_cpu_ms"] = (service.cpu_seconds() - before.cpu) * 1000
    return {"nodes": len(existing), **request, **await _delivery(service, swarm, existing, before)}


async def _join(service: ServiceProcess, client, cluster_id: str, swarm: Swarm) -> dict:
    existing = swarm.ready()
    workers = sum(1 for n in existing if n.startswith("worker-"))
    documents = set(service.bootstrap_dir.glob("*.json"))
    before = Before.take(service, swarm)
    delivery = asyncio.create_task(_delivery(service, swarm, existing, before))
    response = await asyncio.to_thread(
        client.post,
        f"/v1/clusters/{cluster_id}/resize",
        json={"group": "worker", "count": workers + 1},
    )
    response.raise_for_status()
    replied = time.monotonic()
    cpu_replied = service.cpu_seconds()
    new_documents: list = []

    def booted() -> bool:
        new_documents[:] = set(service.bootstrap_dir.glob("*.json")) - documents
        return bool(new_documents)

    await _until(booted, swarm, "the new node's bootstrap document")
    boot = json.loads(new_documents[0].read_bytes())
    document_at = time.monotonic()
    await asyncio.sleep(BOOT_SECONDS)
    newcomer = swarm.start([boot])
    await _until(lambda: boot["node"] in newcomer.ready_at, swarm, "the new node ready")
    new_ready = newcomer.ready_at[boot["node"]]
    requests = newcomer.requests + newcomer.holds  # its following hold is still waiting
    cpu_new_ready = service.cpu_seconds()
    result = await delivery
    # the change's CPU runs until the later of the two: delivery or the new node's ready
    cpu_ms = max(result["cpu_to_delivery_ms"], (cpu_new_ready - before.cpu) * 1000)
    return {
        "nodes": len(existing),
        "node": boot["node"],
        "resize_request_s": replied - before.at,
        "resize_cpu_ms": (cpu_replied - before.cpu) * 1000,
        "to_bootstrap_document_s": document_at - before.at,
        "to_new_node_ready_s": new_ready - before.at,
        "agent_start_to_ready_s": new_ready - document_at - BOOT_SECONDS,
        "change_cpu_ms": cpu_ms,
        "new_node_requests": requests,
        **result,
        "to_all_done_s": max(new_ready - before.at, result["to_all_views_s"]),
    }


async def _session(service: ServiceProcess, client, cluster_id: str, nodes: int) -> dict:
    boots = await asyncio.to_thread(_await_boots, service, nodes)
    swarm = Swarm(ssl.create_default_context(cafile=str(service.broker_cert)))
    swarm.start(boots)
    try:
        await _until(lambda: len(swarm.ready()) == nodes, swarm, "every node ready", 600)
        state = await asyncio.to_thread(_settled_state, client, cluster_id)
        if state != "ready":
            raise RuntimeError(f"cluster {cluster_id} is {state}, not ready")
        await asyncio.sleep(QUIET)
        cpu = service.cpu_seconds()
        await asyncio.sleep(QUIET)
        idle_ms_per_s = (service.cpu_seconds() - cpu) * 1000 / QUIET
        extend = await _extend(service, client, cluster_id, swarm)
        joins = []
        for _ in range(JOINS):
            joins.append(await _join(service, client, cluster_id, swarm))
        return {"idle_cpu_ms_per_s": idle_ms_per_s, "extend": extend, "joins": joins}
    finally:
        await swarm.stop()


def measure(nodes: int) -> dict:
    with ServiceProcess({"boot_delay": "0", "state_file": ""}, with_agents=True) as service:
        client = service.client()
        add_capacity(client, nodes + JOINS)
        created = client.post("/v1/clusters", json={"document": slurm_like_document(nodes - 1)})
        created.raise_for_status()
        cluster_id = created.json()["id"]
        try:
            result = asyncio.run(_session(service, client, cluster_id, nodes))
        except Exception:
            failure = client.get(f"/v1/clusters/{cluster_id}").json()["failure"]
            print(f"cluster {cluster_id}: {failure}", file=sys.stderr)
            raise
        finally:
            client.close()
    return {"nodes": nodes, **result}


def _median(joins: list[dict], key: str) -> float:
    return statistics.median(j[key] for j in joins)


def run(sizes: tuple[int, ...] = SIZES) -> Section:
    results = [measure(n) for n in sizes]
    section = Section(
        title="Broker: one node joins an N-node cluster",
        method=(
            "`bench/join_one.py`. A real `corral serve` process (SQLite, fake backend with "
            "`bootstrap_dir`) launches the swarm's cluster (1 controller, N-1 workers "
            "requiring it ready) and an asyncio agent per node (`bench/broker_swarm.py`'s) "
            "runs until all are ready, then keeps following its view, counting each new "
            f"view per node. Once the cluster is `ready` and {QUIET:.0f} s quiet: one "
            f"extend, then {JOINS} joins, one at a time. A join is "
            "`POST /v1/clusters/{id}/resize` growing the workers by one; "
            f"{BOOT_SECONDS} s after the fake backend has written the new node's bootstrap "
            "document (a boot, short of any real one), one more agent registers, reports "
            "configure and ready, and keeps following. Timed from the resize request "
            "until the new node is ready and every node already there has its new view; "
            "the join's CPU is the service process's (user+system) over that span: the "
            "API's resize, the engine's boot, the new node's registration and reports, "
            "re-reads, every existing node's new view and next hold, and the idle CPU of "
            "the boot's pause. Wake-ups are counted per existing node over the change and "
            f"a {QUIET:.0f} s quiet spell after it. Join figures are the median (CPU, "
            f"times) or the most (wake-ups, requests) of the {JOINS}. The *fan-out* spans "
            "from the first existing worker's new view to the last existing node's: "
            "delivering the change. Its reference is an extend in the same run, over the "
            "same span: a new view (new lease end and renewed certificates) delivered to "
            "each of N long-polling nodes with nothing joining, each node reloading its "
            "renewed credential once: what any change every node must hear of costs. "
            "Every existing node's view changes on a join: the head requires "
            "slurm-worker, so its members grow by one, and every worker's hosts list "
            "(its /etc/hosts) gains the new node. The new node's reports change nothing "
            "another node acts on (peers are compared without their state)."
        ),
        raw={"runs": results},
    )
    for r in results:
        n, joins, extend = r["nodes"], r["joins"], r["extend"]
        ready = _median(joins, "to_new_node_ready_s")
        section.add(
            f"N={n}: resize request to the new node ready ({BOOT_SECONDS} s boot)", ready, "s"
        )
        agent = _median(joins, "agent_start_to_ready_s")
        section.add(f"N={n}: the new node's agent start to ready", agent, "s")
        views = _median(joins, "to_all_views_s")
        section.add(f"N={n}: resize request to every existing node's new view", views, "s")
        head = max(j["head_wakes"] for j in joins)
        section.add(f"N={n}: the head's wake-ups per join, most", head, "", "<= 1", head <= 1)
        worker = max(j["worker_wakes_max"] for j in joins)
        section.add(f"N={n}: a worker's wake-ups per join, most", worker, "", "<= 1", worker <= 1)
        mean = statistics.fmean(j["wakes_mean"] for j in joins)
        section.add(f"N={n}: wake-ups per existing node per join, mean", mean, "")
        woken = min(sum(j["woken"].values()) / j["nodes"] for j in joins)
        section.add(f"N={n}: existing nodes given a new view (fewest)", woken * 100, "%")
        requests = max(j["new_node_requests"] for j in joins)
        section.add(f"N={n}: requests by the new node, holds included", requests, "")
        cpu = _median(joins, "change_cpu_ms")
        section.add(f"N={n}: service CPU per join", cpu, "ms")
        section.add(f"N={n}: service CPU per join, per existing node", cpu / n, "ms")
        fan_out = _median(joins, "fan_out_cpu_ms")
        section.add(
            f"N={n}: join's fan-out, first worker's new view to the last, CPU", fan_out, "ms"
        )
        section.add(
            f"N={n}: extend's fan-out (reference), the same span, CPU",
            extend["fan_out_cpu_ms"],
            "ms",
        )
        idle = r["idle_cpu_ms_per_s"]
        section.add(f"N={n}: idle service CPU, N agents holding", idle, "ms/s")
    if len(results) >= 2:
        small, large = results[0], results[-1]
        per_node = [_median(r["joins"], "change_cpu_ms") / r["nodes"] for r in (small, large)]
        growth = per_node[1] / per_node[0]
        section.add(
            f"service CPU per join per existing node, N={large['nodes']} / N={small['nodes']}",
            growth,
            "x",
            "proportional to the change, not N² (<= 1.2x)",
            growth <= 1.2,
        )
    return section


if __name__ == "__main__":
    sizes = tuple(int(a) for a in sys.argv[1:]) or SIZES
    section = run(sizes)
    for figure in section.figures:
        print(f"{figure.measure:65} {figure.shown():>12}  {figure.target}")
    print(json.dumps(section.raw, indent=1, default=str))
