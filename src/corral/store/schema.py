"""A store's schema, brought to this release's revision whenever the store opens.

The revisions are Alembic scripts in migrations/versions (conventions in
migrations/__init__.py). Opening a store finds it:

- at this release's head revision: nothing to do (one query, the common case);
- empty: every revision runs, from the first;
- made by corral 0.1.0, before there were migrations (its tables, no alembic_version):
  it is marked as revision 0001, which is that schema, then upgraded;
- at an older revision: upgraded;
- at a revision this corral does not know, written by a newer corral: refused.

An upgrade is one transaction, begun before anything is read (SQLite: BEGIN IMMEDIATE;
PostgreSQL: an advisory lock too), so two services opening a store at once upgrade it
once, and an upgrade that fails leaves the store as it was.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.pool import NullPool

from corral.errors import StoreError

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# what corral 0.1.0 made with create_all: revision 0001
RELEASE_0_1_0 = "0001"
RELEASE_0_1_0_TABLES = frozenset(
    {
        "users",
        "pools",
        "hosts",
        "images",
        "clusters",
        "workspaces",
        "subnet_allocations",
        "address_allocations",
        "events",
        "cluster_secrets",
        "node_secrets",
        "bootstrap_tokens",
        "reports",
    }
)
# any constant: held for the upgrade's transaction by every corral on a PostgreSQL store
_PG_LOCK = 0x636F7272616C


def alembic_config() -> Config:
    """Alembic's configuration for the migrations shipped in this package (no .ini file)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


@functools.cache
def head() -> str:
    """The revision this release's models are at."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(connection: Connection) -> str | None:
    """The store's revision; None for a store without one (empty, or made by 0.1.0)."""
    try:
        return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except (OperationalError, ProgrammingError):  # no such table
        connection.rollback()
        return None


def upgrade(engine: Engine) -> None:
    """Bring the store of `engine` to `head()`; raises StoreError if it cannot be."""
    name = engine.url.render_as_string(hide_password=True)
    with engine.connect() as connection:
        if current_revision(connection) == head():
            return
    if engine.url.get_backend_name() == "sqlite" and engine.url.database in (None, "", ":memory:"):
        with engine.begin() as connection:  # a database in memory: no one else sees it
            _upgrade(connection, name)
        return
    upgrading = migration_engine(engine.url.render_as_string(hide_password=False))
    try:
        with upgrading.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK})
            _upgrade(connection, name)
    finally:
        upgrading.dispose()


def _upgrade(connection: Connection, name: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    current = MigrationContext.configure(connection).get_current_revision()
    if current is None:
        tables = set(inspect(connection).get_table_names())
        if tables & RELEASE_0_1_0_TABLES:
            missing = RELEASE_0_1_0_TABLES - tables
            if missing:
                raise StoreError(
                    f"the store {name} has some of corral's tables but not "
                    f"{', '.join(sorted(missing))}; it is not a store corral can upgrade",
                    missing=sorted(missing),
                )
            log.info("store %s was made by corral 0.1.0: marking it revision 0001", name)
            command.stamp(config, RELEASE_0_1_0)
            current = RELEASE_0_1_0
    else:
        known = {script.revision for script in ScriptDirectory.from_config(config).walk_revisions()}
        if current not in known:
            raise StoreError(
                f"the store {name} is at schema revision {current}, which this corral does "
                f"not know (it knows up to {head()}): a newer corral wrote it; run that one",
                revision=current,
                head=head(),
            )
    if current == head():  # another process upgraded it while this one waited for the lock
        return
    log.info("upgrading store %s from revision %s to %s", name, current or "(empty)", head())
    command.upgrade(config, "head")


def migration_engine(url: str) -> Engine:
    """An engine whose transactions are a whole upgrade each.

    SQLite's Python driver commits before every CREATE or ALTER and begins transactions
    only before writes; this engine begins them itself, with BEGIN IMMEDIATE, so one
    upgrade takes the write lock first and its DDL commits or rolls back as one.
    Foreign keys are not enforced on its connections: a batch ALTER on SQLite copies a
    table into a new one and drops the old.
    """
    if not url.startswith("sqlite"):
        return create_engine(url, poolclass=NullPool)
    engine = create_engine(url, poolclass=NullPool, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _no_implicit_transactions(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
