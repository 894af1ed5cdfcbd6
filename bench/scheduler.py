"""The scheduler alone: 10,000 nodes placed on 1,000 hosts.

`place()` is what a launch calls inside its decision lock, so its speed bounds how fast
the service can say yes or no. Mixed shapes, hosts of two sizes; timed with
perf_counter, the best of a few repetitions after one warm-up.
"""

from __future__ import annotations

import time

from bench.section import Section
from corral.service.scheduler import HostCapacity, NodeRequest, place

HOSTS = 1_000
WORKSPACES = 10_000
SHAPES = ((1, 1024), (2, 4096), (4, 8192), (8, 16384))  # cores, MiB
REPEATS = 5


def hosts() -> list[HostCapacity]:
    made = []
    for i in range(HOSTS):
        cores, memory = (64, 256 * 1024) if i % 2 else (32, 128 * 1024)
        made.append(HostCapacity(f"host-{i:04}", "local", True, cores, memory, cores, memory))
    return made


def requests() -> list[NodeRequest]:
    return [
        NodeRequest(f"node-{i:05}", f"group-{i % 4}", "local", *SHAPES[i % len(SHAPES)])
        for i in range(WORKSPACES)
    ]


def timed_place(wanted: list[NodeRequest], available: list[HostCapacity]) -> float:
    started = time.perf_counter()
    placement = place(wanted, available)
    took = time.perf_counter() - started
    assert len(placement) == len(wanted)
    return took


def run() -> Section:
    available, wanted = hosts(), requests()
    timed_place(wanted, available)  # warm-up
    best = min(timed_place(wanted, available) for _ in range(REPEATS))
    # the same placements asked one cluster of 10 at a time, as launches would
    clusters = [wanted[i : i + 10] for i in range(0, WORKSPACES, 10)]
    started = time.perf_counter()
    for cluster in clusters:
        place(cluster, available)
    per_cluster = time.perf_counter() - started
    section = Section(
        title="Scheduler: 10,000 nodes on 1,000 hosts",
        method=(
            "`bench/scheduler.py`. `corral.service.scheduler.place()` with 10,000 node "
            "requests in four shapes (1 core/1 GiB to 8 cores/16 GiB) on 1,000 hosts "
            "(half 32 cores/128 GiB, half 64 cores/256 GiB), all in one call; the best "
            f"of {REPEATS} runs after a warm-up. Then the same 10,000 asked as 1,000 "
            "clusters of 10 against the 1,000 hosts, one call each, as launches would."
        ),
        raw={"one_call_s": best, "clusters_of_10_s": per_cluster},
    )
    section.add("10,000 placements in one call", best, "s", "< 1 s", best < 1)
    section.add("decisions per second (one call)", WORKSPACES / best, "/s")
    section.add("1,000 calls of 10 placements", per_cluster, "s")
    return section


if __name__ == "__main__":
    for figure in run().figures:
        print(f"{figure.measure:45} {figure.shown():>12}  {figure.target}")
