"""`status` of a 1000-node cluster: the API's cluster view, and the CLI around it."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.section import Section
from bench.service import ServiceProcess, add_capacity, slurm_like_document

NODES = 1000
REPEATS = 50


def _wait_ready(client, cluster_id: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while client.get(f"/v1/clusters/{cluster_id}").json()["state"] != "ready":
        if time.monotonic() > deadline:
            raise RuntimeError(f"cluster {cluster_id} not ready after {timeout} s")
        time.sleep(0.5)


def run() -> Section:
    with ServiceProcess({"boot_delay": "0", "state_file": ""}) as service:
        client = service.client()
        add_capacity(client, NODES)
        created = client.post("/v1/clusters", json={"document": slurm_like_document(NODES - 1)})
        created.raise_for_status()
        cluster_id = created.json()["id"]
        _wait_ready(client, cluster_id)
        api_times = []
        for _ in range(REPEATS):
            started = time.perf_counter()
            response = client.get(f"/v1/clusters/{cluster_id}")
            api_times.append(time.perf_counter() - started)
            assert len(response.json()["nodes"]) == NODES
        size = len(response.content)
        env = {**os.environ, "CORRAL_URL": service.url, "CORRAL_TOKEN": service.token}
        cli = Path(sys.executable).with_name("corral")
        cli_times = []
        for _ in range(5):
            started = time.perf_counter()
            subprocess.run(
                [str(cli), "status", cluster_id, "--json"], env=env, check=True, capture_output=True
            )
            cli_times.append(time.perf_counter() - started)
        client.close()
    api_times.sort()
    p50, p99 = statistics.median(api_times), api_times[int(len(api_times) * 0.99) - 1]
    section = Section(
        title="Status of a 1000-node cluster",
        method=(
            "`bench/status.py`. A `corral serve` process (SQLite, fake backend without "
            "agents) launches a 1000-node cluster and waits until it is ready; then "
            f"`GET /v1/clusters/ID` (every node with its state) is timed {REPEATS} times "
            "from an httpx client on the same machine, and `corral status ID --json` "
            "5 times as a whole command (Python start-up included)."
        ),
        raw={"api_s": api_times, "cli_s": cli_times, "response_bytes": size},
    )
    section.add("API status, p50", p50 * 1000, "ms", "< 100 ms", p50 < 0.1)
    section.add("API status, p99", p99 * 1000, "ms")
    section.add("response size", size / 1024, "KiB")
    section.add("`corral status --json`, median", statistics.median(cli_times) * 1000, "ms")
    return section


if __name__ == "__main__":
    for figure in run().figures:
        print(f"{figure.measure:45} {figure.shown():>12}  {figure.target}")
