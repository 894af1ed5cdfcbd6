"""The broker's payloads (docs/agent-protocol.md is their prose form)."""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from corral.limits import MAX_LOG_TAIL_CHARS

INT64 = 2**63 - 1  # what the store can hold

Address = Annotated[str, Field(max_length=64)]
KeyLine = Annotated[str, Field(max_length=16384)]


class Identity(BaseModel):
    """What a node says of itself: recorded and shown to its peers, never certified (its
    certificates name what the service recorded)."""

    hostname: str = Field(max_length=255)
    addresses: list[Address] = Field(default_factory=list, max_length=64)
    ssh_host_keys: list[KeyLine] = Field(default_factory=list, max_length=16)


class RegisterBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cluster: str = Field(max_length=64)
    node: str = Field(max_length=64)
    token: str = Field(repr=False, max_length=128)
    identity: Identity


class Member(BaseModel):
    name: str
    group: str
    address: str | None
    hostname: str | None
    ssh_host_keys: list[str]
    state: str
    cores: int  # what the node was placed with
    memory_mib: int


class AccountView(BaseModel):
    """A user account every node creates alike (the launched document's `users`)."""

    name: str
    uid: int
    gid: int
    ssh_keys: list[str] = []


class HostEntry(BaseModel):
    name: str
    address: str


def host_entry_json(name: str, address: str) -> str:
    """A HostEntry as compact JSON, as pydantic writes it (names and addresses are ASCII),
    without making one."""
    return json.dumps({"name": name, "address": address}, separators=(",", ":"))


class FileItem(BaseModel):
    path: str
    mode: str
    content_b64: str = Field(repr=False)


class RequirementView(BaseModel):
    role: str
    wait: str


class DrainView(BaseModel):
    """Present in the view of a node that is to be removed: its roles' `drain` hooks let
    its work end, each waiting at most `timeout_seconds`."""

    timeout_seconds: int


class AutoscaleView(BaseModel):
    """The cluster's autoscaled group, for its scheduler: its nodes are named
    `<group>-0` to `<group>-<max-1>`; each node's size, and how long a node may idle
    before it is given back."""

    group: str
    provides: list[str]
    min: int
    max: int
    idle_seconds: int
    cores: int
    memory_mib: int


class ContextView(BaseModel):
    version: int
    cluster: str
    node: str
    group: str
    provides: list[str]
    requires: list[RequirementView]
    satisfied: bool
    blocked_on: list[str]
    roles: dict[str, list[Member]]
    members: list[Member]
    hosts: list[HostEntry]
    data: dict[str, str]
    users: list[AccountView] = []
    files: list[FileItem] = Field(repr=False)
    ssh_known_hosts: str
    lease_end: str = Field(description="ISO 8601; the node powers itself off once it passes")
    drain: DrainView | None = None
    autoscale: AutoscaleView | None = None


class RegisterReply(BaseModel):
    credential: str
    version: int
    view: ContextView | None = None  # the node's first view; older brokers sent none


class ScaleBody(BaseModel):
    """The cluster's scheduler asks for nodes of the autoscaled group (`resume`) or gives
    idle ones back (`suspend`), by name."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["resume", "suspend"]
    nodes: list[Annotated[str, Field(max_length=64)]] = Field(min_length=1, max_length=10_000)


class ReportBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # `drain` with no role: the node's whole drain, `ok` (drained) or `failed`;
    # `interruption`: its cloud takes the machine back (a spot notice), said in log_tail
    phase: Literal["configure", "join", "leave", "drain", "node", "interruption"]
    role: str = Field("", max_length=64)
    state: Literal["running", "ok", "failed", "ready"]
    exit_code: int | None = Field(None, ge=-(2**31), le=2**31 - 1)
    log_tail: str = Field("", max_length=MAX_LOG_TAIL_CHARS)
    version: int = Field(0, ge=0, le=INT64)
