"""EC2 instances, through boto3: one RunInstances per group, batched terminations, one
paginated DescribeInstances per observation.

Every instance and volume carries the tags `corral:service` (this pool's service tag),
`corral:cluster`, `corral:group` and `corral:launch`. Tagging each node by name would
cost one CreateTags call per node, so a group's instances are launched together and each
is mapped to its node by its AMI launch index (index i is the i-th spec); the mapping is
kept, owner-only, in the pool's data directory before boot_group returns, so a service
that starts again knows its instances. An instance of this service that the mapping does
not name (also one a crash left unmapped between its launch and the mapping's write) is
listed as `ec2:<instance id>`, for the service to remove as an orphan.

Each cluster gets a security group of its own: all traffic among its nodes, SSH from the
pool's `ssh_from` networks. It is deleted by clean_up once the cluster's instances are gone.

boto3 is imported here only, and the registry imports this module only for an ec2 pool:
local use never loads it. Credentials come from the standard AWS chain; corral neither
stores nor logs them, nor the user-data (it holds each group's bootstrap token).
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from corral.backends.base import (
    Backend,
    Capability,
    Machine,
    MachineState,
    NodeSpec,
    Placement,
)
from corral.backends.cloud_init import launcher_script
from corral.backends.ec2_options import Ec2Options
from corral.errors import BackendError

log = logging.getLogger(__name__)
# botocore logs every request's parameters at DEBUG, and RunInstances' carry the user-data
# (a group's bootstrap token): the SDK logs at INFO at most, whatever the service's level
for _sdk in ("botocore", "boto3"):
    if logging.getLogger(_sdk).level < logging.INFO:
        logging.getLogger(_sdk).setLevel(logging.INFO)

MAPPING_FILE = "ec2-instances.json"
ORPHAN_PREFIX = "ec2:"  # a node id for an instance of this service no mapping names
LIVE_STATES = ("pending", "running", "shutting-down", "stopping", "stopped")
STATES = {
    "pending": MachineState.STARTING,
    "running": MachineState.RUNNING,
    "shutting-down": MachineState.STOPPED,
    "stopping": MachineState.STOPPED,
    "stopped": MachineState.STOPPED,
    "terminated": MachineState.STOPPED,  # by EC2: corral forgets those it terminates
}
TERMINATE_LIMIT = 1000  # instance ids per TerminateInstances, EC2's own limit
# what RunInstances is tried again for; a lack of capacity or a limit is for the service
RETRIED = frozenset(
    {"RequestLimitExceeded", "Throttling", "InternalError", "Unavailable", "ServiceUnavailable"}
)
BACKOFF_BASE, BACKOFF_CAP = 0.25, 20.0  # seconds
_INSTANCE_ID = re.compile(r"\bi-[0-9a-f]+\b")


@dataclass
class _Launched:
    """What the mapping keeps of one node's instance."""

    node_id: str
    instance_id: str
    cluster_id: str
    host: str
    launch: str  # the launch id of the RunInstances call that made it
    index: int  # its AMI launch index in that call


