"""The service's configuration file: its pools, and where clusters go by default.

`corral serve --config FILE` reads it; docs/configuration.md describes it. Example:

    default_pool: local
    overflow: [local, scale]    # a cluster that fits in no pool before goes to the next
    pools:
      - name: local
        backend: nspawn
        address_range: 10.180.0.0/16
      - name: scale
        backend: fake
        options: {boot_delay: "0.5"}
        address_range: 10.181.0.0/16
        hosts: [{name: scale-a, cores: 64, memory: 256GiB}]
        max_nodes: 500
        allow_outbound: false   # its clusters may not ask for network.outbound

Every field is checked before anything is built; a mistake is refused with the field's
path. The file is a site's, but still read within bounds (size, nesting, aliases).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from corral import limits, names
from corral.backends.registry import backend_names
from corral.document.yaml_bounds import BoundedLoader, DocumentTooLarge
from corral.service.config import HostConfig, PoolConfig, ServiceConfig
from corral.units import parse_size_mib

MAX_CONFIG_BYTES = 1 << 20


class _Host(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: names.ACCOUNT.type
    cores: int = Field(ge=1, le=1 << 16)
    memory: str | int

    @field_validator("memory")
    @classmethod
    def _size(cls, value: str | int) -> str | int:
        parse_size_mib(value)  # raises ValueError naming what is wrong
        return value


class _Pool(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: names.ACCOUNT.type
    backend: str
    options: dict[str, str | int | float | bool] = Field(default_factory=dict, max_length=64)
    address_range: str = "10.180.0.0/16"
    subnet_prefix: int = Field(24, ge=8, le=30)
    hosts: list[_Host] = Field(default_factory=list, max_length=10_000)
    max_nodes: int | None = Field(None, ge=0, le=limits.MAX_QUOTA_NODES)
    broker_url: str | None = Field(None, max_length=2048, pattern=r"^https://[^\s]+$")
    allow_outbound: bool = True

    @field_validator("backend")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in backend_names():
            raise ValueError(f"unknown backend {value!r} (known: {', '.join(backend_names())})")
        return value

    @field_validator("address_range")
    @classmethod
    def _range(cls, value: str) -> str:
        network = ipaddress.ip_network(value)  # ValueError names the text
        if network.version != 4:
            raise ValueError("an address range must be IPv4")
        return str(network)

    @model_validator(mode="after")
    def _subnets_fit(self) -> _Pool:
        if self.subnet_prefix < ipaddress.ip_network(self.address_range).prefixlen:
            raise ValueError(
                f"subnet_prefix /{self.subnet_prefix} is larger than address_range "
                f"{self.address_range}"
            )
        return self


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default_pool: names.ACCOUNT.type | None = None
    overflow: list[names.ACCOUNT.type] = Field(default_factory=list, max_length=256)
    pools: list[_Pool] = Field(min_length=1, max_length=256)


def read_config_file(path: Path, config: ServiceConfig) -> None:
    """Set `config`'s pools and default pool from the file at `path`.

    Raises ValueError naming the file and, for a bad field, its path (`pools[1].backend`).
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read it: {exc.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ValueError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        parsed = BoundedLoader(data.decode()).get_single_data()
        checked = _File.model_validate(parsed)
    except (UnicodeDecodeError, DocumentTooLarge, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: not a valid configuration file: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()
        )
        raise ValueError(f"{path}: {problems}") from None
    pools = tuple(_pool_config(p) for p in checked.pools)
    seen = [p.name for p in pools]
    if len(set(seen)) != len(seen):
        raise ValueError(f"{path}: pools: two pools have the same name")
    if checked.default_pool is not None and checked.default_pool not in seen:
        raise ValueError(f"{path}: default_pool: no pool named {checked.default_pool}")
    for index, name in enumerate(checked.overflow):
        if name not in seen:
            raise ValueError(f"{path}: overflow.{index}: no pool named {name}")
        if name in checked.overflow[:index]:
            raise ValueError(f"{path}: overflow.{index}: pool {name} is listed twice")
    config.pools = pools
    config.default_pool = checked.default_pool
    config.overflow = tuple(checked.overflow)


def _pool_config(pool: _Pool) -> PoolConfig:
    return PoolConfig(
        name=pool.name,
        backend=pool.backend,
        options={k: _text(v) for k, v in pool.options.items()},
        address_range=pool.address_range,
        subnet_prefix=pool.subnet_prefix,
        hosts=tuple(HostConfig(h.name, h.cores, parse_size_mib(h.memory)) for h in pool.hosts),
        max_nodes=pool.max_nodes,
        broker_url=pool.broker_url,
        allow_outbound=pool.allow_outbound,
    )


def _text(value: str | int | float | bool) -> str:
    """An option as backends take them (`--backend-option KEY=VALUE` gives text)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
