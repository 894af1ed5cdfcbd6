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

A write may name the rows it will read by primary key (`reads`): the burst loads all
of them with one query per table before its writes run, so that each write's
`session.get` finds its row loaded rather than querying for it.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import inspect, select
from sqlalchemy.orm import Session

from corral.store.database import Store

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_BURST = 500  # bounds how long the decision lock is held at once
Reads = Sequence[tuple[type, Any]]  # (model, primary key) of rows a write will get


@dataclass
class _Write:
    work: Callable[[Session], Any]
    reads: Reads
    answer: Future


class GroupCommit:
    """A writer thread for `store`, started on the first write and ended by `stop()`."""

    def __init__(self, store: Store, decisions: threading.Lock) -> None:
        self.store = store
        self.decisions = decisions
        self._queue: queue.SimpleQueue[_Write | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._starting = threading.Lock()  # guards starting, stopping and queueing

    async def write(self, work: Callable[[Session], T], reads: Reads = ()) -> T:
        """Run `work(session)` in the next burst and return its result once committed.

        `reads` are rows `work` will get by primary key, loaded with the burst's others.
        Raises what `work` raised, or what the commit raised, after rolling it back.
        """
        return await asyncio.wrap_future(self._submit(work, reads))

    def write_from_thread(self, work: Callable[[Session], T], reads: Reads = ()) -> T:
        """`write` for a worker thread: blocks until committed, raises as `write` does."""
        return self._submit(work, reads).result()

    def _submit(self, work: Callable[[Session], T], reads: Reads) -> Future:
        answer: Future = Future()
        with self._starting:  # so that no write lands behind the stop signal
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, name="corral-group-commit", daemon=True
                )
                self._thread.start()
            self._queue.put(_Write(work, reads, answer))
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
                session.info["loaded"] = _load(session, burst)  # held until the burst ends
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


def _load(session: Session, burst: list[_Write]) -> list[object]:
    """Every row the burst's writes named, read with one query per table."""
    keys: dict[type, set] = defaultdict(set)
    for write in burst:
        for model, key in write.reads:
            keys[model].add(key)
    loaded: list[object] = []
    for model, wanted in keys.items():
        (column,) = inspect(model).primary_key
        loaded += session.scalars(select(model).where(column.in_(wanted)))
    return loaded
