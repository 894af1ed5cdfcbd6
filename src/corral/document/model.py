"""The typed cluster document: what a user asks for, checked and normalised.

A document is built from plain data (what YAML or a converted Nimbus cluster.xml gives)
by `check_document` / `validate_document`, which turn every pydantic error and every
cross check (roles provided, `wait: ready` cycles, images) into a `Problem` naming the
field and, given a locator, the line. Constructing the models directly runs the same
checks and raises pydantic's ValidationError instead.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from corral import limits, names
from corral.errors import DocumentError, Problem
from corral.units import (
    format_duration,
    format_size_mib,
    parse_duration,
    parse_size_mib,
    shown,
)

from .problems import Loc, describe_error, format_loc, sort_problems

# Maps a location in the input (and whether the key rather than the value is meant)
# to a 1-based line, or None when the source has no lines.
LineOf = Callable[[Loc, bool], int | None]

# Set in the validation context by check_document, which runs the cross checks itself
# so that each one becomes its own Problem with a line.
_DEFER_CHECKS = "corral.defer_checks"


def _duration(value: object) -> timedelta:
    if isinstance(value, timedelta):
        delta = value
    elif isinstance(value, str | int | float):
        delta = parse_duration(value)
    else:
        raise ValueError(f"not a duration: {shown(value)} (use forms like 90s, 30m, 12h, 2d)")
    seconds = round(delta.total_seconds())
    if seconds < 1:
        raise ValueError(f"duration too short: {shown(value)} (at least 1s)")
    return timedelta(seconds=seconds)


def _size_mib(value: object) -> int:
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise ValueError(f"not a size: {shown(value)} (use a number with a unit, like 1GiB)")
    return parse_size_mib(value)


def _data_items(value: object) -> object:
    if isinstance(value, dict) and len(value) > limits.MAX_DATA_ITEMS:
        raise ValueError(f"{len(value)} items, more than the limit of {limits.MAX_DATA_ITEMS}")
    return value


def _data_size(value: dict[str, str]) -> int:
    """The bytes of a data mapping's names and values, as UTF-8."""
    return sum(len(k.encode()) + len(v.encode()) for k, v in value.items())


def _data_bytes(value: dict[str, str]) -> dict[str, str]:
    size = _data_size(value)
    if size > limits.MAX_DATA_BYTES:
        raise ValueError(
            f"{size} bytes of names and values, more than the limit of {limits.MAX_DATA_BYTES}"
        )
    return value


Duration = Annotated[timedelta, BeforeValidator(_duration)]
Role = names.ROLE.type
Count = Annotated[int, Strict(), Field(ge=1, le=limits.MAX_GROUP_COUNT)]
# a group's count: none at all only for the group `autoscale` grows from nothing
GroupCount = Annotated[int, Strict(), Field(ge=0, le=limits.MAX_GROUP_COUNT)]
# data reaches nodes' views: bounded in items before its names are checked, in bytes after
# (and the document's and every group's together, in bytes, by the cross checks)
Data = Annotated[
    dict[names.DATA_KEY.type, str], BeforeValidator(_data_items), AfterValidator(_data_bytes)
]


