"""Calls from many threads coalesced into one: a cloud's API call per batch of items.

The service terminates nodes from many worker threads at once; on EC2 each of those would
be a TerminateInstances call of its own, counted against the account's request rate.
A Batcher gathers the items submitted within a short window into one call of up to
`limit` items, and each caller returns when the call that carried its item is done.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class _Batch:
    items: list[str] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class Batcher:
    """Runs `call(items)` once per batch, on a thread of its own started on first use."""

    def __init__(
        self, call: Callable[[list[str]], None], window: float = 0.2, limit: int = 1000
    ) -> None:
        self._call = call
        self._window = window
        self._limit = limit
        self._changed = threading.Condition()
        self._waiting: list[_Batch] = []  # batches not yet called, oldest first
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, item: str) -> None:
        """Add `item` to the next call and wait for that call; raises what the call raised
        (every caller of a batch sees its error)."""
        with self._changed:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            if not self._waiting or len(self._waiting[-1].items) >= self._limit:
                self._waiting.append(_Batch())
            batch = self._waiting[-1]
            batch.items.append(item)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="batcher", daemon=True)
                self._thread.start()
            self._changed.notify_all()
        batch.done.wait()
        if batch.error is not None:
            raise batch.error

    def close(self) -> None:
        """Finish the batches already submitted, then stop the thread."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._waiting or self._closed)
                if not self._waiting:
                    return
                # the window starts with a batch's first item: whoever comes within it joins
                self._changed.wait_for(
                    lambda: len(self._waiting[0].items) >= self._limit or self._closed,
                    timeout=self._window,
                )
                batch = self._waiting.pop(0)
            try:
                self._call(batch.items)
            except Exception as exc:  # handed to every caller of the batch
                batch.error = exc
            batch.done.set()
