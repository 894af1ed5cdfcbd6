"""The ec2 backend against moto's server, through a proxy that counts and injects faults:
the backend contract, one call per group, batched terminations, throttling, capacity
errors, what EC2 is asked for, security groups, restarts, options; the instance player;
and local use that never loads boto3."""

from __future__ import annotations

import base64
import itertools
import json
import logging
import math
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
from backend_contract import BackendContract, BootOrder
from ec2_harness import (  # noqa: F401 - moto_endpoint is a fixture
    CAPACITY_MESSAGE,
    POWER_OFF_MARK,
    REGION,
    FaultProxy,
    moto_client,
    moto_endpoint,
    play_instances,
    refuse_real_aws,
    reset_moto,
)

from corral.backends.base import Capability, ImageRef, Machine, MachineState, NodeSpec, Placement
from corral.backends.cloud_init import BOOTSTRAP_LINE, launcher_script
from corral.backends.ec2 import Ec2Backend
from corral.backends.registry import load_backend
from corral.errors import BackendError

IMAGE = "debian-12-slurm"
AMI = "ami-03cf127a"  # one of moto's own
PLACEMENT = Placement("cloud", host="cloud-account")
# a group's bootstrap document, with a broker nobody answers at
BOOTSTRAP = json.dumps(
    {
        "corral": 1,
        "broker": "https://127.0.0.1:1/broker/v1",
        "fingerprint": "sha256:" + "0" * 64,
        "cluster": "c1",
        "group": "worker",
        "token": "bt_for-the-test",
    }
).encode()
MANY_INSTANCES = 50  # a test that leaves more has moto reset
_ids = itertools.count()


def specs(
    n: int,
    cluster: str = "c1",
    group: str = "worker",
    market: str = "on-demand",
    max_price: float | None = None,
    cores: int = 1,
    memory_mib: int = 512,
) -> list[NodeSpec]:
    """`n` nodes of one group, each with a node id of its own."""
    return [
        NodeSpec(
            node_id=f"n{next(_ids):05}",
            cluster_id=cluster,
            name=f"{group}-{index}",
            image=ImageRef(IMAGE),
            cores=cores,
            memory_mib=memory_mib,
            user_data=BOOTSTRAP,
            market=market,
            max_price=max_price,
        )
        for index in range(n)
    ]


@pytest.fixture
def proxy(moto_endpoint):  # noqa: F811 - the fixture, imported above
    with FaultProxy(moto_endpoint) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def moto(moto_endpoint):  # noqa: F811
    """An EC2 client straight to moto, for checks the proxy does not count."""
    return moto_client(moto_endpoint)


@pytest.fixture
def make_backend(proxy, moto, moto_endpoint, tmp_path):  # noqa: F811
    """Backends through the proxy, each with a service tag of its own. At teardown their
    instances are terminated in moto, and moto is reset after a test that made many, as
    its calls slow down with every instance it keeps (terminated ones too); not after
    every test, since the first call after a reset makes moto's default VPC (a second)."""
    made: list[Ec2Backend] = []
    tags: set[str] = set()

    def make(data_dir: Path | None = None, **options: str) -> Ec2Backend:
        base = {
            "region": REGION,
            "endpoint_url": proxy.url,
            f"ami.{IMAGE}": AMI,
            "type.1x512": "t3.micro",
            "observe_every": "0",
            "service_tag": "t-" + secrets.token_hex(4),
        }
        backend = Ec2Backend.from_options({**base, **options}, data_dir or tmp_path / "pool")
        made.append(backend)
        tags.add(backend.options.service_tag)
        return backend

    yield make
    for backend in made:
        backend.close()
    every_state = ("pending", "running", "stopped", "terminated")
    left = [i for tag in tags for i in instances_tagged(moto, tag, every_state)]
    if len(left) > MANY_INSTANCES:
        reset_moto(moto_endpoint)
        return
    live = [i["InstanceId"] for i in left if i["State"]["Name"] != "terminated"]
    if live:
        moto.terminate_instances(InstanceIds=live)


