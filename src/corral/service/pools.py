"""The service's pools, each driven by its own backend.

A pool is hosts (or a cloud account) behind one backend, with its own options, address
range and limits (config.PoolConfig). Every backend call goes through the pool of the
node it is for: the engine, a launch's checks and the broker's URL all ask here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from corral.backends.base import Backend, Capability, Placement
from corral.backends.registry import load_backend
from corral.errors import ConflictError, NotFoundError
from corral.lifecycle import ClusterState
from corral.service import inventory
from corral.service.config import (
    HostConfig,
    PoolConfig,
    ServiceConfig,
    machine_cores,
    machine_memory_mib,
)
from corral.store.models import Cluster, Host, Node

# the pool of `corral serve` without a configuration file keeps its files where 0.2.0 did
SHORTHAND_POOL = "local"


@dataclass(frozen=True)
class Pool:
    """One configured pool and the backend that drives it."""

    config: PoolConfig
    backend: Backend

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def capabilities(self) -> frozenset[Capability]:
        return self.backend.capabilities

    def networks_in_use(self) -> list[ipaddress.IPv4Network]:
        return self.backend.networks_in_use()


class Pools:
    """Every pool of one service, by name, in the order the configuration gives them."""

    def __init__(self, config: ServiceConfig, given: dict[str, Backend] | None = None) -> None:
        """Build each pool's backend, or take the one `given` for it (tests inject fakes).

        Raises ValueError naming the pool whose backend or options are wrong, or a default
        or overflow pool that is not configured.
        """
        self.config = config
        self._pools: dict[str, Pool] = {}
        try:
            for pool_config in config.pool_configs():
                backend = (given or {}).get(pool_config.name)
                if backend is None:
                    data_dir = pool_data_dir(config.data_dir, pool_config.name)
                    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
                    try:
                        backend = load_backend(pool_config.backend, pool_config.options, data_dir)
                    except ValueError as exc:
                        raise ValueError(f"pool {pool_config.name}: {exc}") from None
                self._pools[pool_config.name] = Pool(pool_config, backend)
        except BaseException:
            self.close()
            raise
        named = [("default pool", config.default_pool_name)]
        named += [(f"overflow.{i}: pool", name) for i, name in enumerate(config.overflow)]
        for where, name in named:
            if name not in self._pools:
                self.close()
                raise ValueError(
                    f"{where} {name} is not configured (pools: {', '.join(self.names())})"
                )

    def __iter__(self) -> Iterator[Pool]:
        return iter(self._pools.values())

    def names(self) -> list[str]:
        return list(self._pools)

    def get(self, name: str) -> Pool:
        """The pool `name`; raises NotFoundError naming it when this service has none."""
        try:
            return self._pools[name]
        except KeyError:
            raise NotFoundError(
                f"pool: no pool named {name} (pools: {', '.join(self.names())})",
                field="pool",
                pool=name,
            ) from None

    @property
    def default(self) -> Pool:
        return self._pools[self.config.default_pool_name]

    def broker_url_for(self, node: Node) -> str:
        """The broker URL a node is given: its pool's, else the service's, at the address
        its backend says the node reaches the service (nspawn: its cluster's bridge)."""
        pool = self.get(node.cluster.pool_name)
        if pool.config.broker_url:
            return pool.config.broker_url.rstrip("/")
        address = pool.backend.service_address(placement_of(node))
        return self.config.advertised_broker_url(address)

    def ensure_in_store(self, session: Session) -> None:
        """Record each pool (its backend and addresses) and give a pool without hosts the
        ones its configuration lists, else one with its backend's default capacity (a
        cloud's), else this machine.

        Raises ConflictError when a pool that runs live clusters changed its backend, or is
        no longer configured (the engine could not reach their machines).
        """
        orphaned = session.execute(
            select(Cluster.pool_name, func.count(Cluster.id))
            .where(Cluster.state != ClusterState.TERMINATED, Cluster.pool_name.not_in(self.names()))
            .group_by(Cluster.pool_name)
        ).all()
        if orphaned:
            pool, live = orphaned[0]
            raise ConflictError(
                f"pool {pool} runs {live} live cluster(s) but is not configured; configure it "
                "again, or destroy them with a service that has it",
                pool=pool,
            )
        for pool in self:
            cfg = pool.config
            row = inventory.ensure_pool(
                session, cfg.name, pool.backend.name, cfg.address_range, cfg.subnet_prefix
            )
            if row.backend != pool.backend.name:
                live = session.scalar(
                    select(func.count(Cluster.id)).where(
                        Cluster.pool_name == cfg.name,
                        Cluster.state != ClusterState.TERMINATED,
                    )
                )
                if live:
                    raise ConflictError(
                        f"pool {cfg.name} runs {live} live cluster(s) on backend "
                        f"{row.backend}; destroy them before serving it with {pool.backend.name}"
                    )
                row.backend = pool.backend.name
            row.address_range, row.subnet_prefix = cfg.address_range, cfg.subnet_prefix
            has_hosts = session.scalar(
                select(func.count(Host.name)).where(
                    Host.pool_name == cfg.name, Host.removed_at.is_(None)
                )
            )
            if has_hosts:
                continue
            hosts = cfg.hosts or (self._default_host(pool),)
            for host in hosts:
                inventory.add_host(session, host.name, cfg.name, host.cores, host.memory_mib)

    def _default_host(self, pool: Pool) -> HostConfig:
        """One host named after the pool: what its backend offers (a cloud is not limited
        by this machine), else this machine."""
        capacity = pool.backend.default_capacity()
        if capacity is not None:
            return HostConfig(pool.name, *capacity)
        return _this_machine(pool.name, self.config.cpu_overcommit)

    def describe(self) -> list[str]:
        """One line per pool for the log, secret options hidden."""
        return [
            f"pool {p.name}: backend {p.backend.name}, options {p.config.shown_options()}, "
            f"addresses {p.config.address_range}"
            for p in self
        ]

    def close(self) -> None:
        for pool in self._pools.values():
            pool.backend.close()


def placement_of(node: Node) -> Placement:
    """Where the service placed a node, as its backend is told."""
    cluster = node.cluster
    return Placement(cluster.pool_name, node.host_name, node.address or "", cluster.subnet or "")


def pool_data_dir(data_dir: Path, pool: str) -> Path:
    """Where a pool's backend keeps its files: the service's own directory for the
    shorthand pool (as 0.2.0 did), a directory of its own for every other."""
    return data_dir if pool == SHORTHAND_POOL else data_dir / "pools" / pool


def _this_machine(pool: str, cpu_overcommit: int) -> HostConfig:
    return HostConfig(pool, machine_cores() * cpu_overcommit, machine_memory_mib())
