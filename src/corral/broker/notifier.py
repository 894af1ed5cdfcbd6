"""Waking long-polling agents when what their group acts on changes.

Writers mark a cluster changed in their session (transitions.bump_context); once the
session commits, the notifier schedules one refresh of that cluster's snapshot after a
short settling delay, so a burst of registrations and reports costs one re-read, not one
per change. Re-reads of a cluster are also spaced by four times the last one's length,
counted from its end, so re-reading a large cluster never takes more than a fifth of a
core however fast its nodes change, while a change after a quiet spell waits only the
settling delay (pacing.py). The refresh says which groups' views changed, and only their waiters
wake. A waiter re-reads its snapshot, so a missed wake-up costs at most its poll, never
a wrong answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from corral.pacing import Spacing
from corral.transitions import add_changed_nodes

log = logging.getLogger(__name__)

SETTLE_SECONDS = 0.01
# a cluster's re-reads are four times their length apart, end to start
SPACING = Spacing()


class ContextNotifier:
    def __init__(
        self, refresh: Callable[[str, set[str] | None], set[str]], settle: float = SETTLE_SECONDS
    ) -> None:
        """`refresh(cluster_id, nodes)` re-reads a cluster (just `nodes` of it, unless None)
        and returns the groups whose views changed."""
        self.refresh = refresh
        self.settle = settle
        self._loop: asyncio.AbstractEventLoop | None = None
        self._events: dict[tuple[str, str], asyncio.Event] = {}
        self._scheduled: dict[str, set[str] | None] = {}  # cluster -> nodes changed, or None
        self._unread: set[str] = set()  # clusters whose last re-read failed: read them whole
        # when each cluster's last re-read ended, and how long it took
        self._last_refresh: dict[str, tuple[float, float]] = {}
        self.closing = False

    def watch(self, sessions: sessionmaker) -> None:
        """Notify after every commit of `sessions` that changed a context."""
        event.listen(sessions, "after_commit", self._after_commit)

    def _after_commit(self, session: Session) -> None:
        changed = session.info.pop("changed_contexts", None) or {}
        for cluster_id, nodes in changed.items():
            self.notify(cluster_id, nodes)

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attach the event loop the broker's requests wait on."""
        self._loop = loop
        self.closing = False

    def close(self) -> None:
        """Wake every waiter for good: the servers are stopping and must not wait for them."""
        self.closing = True
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._fire_all)

    def notify(self, cluster_id: str, nodes: set[str] | None = None) -> None:
        """Thread-safe: the cluster changed (just `nodes` of it, by node id, unless None);
        its waiters learn of it after the settling delay."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(self._schedule, cluster_id, nodes)

    def forget(self, cluster_id: str) -> None:
        """Drop what is kept of a cluster that has ended."""
        self._last_refresh.pop(cluster_id, None)
        self._unread.discard(cluster_id)

    def waiter(self, cluster_id: str, group: str) -> asyncio.Event:
        """The event set at the next change of `group`'s view; take it before reading."""
        key = (cluster_id, group)
        waiters = self._events.get(key)
        if waiters is None:
            waiters = self._events[key] = asyncio.Event()
        return waiters

    async def wait(self, waiters: asyncio.Event, timeout: float) -> None:
        """Return when `waiters` is set, after `timeout` seconds, or on close."""
        if self.closing:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(waiters.wait(), timeout)

    def _schedule(self, cluster_id: str, nodes: set[str] | None) -> None:
        first = cluster_id not in self._scheduled
        add_changed_nodes(self._scheduled, cluster_id, nodes)
        if first:
            asyncio.get_running_loop().create_task(self._refresh(cluster_id))

    async def _refresh(self, cluster_id: str) -> None:
        ended, took = self._last_refresh.get(cluster_id, (0.0, 0.0))
        spaced = SPACING.next_start(ended, took) - time.monotonic()
        await asyncio.sleep(max(self.settle, spaced))
        # a change from now on schedules another refresh
        nodes = self._scheduled.pop(cluster_id)
        if cluster_id in self._unread:  # the nodes a failed re-read was to read are not known
            nodes = None
        started = time.monotonic()
        try:
            groups = await asyncio.to_thread(self.refresh, cluster_id, nodes)
            now = time.monotonic()
            self._last_refresh[cluster_id] = (now, now - started)
            self._unread.discard(cluster_id)
        except Exception:  # noqa: BLE001 - waiters must still wake; they re-read on their own
            log.exception("broker: could not re-read cluster %s; waking its waiters", cluster_id)
            self._unread.add(cluster_id)
            groups = {group for cluster, group in self._events if cluster == cluster_id}
        for group in groups:
            self._fire((cluster_id, group))

    def _fire(self, key: tuple[str, str]) -> None:
        waiters = self._events.pop(key, None)
        if waiters is not None:
            waiters.set()

    def _fire_all(self) -> None:
        for key in list(self._events):
            self._fire(key)
