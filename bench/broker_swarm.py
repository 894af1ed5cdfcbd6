"""The broker under N simulated agents speaking the real protocol over real HTTPS.

A real service (own process, SQLite store, fake backend) launches one cluster shaped like
base-cluster, with the stricter requirement: a controller and N-1 workers that wait until
it is ready, so 999 views change twice. The fake
backend boots machines at once and leaves each bootstrap document in a directory; once
all are there (the launch's own CPU is measured up to that moment), an asyncio agent per
document, all started together, registers, long-polls its context until satisfied,
reports its role configured and the node ready, then keeps following its view as a
real agent does, until every node is ready.
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

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from bench import http_floor
from bench.lean_http import Connection
from bench.section import Section
from bench.service import ServiceProcess, add_capacity, slurm_like_document

SIZES = (100, 1000)
POLL_WAIT = 60


@dataclass
class Tally:
    """What the agents did, and when."""

    latencies: list[float] = field(default_factory=list)  # requests answered at once
    requests: int = 0  # register, reports and contexts that were not waits
    holds: int = 0  # long-polls sent to wait for a change
    follow_wakes: int = 0  # holds of ready nodes that came back with a new view
    unchanged: int = 0  # holds of ready nodes that came back with none (timed out)
    wakes: Counter[str] = field(default_factory=Counter)  # follow wake-ups, per node
    # per node, each new view while following: when it came, its version, how many hosts
    # and members it listed, and whether it was satisfied
    new_views: dict[str, list[tuple[float, int, int, int, bool]]] = field(default_factory=dict)
    first_register: float = float("inf")
    last_registered: float = 0.0
    ready_at: dict[str, float] = field(default_factory=dict)

    def answered(self, started: float, hold: bool) -> None:
        if hold:
            self.holds += 1
        else:
            self.requests += 1
            self.latencies.append(time.monotonic() - started)


def _ssh_key() -> str:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    encoded = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return encoded.decode()


async def _call(tally: Tally, hold: bool, request) -> dict:
    started = time.monotonic()
    reply = await request
    tally.answered(started, hold)
    return reply


async def simulated_agent(boot: dict, tls: ssl.SSLContext, key: str, tally: Tally) -> None:
    async with Connection(boot["broker"], tls) as http:
        identity = {"hostname": boot["node"], "addresses": [], "ssh_host_keys": [key]}
        body = {k: boot[k] for k in ("cluster", "node", "token")} | {"identity": identity}
        tally.first_register = min(tally.first_register, time.monotonic())
        registered = await _call(tally, False, http.request("POST", "/register", body))
        tally.last_registered = max(tally.last_registered, time.monotonic())
        http.headers["Authorization"] = f"Bearer {registered['credential']}"

        def context(since: int):
            params = {"since": since, "wait": POLL_WAIT}
            return _call(tally, since > 0, http.request("GET", "/context", params=params))

        view = registered.get("view") or await context(0)
        while not view["satisfied"]:
            view = await context(view["version"])
        for role in view["provides"]:
            for state in ("running", "ok"):
                report = {"phase": "configure", "role": role, "state": state}
                if state == "ok":
                    report["exit_code"] = 0
                report["version"] = 1
                await _call(tally, False, http.request("POST", "/report", report))
        ready = {"phase": "node", "state": "ready"}
        await _call(tally, False, http.request("POST", "/report", ready))
        tally.ready_at[boot["node"]] = time.monotonic()
        version = view["version"]
        while True:  # following, until cancelled
            view = await context(version)
            if view["version"] > version:
                tally.follow_wakes += 1
                tally.wakes[boot["node"]] += 1
                version = view["version"]
                listed = (len(view["hosts"]), len(view["members"]), view["satisfied"])
                seen = (time.monotonic(), version, *listed)
                tally.new_views.setdefault(boot["node"], []).append(seen)
            else:
                tally.unchanged += 1


def _await_boots(service: ServiceProcess, nodes: int, seconds: float = 300) -> list[dict]:
    """Every node's bootstrap document, once the fake backend has written all `nodes`."""
    deadline = time.monotonic() + seconds
    while len(paths := list(service.bootstrap_dir.glob("*.json"))) < nodes:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(paths)} of {nodes} nodes booted in {seconds:.0f} s")
        time.sleep(0.05)
    return [json.loads(path.read_bytes()) for path in paths]


async def _swarm(service: ServiceProcess, boots: list[dict], tally: Tally) -> None:
    """An agent for every booted node, all started at once, until every node is ready."""
    tls = ssl.create_default_context(cafile=str(service.broker_cert))
    agents = [asyncio.create_task(simulated_agent(boot, tls, _ssh_key(), tally)) for boot in boots]
    try:
        while len(tally.ready_at) < len(boots):
            failed = [a for a in agents if a.done() and a.exception() is not None]
            if failed:
                raise failed[0].exception()
            await asyncio.sleep(0.02)
    finally:
        for agent in agents:
            agent.cancel()
        await asyncio.gather(*agents, return_exceptions=True)


def _settled_state(client, cluster_id: str, seconds: float = 10) -> str:
    """The cluster's state once the engine has seen its last node ready (or as it is then)."""
    deadline = time.monotonic() + seconds
    while True:
        state = client.get(f"/v1/clusters/{cluster_id}").json()["state"]
        if state != "launching" or time.monotonic() > deadline:
            return state
        time.sleep(0.05)


