"""The group commit: writes of one burst share a transaction, and a bad one spoils no other."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from pathlib import Path

import pytest
from sqlalchemy import event, func, select

from corral.errors import ConflictError
from corral.store.database import Store, sqlite_url
from corral.store.group_commit import GroupCommit
from corral.store.models import User


@pytest.fixture
def writes(tmp_path: Path):
    store = Store(sqlite_url(tmp_path / "store.db"))
    group = GroupCommit(store, threading.Lock())
    yield group
    group.stop()
    store.close()


def _add_user(name: str):
    def work(session) -> str:
        if name.startswith("bad"):
            raise ConflictError(f"{name} is refused")
        session.add(User(name=name, token_hash=f"hash-{name}"))
        return name

    return work


def _names(store: Store) -> set[str]:
    with store.session() as session:
        return set(session.scalars(select(User.name)))


def test_each_write_of_a_burst_gets_its_own_answer_and_a_bad_one_spoils_no_other(writes, caplog):
    gate = threading.Event()

    def first(session) -> str:
        gate.wait(10)  # keeps the writer busy while the others are handed over
        return _add_user("ana")(session)

    async def burst():
        calls = [first] + [_add_user(n) for n in ("bad-bo", "cy", "bad-di", "ed")]
        tasks = [asyncio.ensure_future(writes.write(call)) for call in calls]
        await asyncio.sleep(0.2)
        gate.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    with caplog.at_level(logging.DEBUG, logger="corral.store.group_commit"):
        answers = asyncio.run(burst())

    # the others shared one transaction, with or without the first
    assert re.search(r"a burst of [45] writes failed", caplog.text)
    assert answers[0] == "ana" and answers[2] == "cy" and answers[4] == "ed"
    assert isinstance(answers[1], ConflictError) and "bad-bo" in str(answers[1])
    assert isinstance(answers[3], ConflictError) and "bad-di" in str(answers[3])
    assert _names(writes.store) == {"ana", "cy", "ed"}


def test_a_write_that_breaks_the_commit_is_refused_alone(writes):
    writes.write_from_thread(_add_user("ana"))

    async def burst():
        twice = writes.write(_add_user("ana"))  # unique name: fails only at commit
        return await asyncio.gather(twice, writes.write(_add_user("bo")), return_exceptions=True)

    duplicate, second = asyncio.run(burst())
    assert isinstance(duplicate, Exception) and "UNIQUE" in str(duplicate)
    assert second == "bo"
    assert _names(writes.store) == {"ana", "bo"}


def test_an_answer_means_committed_and_stop_finishes_what_was_handed_over(writes):
    assert writes.write_from_thread(_add_user("ana")) == "ana"
    with writes.store.session() as session:  # another session sees it at once
        assert session.scalar(select(func.count()).select_from(User)) == 1
    writes.stop()
    assert writes.write_from_thread(_add_user("bo")) == "bo"  # starts again when needed
    assert _names(writes.store) == {"ana", "bo"}


def test_rows_the_writes_of_a_burst_name_are_read_in_one_query(writes):
    names = ["ana", "bo", "cy"]
    for name in names:
        writes.write_from_thread(_add_user(name))
    with writes.store.session() as session:
        ids = {u.name: u.id for u in session.scalars(select(User))}
    selects: list[str] = []

    def count(_conn, _cursor, statement, *_args) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            selects.append(statement)

    def promote(name: str, gate: threading.Event | None = None):
        def work(session) -> bool:
            if gate is not None:
                gate.wait(10)  # keeps the writer busy while the others are handed over
            session.get(User, ids[name]).is_admin = True
            return True

        return work

    async def burst(with_reads: bool) -> list[bool]:
        gate = threading.Event()
        calls = [promote(names[0], gate)] + [promote(n) for n in names[1:]]
        reads = [[(User, ids[n])] if with_reads else [] for n in names]
        first = asyncio.ensure_future(writes.write(calls[0], reads[0]))
        await asyncio.sleep(0.2)  # the first has the writer: the others form one burst
        rest = [
            asyncio.ensure_future(writes.write(call, read))
            for call, read in zip(calls[1:], reads[1:], strict=True)
        ]
        await asyncio.sleep(0.1)
        gate.set()
        return await asyncio.gather(first, *rest)

    event.listen(writes.store.engine, "before_cursor_execute", count)
    try:
        assert asyncio.run(burst(with_reads=False)) == [True] * 3
        unnamed = len(selects)
        selects.clear()
        assert asyncio.run(burst(with_reads=True)) == [True] * 3
    finally:
        event.remove(writes.store.engine, "before_cursor_execute", count)
    assert unnamed == 3  # one get each: the first alone, then two in the next burst
    assert len(selects) == 2  # the first burst's one row, then the next burst's two at once
    with writes.store.session() as session:
        assert all(session.scalars(select(User.is_admin)))