class Requirement(BaseModel):
    """A role a group needs, and how long its nodes wait for the providers.

    `wait: registered` lets the node configure once providers have registered (their
    names, addresses and keys are known); `wait: ready` waits until they are ready.
    In YAML a plain string means `{role: NAME, wait: registered}`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Role
    wait: Literal["registered", "ready"] = "registered"

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: object) -> object:
        if isinstance(value, str):
            return {"role": value}
        if isinstance(value, dict | Requirement):
            return value
        raise ValueError(
            "expected a role name or a mapping like {role: NAME, wait: ready}, "
            f"got {shown(value)}"
        )

    def to_data(self) -> str | dict[str, str]:
        """The shortest document form: the bare role name unless it waits for `ready`."""
        return self.role if self.wait == "registered" else {"role": self.role, "wait": self.wait}


# accounts of the image and its packages; a user of the same name would take them over
# fmt: off
SYSTEM_ACCOUNTS = frozenset({
    "root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news", "uucp",
    "proxy", "www-data", "backup", "list", "irc", "gnats", "nobody", "_apt", "messagebus",
    "systemd-network", "systemd-resolve", "systemd-timesync", "sshd", "munge", "slurm",
})
# fmt: on
FIRST_UID = 2000  # users' UIDs (and their groups' GIDs), in document order


def _ssh_public_key(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"not an SSH public key: {shown(value)}")
    if len(value) > limits.MAX_SSH_KEY_CHARS:
        raise ValueError(
            f"{len(value)} characters, more than the limit of {limits.MAX_SSH_KEY_CHARS}"
        )
    line = value.strip()
    if "\n" in line or "\r" in line:
        raise ValueError("an SSH public key is one line")
    # imported here: only documents with keys need it, and every CLI command reads this
    # module (9 ms of `corral status`)
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    try:
        serialization.load_ssh_public_key(line.encode())
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValueError(
            f"not an SSH public key ({exc}); expected a line like 'ssh-ed25519 AAAA... comment'"
        ) from None
    return line


def _unprivileged(name: str) -> str:
    if name in SYSTEM_ACCOUNTS:
        raise ValueError(f"{name!r} is an account of the image itself; choose another name")
    return name


class User(BaseModel):
    """An account on every node: the same UID, GID and home on each, and these keys in
    its authorized_keys (the cluster's owner logs in to it with the cluster's SSH user
    certificate too)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[names.ACCOUNT.type, AfterValidator(_unprivileged)]
    ssh_keys: Annotated[
        list[Annotated[str, BeforeValidator(_ssh_public_key)]],
        Field(max_length=limits.MAX_USER_KEYS),
    ] = []

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name}
        if self.ssh_keys:
            data["ssh_keys"] = list(self.ssh_keys)
        return data


@dataclass(frozen=True)
class Account:
    """A user as the nodes create it."""

    name: str
    uid: int
    ssh_keys: tuple[str, ...] = ()

    @property
    def gid(self) -> int:  # each user has a group of its own, of the same number
        return self.uid


class Policy(BaseModel):
    """When a cluster counts as ready, and how long each phase may take."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["all-or-nothing", "best-effort"] = "all-or-nothing"
    boot_timeout: Duration = timedelta(minutes=5)
    context_timeout: Duration = timedelta(minutes=10)
    # how long a node being removed may take to let its work end (its roles' drain hooks)
    drain_timeout: Duration = timedelta(minutes=10)

    def to_data(self) -> dict[str, str]:
        data = {
            "mode": self.mode,
            "boot_timeout": format_duration(self.boot_timeout),
            "context_timeout": format_duration(self.context_timeout),
        }
        if self.drain_timeout != Policy.model_fields["drain_timeout"].default:
            data["drain_timeout"] = format_duration(self.drain_timeout)
        return data


class Network(BaseModel):
    """What a cluster's nodes may reach beyond each other and the service.

    `outbound: true` gives them NAT to the service machine's networks and its DNS
    resolvers, where the pool's site allows it; by default they have neither.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    outbound: bool = False

    def to_data(self) -> dict[str, bool]:
        return {"outbound": self.outbound}


class NodeGroup(BaseModel):
    """Nodes sharing one definition; they are named `<group>-<index>`.

    `memory_mib` is written `memory` in documents, as a size (`1GiB`); a key
    `memory_mib` (a number of MiB) is accepted too, for callers building groups in code.
    `data` reaches this group's nodes only, on top of the document's `data` (a name
    given in both is the group's for them).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    group: names.GROUP.type
    count: GroupCount = 1
    min: Count | None = None
    image: names.IMAGE.type | None = None
    cores: Annotated[int, Strict(), Field(ge=1, le=limits.MAX_CORES)] = 1
    memory_mib: Annotated[int, BeforeValidator(_size_mib)] = Field(1024, alias="memory")
    login: bool = False
    replace: bool = False  # a node lost once the cluster was ready gets a successor
    # on a cloud that sells spare capacity ("spot"), cheaper nodes it may take back;
    # elsewhere every node runs on demand
    market: Literal["on-demand", "spot"] = "on-demand"
    # the most a spot node may cost per hour, in the pool's currency; None: on-demand's
    max_price: Annotated[float, Field(gt=0, le=limits.MAX_HOURLY_PRICE)] | None = None
    provides: list[Role] = []
    requires: list[Requirement] = []
    data: Data = {}

    @model_validator(mode="before")
    @classmethod
    def _memory_in_mib(cls, value: object) -> object:
        if isinstance(value, dict) and "memory_mib" in value and "memory" not in value:
            value = dict(value)
            mib = value.pop("memory_mib")
            value["memory"] = f"{mib}MiB" if isinstance(mib, int) else mib
        return value

    @property
    def min_ready(self) -> int:
        """How many nodes must be ready for the group to count (best-effort mode)."""
        return self.min if self.min is not None else self.count

    def node_names(self) -> list[str]:
        """The names of the group's nodes: `worker-0`, `worker-1`, ..."""
        return [f"{self.group}-{i}" for i in range(self.count)]

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"group": self.group, "count": self.count}
        if self.min is not None:
            data["min"] = self.min
        if self.image is not None:
            data["image"] = self.image
        data.update(
            cores=self.cores,
            memory=format_size_mib(self.memory_mib),
            login=self.login,
            provides=list(self.provides),
            requires=[r.to_data() for r in self.requires],
        )
        if self.data:
            data["data"] = dict(self.data)
        if self.replace:
            data["replace"] = True
        if self.market != "on-demand":
            data["market"] = self.market
        if self.max_price is not None:
            data["max_price"] = self.max_price
        return data