def measure(nodes: int) -> dict:
    tally = Tally()
    with ServiceProcess({"boot_delay": "0", "state_file": ""}, with_agents=True) as service:
        client = service.client()
        add_capacity(client, nodes)
        cpu_before = service.cpu_seconds()
        launched = time.monotonic()
        created = client.post("/v1/clusters", json={"document": slurm_like_document(nodes - 1)})
        created.raise_for_status()
        cluster_id = created.json()["id"]
        try:
            boots = _await_boots(service, nodes)
            booted = time.monotonic()
            cpu_booted = service.cpu_seconds()
            asyncio.run(_swarm(service, boots, tally))
        except Exception:
            failure = client.get(f"/v1/clusters/{cluster_id}").json()["failure"]
            print(f"cluster {cluster_id} failed: {failure}", file=sys.stderr)
            raise
        all_ready = max(tally.ready_at.values())
        cpu = service.cpu_seconds()
        state = _settled_state(client, cluster_id)
        memory = service.peak_memory_mib()
        client.close()
    latencies = sorted(tally.latencies)
    return {
        "nodes": nodes,
        "cluster_state": state,
        "launch_to_all_booted_s": booted - launched,
        "first_register_to_all_ready_s": all_ready - tally.first_register,
        "last_registration_to_all_ready_s": all_ready - tally.last_registered,
        "requests_per_node": tally.requests / nodes,
        "holds_per_node": tally.holds / nodes,
        "follow_wakes_per_node": tally.follow_wakes / nodes,
        "launch_cpu_ms_per_node": (cpu_booted - cpu_before) * 1000 / nodes,
        "broker_cpu_ms_per_node": (cpu - cpu_booted) * 1000 / nodes,
        "service_cpu_ms_per_node": (cpu - cpu_before) * 1000 / nodes,
        "latency_p50_ms": statistics.median(latencies) * 1000,
        "latency_p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "service_peak_memory_mib": memory,
    }


def run(sizes: tuple[int, ...] = SIZES) -> Section:
    results = [measure(n) for n in sizes]
    floor = http_floor.measure(sizes[-1])
    section = Section(
        title="Broker: N simulated agents",
        method=(
            "`bench/broker_swarm.py`. A real `corral serve` process (SQLite, fake backend "
            "with `bootstrap_dir`) launches one cluster shaped like base-cluster: 1 "
            "controller and N-1 workers that require it `ready` (stricter than the "
            "example, which waits only for its registration). Once the backend has "
            "written every node's bootstrap document (its machines kept in memory "
            "only), an asyncio agent per node, all started at once as on a cloud "
            "whose boots outlast the service's launch work "
            "(`bench/lean_http.py`: one kept TLS connection "
            "per agent, the broker's certificate pinned as CA) registers (the reply "
            "carries its first view), long-polls `/context` until satisfied, reports "
            "`configure` running and ok and `node` ready, then keeps following its "
            "view until all N nodes are ready. "
            "Requests per node count register, reports and context requests that are "
            "answered at once; long-polls sent to wait (`since` > 0) are counted apart "
            "as holds. CPU is user+system time of the service process: *launch and "
            "boots* from the launch request until every bootstrap document is written "
            "(the API's launch, the engine's boot jobs, the fake backend); *broker* "
            "from then until the last node is ready (the engine's paced ticks and "
            "the API included, so an upper bound for the broker's own); *all of it* "
            "the two together. Latency is of the "
            "requests answered at once, seen by the agents. The HTTPS floor "
            "(`bench/http_floor.py`) is the same server stack and TLS certificate "
            "serving an empty app to the same number of agents, each sending the "
            "same five requests on one connection: what no broker code can save."
        ),
        raw={"runs": results, "https_floor": floor},
    )
    for r in results:
        n = r["nodes"]
        section.add(
            f"N={n}: first registration to all ready", r["first_register_to_all_ready_s"], "s"
        )
        last = r["last_registration_to_all_ready_s"]
        section.add(f"N={n}: last registration to all ready", last, "s", "< 5 s", last < 5)
        per_node = r["requests_per_node"]
        section.add(f"N={n}: requests per node (holds apart)", per_node, "", "<= 4", per_node <= 4)
        section.add(f"N={n}: long-poll holds per node", r["holds_per_node"], "")
        section.add(f"N={n}: follow wake-ups per node", r["follow_wakes_per_node"], "")
        section.add(
            f"N={n}: launch and boots, service CPU per node", r["launch_cpu_ms_per_node"], "ms"
        )
        cpu = r["broker_cpu_ms_per_node"]
        section.add(f"N={n}: broker CPU per node", cpu, "ms", "<= 2 ms", cpu <= 2)
        section.add(f"N={n}: service CPU per node, all of it", r["service_cpu_ms_per_node"], "ms")
        section.add(f"N={n}: request latency p50", r["latency_p50_ms"], "ms")
        section.add(f"N={n}: request latency p99", r["latency_p99_ms"], "ms")
        section.add(f"N={n}: service peak memory", r["service_peak_memory_mib"], "MiB")
    section.add(
        f"N={floor['nodes']}: HTTPS floor, server CPU per node with no broker behind it",
        floor["cpu_ms_per_node"],
        "ms",
    )
    if len(results) >= 2:
        small, large = results[0], results[-1]
        growth = large["broker_cpu_ms_per_node"] / small["broker_cpu_ms_per_node"]
        section.add(
            f"broker CPU per node, N={large['nodes']} / N={small['nodes']}",
            growth,
            "x",
            "not rising (<= 1.2x)",
            growth <= 1.2,
        )
    return section


if __name__ == "__main__":
    sizes = tuple(int(a) for a in sys.argv[1:]) or SIZES
    for figure in run(sizes).figures:
        print(f"{figure.measure:55} {figure.shown():>12}  {figure.target}")
