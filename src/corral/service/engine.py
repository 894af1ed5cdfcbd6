"""The engine: one loop that drives every cluster from its records to what backends run.

Each tick reads the store, compares it with what the backend reports, and acts: boots
pending nodes, notices booted, failed and lost machines, applies each cluster's policy,
warns before and enforces lease expiry, and removes what is terminating. The loop is
level-triggered: everything it needs is in the store, so a service killed at any moment
picks up where it was on restart, and a lease ends on time with no client running.

Every backend call goes through the pool of the node it is for, and each pool's machines
are listed at that backend's pace (observation.py). Backend calls run on worker threads
("jobs"); a node with a job under way is left alone by the tick until the job has written
its result.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import fields, replace
from datetime import datetime
from functools import partial

from sqlalchemy import select
from sqlalchemy.orm import Session

from corral.backends.base import Capability, ImageRef, Machine, NodeSpec, Placement
from corral.broker.bootstrap import BootstrapIssuer
from corral.broker.liveness import Liveness
from corral.document import ClusterDocument
from corral.errors import BackendError, CapacityError
from corral.images.store import ImageStore
from corral.lifecycle import ClusterState, NodeState
from corral.pacing import Spacing
from corral.service.addresses import release_address, release_subnet
from corral.service.config import ServiceConfig
from corral.service.decisions import (
    NodeRecord,
    apply_policy,
    react_to_machine,
    reported_address,
    silent_agent,
)
from corral.service.documents import DocumentCache
from corral.service.growth import add_nodes
from corral.service.observation import Observation, Observer
from corral.service.pools import Pools, placement_of
from corral.store.database import Store
from corral.store.group_commit import GroupCommit
from corral.store.models import Cluster, Node, utcnow
from corral.transitions import bump_context, move_cluster, move_node, record
from corral.units import format_duration

# pending nodes of a cluster in these states are booted (a running cluster's successors)
BOOTS_PENDING = frozenset({ClusterState.LAUNCHING, ClusterState.READY, ClusterState.DEGRADED})
SUCCESSOR = "successor of a lost node"
log = logging.getLogger(__name__)

MIN_TICK_GAP_SECONDS = 0.02

_NODE_COLUMNS = [getattr(Node, f.name) for f in fields(NodeRecord)]


class Engine:
    """Drives clusters toward their goal; `start()` runs `tick()` on a thread."""

    def __init__(
        self,
        store: Store,
        pools: Pools,
        config: ServiceConfig,
        writes: GroupCommit,
        documents: DocumentCache,
        bootstrap: BootstrapIssuer | None = None,
        clock: Callable[[], datetime] = utcnow,
        liveness: Liveness | None = None,
    ) -> None:
        self.store = store
        self.pools = pools
        self.observer = Observer(pools)
        self.images = ImageStore.of_data_dir(config.data_dir)
        self.config = config
        # its lock is held while deciding, and by API writes, so a tick and a request
        # never race; jobs write their results through it
        self.writes = writes
        self.clock = clock
        self.documents = documents
        # nodes of a backend that runs agents get a bootstrap document, and are ready
        # when their agent says so rather than when their machine runs (runs_agents)
        self.bootstrap = bootstrap
        # when the broker last heard each node's agent: one silent too long is lost
        self.liveness = liveness
        self._jobs = ThreadPoolExecutor(config.backend_workers, thread_name_prefix="corral-job")
        self._busy: set[str] = set()
        self._busy_lock = threading.Lock()
        self._futures: set[Future] = set()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # -- running -----------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="corral-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=30)
        self._jobs.shutdown(wait=True, cancel_futures=False)

    def poke(self) -> None:
        """Run the next tick now rather than at the next interval (after an API write)."""
        self._wake.set()

    def drain(self, timeout: float = 30) -> None:
        """Wait for the backend jobs under way to finish (for tests and shutdown)."""
        with self._busy_lock:
            futures = list(self._futures)
        for future in futures:
            future.result(timeout=timeout)

    def _loop(self) -> None:
        # pokes come with every registration and report; during a launch of N nodes they
        # would make N ticks of N nodes each, so ticks keep a gap that grows with their cost:
        # their CPU, not their length, since a cloud's listing is mostly a wait for its
        # answer (8 s of 1000 instances from moto spaced ticks 40 s apart)
        spacing = Spacing(least=min(MIN_TICK_GAP_SECONDS, self.config.tick_seconds))
        while not self._stop.is_set():
            cpu = time.thread_time()
            try:
                self.tick()
            except Exception:  # the loop must outlive any one bad tick
                log.exception("engine tick failed; retrying next tick")
            took = time.thread_time() - cpu
            self._wake.wait(self.config.tick_seconds)
            next_start = spacing.next_start(time.monotonic(), took)
            self._stop.wait(max(0.0, next_start - time.monotonic()))
            self._wake.clear()

    def tick(self) -> None:
        """One pass: observe each pool's backend, then decide and start jobs."""
        with self._busy_lock:
            busy = set(self._busy)  # taken before reading rows; see _submit
        observed = self.observer.observe()
        now = self.clock()
        live = Cluster.state != ClusterState.TERMINATED
        with self.writes.decisions, self.store.session() as session:
            clusters = list(session.scalars(select(Cluster).where(live)))
            members: dict[str, list[NodeRecord]] = {c.id: [] for c in clusters}
            rows = session.execute(
                select(*_NODE_COLUMNS).join(Cluster).where(live).order_by(Node.group, Node.index)
            )
            for row in rows:
                members[row.cluster_id].append(NodeRecord(*row))
            for cluster in clusters:
                seen = observed.get(cluster.pool_name, _UNOBSERVED)
                self._drive(session, cluster, members[cluster.id], seen, busy, now)
        live_ids = {n.id for nodes in members.values() for n in nodes}
        for pool, observation in observed.items():
            if observation.fresh:
                self._remove_orphans(pool, observation.machines, live_ids, busy)

    def runs_agents(self, pool: str) -> bool:
        """Whether the pool's nodes run the context agent and get a bootstrap document."""
        return (
            self.bootstrap is not None
            and Capability.RUNS_AGENT in self.pools.get(pool).capabilities
        )

    # -- one cluster -------------------------------------------------------------------

    def _drive(
        self,
        session: Session,
        cluster: Cluster,
        members: list[NodeRecord],
        observation: Observation,
        busy: set[str],
        now: datetime,
    ) -> None:
        doc = self.documents.of(cluster)
        agents = self.runs_agents(cluster.pool_name)
        nodes = [n for n in members if n.id not in busy]
        state = cluster.state
        if state is not ClusterState.TERMINATING:
            self._enforce_lease(session, cluster, now)
            state = cluster.state
        if state is ClusterState.TERMINATING:
            self._tear_down(session, cluster, members, nodes, observation, busy)
            return
        for node in nodes:
            machine = observation.machines.get(node.id)
            if machine is None and not observation.fresh:
                continue  # a stale listing cannot say a machine is gone
            if address := reported_address(node, machine):
                self._record_address(session, node, address)
            move = react_to_machine(node, machine, doc.policy, now, agents)
            if move is None and agents and self.liveness is not None:
                heard = self.liveness.last_heard(cluster.id, node.id)
                move = silent_agent(node, heard, self.liveness.heartbeat, doc.policy, now)
            if move is not None:
                self._move(session, node, move.target, move.reason)
        self._apply_policy(session, cluster, members, doc, now)
        pending = [n for n in nodes if n.state == NodeState.PENDING]
        if pending and cluster.state in BOOTS_PENDING:
            self._boot(session, cluster, doc, pending, agents)
        ending = [n.id for n in nodes if n.state == NodeState.TERMINATING]
        if ending:
            self._terminate(cluster.pool_name, ending)

    def _boot(
        self,
        session: Session,
        cluster: Cluster,
        doc: ClusterDocument,
        pending: list[NodeRecord],
        agents: bool,
    ) -> None:
        """Boot pending nodes: a group's together where the backend launches groups (one
        call for them all), one by one otherwise."""
        orders = [self._boot_order(cluster, doc, session.get(Node, n.id)) for n in pending]
        pool = self.pools.get(cluster.pool_name)
        if not (agents and Capability.LAUNCHES_GROUPS in pool.capabilities):
            for order in orders:
                self._submit([order[0].node_id], self._boot_job, order)
            return
        by_group: dict[str, list[tuple[NodeSpec, Placement]]] = {}
        for node, order in zip(pending, orders, strict=True):
            by_group.setdefault(node.group, []).append(order)
        # a group gets every node asked for or none, but for a best-effort launch, which
        # goes on with the least its policy accepts
        partial = cluster.state is ClusterState.LAUNCHING and doc.policy.mode == "best-effort"
        least = {g.group: max(1, g.min_ready) for g in doc.nodes}
        for name, group in by_group.items():
            ids = [spec.node_id for spec, _ in group]
            min_count = min(least.get(name, 1), len(group)) if partial else len(group)
            self._submit(ids, self._group_boot_job, (group, min_count))

    def _apply_policy(
        self,
        session: Session,
        cluster: Cluster,
        members: list[NodeRecord],
        doc: ClusterDocument,
        now: datetime,
    ) -> None:
        outcome = apply_policy(cluster.state, members, doc)
        if outcome.failure is not None:
            self._fail(session, cluster, members, outcome.failure)
            return
        dropped = set(outcome.drop)
        why = (
            "the cluster goes on without it"
            if outcome.degraded
            else "dropped under the best-effort policy"
        )
        for node in members:
            if node.id in dropped:
                self._move(session, node, NodeState.TERMINATING, why)
        for group, count in outcome.add:
            pool = self.pools.get(cluster.pool_name)
            try:
                add_nodes(session, cluster, doc, pool, group, count, SUCCESSOR, now)
            except CapacityError as exc:
                record(session, cluster, "not-replaced", f"{count} of {group}: {exc}")
        if outcome.degraded is not None:
            if cluster.state == ClusterState.READY:
                move_cluster(session, cluster, ClusterState.DEGRADED, outcome.degraded)
            else:
                cluster.failure = f"{cluster.failure}; {outcome.degraded}"[-4096:]
                record(session, cluster, "nodes-lost", outcome.degraded)
        if outcome.ready is not None:
            move_cluster(session, cluster, ClusterState.READY, outcome.ready)

    def _fail(
        self, session: Session, cluster: Cluster, members: list[NodeRecord], cause: str
    ) -> None:
        """Fail the cluster; a failed launch's nodes are removed (but with
        --keep-on-failure), its record stays `failed` until `corral destroy` or its lease
        end, so that what its nodes left (their consoles above all) can be read until then:
        only that teardown ends in the backend's clean_up."""
        launching = cluster.state == ClusterState.LAUNCHING
        move_cluster(session, cluster, ClusterState.FAILED, cause)
        if not launching or cluster.keep_on_failure:
            return
        why = "launch failed; removing its nodes (launch with --keep-on-failure to keep them)"
        record(session, cluster, "removing-nodes", why)
        for node in members:
            # a node with a boot job under way too: the job writes nothing for a node that
            # is no longer pending, and the tick after it removes the machine it booted
            if node.state not in (NodeState.TERMINATING, NodeState.TERMINATED):
                self._move(session, node, NodeState.TERMINATING, why)

    def _enforce_lease(self, session: Session, cluster: Cluster, now: datetime) -> None:
        if now >= cluster.lease_end:
            move_cluster(
                session,
                cluster,
                ClusterState.TERMINATING,
                f"lease expired at {cluster.lease_end.isoformat(timespec='seconds')}",
            )
            return
        window = min(self.config.lease_warning, (cluster.lease_end - cluster.lease_start) / 2)
        if not cluster.lease_warned and cluster.lease_end - now <= window:
            cluster.lease_warned = True
            record(
                session,
                cluster,
                "lease-warning",
                f"lease ends in {format_duration(cluster.lease_end - now)} "
                f"(at {cluster.lease_end.isoformat(timespec='seconds')}); "
                "`corral extend` keeps it",
            )

    def _tear_down(
        self,
        session: Session,
        cluster: Cluster,
        members: list[NodeRecord],
        nodes: list[NodeRecord],
        observation: Observation,
        busy: set[str],
    ) -> None:
        pool = cluster.pool_name
        ending = []
        for node in nodes:
            state = node.state
            if state is NodeState.TERMINATED:
                continue
            if state is not NodeState.TERMINATING:
                self._move(session, node, NodeState.TERMINATING, "cluster is terminating")
            ending.append(node.id)
        if ending:
            self._terminate(pool, ending)
        ids = {n.id for n in members}
        if any(n.state != NodeState.TERMINATED for n in members) or busy & ids:
            return
        if not observation.fresh:
            return  # only a fresh listing can say the backend runs nothing of it
        leftovers = ids & observation.machines.keys()
        if leftovers:  # the backend still runs something of ours: remove it again
            self._terminate(pool, sorted(leftovers))
            return
        leftovers_elsewhere = self.pools.get(pool).backend.clean_up(cluster.id)
        if leftovers_elsewhere:
            log.info("%s: still left of it: %s", cluster.id, "; ".join(leftovers_elsewhere))
            return
        release_subnet(session, cluster.id)
        move_cluster(
            session,
            cluster,
            ClusterState.TERMINATED,
            "every node removed; the backend runs nothing of this cluster",
        )
        self.documents.forget(cluster.id)

    def _remove_orphans(
        self, pool: str, machines: dict[str, Machine], live_ids: set[str], busy: set[str]
    ) -> None:
        orphans = sorted(machines.keys() - live_ids - busy)
        for node_id in orphans:
            log.warning("pool %s runs %s, which no live record owns; removing it", pool, node_id)
        if orphans:
            self._terminate(pool, orphans)

    def _record_address(self, session: Session, node: NodeRecord, address: str) -> None:
        """Keep the address a backend gave a node (it placed the machine itself); the
        node's peers learn it from the broker's next view."""
        record = session.get(Node, node.id)
        record.address = node.address = address
        bump_context(session, record.cluster, record.id)
        log.info("%s got address %s from its backend", record.name, address)

    def _move(self, session: Session, node: NodeRecord, target: NodeState, reason: str) -> None:
        """Move the node's node, and keep `node` as it now is for the rest of the tick."""
        ws = session.get(Node, node.id)
        move_node(session, ws, target, reason)
        node.state, node.state_since = ws.state, ws.state_since
        node.failure, node.failure_phase = ws.failure, ws.failure_phase

    # -- jobs --------------------------------------------------------------------------

    def _submit(self, node_ids: list[str], job: Callable, arg: object) -> None:
        """Run `job(arg)` on a worker thread, unless one of its nodes has a job already."""
        with self._busy_lock:
            if not self._busy.isdisjoint(node_ids):
                return
            self._busy.update(node_ids)

        def run() -> None:
            try:
                job(arg)
            except Exception:
                log.exception("job for %s failed; the next tick retries", ", ".join(node_ids))
            finally:
                # the job's writes are committed before it leaves the busy set, so a tick
                # that did not see it busy also sees its result
                with self._busy_lock:
                    self._busy.difference_update(node_ids)
                    self._futures.discard(future)

        with self._busy_lock:
            future = self._jobs.submit(run)
            self._futures.add(future)

    def _boot_job(self, boot: tuple[NodeSpec, Placement]) -> None:
        spec, placement = boot
        if self.runs_agents(placement.pool):
            # committed before the machine starts, so its agent always finds its token
            user_data = self.writes.write_from_thread(
                partial(self._pending_user_data, spec.node_id), [(Node, spec.node_id)]
            )
            if user_data is None:
                return
            spec = replace(spec, user_data=user_data)
        try:
            machine = self.pools.get(placement.pool).backend.boot(spec, placement)
        except BackendError as exc:
            self._fail_boot(spec.node_id, exc.message)
            return
        self._set_booting([(spec, placement, machine)])

    def _group_boot_job(self, launch: tuple[list[tuple[NodeSpec, Placement]], int]) -> None:
        """Boot a group's pending nodes in one backend call, with one user-data."""
        orders, min_count = launch
        ids = [spec.node_id for spec, _ in orders]
        user_data = self.writes.write_from_thread(
            partial(self._pending_group_user_data, ids), [(Node, i) for i in ids]
        )
        if user_data is None:
            return
        booting, data = user_data
        orders = [(replace(s, user_data=data), p) for s, p in orders if s.node_id in booting]
        placement = orders[0][1]
        backend = self.pools.get(placement.pool).backend
        try:
            results = backend.boot_group(
                [s for s, _ in orders], placement, min(min_count, len(orders))
            )
        except BackendError as exc:
            results = [exc] * len(orders)
        booted = []
        for (spec, placement), result in zip(orders, results, strict=True):
            if isinstance(result, BackendError):
                self._fail_boot(spec.node_id, result.message)
            else:
                booted.append((spec, placement, result))
        self._set_booting(booted)

    def _set_booting(self, booted: list[tuple[NodeSpec, Placement, Machine]]) -> None:
        """Move nodes whose machines the backend is booting to booting, in one write."""

        def move(session: Session) -> None:
            for spec, placement, machine in booted:
                node = session.get(Node, spec.node_id)
                if node is None or node.state != NodeState.PENDING:
                    continue  # its agent registered already, or it was removed meanwhile
                # a backend that places machines itself may know the address already
                if machine.address and not placement.address and not node.address:
                    node.address = machine.address
                node.machine_id = machine.machine_id or node.machine_id
                where = placement.host or f"pool {placement.pool}"
                named = f" as {machine.machine_id}" if machine.machine_id else ""
                move_node(session, node, NodeState.BOOTING, f"boot requested on {where}{named}")

        if booted:
            self.writes.write_from_thread(move, [(Node, s.node_id) for s, _, _ in booted])
            self.poke()

    def _pending_group_user_data(
        self, node_ids: list[str], session: Session
    ) -> tuple[set[str], bytes] | None:
        """The nodes still pending, and their group's bootstrap document with new tokens;
        None if none is."""
        nodes = [session.get(Node, i) for i in node_ids]
        nodes = [n for n in nodes if n is not None and n.state == NodeState.PENDING]
        if not nodes:
            return None
        return {n.id for n in nodes}, self.bootstrap.group_user_data(session, nodes, self.clock())

    def _pending_user_data(self, node_id: str, session: Session) -> bytes | None:
        """The node's bootstrap document, with a new token; None if it no longer boots."""
        node = session.get(Node, node_id)
        if node is None or node.state != NodeState.PENDING:
            return None
        return self.bootstrap.user_data(session, node, self.clock())

    def _terminate(self, pool: str, node_ids: list[str]) -> None:
        """Remove machines: in one job where the backend ends many in one call, else one
        job each, which run side by side."""
        if Capability.LAUNCHES_GROUPS in self.pools.get(pool).capabilities:
            self._submit(node_ids, self._terminate_job, (pool, node_ids))
            return
        for node_id in node_ids:
            self._submit([node_id], self._terminate_job, (pool, [node_id]))

    def _terminate_job(self, target: tuple[str, list[str]]) -> None:
        """Remove machines of one pool, in one backend call, and record their nodes
        terminated."""
        pool, node_ids = target
        self.pools.get(pool).backend.terminate_many(node_ids)

        def record(session: Session) -> None:
            for node_id in node_ids:
                node = session.get(Node, node_id)
                if node is None or node.state != NodeState.TERMINATING:
                    continue  # gone, terminated, or an orphan's record moved on
                move_node(session, node, NodeState.TERMINATED, f"removed from {node.host_name}")
                release_address(session, node.id)

        self.writes.write_from_thread(record, [(Node, n) for n in node_ids])
        self.poke()

    def _fail_boot(self, node_id: str, reason: str) -> None:
        # under the decision lock: a node's agent may register (pending -> registered)
        # between this read and this write, which would then undo its registration
        def move(session: Session) -> None:
            node = session.get(Node, node_id)
            if node is not None and node.state == NodeState.PENDING:
                move_node(session, node, NodeState.FAILED, reason)

        self.writes.write_from_thread(move, [(Node, node_id)])
        self.poke()

    # -- helpers -----------------------------------------------------------------------

    def _boot_order(
        self, cluster: Cluster, doc: ClusterDocument, node: Node
    ) -> tuple[NodeSpec, Placement]:
        """What the node is, with its image resolved through the image store, and where
        it runs."""
        digest = node.image_digest
        rootfs = self.images.path(digest) if digest and self.images.has(digest) else None
        group = next((g for g in doc.nodes if g.group == node.group), None)
        spec = NodeSpec(
            node_id=node.id,
            cluster_id=cluster.id,
            name=node.name,
            image=ImageRef(node.image, digest, rootfs),
            cores=node.cores,
            memory_mib=node.memory_mib,
            outbound=doc.network.outbound,
            market=group.market if group else "on-demand",
            max_price=group.max_price if group else None,
        )
        return spec, placement_of(node)


_UNOBSERVED = Observation({}, fresh=False)