def instances_tagged(moto, tag: str, states=("pending", "running")) -> list[dict]:
    pages = moto.get_paginator("describe_instances").paginate(
        Filters=[
            {"Name": "tag:corral:service", "Values": [tag]},
            {"Name": "instance-state-name", "Values": list(states)},
        ]
    )
    return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]


def booted(results: list[Machine | BackendError]) -> list[Machine]:
    errors = [r for r in results if isinstance(r, BackendError)]
    assert not errors, errors
    return results  # type: ignore[return-value]


# --- the contract ------------------------------------------------------------------------


class TestEc2BackendContract(BackendContract):
    """Every check holds: moto lists an instance as running on the first DescribeInstances
    after RunInstances, and terminated instances are not listed."""

    boot_timeout = 10.0
    poll_interval = 0.1

    @pytest.fixture
    def backend(self, make_backend):
        return make_backend()

    @pytest.fixture
    def spec_factory(self):
        def order(node: str) -> BootOrder:
            (spec,) = specs(1, group=node.rpartition("-")[0])
            return BootOrder(replace(spec, name=node), PLACEMENT)

        return order


# --- one call per group, per observation, per batch --------------------------------------


def test_a_group_is_one_run_instances_at_10_and_at_200_nodes(make_backend, proxy):
    backend = make_backend()
    booted_so_far = 0
    for size in (10, 200):
        group = specs(size, group=f"g{size}")
        proxy.reset()
        machines = booted(backend.boot_group(group, PLACEMENT, size))
        assert proxy.count("RunInstances") == 1
        assert [m.node_id for m in machines] == [s.node_id for s in group]
        assert len({m.machine_id for m in machines}) == size
        assert all(m.machine_id.startswith("i-") and m.address for m in machines)
        assert all(m.state in (MachineState.STARTING, MachineState.RUNNING) for m in machines)
        assert all(m.host == PLACEMENT.host for m in machines)
        booted_so_far += size
        proxy.reset()
        listed = backend.list_machines()
        assert proxy.count("DescribeInstances") == 1
        assert len(listed) == booted_so_far
        assert not any(m.node_id.startswith("ec2:") for m in listed)


def test_an_observation_costs_pages_of_groups_not_of_nodes(make_backend, proxy):
    # moto pages by reservation (one per RunInstances), so with 5 per page, 6 groups take
    # 2 pages whether each group has 2 nodes or 25
    for size in (2, 25):
        backend = make_backend(page_size="5")
        for g in range(6):
            booted(backend.boot_group(specs(size, group=f"g{g}"), PLACEMENT, size))
        proxy.reset()
        assert len(backend.list_machines()) == 6 * size
        assert proxy.count("DescribeInstances") == math.ceil(6 / 5)


def test_instances_of_a_launch_under_way_are_no_orphans(make_backend, moto):
    """EC2 lists a launch's instances before RunInstances has answered (moto takes
    seconds for 300): an observation then must not take them for orphans, which the
    service would remove (the ec2 benchmark lost 999 workers so)."""
    backend = make_backend()
    group = specs(300)
    with ThreadPoolExecutor(1) as pool:
        launch = pool.submit(backend.boot_group, group, PLACEMENT, 300)
        while not launch.done():
            listed = backend.list_machines()
            assert not [m.node_id for m in listed if m.node_id.startswith("ec2:")]
        booted(launch.result())
    assert {m.node_id for m in backend.list_machines()} == {s.node_id for s in group}


def test_terminating_200_nodes_is_one_call(make_backend, proxy, moto):
    backend = make_backend()
    group = specs(200)
    booted(backend.boot_group(group, PLACEMENT, 200))
    proxy.reset()
    backend.terminate_many([s.node_id for s in group])
    assert proxy.count("TerminateInstances") == 1
    assert backend.list_machines() == []
    assert instances_tagged(moto, backend.options.service_tag) == []
    assert all(backend.describe(s.node_id) is None for s in group[:3])