class Autoscale(BaseModel):
    """A group that grows with the scheduler's queue and shrinks when idle: the cluster's
    scheduler asks for nodes (by name: `<group>-0` ... `<group>-<max-1>`) when jobs wait,
    and gives back nodes idle for `idle`, keeping between `min` and `max`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    group: names.GROUP.type
    min: GroupCount = 0
    max: Count
    idle: Duration = timedelta(minutes=10)

    def node_names(self) -> list[str]:
        """Every name a node of the group may have: the scheduler knows them all."""
        return [f"{self.group}-{i}" for i in range(self.max)]

    def to_data(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "min": self.min,
            "max": self.max,
            "idle": format_duration(self.idle),
        }


class ClusterDocument(BaseModel):
    """A whole cluster request; every group's `image` is resolved after validation.

    Building one directly raises pydantic's ValidationError when a cross check fails;
    use `validate_document` to get a DocumentError with one Problem per fault.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: names.CLUSTER.type | None = None
    lease: Duration | None = None
    image: names.IMAGE.type | None = None
    pool: names.ACCOUNT.type | None = None
    # where it may run, in order: a cluster that does not fit in one goes to the next
    pools: (
        Annotated[list[names.ACCOUNT.type], Field(min_length=1, max_length=limits.MAX_POOLS)] | None
    ) = None
    policy: Policy = Policy()
    network: Network = Network()
    data: Data = {}
    users: Annotated[list[User], Field(max_length=limits.MAX_USERS)] = []
    nodes: list[NodeGroup] = Field(min_length=1)
    autoscale: Autoscale | None = None

    @model_validator(mode="after")
    def _resolve_and_check(self, info: ValidationInfo) -> ClusterDocument:
        if self.image is not None:
            resolved = [
                g if g.image else g.model_copy(update={"image": self.image}) for g in self.nodes
            ]
            object.__setattr__(self, "nodes", resolved)  # frozen; this is still construction
        if not (info.context or {}).get(_DEFER_CHECKS):
            problems = [f"{format_loc(loc)}: {message}" for loc, message in self.cross_check()]
            if problems:
                raise ValueError("; ".join(problems))
        return self

    @property
    def pool_order(self) -> list[str]:
        """The pools it asks for, in order (`pools`, or the one `pool`); empty: any."""
        return list(self.pools or ([self.pool] if self.pool else []))

    @property
    def total_nodes(self) -> int:
        return sum(g.count for g in self.nodes)

    def with_owner_account(self, owner: str) -> ClusterDocument:
        """The document as it is launched: with no `users`, an account for its owner
        (none when the owner's name is an account of the image, like root).

        The service stores the launched form, so a cluster launched before corral made
        accounts (its stored document has none) is still known to have none.
        """
        if self.users or owner in SYSTEM_ACCOUNTS:
            return self
        return self.model_copy(update={"users": [User(name=owner)]})

    def with_count(self, group: str, count: int) -> ClusterDocument:
        """The document with group `group` of `count` nodes (a resize)."""
        nodes = [
            g.model_copy(update={"count": count}) if g.group == group else g for g in self.nodes
        ]
        return self.model_copy(update={"nodes": nodes})

    def accounts(self) -> list[Account]:
        """The accounts every node has, with their UIDs (see `with_owner_account`)."""
        return [Account(u.name, FIRST_UID + i, tuple(u.ssh_keys)) for i, u in enumerate(self.users)]

    def cross_check(self) -> Iterator[tuple[Loc, str]]:
        """Yield (location, message) for faults no single field shows on its own."""
        yield from _check_groups(self.nodes)
        yield from _check_users(self.users)
        yield from _check_data_bytes(self.data, self.nodes)
        yield from _check_roles(self.nodes)
        yield from _check_ready_cycles(self.nodes)
        yield from _check_autoscale(self.autoscale, self.nodes)
        yield from _check_markets(self.nodes)
        if self.pool is not None and self.pools is not None:
            yield ("pools",), "give `pool` or `pools`, not both"
        for index in _repeats(list(self.pools or ())):
            yield ("pools", index), f"pool {self.pools[index]} is listed twice"

    def elastic_roles(self) -> frozenset[str]:
        """Roles only the autoscaled group provides: met with no provider at all (the
        group may have no node until jobs wait)."""
        if self.autoscale is None:
            return frozenset()
        scaled = self.autoscale.group
        others = {r for g in self.nodes if g.group != scaled for r in g.provides}
        group = next((g for g in self.nodes if g.group == scaled), None)
        return frozenset(set(group.provides if group else ()) - others)

    def to_dict(self) -> dict[str, Any]:
        """The canonical document as JSON-safe data (durations and sizes as text).

        Validating it again gives an equal document.
        """
        data: dict[str, Any] = {}
        if self.name is not None:
            data["name"] = self.name
        if self.lease is not None:
            data["lease"] = format_duration(self.lease)
        if self.image is not None:
            data["image"] = self.image
        if self.pool is not None:
            data["pool"] = self.pool
        if self.pools is not None:
            data["pools"] = list(self.pools)
        data["policy"] = self.policy.to_data()
        if self.network != Network():
            data["network"] = self.network.to_data()
        if self.data:
            data["data"] = dict(self.data)
        if self.users:
            data["users"] = [u.to_data() for u in self.users]
        data["nodes"] = [g.to_data() for g in self.nodes]
        if self.autoscale is not None:
            data["autoscale"] = self.autoscale.to_data()
        return data

    def to_json(self) -> str:
        """The canonical document as JSON text, as the store keeps it; `from_json` of it
        gives an equal document."""
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))

    @staticmethod
    def from_json(text: str, source: str = "<document>") -> ClusterDocument:
        """A document from its canonical JSON (`to_json`), validated again; raises
        DocumentError as `validate_document` does."""
        return validate_document(json.loads(text), source)


