"""Waking long-polling agents when their cluster's context changes.

Writers mark a cluster changed in their session (transitions.bump_context); once the
session commits, the notifier wakes every request waiting on that cluster, on the
broker's event loop. A waiter re-reads the store, so a missed wake-up costs at most its
poll slice, never a wrong answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker


class ContextNotifier:
    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._events: dict[str, asyncio.Event] = {}
        self._lock = threading.Lock()
        self.closing = False

    def watch(self, sessions: sessionmaker) -> None:
        """Notify after every commit of `sessions` that changed a context."""
        event.listen(sessions, "after_commit", self._after_commit)

    def _after_commit(self, session: Session) -> None:
        changed = session.info.pop("changed_contexts", None)
        for cluster_id in changed or ():
            self.notify(cluster_id)

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

    def _fire_all(self) -> None:
        for cluster_id in list(self._events):
            self._fire(cluster_id)

    def notify(self, cluster_id: str) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(self._fire, cluster_id)

    def _fire(self, cluster_id: str) -> None:
        waiters = self._events.pop(cluster_id, None)
        if waiters is not None:
            waiters.set()

    async def wait(self, cluster_id: str, timeout: float) -> None:
        """Return when the cluster's context changes, after `timeout` seconds, or on close."""
        if self.closing:
            return
        waiters = self._events.get(cluster_id)
        if waiters is None:
            waiters = self._events[cluster_id] = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(waiters.wait(), timeout)