# --- faults --------------------------------------------------------------------------------


def test_throttling_on_every_other_call_still_boots_and_lists(make_backend, proxy, moto):
    backend = make_backend()
    proxy.throttle_every = 2  # the first call of all, the third, ...: each call once
    group = specs(5)
    machines = booted(backend.boot_group(group, PLACEMENT, 5))
    listed = {m.node_id for m in backend.list_machines()}
    assert {m.node_id for m in machines} == listed == {s.node_id for s in group}
    # every call was refused once with RequestLimitExceeded, and tried again
    for action in ("CreateSecurityGroup", "RunInstances", "DescribeInstances"):
        assert proxy.count(action) == 2, action
    assert proxy.throttled == sum(proxy.calls.values()) // 2
    # and the launch that was tried again launched once
    assert len(instances_tagged(moto, backend.options.service_tag)) == 5


def test_a_lack_of_capacity_is_ec2s_code_and_message_at_once(make_backend, proxy):
    backend = make_backend()
    proxy.capacity_errors = True
    with pytest.raises(BackendError) as caught:
        backend.boot_group(specs(3), PLACEMENT, 3)
    assert caught.value.message == f"InsufficientInstanceCapacity: {CAPACITY_MESSAGE}"
    assert proxy.count("RunInstances") == 1  # not retried: the service may overflow
    with pytest.raises(BackendError, match="^InsufficientInstanceCapacity: We currently"):
        backend.boot(specs(1)[0], PLACEMENT)
    assert backend.list_machines() == []


def test_nodes_beyond_what_ec2_launched_each_get_an_error(make_backend):
    backend = make_backend()
    group = specs(4)
    # moto launches MinCount instances, as EC2 may when it has no more
    results = backend.boot_group(group, PLACEMENT, 2)
    assert [isinstance(r, Machine) for r in results] == [True, True, False, False]
    assert "worker-2" in results[2].message and "2 of the 4" in results[2].message
    assert {m.node_id for m in backend.list_machines()} == {s.node_id for s in group[:2]}


def test_a_group_booted_again_keeps_its_instances_and_launches_none_in_part(make_backend, proxy):
    backend = make_backend()
    group = specs(4)
    first = backend.boot_group(group, PLACEMENT, 2)[:2]  # moto launches MinCount
    proxy.reset()
    again = backend.boot_group(group, PLACEMENT, 2)
    assert proxy.count("RunInstances") == 0
    assert [m.machine_id for m in again[:2]] == [m.machine_id for m in first]
    assert all("runs already" in error.message for error in again[2:])


# --- what EC2 is asked for -----------------------------------------------------------------