def _check_groups(groups: list[NodeGroup]) -> Iterator[tuple[Loc, str]]:
    total = sum(g.count for g in groups)
    if total > limits.MAX_CLUSTER_NODES:
        yield (
            ("nodes",),
            f"{total} nodes in all, more than the limit of {limits.MAX_CLUSTER_NODES} "
            "for one cluster",
        )
    repeats = _repeats([g.group for g in groups])
    for i, group in enumerate(groups):
        if i in repeats:
            yield (
                ("nodes", i, "group"),
                f"group {group.group!r} is defined twice (first at nodes[{repeats[i]}])",
            )
        if group.min is not None and group.min > group.count:
            yield ("nodes", i, "min"), f"min ({group.min}) is larger than count ({group.count})"
        if group.image is None:
            yield (
                ("nodes", i, "image"),
                f"group {group.group!r} has no image (set `image` on the group or the document)",
            )


def _check_users(users: list[User]) -> Iterator[tuple[Loc, str]]:
    for i, first in _repeats([u.name for u in users]).items():
        yield (
            ("users", i, "name"),
            f"user {users[i].name!r} is listed twice (first at users[{first}])",
        )


def _repeats(names: list[str]) -> dict[int, int]:
    """For each position whose name came before, the position where it first came."""
    first_index: dict[str, int] = {}
    repeats = {}
    for i, name in enumerate(names):
        if name in first_index:
            repeats[i] = first_index[name]
        else:
            first_index[name] = i
    return repeats


