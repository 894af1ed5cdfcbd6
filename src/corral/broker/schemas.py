"""The broker's payloads (docs/agent-protocol.md is their prose form)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Identity(BaseModel):
    hostname: str = Field(max_length=255)
    addresses: list[str] = Field(default_factory=list, max_length=64)
    ssh_host_keys: list[str] = Field(default_factory=list, max_length=16)


class RegisterBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cluster: str
    node: str
    token: str = Field(repr=False)
    identity: Identity


class Member(BaseModel):
    name: str
    group: str
    address: str | None
    hostname: str | None
    ssh_host_keys: list[str]
    state: str


class HostEntry(BaseModel):
    name: str
    address: str


class FileItem(BaseModel):
    path: str
    mode: str
    content_b64: str = Field(repr=False)


class RequirementView(BaseModel):
    role: str
    wait: str


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
    files: list[FileItem] = Field(repr=False)
    ssh_known_hosts: str


class RegisterReply(BaseModel):
    credential: str
    version: int
    view: ContextView | None = None  # the node's first view; older brokers sent none


class ReportBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    phase: Literal["configure", "join", "leave", "node"]
    role: str = ""
    state: Literal["running", "ok", "failed", "ready"]
    exit_code: int | None = None
    log_tail: str = Field("", max_length=65536)
    version: int = 0