class Ec2Backend(Backend):
    """Instances in one EC2 region, for one pool."""

    name = "ec2"
    capabilities = frozenset(
        {
            Capability.RUNS_AGENT,
            Capability.PLACES_ITSELF,
            Capability.LAUNCHES_GROUPS,
            Capability.LIMITS_RESOURCES,
            Capability.ANY_IMAGE,
        }
    )

    def __init__(self, options: Ec2Options, data_dir: Path) -> None:
        self.options = options
        self.observe_every = options.observe_every
        # standard mode retries throttling (RequestLimitExceeded) and 5xx answers with
        # exponential backoff and jitter
        session = boto3.session.Session()
        attempts = {"mode": "standard", "total_max_attempts": options.max_attempts}
        retried = Config(retries=attempts)
        self._ec2 = session.client(
            "ec2", region_name=options.region, endpoint_url=options.endpoint_url, config=retried
        )
        # but EC2 answers a lack of capacity with a 500 too, which standard mode would
        # retry for half a minute while the service could overflow to its next pool:
        # RunInstances goes through a client of its own, retried by _run_instances
        once = Config(retries={"mode": "standard", "total_max_attempts": 1})
        self._ec2_once = session.client(
            "ec2", region_name=options.region, endpoint_url=options.endpoint_url, config=once
        )
        data_dir.mkdir(parents=True, exist_ok=True)
        self._mapping_file = data_dir / MAPPING_FILE
        self._lock = threading.Lock()
        self._launched = self._load()
        self._in_flight: set[str] = set()  # launch ids whose instances are not mapped yet
        self._listing: dict[str, tuple[Machine, float]] = {}  # node id -> (machine, when)
        self._groups: dict[str, str] = {}  # cluster id -> security group id
        self._groups_lock = threading.Lock()
        self._types: list[dict] | None = None  # DescribeInstanceTypes, fetched once
        self._types_lock = threading.Lock()

    @classmethod
    def from_options(cls, options: dict[str, str], data_dir: Path) -> Ec2Backend:
        """Options as docs/configuration.md lists them ("ec2"); raises ValueError naming
        an option that is missing, unknown or malformed."""
        return cls(Ec2Options.parse(options, data_dir), data_dir)

    # -- the interface -------------------------------------------------------------------

    def boot(self, spec: NodeSpec, placement: Placement) -> Machine:
        (result,) = self.boot_group([spec], placement, 1)
        if isinstance(result, BackendError):
            raise result
        return result

    def boot_group(
        self, specs: Sequence[NodeSpec], placement: Placement, min_count: int
    ) -> list[Machine | BackendError]:
        if not specs:
            return []
        first = specs[0]
        ami = self._ami(first)
        instance_type = self.instance_type_for(first)
        # nodes whose instances live already (a boot again after a restart) keep them
        kept: dict[str, Machine | BackendError] = {}
        for spec in specs:
            with self._lock:
                known = spec.node_id in self._launched
            if known and (machine := self.describe(spec.node_id)) is not None:
                kept[spec.node_id] = machine
        if not kept:
            floor = max(1, min(min_count, len(specs)))
            kept.update(self._launch(specs, placement, floor, ami, instance_type))
        for spec in specs:
            # launched now, the others' instances would count their launch indexes from
            # 0 and find other nodes' entries in the group's bootstrap document
            kept.setdefault(
                spec.node_id,
                BackendError(
                    f"{spec.name}: part of its group runs already; boot it with a group "
                    "bootstrap document of its own",
                    node=spec.name,
                ),
            )
        return [kept[spec.node_id] for spec in specs]

    def terminate(self, node_id: str) -> None:
        self.terminate_many([node_id])

    def terminate_many(self, node_ids: Sequence[str]) -> None:
        with self._lock:
            instances = {n: _instance_of(n, self._launched.get(n)) for n in node_ids}
        instances = {n: i for n, i in instances.items() if i is not None}
        ids = list(instances.values())
        for start in range(0, len(ids), TERMINATE_LIMIT):
            self._terminate_instances(ids[start : start + TERMINATE_LIMIT])
        with self._lock:
            for node_id in instances:
                self._listing.pop(node_id, None)
        if instances:
            log.info("ec2: terminated %s", ", ".join(f"{n} ({i})" for n, i in instances.items()))

    def describe(self, node_id: str) -> Machine | None:
        with self._lock:
            listed = self._listing.get(node_id)
            record = self._launched.get(node_id)
        if listed is not None and time.monotonic() - listed[1] < self.observe_every:
            return listed[0]
        instance_id = _instance_of(node_id, record)
        if instance_id is None:
            return None
        try:
            reply = self._ec2.describe_instances(InstanceIds=[instance_id])
        except ClientError as exc:
            if _code(exc) in ("InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"):
                return None
            raise _backend_error(exc) from exc
        except BotoCoreError as exc:
            raise _backend_error(exc) from exc
        found = [i for r in reply["Reservations"] for i in r["Instances"]]
        if not found or found[0]["State"]["Name"] not in STATES:
            return None
        machine = self._machine(found[0], record)
        with self._lock:
            self._listing[node_id] = (machine, time.monotonic())
        return machine

    def list_machines(self) -> list[Machine]:
        # terminated instances too: one the mapping still names was ended by EC2, not by
        # corral (a spot interruption, a power-off at the lease's end), and its node is
        # lost with EC2's reason until corral terminates it in turn
        filters = [
            {"Name": "tag:corral:service", "Values": [self.options.service_tag]},
            {"Name": "instance-state-name", "Values": [*LIVE_STATES, "terminated"]},
        ]
        found = self._instances(filters)
        # read after the listing: a launch maps its instances before it stops being in
        # flight, so an instance is either mapped, or of a launch still in flight (not
        # yet any node's: skipped, not an orphan), or truly no node's
        with self._lock:
            by_instance = {r.instance_id: r for r in self._launched.values()}
            in_flight = set(self._in_flight)
        machines = [
            self._machine(i, by_instance.get(i["InstanceId"]))
            for i in found
            if (i["InstanceId"] in by_instance or i["State"]["Name"] != "terminated")
            and (i["InstanceId"] in by_instance or _launch_of(i) not in in_flight)
        ]
        now = time.monotonic()
        with self._lock:
            self._listing = {m.node_id: (m, now) for m in machines}
        return machines

    def clean_up(self, cluster_id: str) -> list[str]:
        live = self._cluster_instances(cluster_id)
        lines = [
            f"instance {i['InstanceId']} of cluster {cluster_id} is {i['State']['Name']}"
            for i in live
        ]
        for group_id in self._cluster_groups(cluster_id):
            if live:
                lines.append(f"security group {group_id} of cluster {cluster_id} waits for them")
                continue
            try:
                self._ec2.delete_security_group(GroupId=group_id)
                log.info("ec2: deleted security group %s of cluster %s", group_id, cluster_id)
            except ClientError as exc:
                if _code(exc) == "InvalidGroup.NotFound":
                    continue
                if _code(exc) != "DependencyViolation":
                    raise _backend_error(exc) from exc
                lines.append(
                    f"security group {group_id} of cluster {cluster_id}: EC2 still reports "
                    f"a dependency ({_message(exc)})"
                )
            except BotoCoreError as exc:
                raise _backend_error(exc) from exc
        if not lines:
            with self._groups_lock:
                self._groups.pop(cluster_id, None)
        return lines

    def hourly_price(self, spec: NodeSpec) -> float | None:
        if not self.options.prices and not self.options.spot_prices:
            return None
        try:
            instance_type = self.instance_type_for(spec)
        except BackendError:
            return None
        return self.options.hourly_price(instance_type, spec.market, spec.max_price)

    def default_capacity(self) -> tuple[int, int] | None:
        return self.options.max_cores, self.options.max_memory_mib

    # -- what the service and the tests ask besides ----------------------------------------

    def missing_image(self, image: str) -> str | None:
        if self.ami_for(image) is None:
            return f"has no AMI for image {image} (set its option ami.{image}=ami-...)"
        return None

    def ami_for(self, image: str) -> str | None:
        """The AMI this pool boots for `image`, or None where its options name none."""
        return self.options.amis.get(image)

    def instance_type_for(self, spec: NodeSpec) -> str:
        """The instance type a node of this size gets: the pool's `type.<cores>x<MiB>`
        entry, else the smallest offered type that fits (fewer vCPUs, then less memory,
        then a lower price where the price table knows it). Raises BackendError when no
        type fits."""
        explicit = self.options.type_table.get((spec.cores, spec.memory_mib))
        if explicit:
            return explicit
        fitting = [
            t
            for t in self._offered_types()
            if t["VCpuInfo"]["DefaultVCpus"] >= spec.cores
            and t["MemoryInfo"]["SizeInMiB"] >= spec.memory_mib
        ]
        if not fitting:
            raise BackendError(
                f"{spec.name}: no {self.options.architecture} instance type offered in "
                f"{self.options.region} has {spec.cores} vCPUs and {spec.memory_mib} MiB "
                f"(option type.{spec.cores}x{spec.memory_mib} names one)",
                node=spec.name,
            )

        def smallest(offered: dict) -> tuple:
            price = self.options.prices.get(offered["InstanceType"], float("inf"))
            size = (offered["VCpuInfo"]["DefaultVCpus"], offered["MemoryInfo"]["SizeInMiB"])
            return (*size, price, offered["InstanceType"])

        return min(fitting, key=smallest)["InstanceType"]

    def tagged_with(self, cluster_id: str) -> list[str]:
        """Ids of what EC2 still holds of a cluster: its instances not terminated, and
        its security groups."""
        instances = [i["InstanceId"] for i in self._cluster_instances(cluster_id)]
        return instances + self._cluster_groups(cluster_id)

    # -- launching -------------------------------------------------------------------------

    def _launch(
        self,
        specs: Sequence[NodeSpec],
        placement: Placement,
        min_count: int,
        ami: str,
        instance_type: str,
    ) -> dict[str, Machine | BackendError]:
        first = specs[0]
        group = first.name.rpartition("-")[0] or first.name
        launch = uuid.uuid4().hex
        tags = [
            {"Key": "corral:service", "Value": self.options.service_tag},
            {"Key": "corral:cluster", "Value": first.cluster_id},
            {"Key": "corral:group", "Value": group},
            {"Key": "corral:launch", "Value": launch},
            {"Key": "Name", "Value": f"{first.cluster_id}/{group}"},
        ]
        request = {
            "ImageId": ami,
            "InstanceType": instance_type,
            "MinCount": min_count,
            "MaxCount": len(specs),
            "UserData": launcher_script(first.user_data).decode(),
            "InstanceInitiatedShutdownBehavior": "terminate",
            "SecurityGroupIds": [self._security_group(first.cluster_id)],
            "ClientToken": launch,
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": tags},
                {"ResourceType": "volume", "Tags": tags},
            ],
        }
        if self.options.subnet:
            request["SubnetId"] = self.options.subnet
        if first.market == "spot":
            spot = {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}
            if first.max_price is not None:
                spot["MaxPrice"] = f"{first.max_price:g}"
            request["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": spot}
        log.info(
            "ec2: launching %d to %d %s %s instances of %s for cluster %s (launch %s)",
            min_count,
            len(specs),
            first.market,
            instance_type,
            ami,
            first.cluster_id,
            launch,
        )
        with self._lock:
            self._in_flight.add(launch)
        try:
            reply = self._run_instances(request)
            by_index = {i["AmiLaunchIndex"]: i for i in reply["Instances"]}
            host = placement.host or self.options.region
            records = {
                spec.node_id: _Launched(
                    spec.node_id, by_index[i]["InstanceId"], spec.cluster_id, host, launch, i
                )
                for i, spec in enumerate(specs)
                if i in by_index
            }
            with self._lock:
                self._launched.update(records)
                self._save()  # before returning: a service that restarts maps them again
        finally:
            with self._lock:
                self._in_flight.discard(launch)
        results: dict[str, Machine | BackendError] = {}
        now = time.monotonic()
        for index, spec in enumerate(specs):
            if index not in by_index:
                results[spec.node_id] = BackendError(
                    f"{spec.name}: EC2 launched {len(by_index)} of the {len(specs)} "
                    f"instances asked for its group (launch {launch})",
                    node=spec.name,
                )
                continue
            machine = self._machine(by_index[index], records[spec.node_id])
            results[spec.node_id] = machine
            with self._lock:
                self._listing[spec.node_id] = (machine, now)
        return results

    def _run_instances(self, request: dict) -> dict:
        """RunInstances, retried with backoff and full jitter while EC2 is throttling or
        unavailable, but not when it lacks capacity or refuses; the request's ClientToken
        makes a retry of a launch that did happen return that launch."""
        for attempt in range(1, self.options.max_attempts + 1):
            try:
                return self._ec2_once.run_instances(**request)
            except ClientError as exc:
                if _code(exc) not in RETRIED or attempt == self.options.max_attempts:
                    raise _backend_error(exc) from exc
            except BotoCoreError as exc:
                if attempt == self.options.max_attempts:
                    raise _backend_error(exc) from exc
            time.sleep(random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt)))
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _ami(self, spec: NodeSpec) -> str:
        ami = self.ami_for(spec.image.name)
        if ami is None:
            raise BackendError(
                f"{spec.name}: image {spec.image.name} has no AMI in this pool "
                f"(set option ami.{spec.image.name}=ami-...)",
                node=spec.name,
                image=spec.image.name,
            )
        return ami

    def _offered_types(self) -> list[dict]:
        with self._types_lock:
            if self._types is None:
                arguments = (
                    {"InstanceTypes": list(self.options.types)} if self.options.types else {}
                )
                offered = []
                with _translated():
                    pages = self._ec2.get_paginator("describe_instance_types").paginate(**arguments)
                    for page in pages:
                        offered.extend(page["InstanceTypes"])
                arch = self.options.architecture
                self._types = [
                    t
                    for t in offered
                    if arch in t.get("ProcessorInfo", {}).get("SupportedArchitectures", [arch])
                    and (not self.options.types or t["InstanceType"] in self.options.types)
                ]
            return self._types

    # -- security groups -------------------------------------------------------------------

    def _security_group(self, cluster_id: str) -> str:
        """The cluster's security group, made on its first launch (once per cluster,
        found again by its tags after a restart)."""
        with self._groups_lock:
            if cluster_id in self._groups:
                return self._groups[cluster_id]
            found = self._describe_groups(self._cluster_filters(cluster_id))
            group = found[0] if found else self._create_group(cluster_id)
            if not group.get("IpPermissions"):  # made, but a crash came before its rules
                self._authorize(group["GroupId"])
            self._groups[cluster_id] = group["GroupId"]
            return group["GroupId"]

    def _create_group(self, cluster_id: str) -> dict:
        name = f"corral-{self.options.service_tag}-{cluster_id}"
        tags = [
            {"Key": "corral:service", "Value": self.options.service_tag},
            {"Key": "corral:cluster", "Value": cluster_id},
            {"Key": "Name", "Value": name},
        ]
        request = {
            "GroupName": name,
            "Description": f"corral cluster {cluster_id}: its nodes, and SSH from ssh_from",
            "TagSpecifications": [{"ResourceType": "security-group", "Tags": tags}],
        }
        if self.options.vpc:
            request["VpcId"] = self.options.vpc
        try:
            group_id = self._ec2.create_security_group(**request)["GroupId"]
        except ClientError as exc:
            if _code(exc) != "InvalidGroup.Duplicate":
                raise _backend_error(exc) from exc
            return self._describe_groups([{"Name": "group-name", "Values": [name]}])[0]
        except BotoCoreError as exc:
            raise _backend_error(exc) from exc
        log.info("ec2: created security group %s (%s) for cluster %s", name, group_id, cluster_id)
        return {"GroupId": group_id, "IpPermissions": []}

    def _authorize(self, group_id: str) -> None:
        rules = [{"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": group_id}]}]
        if self.options.ssh_from:
            ranges = [{"CidrIp": cidr, "Description": "ssh_from"} for cidr in self.options.ssh_from]
            rules.append({"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": ranges})
        try:
            self._ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=rules)
        except ClientError as exc:
            if _code(exc) != "InvalidPermission.Duplicate":
                raise _backend_error(exc) from exc
        except BotoCoreError as exc:
            raise _backend_error(exc) from exc

    def _describe_groups(self, filters: list[dict]) -> list[dict]:
        groups = []
        with _translated():
            for page in self._ec2.get_paginator("describe_security_groups").paginate(
                Filters=filters
            ):
                groups.extend(page["SecurityGroups"])
        return groups

    def _cluster_groups(self, cluster_id: str) -> list[str]:
        return [g["GroupId"] for g in self._describe_groups(self._cluster_filters(cluster_id))]

    # -- instances -------------------------------------------------------------------------

    def _cluster_filters(self, cluster_id: str) -> list[dict]:
        return [
            {"Name": "tag:corral:service", "Values": [self.options.service_tag]},
            {"Name": "tag:corral:cluster", "Values": [cluster_id]},
        ]

    def _cluster_instances(self, cluster_id: str) -> list[dict]:
        live = {"Name": "instance-state-name", "Values": list(LIVE_STATES)}
        return self._instances([*self._cluster_filters(cluster_id), live])

    def _instances(self, filters: list[dict]) -> list[dict]:
        """Instances that match `filters`, through one paginated DescribeInstances."""
        paging = {"PageSize": self.options.page_size}
        found: list[dict] = []
        with _translated():
            pages = self._ec2.get_paginator("describe_instances").paginate(
                Filters=filters, PaginationConfig=paging
            )
            for page in pages:
                found.extend(i for r in page["Reservations"] for i in r["Instances"])
        return found

    def _machine(self, instance: dict, record: _Launched | None) -> Machine:
        """The instance as a Machine: its node's, as `record` maps it, else an orphan."""
        instance_id = instance["InstanceId"]
        state_name = instance["State"]["Name"]
        state = STATES.get(state_name, MachineState.ERROR)
        detail = ""
        if state is MachineState.STOPPED or state is MachineState.ERROR:
            reason = instance.get("StateReason", {}).get("Message", "") or "no reason given"
            detail = f"the instance is {state_name}: {reason}"
        return Machine(
            node_id=record.node_id if record else ORPHAN_PREFIX + instance_id,
            state=state,
            host=record.host if record else self.options.region,
            address=instance.get("PrivateIpAddress", ""),
            detail=detail,
            machine_id=instance_id,
        )

    def _terminate_instances(self, instance_ids: list[str]) -> None:
        """One TerminateInstances for a batch; instances already gone are skipped."""
        remaining = [i for i in dict.fromkeys(instance_ids) if _INSTANCE_ID.fullmatch(i)]
        while remaining:
            try:
                self._ec2.terminate_instances(InstanceIds=remaining)
                break
            except ClientError as exc:
                if _code(exc) != "InvalidInstanceID.NotFound":
                    raise _backend_error(exc) from exc
                gone = set(_INSTANCE_ID.findall(_message(exc)))
                if not gone & set(remaining):
                    break  # EC2 named none of them: take them all as gone
                remaining = [i for i in remaining if i not in gone]
            except BotoCoreError as exc:
                raise _backend_error(exc) from exc
        ended = set(instance_ids)
        with self._lock:
            for node_id in [n for n, r in self._launched.items() if r.instance_id in ended]:
                del self._launched[node_id]
            self._save()

    # -- the mapping -----------------------------------------------------------------------

    def _load(self) -> dict[str, _Launched]:
        if not self._mapping_file.exists():
            return {}
        records = [_Launched(**fields) for fields in json.loads(self._mapping_file.read_text())]
        return {r.node_id: r for r in records}

    def _save(self) -> None:
        """Write the mapping whole, owner-only, and rename it into place."""
        tmp = self._mapping_file.with_name(self._mapping_file.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump([asdict(r) for r in self._launched.values()], out)
        os.replace(tmp, self._mapping_file)


def _instance_of(node_id: str, record: _Launched | None) -> str | None:
    """The instance a node id names: its mapped one, or the one in an orphan's id."""
    if record is not None:
        return record.instance_id
    if node_id.startswith(ORPHAN_PREFIX):
        return node_id.removeprefix(ORPHAN_PREFIX)
    return None


def _launch_of(instance: dict) -> str:
    tags = instance.get("Tags") or []
    return next((t["Value"] for t in tags if t["Key"] == "corral:launch"), "")


def _code(exc: ClientError) -> str:
    return exc.response.get("Error", {}).get("Code", "")


def _message(exc: ClientError) -> str:
    return exc.response.get("Error", {}).get("Message", "")


def _backend_error(exc: Exception) -> BackendError:
    """EC2's own words: `<error code>: <message>`."""
    if isinstance(exc, ClientError):
        return BackendError(f"{_code(exc)}: {_message(exc)}", code=_code(exc))
    return BackendError(f"EC2 unreachable: {exc}")


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except (ClientError, BotoCoreError) as exc:
        raise _backend_error(exc) from exc