def _check_data_bytes(data: dict[str, str], groups: list[NodeGroup]) -> Iterator[tuple[Loc, str]]:
    """The document's data and every group's, together, within limits.MAX_DATA_BYTES: each
    is bounded alone, but a document of many groups could otherwise carry far more. The
    fault is placed where the running total passes the limit."""
    sizes = [(("data",), _data_size(data))]
    sizes += [(("nodes", i, "data"), _data_size(g.data)) for i, g in enumerate(groups) if g.data]
    total = sum(size for _, size in sizes)
    if total <= limits.MAX_DATA_BYTES:
        return
    running = 0
    for where, size in sizes:
        running += size
        if running > limits.MAX_DATA_BYTES:
            yield (
                where,
                f"{total} bytes of data names and values in the document and its groups, "
                f"more than the limit of {limits.MAX_DATA_BYTES}",
            )
            return


def _check_autoscale(
    autoscale: Autoscale | None, groups: list[NodeGroup]
) -> Iterator[tuple[Loc, str]]:
    for i, group in enumerate(groups):
        if group.count == 0 and (autoscale is None or autoscale.group != group.group):
            yield ("nodes", i, "count"), "must be at least 1 (0 only for the autoscaled group)"
    if autoscale is None:
        return
    found = next((g for g in groups if g.group == autoscale.group), None)
    if found is None:
        known = ", ".join(g.group for g in groups)
        yield ("autoscale", "group"), f"no group {autoscale.group!r} (groups: {known})"
        return
    others = sum(g.count for g in groups if g.group != found.group)
    if others + autoscale.max > limits.MAX_CLUSTER_NODES:
        yield (
            ("autoscale", "max"),
            f"{others} other node(s) and max {autoscale.max} would be more than the limit of "
            f"{limits.MAX_CLUSTER_NODES} nodes for one cluster",
        )
    if autoscale.min > autoscale.max:
        yield ("autoscale", "min"), f"min ({autoscale.min}) is larger than max ({autoscale.max})"
    if not autoscale.min <= found.count <= autoscale.max:
        yield (
            ("autoscale",),
            f"group {found.group!r} starts with count {found.count}, outside autoscale's "
            f"min {autoscale.min} and max {autoscale.max}",
        )
    if found.min is not None:
        yield ("autoscale", "group"), f"group {found.group!r} has a min; autoscale's is its floor"


def _check_markets(groups: list[NodeGroup]) -> Iterator[tuple[Loc, str]]:
    for i, group in enumerate(groups):
        if group.market == "spot" and group.login:
            yield (
                ("nodes", i, "market"),
                "a login group stays on demand (a spot node may be taken back)",
            )
        if group.max_price is not None and group.market != "spot":
            yield ("nodes", i, "max_price"), "max_price is for `market: spot` groups"


def _check_roles(groups: list[NodeGroup]) -> Iterator[tuple[Loc, str]]:
    provided = sorted({role for g in groups for role in g.provides})
    hints = DocumentError.MAX_SHOWN  # suggestions cost time: only for problems shown
    for i, group in enumerate(groups):
        for j, need in enumerate(group.requires):
            if need.role not in provided:
                hint = difflib.get_close_matches(need.role, provided, n=1) if hints > 0 else []
                hints -= 1
                suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
                yield (
                    ("nodes", i, "requires", j),
                    (
                        f"role {need.role!r} is required by group {group.group!r} "
                        f"but no group provides it{suggestion}"
                    ),
                )


def _check_ready_cycles(groups: list[NodeGroup]) -> Iterator[tuple[Loc, str]]:
    """Refuse groups that wait (`wait: ready`) on each other: none could become ready.

    The graph links each group to the roles it waits for and each role to the groups that
    provide it, so it grows with the document, not with groups times providers; a search
    of its strongly connected components finds every group on a cycle in linear time, and
    a shortest cycle is named for the first few.
    """
    graph = _WaitGraph(groups)
    cyclic = graph.groups_on_cycles()
    in_cycle: set[int] = set()
    reported = 0
    for start in range(len(groups)):
        if start not in cyclic or start in in_cycle:
            continue
        if reported == DocumentError.MAX_SHOWN:
            yield ("nodes", start, "requires"), "is on a wait: ready cycle too"
            continue
        cycle = graph.shortest_cycle(start)
        reported += 1
        in_cycle.update(step for step, _ in cycle)
        route = " -> ".join([groups[step].group for step, _ in cycle] + [groups[start].group])
        yield (
            ("nodes", start, "requires", cycle[0][1]),
            f"wait: ready cycle: {route} (these groups would wait for each other forever)",
        )


