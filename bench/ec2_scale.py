"""An ec2 pool against moto's server: EC2 API calls and service CPU per node, at 10, 100
and 1000 nodes, beside the same cluster on the fake backend (the floor).

A real `corral serve` process with one ec2 pool whose endpoint is a counting proxy in
front of moto (tests/ec2_harness.py) launches a cluster shaped like base-cluster (1
controller, N-1 workers). moto runs no instances, so once every instance is recorded the
benchmark reads each launch's user-data back (one call per group, to moto itself, not
counted), derives each node's bootstrap document by its launch index as the agent does,
and runs a simulated agent per node (bench/broker_swarm.py) until all are ready. Then it
counts the calls of a quiet spell of observation, and of a destroy until `terminated`.

The floor is the same cluster, in the same run, on the fake backend playing a cloud
(`places_itself`): what the service spends on a launch and a destroy with no EC2 calls
behind them.
"""

from __future__ import annotations

import asyncio
import base64
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

from bench.broker_swarm import Tally, _await_boots, _settled_state, _swarm
from bench.section import Section
from bench.service import ServiceProcess, add_capacity, slurm_like_document

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from ec2_harness import REGION, FaultProxy, moto_client, running_moto  # noqa: E402

from corral.agent import parse_bootstrap  # noqa: E402

SIZES = (10, 100, 1000)
AMI = "ami-03cf127a"  # one of moto's own
OBSERVE_EVERY = 2.0  # the pool's pace of DescribeInstances
QUIET_SECONDS = 60.0  # the spell of observation counted, with the cluster ready
READY_TIMEOUT = 300.0
SETTINGS = {"default_max_nodes": 100_000, "cpu_overcommit": 1000}


def _boots_from_user_data(ec2, cluster_id: str, nodes: int) -> list[dict]:
    """Each instance's bootstrap document, as its agent would find it: the user-data of
    its launch (read once per launch) at its launch index."""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        instances = [
            instance
            for page in ec2.get_paginator("describe_instances").paginate(
                Filters=[{"Name": "tag:corral:cluster", "Values": [cluster_id]}]
            )
            for reservation in page["Reservations"]
            for instance in reservation["Instances"]
        ]
        if len(instances) >= nodes:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(instances)} of {nodes} instances launched")
        time.sleep(0.2)
    user_data: dict[str, bytes] = {}
    boots = []
    for instance in instances:
        tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
        launch = tags["corral:launch"]
        if launch not in user_data:
            answer = ec2.describe_instance_attribute(
                InstanceId=instance["InstanceId"], Attribute="userData"
            )
            user_data[launch] = base64.b64decode(answer["UserData"]["Value"])
        found = parse_bootstrap(user_data[launch], "bench", instance["AmiLaunchIndex"])
        boots.append(
            {
                "cluster": found.cluster,
                "node": found.node,
                "token": found.token,
                "broker": found.broker,
            }
        )
    return boots


