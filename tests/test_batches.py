"""The batcher that coalesces calls from many threads (backends/batches.py)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from corral.backends.batches import Batcher


class Recorder:
    """A call that records each batch it is given, and fails where told to."""

    def __init__(self, fail_on: str = "") -> None:
        self.batches: list[list[str]] = []
        self.fail_on = fail_on
        self.lock = threading.Lock()

    def __call__(self, items: list[str]) -> None:
        with self.lock:
            self.batches.append(list(items))
        if self.fail_on in items:
            raise RuntimeError(f"refused {self.fail_on}")


def test_items_submitted_within_the_window_are_one_call():
    call = Recorder()
    batcher = Batcher(call, window=0.5, limit=1000)
    with ThreadPoolExecutor(50) as pool:
        list(pool.map(batcher.submit, [f"i-{n}" for n in range(50)]))
    batcher.close()
    assert len(call.batches) <= 2  # the first submitter may open a batch of its own
    assert sorted(i for b in call.batches for i in b) == sorted(f"i-{n}" for n in range(50))


def test_a_batch_holds_at_most_limit_items():
    call = Recorder()
    batcher = Batcher(call, window=0.5, limit=10)
    with ThreadPoolExecutor(35) as pool:
        list(pool.map(batcher.submit, [f"i-{n}" for n in range(35)]))
    batcher.close()
    assert all(len(b) <= 10 for b in call.batches)
    assert len(call.batches) >= 4
    assert sum(len(b) for b in call.batches) == 35


def test_every_caller_of_a_failed_batch_gets_its_error():
    call = Recorder(fail_on="i-3")
    batcher = Batcher(call, window=0.5, limit=1000)
    with ThreadPoolExecutor(5) as pool:
        futures = [pool.submit(batcher.submit, f"i-{n}") for n in range(5)]
    batcher.close()
    failed = [f for f in futures if f.exception() is not None]
    (batch,) = [b for b in call.batches if "i-3" in b]
    assert len(failed) == len(batch)
    assert all("refused i-3" in str(f.exception()) for f in failed)


def test_a_closed_batcher_refuses_new_items():
    batcher = Batcher(Recorder())
    batcher.submit("i-1")
    batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit("i-2")