class _WaitGraph:
    """Groups 0..G-1 and the roles they wait for, G.., as one directed graph."""

    def __init__(self, groups: list[NodeGroup]) -> None:
        roles: dict[str, int] = {}
        for group in groups:
            for need in group.requires:
                if need.wait == "ready":
                    roles.setdefault(need.role, len(groups) + len(roles))
        self.groups = len(groups)
        # edges[v] = [(w, index of the requirement that makes group v wait for role w)]
        self.edges: list[list[tuple[int, int]]] = [[] for _ in range(len(groups) + len(roles))]
        for a, group in enumerate(groups):
            for j, need in enumerate(group.requires):
                if need.wait == "ready":
                    self.edges[a].append((roles[need.role], j))
            for role in group.provides:
                if role in roles:
                    self.edges[roles[role]].append((a, -1))

    def groups_on_cycles(self) -> set[int]:
        """Groups in a strongly connected component of more than one vertex (Tarjan's
        algorithm, iterative: a document's graph may be thousands of vertices deep)."""
        index: dict[int, int] = {}
        low: dict[int, int] = {}
        stack: list[int] = []
        on_stack: set[int] = set()
        found: set[int] = set()
        for root in range(len(self.edges)):
            if root in index:
                continue
            work = [(root, 0)]
            while work:
                v, i = work.pop()
                if i == 0:
                    index[v] = low[v] = len(index)
                    stack.append(v)
                    on_stack.add(v)
                elif i > 0:
                    low[v] = min(low[v], low[self.edges[v][i - 1][0]])
                while i < len(self.edges[v]):
                    w = self.edges[v][i][0]
                    if w not in index:
                        work += [(v, i + 1), (w, 0)]
                        break
                    if w in on_stack:
                        low[v] = min(low[v], index[w])
                    i += 1
                else:
                    if low[v] == index[v]:
                        component = []
                        while True:
                            w = stack.pop()
                            on_stack.discard(w)
                            component.append(w)
                            if w == v:
                                break
                        if len(component) > 1:
                            found.update(w for w in component if w < self.groups)
        return found

    def shortest_cycle(self, start: int) -> list[tuple[int, int]]:
        """Breadth-first search back to group `start`, which is on a cycle; returns
        [(group, index of its requirement that leads on), ...] from `start`."""
        parents: dict[int, tuple[int, int]] = {}
        frontier = [start]
        while frontier:
            following = []
            for v in frontier:
                for w, via in self.edges[v]:
                    if w == start:
                        path, step = [], (v, via)
                        while True:
                            if step[0] < self.groups:  # roles are not part of the route
                                path.insert(0, step)
                            if step[0] == start:
                                return path
                            step = parents[step[0]]
                    if w not in parents:
                        parents[w] = (v, via)
                        following.append(w)
            frontier = following
        raise AssertionError(f"group {start} is on no cycle")


def check_document(
    data: object, line_of: LineOf | None = None
) -> tuple[ClusterDocument | None, list[Problem]]:
    """Validate plain data; return the document (None if invalid) and every problem found.

    Cross checks run only once the structure is valid, so that a typo in one group does
    not also show up as a confusing missing role elsewhere.
    """

    def problem(loc: Loc, message: str, key: bool = False) -> Problem:
        return Problem(format_loc(loc), message, line_of(loc, key) if line_of else None)

    if data is None:
        return None, [problem((), "the document is empty")]
    if not isinstance(data, dict):
        return None, [
            problem(
                (),
                "a cluster document must be a mapping "
                f"(name:, image:, nodes: ...), got {type(data).__name__}",
            )
        ]
    try:
        document = ClusterDocument.model_validate(data, context={_DEFER_CHECKS: True})
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        # a DocumentError shows the first few; the others are only counted, so a hostile
        # document with thousands of faults costs no wording or line lookups for them
        first = DocumentError.MAX_SHOWN
        problems = [problem(*describe_error(e, ClusterDocument)) for e in errors[:first]]
        problems += [Problem(format_loc(e["loc"]), e["msg"]) for e in errors[first:]]
        return None, problems
    return document, [problem(loc, message) for loc, message in document.cross_check()]


def validate_document(
    data: object, source: str = "<document>", line_of: LineOf | None = None
) -> ClusterDocument:
    """Validate plain data into a ClusterDocument.

    Raises DocumentError(source, problems) listing every problem, ordered by line.
    """
    document, problems = check_document(data, line_of)
    if problems or document is None:
        raise DocumentError(source, sort_problems(problems))
    return document