def _wait_state(client, cluster_id: str, state: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while (detail := client.get(f"/v1/clusters/{cluster_id}").json())["state"] != state:
        if time.monotonic() > deadline:
            states = Counter(n["state"] for n in detail["nodes"])
            failures = Counter(n["failure"] for n in detail["nodes"] if n["failure"])
            raise RuntimeError(
                f"cluster {cluster_id} is {detail['state']}, not {state} "
                f"({detail['failure']}); nodes {dict(states)}; failures {failures.most_common(3)}"
            )
        time.sleep(0.2)


def measure_ec2(nodes: int) -> dict:
    with (
        tempfile.TemporaryDirectory() as scratch,
        running_moto(Path(scratch)) as endpoint,
        FaultProxy(endpoint) as proxy,
    ):
        tag = f"corral-bench-{uuid.uuid4().hex[:8]}"
        options = {
            "region": REGION,
            "endpoint_url": proxy.url,
            "ami.debian-12-slurm": AMI,
            "observe_every": str(OBSERVE_EVERY),
            "service_tag": tag,
            "max_cores": str(nodes * 2),
        }
        with ServiceProcess(options, backend="ec2", pool="ec2", **SETTINGS) as service:
            client = service.client()
            ec2 = moto_client(endpoint)
            cpu = service.cpu_seconds()
            launched = time.monotonic()
            created = client.post("/v1/clusters", json={"document": slurm_like_document(nodes - 1)})
            created.raise_for_status()
            cluster_id = created.json()["id"]
            boots = _boots_from_user_data(ec2, cluster_id, nodes)
            asyncio.run(_swarm(service, boots, Tally()))
            _wait_state(client, cluster_id, "ready")
            ready = time.monotonic()
            launch_calls, launch_cpu = Counter(proxy.calls), service.cpu_seconds() - cpu

            proxy.reset()
            cpu = service.cpu_seconds()
            time.sleep(QUIET_SECONDS)
            quiet_calls, quiet_cpu = Counter(proxy.calls), service.cpu_seconds() - cpu

            proxy.reset()
            cpu = service.cpu_seconds()
            client.delete(f"/v1/clusters/{cluster_id}").raise_for_status()
            _wait_state(client, cluster_id, "terminated")
            destroy_calls, destroy_cpu = Counter(proxy.calls), service.cpu_seconds() - cpu
            client.close()
    observations = quiet_calls["DescribeInstances"] or 1
    return {
        "nodes": nodes,
        "launch_to_ready_s": ready - launched,
        "launch_calls": dict(launch_calls),
        "launch_cpu_ms_per_node": launch_cpu * 1000 / nodes,
        "quiet_seconds": QUIET_SECONDS,
        "quiet_calls": dict(quiet_calls),
        "cpu_ms_per_observation_per_node": quiet_cpu * 1000 / observations / nodes,
        "destroy_calls": dict(destroy_calls),
        "destroy_cpu_ms_per_node": destroy_cpu * 1000 / nodes,
    }


def measure_floor(nodes: int) -> dict:
    """The same cluster on the fake backend playing a cloud: launch and destroy CPU."""
    backend_options = {"boot_delay": "0", "state_file": "", "places_itself": "true"}
    with ServiceProcess(backend_options, with_agents=True, **SETTINGS) as service:
        client = service.client()
        add_capacity(client, nodes)
        cpu = service.cpu_seconds()
        created = client.post("/v1/clusters", json={"document": slurm_like_document(nodes - 1)})
        created.raise_for_status()
        cluster_id = created.json()["id"]
        asyncio.run(_swarm(service, _await_boots(service, nodes), Tally()))
        _settled_state(client, cluster_id)
        launch_cpu = service.cpu_seconds() - cpu
        cpu = service.cpu_seconds()
        client.delete(f"/v1/clusters/{cluster_id}").raise_for_status()
        _wait_state(client, cluster_id, "terminated")
        destroy_cpu = service.cpu_seconds() - cpu
        client.close()
    return {
        "nodes": nodes,
        "launch_cpu_ms_per_node": launch_cpu * 1000 / nodes,
        "destroy_cpu_ms_per_node": destroy_cpu * 1000 / nodes,
    }


def run(sizes: tuple[int, ...] = SIZES) -> Section:
    floors = [measure_floor(n) for n in sizes]  # the quicker: a failure shows sooner
    results = [measure_ec2(n) for n in sizes]
    section = Section(
        title="EC2: API calls and service CPU against the test server",
        method=__doc__.split("\n\n", 1)[1].replace("\n", " ").strip()
        + " Calls are counted by the proxy, by EC2 action, retries included; CPU is user "
        "+ system time of the service process. *Per observation* divides the quiet "
        f"spell's ({QUIET_SECONDS:.0f} s, the pool observed every {OBSERVE_EVERY:.0f} s) "
        "CPU by its DescribeInstances calls. `python3 -m bench.report ec2`.",
        raw={"runs": results, "floors": floors},
    )
    for r, floor in zip(results, floors, strict=True):
        n, launch, destroy = r["nodes"], r["launch_calls"], r["destroy_calls"]
        runs = launch.get("RunInstances", 0)
        section.add(f"N={n}: RunInstances, launch (2 groups)", runs, "", "1 per group", runs == 2)
        quiet = r["quiet_calls"].get("DescribeInstances", 0)
        for measure, value, unit in [
            ("EC2 calls, launch, all kinds", sum(launch.values()), ""),
            (f"DescribeInstances in {QUIET_SECONDS:.0f} s ready and quiet", quiet, ""),
            ("TerminateInstances, destroy", destroy.get("TerminateInstances", 0), ""),
            ("EC2 calls, destroy, all kinds", sum(destroy.values()), ""),
            ("launch to ready", r["launch_to_ready_s"], "s"),
            ("launch, service CPU per node", r["launch_cpu_ms_per_node"], "ms"),
            ("launch, same on the fake backend (floor)", floor["launch_cpu_ms_per_node"], "ms"),
            ("one observation, service CPU per node", r["cpu_ms_per_observation_per_node"], "ms"),
            ("destroy, service CPU per node", r["destroy_cpu_ms_per_node"], "ms"),
            ("destroy, same on the fake backend (floor)", floor["destroy_cpu_ms_per_node"], "ms"),
        ]:
            section.add(f"N={n}: {measure}", value, unit)
    return section
