"""Opening the store: engine, schema, and sessions.

SQLite runs in WAL mode with a busy timeout so API threads and the engine thread can
read while one writes. Its file holds the clusters' private keys, so it is made 0600
before SQLite first opens it (SQLite gives its -wal and -shm files the database's mode),
and tightened to 0600 if it was found looser.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from corral.store import schema

log = logging.getLogger(__name__)

# SQLite's files beside the database: each holds pages of it, so the same secrets
SQLITE_SUFFIXES = ("", "-wal", "-shm", "-journal")


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


class Store:
    """The service's database: one engine and a session factory.

    Opening it brings its schema to this release's (store/schema.py); raises StoreError
    when that cannot be done.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        kwargs: dict[str, object] = {}
        if url.startswith("sqlite"):
            if path := sqlite_path(url):
                make_private(path)
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
            # room for every API and broker worker thread: a connection made and dropped
            # per request would cost more than the request's own queries
            kwargs["pool_size"] = 48
        self.engine: Engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        try:
            schema.upgrade(self.engine)
        except BaseException:
            self.engine.dispose()
            raise
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on any exception."""
        session = self.sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def close(self) -> None:
        self.engine.dispose()


def sqlite_path(url: str) -> Path | None:
    """The file of an SQLite URL; None for an in-memory database."""
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def make_private(path: Path) -> None:
    """Create the database file 0600 if it is missing; tighten it and its companions."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    for suffix in SQLITE_SUFFIXES:
        companion = path.with_name(path.name + suffix)
        try:
            mode = stat.S_IMODE(companion.stat().st_mode)
        except FileNotFoundError:
            continue
        if mode & 0o077:
            log.warning(
                "%s had mode %o, which lets other users read the secrets in it: made it 0600",
                companion,
                mode,
            )
            companion.chmod(0o600)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    _enter_wal(cursor)
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _enter_wal(cursor, patience: float = 30.0) -> None:
    """Put the database in WAL mode. Switching a new file needs its exclusive lock, and
    SQLite answers "database is locked" at once, without its busy handler, while another
    connection opening the same new file holds a lock: so wait for it here."""
    deadline = time.monotonic() + patience
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
