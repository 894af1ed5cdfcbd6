"""Clusters on an ec2 pool, end to end: the real service and broker, boto3 against moto's
server through a proxy that counts calls and injects faults, and the real agent on every
instance, which the instance player boots (moto runs none) with the user-data it reads
back and a metadata server of its own (tests/ec2_harness.py).

The image the player gives each instance has the Slurm roles' names, with scripts that
record what they were given; the controller's keeps its list of workers, as slurm.conf's
node list would be.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from ec2_harness import (  # noqa: F401 - moto_endpoint is a fixture
    REGION,
    FaultProxy,
    InstancePlayer,
    moto_client,
    moto_endpoint,
)
from inprocess import admin_token, api, document, wait_for

from corral.cli.render import cluster_status
from corral.service.schemas import ClusterDetail

pytestmark = pytest.mark.slow

AMI = "ami-03cf127a"  # one of moto's own
# the controller keeps its workers in a list, as slurm.conf does
CONTROLLER = """\
#!/bin/sh
python3 -c '
import json, os, sys
view = json.load(sys.stdin)
workers = sorted(m["name"] for m in view["roles"].get("slurm-worker", []))
path = os.path.join(os.environ["CORRAL_ROOT"], "etc/slurm-nodes")
open(path, "w").write(" ".join(workers) + "\\n")
'
"""
WORKER = """\
#!/bin/sh
echo "worker $CORRAL_NODE configured"
"""
READY_TIMEOUT = 90


def make_image(directory: Path) -> Path:
    """An instance image with the Slurm roles' names: the controller's scripts keep the
    list of workers (configure, join and leave alike); the worker's say it is configured."""
    roles = directory / "etc" / "corral" / "roles"
    for role, hook, script in [
        ("slurm-controller", "configure", CONTROLLER),
        ("slurm-controller", "join", CONTROLLER),
        ("slurm-controller", "leave", CONTROLLER),
        ("slurm-worker", "configure", WORKER),
    ]:
        path = roles / role / hook
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(script)
        path.chmod(0o755)
    (directory / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    return directory


class Ec2Site:
    """A served service with one ec2 pool behind the proxy, and the player of its
    instances."""

    def __init__(self, make_service, endpoint: str, tmp_path: Path, **options: str) -> None:
        self.endpoint = endpoint
        self.proxy = FaultProxy(endpoint)
        self.tag = f"corral-test-{uuid.uuid4().hex[:8]}"
        pool_options = {
            "region": REGION,
            "endpoint_url": self.proxy.url,
            "ami.debian-12-slurm": AMI,
            "observe_every": "0.3",
            "service_tag": self.tag,
            "price.t3.micro": "0.0104",
        } | options
        self.service = make_service(
            pool_options,
            backend_name="ec2",
            pool="ec2",
            serve=True,
            default_max_nodes=1000,
            default_max_node_hours=1e6,
        )
        self.client = api(self.service, admin_token(self.service))
        self.player = InstancePlayer(endpoint, self.tag, make_image(tmp_path / "image"))
        self.ec2 = moto_client(endpoint)

    @property
    def backend(self):
        return self.service.pools.get("ec2").backend

    def launch(self, text: str) -> str:
        answer = self.client.post("/v1/clusters", json={"document": text})
        assert answer.status_code == 201, answer.text
        return answer.json()["id"]

    def detail(self, cluster_id: str) -> dict:
        return self.client.get(f"/v1/clusters/{cluster_id}").json()

    def wait_state(self, cluster_id: str, *states: str, timeout: float = READY_TIMEOUT) -> dict:
        wait_for(lambda: self.detail(cluster_id)["state"] in states, timeout=timeout)
        return self.detail(cluster_id)

    def played(self, cluster_id: str, node: str):
        machine = next(n for n in self.detail(cluster_id)["nodes"] if n["name"] == node)
        return self.player.wait_for(machine["machine_id"])

    def controller_list(self, cluster_id: str) -> list[str]:
        path = self.played(cluster_id, "head-0").root / "etc" / "slurm-nodes"
        return path.read_text().split() if path.exists() else []

    def instance(self, instance_id: str) -> dict:
        reservations = self.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        return reservations[0]["Instances"][0]

    def destroy(self, cluster_id: str) -> None:
        assert self.client.delete(f"/v1/clusters/{cluster_id}").status_code in (200, 202)
        self.wait_state(cluster_id, "terminated")

    def close(self) -> None:
        self.player.close()
        self.proxy.close()


@pytest.fixture
def site(make_service, moto_endpoint, tmp_path):  # noqa: F811 - the fixture
    sites: list[Ec2Site] = []

    def make(**options: str) -> Ec2Site:
        sites.append(Ec2Site(make_service, moto_endpoint, tmp_path / str(len(sites)), **options))
        return sites[-1]

    yield make
    for each in sites:
        each.close()


def test_the_example_cluster_runs_unchanged_on_an_ec2_pool_and_leaves_nothing_tagged(site):
    ec2 = site()
    cluster_id = ec2.launch(document("base-cluster.yaml"))
    detail = ec2.wait_state(cluster_id, "ready", "failed")
    assert detail["state"] == "ready", detail
    grown = ec2.client.post(
        f"/v1/clusters/{cluster_id}/resize", json={"group": "worker", "count": 3}
    )
    assert grown.status_code == 200, grown.text
    wait_for(
        lambda: [n["state"] for n in ec2.detail(cluster_id)["nodes"]] == ["ready"] * 4,
        timeout=READY_TIMEOUT,
    )
    detail = ec2.detail(cluster_id)
    # one RunInstances per group at launch, one for the resize
    assert ec2.proxy.count("RunInstances") == 3
    nodes = {n["name"]: n for n in detail["nodes"]}
    assert sorted(nodes) == ["head-0", "worker-0", "worker-1", "worker-2"]
    for node in nodes.values():
        instance = ec2.instance(node["machine_id"])
        assert node["address"] == instance["PrivateIpAddress"]
        tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
        assert tags["corral:cluster"] == cluster_id and tags["corral:service"] == ec2.tag
    wait_for(lambda: ec2.controller_list(cluster_id) == ["worker-0", "worker-1", "worker-2"])
    shown = cluster_status(ClusterDetail.model_validate(detail))
    for node in nodes.values():
        assert node["machine_id"] in shown and node["address"] in shown

    ec2.destroy(cluster_id)
    assert ec2.backend.tagged_with(cluster_id) == []
    left = ec2.ec2.describe_instances(
        Filters=[{"Name": "tag:corral:cluster", "Values": [cluster_id]}]
    )["Reservations"]
    states = {i["State"]["Name"] for r in left for i in r["Instances"]}
    assert states <= {"terminated"}, states
    groups = ec2.ec2.describe_security_groups(
        Filters=[{"Name": "tag:corral:cluster", "Values": [cluster_id]}]
    )["SecurityGroups"]
    assert groups == []


def test_every_instance_stops_itself_at_its_lease_end_and_ec2_then_ends_it(site):
    ec2 = site()
    text = document("base-cluster.yaml").replace("lease: 12h", "lease: 40s")
    cluster_id = ec2.launch(text)
    detail = ec2.wait_state(cluster_id, "ready", "failed")
    assert detail["state"] == "ready", detail
    lease_end = detail["lease_end"]
    instances = [n["machine_id"] for n in detail["nodes"]]
    for instance_id in instances:
        behaviour = ec2.ec2.describe_instance_attribute(
            InstanceId=instance_id, Attribute="instanceInitiatedShutdownBehavior"
        )["InstanceInitiatedShutdownBehavior"]["Value"]
        assert behaviour == "terminate"
        played = ec2.player.wait_for(instance_id)
        state = json.loads((played.root / "var/lib/corral/state.json").read_text())
        assert state["lease_end"][:19] == lease_end[:19]
        log = (played.root / "var/log/corral-agent.log").read_text()
        assert "the node powers itself off then" in log
    # with the service gone, each node powers itself off at the lease's end, and EC2
    # (InstanceInitiatedShutdownBehavior=terminate) ends the instance and its bill
    ec2.service.engine.stop()
    wait_for(
        lambda: {ec2.instance(i)["State"]["Name"] for i in instances} == {"terminated"},
        timeout=60,
    )


def test_a_launch_through_throttling_on_half_of_all_calls_succeeds(site):
    ec2 = site()
    ec2.proxy.throttle_every = 2
    cluster_id = ec2.launch(document("base-cluster.yaml"))
    detail = ec2.wait_state(cluster_id, "ready", "failed")
    assert detail["state"] == "ready", detail
    assert ec2.proxy.throttled >= ec2.proxy.count("RunInstances") // 2 > 0
    ec2.destroy(cluster_id)
    assert ec2.backend.tagged_with(cluster_id) == []


def test_a_capacity_error_reaches_the_nodes_in_ec2s_words_and_the_policy_decides(site):
    ec2 = site()
    running = ec2.launch(document("base-cluster.yaml"))
    assert ec2.wait_state(running, "ready", "failed")["state"] == "ready"
    ec2.proxy.capacity_errors = True
    # a resize that EC2 has no room for: the new node fails, the cluster goes on
    grown = ec2.client.post(f"/v1/clusters/{running}/resize", json={"group": "worker", "by": 1})
    assert grown.status_code == 200, grown.text
    wait_for(lambda: len(ec2.detail(running)["nodes"]) == 4)
    wait_for(lambda: ec2.detail(running)["nodes"][-1]["state"] in ("failed", "terminated"))
    added = ec2.detail(running)["nodes"][-1]
    assert added["name"] == "worker-2"
    assert added["failure"].startswith("InsufficientInstanceCapacity: We currently do not")
    assert ec2.detail(running)["state"] in ("ready", "degraded")
    cluster_id = ec2.launch(document("base-cluster.yaml"))  # all-or-nothing: it fails
    detail = ec2.wait_state(cluster_id, "failed", "terminated", "terminating")
    failures = [n["failure"] for n in detail["nodes"]]
    assert all(f.startswith("InsufficientInstanceCapacity: ") for f in failures), failures
    assert "InsufficientInstanceCapacity: " in detail["failure"]
    ec2.destroy(cluster_id)  # a failed launch's record stays until then
    assert ec2.backend.tagged_with(cluster_id) == []
    ec2.proxy.capacity_errors = False
    ec2.destroy(running)


SPOT_CLUSTER = document("base-cluster.yaml").replace(
    "    min: 1\n", "    min: 1\n    replace: true\n    market: spot\n    max_price: 0.01\n"
)


def test_a_spot_worker_ec2_takes_back_is_lost_leaves_the_controller_and_is_replaced(site):
    ec2 = site()
    cluster_id = ec2.launch(SPOT_CLUSTER)
    detail = ec2.wait_state(cluster_id, "ready", "failed")
    assert detail["state"] == "ready", detail
    nodes = {n["name"]: n for n in detail["nodes"]}
    assert ec2.instance(nodes["head-0"]["machine_id"]).get("InstanceLifecycle") is None
    taken = nodes["worker-1"]["machine_id"]
    assert ec2.instance(taken)["InstanceLifecycle"] == "spot"
    wait_for(lambda: ec2.controller_list(cluster_id) == ["worker-0", "worker-1"])

    # EC2 gives two minutes; the agent looks every 5 s
    ec2.player.interrupt(taken, terminate_after=20)
    events = f"/v1/clusters/{cluster_id}/events"
    wait_for(
        lambda: any(
            "interrupted: spot instance-action terminate" in e["reason"]
            for e in ec2.client.get(events).json()
        ),
        timeout=30,
    )
    wait_for(lambda: "worker-1" not in ec2.controller_list(cluster_id), timeout=30)
    # replace: true holds the group at its count: a successor joins the controller
    wait_for(
        lambda: ec2.controller_list(cluster_id) == ["worker-0", "worker-2"], timeout=READY_TIMEOUT
    )

    # the controller lists the successor once it registered; it is ready when its own
    # role scripts are done, which may be a moment later
    def successor() -> dict:
        return next(n for n in ec2.detail(cluster_id)["nodes"] if n["name"] == "worker-2")

    wait_for(lambda: successor()["state"] == "ready", timeout=READY_TIMEOUT)
    assert ec2.instance(successor()["machine_id"])["InstanceLifecycle"] == "spot"
    ec2.destroy(cluster_id)


def _launch_and_count(ec2: Ec2Site, workers: int) -> dict[str, dict[str, int]]:
    """EC2 calls, by action, of a launch of 1 head and `workers` workers (until every
    instance is recorded), of one observation, and of a destroy; no agents run."""
    text = document("base-cluster.yaml").replace("count: 2", f"count: {workers}")
    ec2.proxy.reset()
    cluster_id = ec2.launch(text)
    wait_for(lambda: all(n["machine_id"] for n in ec2.detail(cluster_id)["nodes"]), timeout=60)
    launch = dict(ec2.proxy.calls)
    ec2.proxy.reset()
    assert len(ec2.backend.list_machines()) == workers + 1
    observation = dict(ec2.proxy.calls)
    ec2.proxy.reset()
    ec2.destroy(cluster_id)
    destroy = dict(ec2.proxy.calls)
    assert ec2.backend.tagged_with(cluster_id) == []
    return {"launch": launch, "observation": observation, "destroy": destroy}


def test_ec2_calls_for_a_launch_an_observation_and_a_destroy_do_not_grow_with_n(site):
    ec2 = site(observe_every="5")  # the destroy's own paced observations stay few
    ec2.player.close()  # no agents: only the calls of booting, observing and ending count
    small, large = _launch_and_count(ec2, 9), _launch_and_count(ec2, 199)
    print(f"N=10: {small}\nN=200: {large}")
    for calls in (small, large):
        assert calls["launch"]["RunInstances"] == 2  # one per group
        assert calls["observation"] == {"DescribeInstances": 1}  # one page of 1000
        assert calls["destroy"]["TerminateInstances"] == 1
        # the service observes at its pace (every 5 s here), whatever N: each phase, a
        # few seconds long at either size, sees one or two listings, and the destroy
        # one more of its own to find nothing left (clean_up)
        assert calls["launch"].get("DescribeInstances", 0) <= 2
        assert calls["destroy"].get("DescribeInstances", 0) <= 3
    assert small["destroy"].keys() == large["destroy"].keys()


def test_a_launch_with_an_image_the_pool_has_no_ami_for_is_refused_and_creates_nothing(site):
    ec2 = site()
    text = document("base-cluster.yaml").replace("debian-12-slurm", "debian-13")
    answer = ec2.client.post("/v1/clusters", json={"document": text})
    assert answer.status_code == 404, answer.text
    assert answer.json()["message"].startswith(
        "nodes[0].image: pool ec2 has no AMI for image debian-13 (set its option ami.debian-13"
    )
    assert ec2.client.get("/v1/clusters").json() == []
    assert ec2.proxy.count("RunInstances") == 0


OVERFLOW_CONFIG = """\
overflow: [local, ec2]
pools:
  - name: local
    backend: fake
    options: {{boot_delay: 0.05}}
    address_range: 10.196.0.0/16
    hosts: [{{name: local-a, cores: 4, memory: 8GiB}}]
  - name: ec2
    backend: ec2
    options:
      region: {region}
      endpoint_url: {endpoint}
      ami.debian-12-slurm: {ami}
      service_tag: {tag}
      observe_every: 0.3
      type.1x1024: t3.micro
      type.2x1024: t3.small
      price.t3.micro: 0.0104
      price.t3.small: 0.0208
"""
# base-cluster with 2 cores a node and 3 workers: 8 cores, more than the local pool has
EIGHT_CORES = (
    document("base-cluster.yaml")
    .replace("name: base-cluster", "name: eight-cores")
    .replace("cores: 1", "cores: 2")
    .replace("count: 2", "count: 3")
)


def test_run_overflows_a_cluster_too_big_for_the_local_pool_to_ec2_and_prices_it(
    moto_endpoint,  # noqa: F811 - the fixture
    tmp_path,
):
    from served import ServedCorral, corral

    proxy = FaultProxy(moto_endpoint)
    tag = f"corral-test-{uuid.uuid4().hex[:8]}"
    config = tmp_path / "corral.yaml"
    config.write_text(OVERFLOW_CONFIG.format(region=REGION, endpoint=proxy.url, ami=AMI, tag=tag))
    (tmp_path / "eight.yaml").write_text(EIGHT_CORES)
    (tmp_path / "base.yaml").write_text(document("base-cluster.yaml"))
    image = make_image(tmp_path / "image")
    try:
        with (
            ServedCorral(tmp_path / "svc", "--config", str(config)) as served,
            InstancePlayer(moto_endpoint, tag, image),
        ):
            env = served.env()
            big = corral("run", "--cluster", str(tmp_path / "eight.yaml"), env=env, timeout=180)
            assert big.returncode == 0, big.stderr
            assert (
                "cluster eight-cores goes to pool ec2: pool local has room for 4 of the 8 "
                "cores asked" in big.stderr
            )
            # 4 t3.small at 0.0208 an hour, for the document's 12h lease
            assert "estimated cost: $0.0832/h, $1.00 for the 12h lease" in big.stderr
            small = corral("run", "--cluster", str(tmp_path / "base.yaml"), env=env, timeout=120)
            assert small.returncode == 0, small.stderr
            assert "goes to pool" not in small.stderr

            def clusters() -> dict[str, dict]:
                listed = json.loads(corral("list", "--json", env=env).stdout)
                return {c["name"]: c for c in listed}

            # the cost so far grows by a ten-thousandth of a dollar every 4.3 s
            wait_for(lambda: clusters()["eight-cores"]["cost_so_far"] > 0, timeout=30)
            by_name = clusters()
            assert by_name["eight-cores"]["pool"] == "ec2"
            assert by_name["eight-cores"]["state"] == "ready"
            assert by_name["eight-cores"]["hourly_cost"] == pytest.approx(0.0832)
            assert by_name["base-cluster"]["pool"] == "local"
            assert by_name["base-cluster"]["cost_so_far"] is None  # local has no prices
            for name in ("eight-cores", "base-cluster"):
                ended = corral("destroy", name, "--yes", env=env, timeout=120)
                assert ended.returncode == 0, ended.stderr
    finally:
        proxy.close()
