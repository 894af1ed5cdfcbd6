"""What users do to clusters: launch, look up, extend, destroy.

A launch is checked whole before anything is written: the document, the lease, the quota,
and a pool that takes the whole cluster (pool_choice.py: images, limits, a placement of
every node with an address). Only then are the cluster, its nodes (each with its price),
allocations and first events written, in one transaction. The engine does the rest
(booting, readiness, leases, teardown).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from corral import limits, names
from corral.backends.base import Capability
from corral.broker.issuance import create_cluster_secret, renew_credentials
from corral.document import ClusterDocument
from corral.errors import ConflictError, LeaseError, NotFoundError, RefusedError
from corral.lifecycle import IN_GROUP, ClusterState, NodeState
from corral.service import costs, quotas, removal
from corral.service.addresses import allocate_addresses, reserve_subnet
from corral.service.config import ServiceConfig
from corral.service.growth import add_nodes, pending_node
from corral.service.ids import new_id
from corral.service.pool_choice import PoolChoice, check_pool_limit, choose_pool, pool_order
from corral.service.pools import Pools
from corral.store.models import Cluster, Image, Node, User, utcnow
from corral.store.models import Pool as PoolRow
from corral.transitions import bump_context, move_cluster, record, record_node
from corral.units import format_duration


@dataclass(frozen=True)
class LaunchRequest:
    """A user's launch: the parsed document plus the command line's overrides.

    The document is parsed by the caller, outside any lock (api.py).
    """

    document: ClusterDocument
    name: str | None = None  # follows names.CLUSTER
    pool: str | None = None  # overrides the document's pools and the site's order
    lease: timedelta | None = None
    keep_on_failure: bool = False


@dataclass(frozen=True)
class Launched:
    """A launched cluster and where it went."""

    cluster: Cluster
    choice: PoolChoice


class Clusters:
    """Cluster operations for API handlers; one instance per service."""

    def __init__(
        self,
        config: ServiceConfig,
        pools: Pools,
    ) -> None:
        self.config = config
        self.pools = pools
        # one launch places at a time, so two launches cannot take the same free capacity
        self._placement_lock = threading.Lock()

    def launch(self, session: Session, user: User, request: LaunchRequest) -> Launched:
        """Create a cluster and its nodes in the first of its pools that takes it whole,
        or raise and create nothing.

        Raises LeaseError, QuotaExceededError, NotFoundError (a pool, or the image of its
        one pool), RefusedError (outbound access where its one pool forbids it) or
        CapacityError (its pool's hosts, addresses or limit; with several pools, each
        pool's reason).
        """
        doc = request.document.with_owner_account(user.name)
        lease = self._lease_for(request.lease or doc.lease)
        order = pool_order(request.pool, doc, self.config.default_pool_order)
        now = utcnow()
        quotas.check_quota(
            session,
            user,
            self.config,
            now,
            doc.total_nodes,
            quotas.node_hours(doc.total_nodes, lease),
        )
        with self._placement_lock:
            choice = choose_pool(session, self.pools, order, doc)
            cluster = self._create(session, user, doc, request, choice, lease, now)
            session.flush()
        return Launched(cluster, choice)

    def _create(
        self,
        session: Session,
        user: User,
        doc: ClusterDocument,
        request: LaunchRequest,
        choice: PoolChoice,
        lease: timedelta,
        now: datetime,
    ) -> Cluster:
        pool = choice.pool
        pool_row = session.get(PoolRow, pool.name)
        digests = self._image_digests(session, doc)
        cluster = Cluster(
            id=new_id("c"),
            name=self._unique_name(session, user, request.name or doc.name or "cluster"),
            owner_id=user.id,
            state=ClusterState.LAUNCHING,
            document=doc.to_json(),
            pool_name=pool.name,
            lease_start=now,
            lease_end=now + lease,
            keep_on_failure=request.keep_on_failure,
            created_at=now,
        )
        session.add(cluster)
        session.flush()
        if choice.subnet is not None:
            cluster.subnet = choice.subnet
            reserve_subnet(session, pool_row, choice.subnet, cluster.id)
        session.add(create_cluster_secret(cluster.id, cluster.lease_end))
        prices = {g.group: costs.hourly_price(pool.backend, g) for g in doc.nodes}
        nodes = [
            pending_node(
                cluster.id,
                group,
                index,
                choice.hosts[name],
                digests.get(group.image, ""),
                now,
                prices[group.group],
            )
            for group in doc.nodes
            for index, name in enumerate(group.node_names())
        ]
        session.add_all(nodes)
        session.flush()
        addresses = (
            allocate_addresses(session, pool_row, cluster.subnet, [w.id for w in nodes])
            if choice.subnet is not None
            else {}
        )
        for ws in nodes:
            ws.address = addresses.get(ws.id)
            at = f" at {ws.address}" if ws.address else f" (pool {pool.name} gives its address)"
            record_node(session, ws, None, NodeState.PENDING, f"placed on {ws.host_name}{at}")
        record(
            session,
            cluster,
            "state",
            f"launched by {user.name}: {len(nodes)} node(s), lease {format_duration(lease)}",
            None,
            ClusterState.LAUNCHING,
        )
        if choice.skipped:
            record(session, cluster, "placed", f"placed in pool {pool.name}: {choice.reasons()}")
        return cluster

    def _lease_for(self, lease: timedelta | None) -> timedelta:
        lease = lease or self.config.default_lease
        if lease > self.config.max_lease:
            raise LeaseError(
                f"lease {format_duration(lease)} is longer than the maximum "
                f"{format_duration(self.config.max_lease)}",
                field="lease",
                maximum_seconds=self.config.max_lease.total_seconds(),
            )
        return lease

    def _image_digests(self, session: Session, doc: ClusterDocument) -> dict[str, str]:
        """The digest each image name means now; a cluster keeps it for its whole life."""
        names = {g.image for g in doc.nodes}
        return {
            image.name: image.digest
            for image in session.scalars(select(Image).where(Image.name.in_(names)))
        }

    def _unique_name(self, session: Session, user: User, wanted: str) -> str:
        taken = set(
            session.scalars(
                select(Cluster.name).where(
                    Cluster.owner_id == user.id, Cluster.state != ClusterState.TERMINATED
                )
            )
        )
        name, n = wanted, 1
        while name in taken:
            n += 1
            suffix = f"-{n}"  # the name, suffix and all, stays within the rule's length
            name = wanted[: names.CLUSTER.max_length - len(suffix)] + suffix
        return name

    def find(self, session: Session, user: User, ref: str, load_nodes: bool = False) -> Cluster:
        """The cluster with this id, or the user's newest cluster of this name.

        Raises NotFoundError, also for another user's cluster (admins see every cluster).
        """
        options = [selectinload(Cluster.nodes)] if load_nodes else []
        cluster = session.get(Cluster, ref, options=options)
        if cluster is None:
            query = select(Cluster).where(Cluster.name == ref).order_by(Cluster.created_at.desc())
            if not user.is_admin:
                query = query.where(Cluster.owner_id == user.id)
            cluster = session.scalars(query.options(*options)).first()
        if cluster is None or (cluster.owner_id != user.id and not user.is_admin):
            raise NotFoundError(f"no cluster {ref}", cluster=ref)
        return cluster

    def list(self, session: Session, user: User, everyone: bool = False) -> list[Cluster]:
        query = select(Cluster).order_by(Cluster.created_at)
        if not (everyone and user.is_admin):
            query = query.where(Cluster.owner_id == user.id)
        return list(session.scalars(query))

    def resize(
        self,
        session: Session,
        user: User,
        ref: str,
        group_name: str,
        count: int | None = None,
        by: int | None = None,
        drain: timedelta | None = None,
    ) -> Cluster:
        """Give group `group_name` of a running cluster `count` nodes, or `by` more (or
        fewer). New nodes take the group's next indexes and are contextualized like the
        first; removed ones are drained first, up to `drain` (default: the document's
        policy), see removal.py. The stored document's count follows (callers forget
        their cached copy).

        Checked like a launch, and refused whole, changing nothing: NotFoundError (group),
        ConflictError (a cluster not ready or degraded, or a group below its floor),
        QuotaExceededError or CapacityError.
        """
        cluster = self._running(session, user, ref)
        doc = ClusterDocument.from_json(cluster.document, cluster.id)
        if all(g.group != group_name for g in doc.nodes):
            groups = ", ".join(g.group for g in doc.nodes)
            raise NotFoundError(
                f"cluster {cluster.id} has no group {group_name} (groups: {groups})", field="group"
            )
        running = [n for n in cluster.nodes if n.group == group_name and n.state in IN_GROUP]
        count = len(running) + by if count is None else count
        adding = count - len(running)
        if adding < 0:
            removed = removal.choose(running, -adding)
            why = f"resized by {user.name}: {group_name} {len(running)} -> {count}"
            return self._remove(session, cluster, doc, removed, drain, why)
        if adding == 0:
            return cluster
        why = f"resized by {user.name}"
        self._add(session, user, cluster, doc, group_name, adding, why)
        record(session, cluster, "resized", f"group {group_name}: {len(running)} -> {count}, {why}")
        session.flush()
        return cluster

    def remove_nodes(
        self,
        session: Session,
        user: User,
        ref: str,
        names: Sequence[str],
        drain: timedelta | None = None,
    ) -> Cluster:
        """Remove the named nodes of a running cluster, drained first (see `resize`).

        Refused whole, changing nothing: NotFoundError (a name that is no node of it),
        ConflictError (a node already going, or a group below its floor).
        """
        cluster = self._running(session, user, ref)
        doc = ClusterDocument.from_json(cluster.document, cluster.id)
        live = {n.name: n for n in cluster.nodes if n.state is not NodeState.TERMINATED}
        unknown = [name for name in names if name not in live]
        if unknown:
            raise NotFoundError(
                f"cluster {cluster.id} has no node {', '.join(unknown)} "
                f"(nodes: {', '.join(sorted(live))})",
                node=unknown[0],
            )
        going = [name for name in names if live[name].state not in IN_GROUP]
        if going:
            states = ", ".join(f"{name} is {live[name].state}" for name in going)
            raise ConflictError(f"already on its way out: {states}", node=going[0])
        removed = [live[name] for name in dict.fromkeys(names)]
        why = f"removed by {user.name}"
        return self._remove(session, cluster, doc, removed, drain, why)

    def scale(
        self, session: Session, cluster_id: str, asker_id: str, action: str, names: Sequence[str]
    ) -> list[str]:
        """The cluster's scheduler, on node `asker_id`, asks to `resume` (add) or `suspend`
        (remove at once: its scheduler found them idle) nodes of the autoscaled group, by
        name; the names acted on (a resumed name that is there already is not).

        Bounded like a resize (the document's autoscale min and max, the owner's quota,
        the pool) and refused whole: ConflictError (no autoscale, a cluster not running,
        a node that may not ask, a floor), NotFoundError (a name outside the group's),
        QuotaExceededError or CapacityError.
        """
        cluster = session.get(Cluster, cluster_id, options=[selectinload(Cluster.nodes)])
        if cluster.state not in (ClusterState.READY, ClusterState.DEGRADED):
            raise ConflictError(f"cluster {cluster.id} is {cluster.state}; it does not scale now")
        doc = ClusterDocument.from_json(cluster.document, cluster.id)
        autoscale = doc.autoscale
        if autoscale is None:
            raise ConflictError(f"cluster {cluster.id} has no autoscale in its document")
        asker = next(n for n in cluster.nodes if n.id == asker_id)
        _check_may_scale(doc, asker)
        allowed = set(autoscale.node_names())
        outside = [name for name in names if name not in allowed]
        if outside:
            raise NotFoundError(
                f"{', '.join(outside)}: not a node autoscale may have "
                f"({autoscale.group}-0 to {autoscale.group}-{autoscale.max - 1})",
                node=outside[0],
            )
        live = {n.name: n for n in cluster.nodes if n.state is not NodeState.TERMINATED}
        wanted = list(dict.fromkeys(names))
        why = f"autoscale: {action} asked by {asker.name}"
        if action == "suspend":
            removed = [live[n] for n in wanted if n in live and live[n].state in IN_GROUP]
            if removed:
                self._remove(session, cluster, doc, removed, None, why, drain_first=False)
            return [n.name for n in removed]
        adding = [n for n in wanted if n not in live]
        if not adding:
            return []
        owner = session.get(User, cluster.owner_id)
        indexes = [int(n.rsplit("-", 1)[1]) for n in adding]
        self._add(session, owner, cluster, doc, autoscale.group, len(adding), why, indexes)
        record(session, cluster, "resized", f"{why}: adding {', '.join(adding)}")
        session.flush()
        return adding

    def _add(
        self,
        session: Session,
        user: User,
        cluster: Cluster,
        doc: ClusterDocument,
        group: str,
        how_many: int,
        why: str,
        indexes: list[int] | None = None,
    ) -> None:
        """Add `how_many` nodes to `group` (with `indexes`, or its next ones), checked like
        a launch: the cluster's node limit, `user`'s quota for the lease that is left, the
        pool's limit and hosts. The stored document's count follows."""
        held = sum(1 for n in cluster.nodes if n.group == group and n.state in IN_GROUP)
        grown = doc.with_count(group, held + how_many)
        if grown.total_nodes > limits.MAX_CLUSTER_NODES:
            raise RefusedError(
                f"count: group {group} with {held + how_many} node(s) would give the cluster "
                f"{grown.total_nodes}, more than the limit of {limits.MAX_CLUSTER_NODES}",
                field="count",
            )
        now = utcnow()
        hours = quotas.node_hours(how_many, cluster.lease_end - now)
        quotas.check_quota(session, user, self.config, now, how_many, hours)
        pool = self.pools.get(cluster.pool_name)
        with self._placement_lock:
            check_pool_limit(session, pool, how_many)
            add_nodes(session, cluster, doc, pool, group, how_many, why, now, indexes)
        cluster.document = grown.to_json()

    def _running(self, session: Session, user: User, ref: str) -> Cluster:
        cluster = self.find(session, user, ref, load_nodes=True)
        if cluster.state not in (ClusterState.READY, ClusterState.DEGRADED):
            raise ConflictError(
                f"cluster {cluster.id} is {cluster.state}; only a ready or degraded cluster "
                "changes size"
            )
        return cluster

    def _remove(
        self,
        session: Session,
        cluster: Cluster,
        doc: ClusterDocument,
        removed: Sequence[Node],
        drain: timedelta | None,
        why: str,
        drain_first: bool = True,
    ) -> Cluster:
        """Remove `removed`, drained first (up to `drain`, or the document's timeout)
        unless `drain_first` is false or their machines run no agent to drain them."""
        removal.check_floors(doc, cluster.nodes, removed)
        cluster.document = removal.counts_after(doc, cluster.nodes, removed).to_json()
        agents = Capability.RUNS_AGENT in self.pools.get(cluster.pool_name).capabilities
        drains = drain_first and agents
        timeout = (drain or doc.policy.drain_timeout).total_seconds()
        seconds = max(1, math.ceil(timeout)) if drains else None  # the agent counts seconds
        removal.remove(session, removed, seconds, why)
        names = ", ".join(n.name for n in removed)
        record(session, cluster, "resized", f"{why}: removing {names}")
        session.flush()
        return cluster

    def extend(self, session: Session, user: User, ref: str, by: timedelta) -> Cluster:
        """Move a cluster's lease deadline later by `by`, within policy and quota.

        Raises LeaseError for an ended cluster or a deadline beyond the maximum lease.
        """
        cluster = self.find(session, user, ref, load_nodes=True)
        if cluster.state in (ClusterState.TERMINATING, ClusterState.TERMINATED):
            raise LeaseError(f"cluster {cluster.id} has ended; its lease cannot be extended")
        now = utcnow()
        new_end = cluster.lease_end + by
        if new_end - now > self.config.max_lease:
            raise LeaseError(
                f"extending by {format_duration(by)} would leave "
                f"{format_duration(new_end - now)} of lease, more than the maximum "
                f"{format_duration(self.config.max_lease)}",
                maximum_seconds=self.config.max_lease.total_seconds(),
            )
        live = sum(1 for w in cluster.nodes if w.state.is_live)
        quotas.check_quota(session, user, self.config, now, 0, quotas.node_hours(live, by))
        old_end = cluster.lease_end
        cluster.lease_end = new_end
        cluster.lease_warned = False
        renewed = renew_credentials(session, cluster, new_end)
        bump_context(session, cluster)  # every node learns its new end and certificates
        record(
            session,
            cluster,
            "lease-extended",
            f"lease extended by {format_duration(by)}: {old_end.isoformat()} -> "
            f"{new_end.isoformat()}; certificates of {renewed} node(s) renewed",
        )
        return cluster

    def destroy(self, session: Session, user: User, ref: str) -> Cluster:
        """Ask for a cluster's removal; destroying an ending or ended cluster is a no-op."""
        cluster = self.find(session, user, ref)
        if cluster.state in (ClusterState.TERMINATING, ClusterState.TERMINATED):
            return cluster
        move_cluster(session, cluster, ClusterState.TERMINATING, f"destroyed by {user.name}")
        return cluster


def _check_may_scale(doc: ClusterDocument, asker: Node) -> None:
    """Raises ConflictError unless `asker` is a ready node of a group that requires a role
    the autoscaled group provides: the cluster's scheduler, not one of its workers."""
    scaled = next(g for g in doc.nodes if g.group == doc.autoscale.group)
    group = next(g for g in doc.nodes if g.group == asker.group)
    if asker.state is not NodeState.READY or not {r.role for r in group.requires} & set(
        scaled.provides
    ):
        raise ConflictError(
            f"node {asker.name} may not scale group {scaled.group}: only a ready node "
            f"requiring {', '.join(scaled.provides) or 'its roles'} may",
            node=asker.name,
        )
