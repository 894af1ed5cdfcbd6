"""Writes from many requests committed together: one transaction per burst, not per request.

When a thousand agents report at once, a session, a flush and a commit each would cost
more than the writes themselves. Requests hand their write to one writer thread instead,
which runs every write waiting at that moment in one session under the service's
decision lock, commits once, and only then answers each request, so an answer still
means the write is stored. A write that raises is answered with its error; the rest of
its burst is then rolled back and each write run again in a transaction of its own, so
one bad write never costs another its effect. Writes must therefore not act outside the
session: whatever else they cause belongs after the answer.

The burst is flushed once, at its commit: a query in one write does not see rows an
earlier write of the same burst added, though objects that write loaded or changed are
shared through the session.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from corral.store.database import Store

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_BURST = 500  # bounds how long the decision lock is held at once


@dataclass
class _Write:
    work: Callable[[Session], Any]
    answer: Future


class GroupCommit:
    """A writer thread for `store`, started on the first write and ended by `stop()`."""

    def __init__(self, store: Store, decisions: threading.Lock) -> None:
        self.store = store
        self.decisions = decisions
        self._queue: queue.SimpleQueue[_Write | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._starting = threading.Lock()  # guards starting, stopping and queueing

    async def write(self, work: Callable[[Session], T]) -> T:
        """Run `work(session)` in the next burst and return its result once committed.

        Raises what `work` raised, or what the commit raised, after rolling it back.
        """
        return await asyncio.wrap_future(self._submit(work))

    def write_from_thread(self, work: Callable[[Session], T]) -> T:
        """`write` for a worker thread: blocks until committed, raises as `write` does."""
        return self._submit(work).result()

    def _submit(self, work: Callable[[Session], T]) -> Future:
        answer: Future = Future()
        with self._starting:  # so that no write lands behind the stop signal
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, name="corral-group-commit", daemon=True
                )
                self._thread.start()
            self._queue.put(_Write(work, answer))
        return answer

    def stop(self) -> None:
        """End the writer thread once the writes already handed to it are committed."""
        with self._starting:
            if self._thread is None:
                return
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def _serve(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            burst = [first]
            while len(burst) < MAX_BURST:
                try:
                    following = self._queue.get_nowait()
                except queue.Empty:
                    break
                if following is None:
                    self._queue.put(None)  # finish this burst, then stop
                    break
                burst.append(following)
            # a write whose caller went away before it ran is dropped; past this point
            # a write can no longer be cancelled, so every answer below can be given
            burst = [w for w in burst if w.answer.set_running_or_notify_cancel()]
            if burst:
                self._commit(burst)

    def _commit(self, burst: list[_Write]) -> None:
        results: list[Any] = []
        try:
            with self.decisions, self.store.session() as session, session.no_autoflush:
                for write in burst:
                    results.append(write.work(session))
        except Exception as exc:
            if len(burst) == 1:
                burst[0].answer.set_exception(exc)
                return
            log.debug("a burst of %d writes failed (%s); writing each alone", len(burst), exc)
            for write in burst:
                self._commit([write])
            return
        for write, result in zip(burst, results, strict=True):
            write.answer.set_result(result)
