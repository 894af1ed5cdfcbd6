"""The broker's notifier: which nodes each re-read of a cluster is told to read."""

from __future__ import annotations

import asyncio

from corral.broker.notifier import ContextNotifier


def _reads_after(notices: list[tuple[str, set[str] | None]], fail_first: bool = False) -> list:
    """The (cluster, nodes) of each re-read the notifier asks for after `notices`, given
    one at a time, each after the re-read of the one before."""
    reads: list[tuple[str, set[str] | None]] = []

    def refresh(cluster_id: str, nodes: set[str] | None) -> set[str]:
        reads.append((cluster_id, None if nodes is None else set(nodes)))
        if fail_first and len(reads) == 1:
            raise OSError("the store is away")
        return set()

    async def run() -> None:
        notifier = ContextNotifier(refresh, settle=0.01)
        notifier.bind(asyncio.get_running_loop())
        for count, (cluster_id, nodes) in enumerate(notices, start=1):
            notifier.notify(cluster_id, nodes)
            while len(reads) < count:
                await asyncio.sleep(0.005)

    asyncio.run(run())
    return reads


def test_a_re_read_is_told_the_nodes_that_changed_or_none_for_a_whole_cluster():
    reads = _reads_after([("c-1", {"w-1"}), ("c-1", None), ("c-2", {"w-7", "w-8"})])
    assert reads == [("c-1", {"w-1"}), ("c-1", None), ("c-2", {"w-7", "w-8"})]


def test_changes_waiting_for_one_re_read_are_gathered():
    reads: list = []

    def refresh(cluster_id: str, nodes: set[str] | None) -> set[str]:
        reads.append((cluster_id, nodes))
        return set()

    async def run() -> None:
        notifier = ContextNotifier(refresh, settle=0.05)
        notifier.bind(asyncio.get_running_loop())
        notifier.notify("c-1", {"w-1"})
        notifier.notify("c-1", {"w-2"})
        notifier.notify("c-3", {"w-9"})
        notifier.notify("c-3", None)  # a whole-cluster change wins over node changes
        notifier.notify("c-3", {"w-10"})
        while len(reads) < 2:
            await asyncio.sleep(0.01)

    asyncio.run(run())
    assert sorted(reads) == [("c-1", {"w-1", "w-2"}), ("c-3", None)]


def test_after_a_failed_re_read_the_next_reads_the_whole_cluster():
    # the nodes the failed one was to read would otherwise never be read again
    reads = _reads_after([("c-1", {"w-1"}), ("c-1", {"w-2"}), ("c-1", {"w-3"})], fail_first=True)
    assert reads == [("c-1", {"w-1"}), ("c-1", None), ("c-1", {"w-3"})]
