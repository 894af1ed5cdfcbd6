"""An ec2 pool's options: its region and endpoint, its AMIs, instance types and prices.

Read from the pool's `options` (`--backend-option KEY=VALUE`) without touching EC2, so a
mistake is refused naming the option before a backend exists. Credentials are not
options: they come from the standard AWS chain (environment, profile, instance role).
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from corral.units import parse_size_mib

# the file in the pool's data directory that keeps a generated service tag
SERVICE_TAG_FILE = "ec2-service-tag"
_SIZE_KEY = re.compile(r"^(\d+)x(\d+)$")  # type.<cores>x<memory MiB>
_KNOWN = (
    "region, endpoint_url, ami.<image>, type.<cores>x<MiB>, types, architecture, subnet, "
    "vpc, ssh_from, price.<type>, spot_price.<type>, max_cores, max_memory, observe_every, "
    "max_attempts, page_size, service_tag"
)


@dataclass(frozen=True)
class Ec2Options:
    """What an ec2 pool is configured with (see docs/configuration.md, "ec2")."""

    region: str
    service_tag: str  # the value of every resource's `corral:service` tag
    endpoint_url: str | None = None
    amis: dict[str, str] = field(default_factory=dict)  # image name -> AMI id
    type_table: dict[tuple[int, int], str] = field(default_factory=dict)  # (cores, MiB) -> type
    types: tuple[str, ...] = ()  # the only instance types to choose from; empty: any
    architecture: str = "x86_64"  # what the AMIs run on, so what a chosen type must run
    subnet: str | None = None
    vpc: str | None = None
    ssh_from: tuple[str, ...] = ()  # CIDRs from which TCP 22 is open
    prices: dict[str, float] = field(default_factory=dict)  # type -> USD per hour
    spot_prices: dict[str, float] = field(default_factory=dict)
    max_cores: int = 1024
    max_memory_mib: int = 4 * 1024 * 1024
    observe_every: float = 5.0
    max_attempts: int = 8
    page_size: int = 1000  # instances per DescribeInstances page

    @classmethod
    def parse(cls, options: dict[str, str], data_dir: Path) -> Ec2Options:
        """Raises ValueError naming the option that is missing, unknown or malformed."""
        left = {key: str(value) for key, value in options.items()}
        region = left.pop("region", "")
        if not region:
            raise ValueError("ec2 backend: option region is required (e.g. region=eu-west-1)")
        amis, type_table, prices, spot_prices = {}, {}, {}, {}
        for key in [k for k in left if "." in k]:
            kind, _, rest = key.partition(".")
            value = left[key]
            if kind == "ami" and rest:
                if not value.startswith("ami-"):
                    raise ValueError(f"ec2 backend: option {key} must be an AMI id (ami-...)")
                amis[rest] = value
            elif kind == "type" and (size := _SIZE_KEY.match(rest)):
                type_table[(int(size[1]), int(size[2]))] = value
            elif kind in ("price", "spot_price") and rest:
                table = prices if kind == "price" else spot_prices
                table[rest] = _number(key, value, float)
            else:
                continue  # left in place, refused below as unknown
            del left[key]
        parsed = cls(
            region=region,
            service_tag=left.pop("service_tag", "") or _kept_service_tag(data_dir),
            endpoint_url=left.pop("endpoint_url", None) or None,
            amis=amis,
            type_table=type_table,
            types=_listed(left.pop("types", "")),
            architecture=left.pop("architecture", "x86_64"),
            subnet=left.pop("subnet", None) or None,
            vpc=left.pop("vpc", None) or None,
            ssh_from=_listed(left.pop("ssh_from", "")),
            prices=prices,
            spot_prices=spot_prices,
            max_cores=_number("max_cores", left.pop("max_cores", "1024"), int),
            max_memory_mib=_memory("max_memory", left.pop("max_memory", "4TiB")),
            observe_every=_number("observe_every", left.pop("observe_every", "5"), float),
            max_attempts=_number("max_attempts", left.pop("max_attempts", "8"), int),
            page_size=_number("page_size", left.pop("page_size", "1000"), int),
        )
        if left:
            raise ValueError(
                f"ec2 backend: unknown option(s) {', '.join(sorted(left))} (known: {_KNOWN})"
            )
        if not 5 <= parsed.page_size <= 1000:
            raise ValueError("ec2 backend: option page_size must be from 5 to 1000")
        if parsed.max_attempts < 1:
            raise ValueError("ec2 backend: option max_attempts must be at least 1")
        return parsed

    def hourly_price(
        self, instance_type: str, market: str, max_price: float | None
    ) -> float | None:
        """USD per hour for one instance of `instance_type` in `market`, from the price
        table; None without an entry for it."""
        on_demand = self.prices.get(instance_type)
        if market != "spot":
            return on_demand
        if instance_type in self.spot_prices:
            return self.spot_prices[instance_type]
        if max_price is not None and on_demand is not None:
            return min(max_price, on_demand)
        return on_demand


def _kept_service_tag(data_dir: Path) -> str:
    """The pool's generated service tag, made once and kept (0600) so that a service
    that starts again finds the instances it launched."""
    path = data_dir / SERVICE_TAG_FILE
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    tag = "corral-" + secrets.token_hex(6)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(tag + "\n")
    os.replace(tmp, path)
    return tag


def _listed(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _number(option: str, text: str, kind: type[int] | type[float]):
    try:
        value = kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ValueError(f"ec2 backend: option {option} must be {what}, not {text!r}") from None
    if value < 0:
        raise ValueError(f"ec2 backend: option {option} must not be negative")
    return value


def _memory(option: str, text: str) -> int:
    try:
        return int(text) if text.isdigit() else parse_size_mib(text)
    except ValueError as exc:
        raise ValueError(f"ec2 backend: option {option}: {exc}") from None