def test_instances_are_launched_as_asked(make_backend, moto):
    backend = make_backend()
    group = specs(3, cluster="c-read", market="spot", max_price=0.05)
    machines = booted(backend.boot_group(group, PLACEMENT, 3))
    ids = [m.machine_id for m in machines]
    reply = moto.describe_instances(InstanceIds=ids)
    instances = {i["InstanceId"]: i for r in reply["Reservations"] for i in r["Instances"]}
    launches = set()
    for index, instance_id in enumerate(ids):
        instance = instances[instance_id]
        assert instance["AmiLaunchIndex"] == index
        assert instance["ImageId"] == AMI and instance["InstanceType"] == "t3.micro"
        assert instance["InstanceLifecycle"] == "spot"
        tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
        assert tags["corral:service"] == backend.options.service_tag
        assert tags["corral:cluster"] == "c-read"
        assert tags["corral:group"] == "worker"
        assert tags["Name"] == "c-read/worker"
        launches.add(tags["corral:launch"])
        shutdown = moto.describe_instance_attribute(
            InstanceId=instance_id, Attribute="instanceInitiatedShutdownBehavior"
        )
        assert shutdown["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"
        user_data = moto.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
        script = base64.b64decode(user_data["UserData"]["Value"])
        assert script == launcher_script(BOOTSTRAP)
        line = next(x for x in script.decode().splitlines() if x.startswith(BOOTSTRAP_LINE))
        assert json.loads(line.removeprefix(BOOTSTRAP_LINE)) == json.loads(BOOTSTRAP)
    assert len(launches) == 1  # one launch id for the group
    # moto keeps no spot request for RunInstances' market options; where it does, the
    # maximum price is the node's
    for request in moto.describe_spot_instance_requests()["SpotInstanceRequests"]:
        if request.get("InstanceId") in ids:
            assert float(request["SpotPrice"]) == 0.05


def test_no_log_line_carries_the_user_data_even_at_debug(make_backend, caplog):
    caplog.set_level(logging.DEBUG)
    backend = make_backend()
    booted(backend.boot_group(specs(2), PLACEMENT, 2))
    backend.list_machines()
    assert "launching" in caplog.text  # the backend does log its launches
    assert "bt_for-the-test" not in caplog.text
    assert base64.b64encode(launcher_script(BOOTSTRAP)).decode()[:40] not in caplog.text


def test_the_mapping_is_kept_owner_only_before_boot_returns(make_backend, tmp_path):
    backend = make_backend(data_dir=tmp_path / "pool")
    group = specs(2)
    machines = booted(backend.boot_group(group, PLACEMENT, 2))
    kept = tmp_path / "pool" / "ec2-instances.json"
    assert kept.stat().st_mode & 0o777 == 0o600
    records = {r["node_id"]: r for r in json.loads(kept.read_text())}
    assert [records[s.node_id]["index"] for s in group] == [0, 1]
    assert [records[s.node_id]["instance_id"] for s in group] == [m.machine_id for m in machines]
    assert BOOTSTRAP not in kept.read_bytes()


# --- security groups, clean-up, restarts ---------------------------------------------------


def test_a_cluster_gets_one_security_group_which_clean_up_removes(make_backend, moto):
    backend = make_backend(ssh_from="192.0.2.0/24,198.51.100.7/32")
    first = specs(2, cluster="c-sg", group="head")
    second = specs(2, cluster="c-sg", group="worker")
    machines = booted(backend.boot_group(first, PLACEMENT, 2))
    machines += booted(backend.boot_group(second, PLACEMENT, 2))
    name = f"corral-{backend.options.service_tag}-c-sg"
    (group,) = moto.describe_security_groups(Filters=[{"Name": "group-name", "Values": [name]}])[
        "SecurityGroups"
    ]
    tags = {t["Key"]: t["Value"] for t in group["Tags"]}
    assert tags["corral:cluster"] == "c-sg"
    assert tags["corral:service"] == backend.options.service_tag
    rules = group["IpPermissions"]
    itself = [r for r in rules if r["IpProtocol"] == "-1"]
    assert [p["GroupId"] for p in itself[0]["UserIdGroupPairs"]] == [group["GroupId"]]
    ssh = [r for r in rules if r["IpProtocol"] == "tcp"]
    assert (ssh[0]["FromPort"], ssh[0]["ToPort"]) == (22, 22)
    assert {r["CidrIp"] for r in ssh[0]["IpRanges"]} == {"192.0.2.0/24", "198.51.100.7/32"}
    reply = moto.describe_instances(InstanceIds=[m.machine_id for m in machines])
    for instance in (i for r in reply["Reservations"] for i in r["Instances"]):
        assert [g["GroupId"] for g in instance["SecurityGroups"]] == [group["GroupId"]]

    left = backend.clean_up("c-sg")
    assert len(left) == 5 and any(machines[0].machine_id in line for line in left)
    for machine in machines:
        backend.terminate(machine.node_id)
    assert backend.clean_up("c-sg") == []
    assert backend.tagged_with("c-sg") == []


def test_clean_up_says_while_ec2_still_reports_a_dependency(make_backend, proxy):
    backend = make_backend()
    (machine,) = booted(backend.boot_group(specs(1, cluster="c-dep"), PLACEMENT, 1))
    backend.terminate(machine.node_id)
    message = "resource sg-1234 has a dependent object"
    proxy.errors["DeleteSecurityGroup"] = (400, "DependencyViolation", message)
    (line,) = backend.clean_up("c-dep")
    assert "EC2 still reports a dependency" in line and message in line
    assert len(backend.tagged_with("c-dep")) == 1
    del proxy.errors["DeleteSecurityGroup"]
    assert backend.clean_up("c-dep") == []
    assert backend.tagged_with("c-dep") == []


def test_a_restarted_backend_maps_the_same_machines_and_lists_strangers_as_orphans(
    make_backend, moto, tmp_path
):
    first = make_backend(data_dir=tmp_path / "pool")
    tag = first.options.service_tag
    group = specs(3, cluster="c-restart")
    machines = booted(first.boot_group(group, PLACEMENT, 3))
    first.close()

    again = make_backend(data_dir=tmp_path / "pool", service_tag=tag)
    listed = {m.node_id: m for m in again.list_machines()}
    assert {n: m.machine_id for n, m in listed.items()} == {
        m.node_id: m.machine_id for m in machines
    }
    assert all(m.host == PLACEMENT.host for m in listed.values())
    # its security group is found again, not made twice
    booted(again.boot_group(specs(1, cluster="c-restart", group="extra"), PLACEMENT, 1))
    groups = moto.describe_security_groups(
        Filters=[{"Name": "tag:corral:cluster", "Values": ["c-restart"]}]
    )["SecurityGroups"]
    assert len([g for g in groups if g["GroupName"].startswith(f"corral-{tag}-")]) == 1

    stranger = moto.run_instances(
        ImageId=AMI,
        MinCount=1,
        MaxCount=1,
        TagSpecifications=[
            {"ResourceType": "instance", "Tags": [{"Key": "corral:service", "Value": tag}]}
        ],
    )["Instances"][0]["InstanceId"]
    orphan = f"ec2:{stranger}"
    assert orphan in {m.node_id for m in again.list_machines()}
    assert again.describe(orphan).machine_id == stranger
    again.terminate(orphan)
    assert orphan not in {m.node_id for m in again.list_machines()}


def test_a_machine_ec2_ends_is_stopped_with_ec2s_reason_until_corral_ends_it(make_backend, moto):
    backend = make_backend()
    (machine,) = booted(backend.boot_group(specs(1), PLACEMENT, 1))
    moto.stop_instances(InstanceIds=[machine.machine_id])
    (stopped,) = backend.list_machines()
    assert stopped.state is MachineState.STOPPED and "stopped" in stopped.detail
    # ended by EC2 (a spot interruption, a power-off): its node learns why
    moto.terminate_instances(InstanceIds=[machine.machine_id])
    (ended,) = backend.list_machines()
    assert ended.state is MachineState.STOPPED
    assert ended.detail == (
        "the instance is terminated: Client.UserInitiatedShutdown: User initiated shutdown"
    )
    backend.terminate(machine.node_id)  # as the service does with a lost node
    assert backend.list_machines() == []
    assert backend.describe(machine.node_id) is None


# --- options -------------------------------------------------------------------------------


def test_options_are_refused_naming_the_option(tmp_path):
    with pytest.raises(ValueError, match="region"):
        Ec2Backend.from_options({}, tmp_path)
    with pytest.raises(ValueError) as caught:
        Ec2Backend.from_options({"region": REGION, "colour": "red", "ami.x": "ami-1"}, tmp_path)
    assert "colour" in str(caught.value) and "ami.x" not in str(caught.value).split("(")[0]
    for option, value in (
        ("max_cores", "many"),
        ("observe_every", "soon"),
        ("max_memory", "lots"),
        ("price.t3.micro", "cheap"),
        ("ami.debian", "debian.img"),
        ("page_size", "2"),
    ):
        with pytest.raises(ValueError, match=option.replace(".", r"\.")):
            Ec2Backend.from_options({"region": REGION, option: value}, tmp_path)


def test_an_image_without_an_ami_is_refused_naming_the_image_and_the_option(make_backend):
    backend = make_backend()
    assert backend.ami_for(IMAGE) == AMI and backend.ami_for("centos-7") is None
    (spec,) = specs(1)
    spec = replace(spec, image=ImageRef("centos-7"))
    with pytest.raises(BackendError) as caught:
        backend.boot(spec, PLACEMENT)
    assert "centos-7" in caught.value.message and "ami.centos-7" in caught.value.message


def test_the_registry_builds_it_with_its_capabilities_and_a_kept_service_tag(tmp_path):
    backend = load_backend("ec2", {"region": REGION}, tmp_path)
    try:
        assert backend.capabilities >= {
            Capability.RUNS_AGENT,
            Capability.PLACES_ITSELF,
            Capability.LAUNCHES_GROUPS,
            Capability.LIMITS_RESOURCES,
            Capability.ANY_IMAGE,
        }
        kept = tmp_path / "ec2-service-tag"
        assert kept.stat().st_mode & 0o777 == 0o600
        assert kept.read_text().strip() == backend.options.service_tag
        again = load_backend("ec2", {"region": REGION, "max_cores": "64"}, tmp_path)
        assert again.options.service_tag == backend.options.service_tag
        assert backend.default_capacity() == (1024, 4 * 1024 * 1024)
        assert again.default_capacity() == (64, 4 * 1024 * 1024)
        assert backend.observe_every == 5.0
    finally:
        backend.close()


def test_instance_types_are_the_smallest_that_fit_and_prices_follow_them(make_backend, proxy):
    backend = make_backend(
        types="t3.micro,t3.small,t3.medium,m5.large",
        **{"price.t3.medium": "0.0416", "spot_price.t3.small": "0.006", "price.t3.small": "0.02"},
    )
    (medium,) = specs(1, cores=2, memory_mib=3000)
    (small,) = specs(1, cores=1, memory_mib=1500, market="spot")
    (capped,) = specs(1, cores=2, memory_mib=3000, market="spot", max_price=0.01)
    assert backend.instance_type_for(medium) == "t3.medium"
    assert backend.instance_type_for(small) == "t3.small"
    assert proxy.count("DescribeInstanceTypes") == 1  # fetched once
    assert backend.hourly_price(medium) == 0.0416
    assert backend.hourly_price(small) == 0.006
    assert backend.hourly_price(capped) == 0.01
    (explicit,) = specs(1)  # type.1x512 names t3.micro, which has no price
    assert backend.hourly_price(explicit) is None
    (huge,) = specs(1, cores=64, memory_mib=1024)
    with pytest.raises(BackendError, match="type.64x1024"):
        backend.instance_type_for(huge)


# --- the harness -------------------------------------------------------------------------


def test_the_harness_refuses_anything_but_loopback_and_fake_credentials(
    moto_endpoint,  # noqa: F811
    monkeypatch,
):
    refuse_real_aws(moto_endpoint)
    with pytest.raises(pytest.fail.Exception, match="not on 127.0.0.1"):
        refuse_real_aws(f"https://ec2.{REGION}.amazonaws.com")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    with pytest.raises(pytest.fail.Exception, match="credentials"):
        refuse_real_aws(moto_endpoint)


# --- the instance player --------------------------------------------------------------------


def imds(url: str, path: str, token: str | None = None, method: str = "GET"):
    headers = {"X-aws-ec2-metadata-token": token} if token else {}
    if method == "PUT":
        headers = {"X-aws-ec2-metadata-token-ttl-seconds": "60"}
    request = urllib.request.Request(url + path, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def test_the_player_serves_imdsv2_and_interrupts(make_backend, play_instances, tmp_path):  # noqa: F811
    image = tmp_path / "image"
    (image / "etc" / "corral" / "roles").mkdir(parents=True)
    backend = make_backend()
    tag = backend.options.service_tag
    player = play_instances(tag, image)
    first, second = booted(backend.boot_group(specs(2), PLACEMENT, 2))
    played = player.wait_for(first.machine_id)
    url = played.imds_url
    assert imds(url, "/latest/user-data")[0] == 401
    assert imds(url, "/latest/user-data", token="made-up")[0] == 401
    status, token = imds(url, "/latest/api/token", method="PUT")
    assert status == 200
    token = token.decode()
    assert imds(url, "/latest/user-data", token) == (200, launcher_script(BOOTSTRAP))
    assert imds(url, "/latest/meta-data/instance-id", token) == (200, first.machine_id.encode())
    assert imds(url, "/latest/meta-data/ami-launch-index", token) == (200, b"0")
    assert imds(url, "/latest/meta-data/local-ipv4", token) == (200, first.address.encode())
    assert imds(url, "/latest/meta-data/spot/instance-action", token)[0] == 404
    next_one = player.wait_for(second.machine_id).imds_url
    _, other_token = imds(next_one, "/latest/api/token", method="PUT")
    launch_index = imds(next_one, "/latest/meta-data/ami-launch-index", other_token.decode())
    assert launch_index == (200, b"1")
    assert imds(next_one, "/latest/user-data", token)[0] == 401  # tokens are per instance
    assert played.agent.poll() is None  # the agent runs

    player.interrupt(first.machine_id, terminate_after=0.5)
    status, notice = imds(url, "/latest/meta-data/spot/instance-action", token)
    assert status == 200 and json.loads(notice)["action"] == "terminate"
    agent = played.agent
    deadline = time.monotonic() + 10
    while first.machine_id in player.instances and time.monotonic() < deadline:
        time.sleep(0.1)
    assert agent.poll() is not None  # ended with its instance
    # ended by EC2, not by corral: stopped, with EC2's reason, until corral ends it too
    ended = backend.describe(first.node_id)
    assert ended.state is MachineState.STOPPED and "terminated" in ended.detail
    backend.terminate(first.node_id)
    assert backend.describe(first.node_id) is None

    # a node that powers itself off (its lease ended) is terminated, as on EC2
    other = player.wait_for(second.machine_id)
    (other.root / POWER_OFF_MARK).parent.mkdir(parents=True, exist_ok=True)
    (other.root / POWER_OFF_MARK).write_text("lease ended\n")
    deadline = time.monotonic() + 10
    while backend.describe(second.node_id).state is not MachineState.STOPPED:
        assert time.monotonic() < deadline, "the powered-off instance was not terminated"
        time.sleep(0.1)
    (instance,) = player.ec2.describe_instances(InstanceIds=[second.machine_id])["Reservations"]
    assert instance["Instances"][0]["State"]["Name"] == "terminated"
    roots = player.roots
    player.close()  # as the fixture does at teardown
    assert not roots.exists()
    assert other.agent.poll() is not None


# --- local use ------------------------------------------------------------------------------

LOCAL_LAUNCH = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from inprocess import admin_token, api, document, free_port, wait_for
import corral.cli.main
from corral.service.config import ServiceConfig
from corral.service.process import Service

config = ServiceConfig(
    data_dir=Path({data!r}), backend="fake", backend_options={{"boot_delay": "0"}},
    listen=f"127.0.0.1:{{free_port()}}", broker_listen=f"127.0.0.1:{{free_port()}}",
    tick_seconds=0.05,
)
service = Service(config)
service.start()
try:
    client = api(service, admin_token(service))
    created = client.post("/v1/clusters", json={{"document": document()}})
    assert created.status_code == 201, created.text
    cluster = created.json()["id"]
    wait_for(lambda: client.get(f"/v1/clusters/{{cluster}}").json()["state"] == "ready")
finally:
    service.stop()
print(sorted(m for m in sys.modules if m.split(".")[0] in ("boto3", "botocore")))
"""


def test_local_use_never_imports_boto3(tmp_path):
    tests = str(Path(__file__).resolve().parent)
    code = LOCAL_LAUNCH.format(tests=tests, data=str(tmp_path / "service"))
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip().splitlines()[-1] == "[]"
