"""The store's schema: its migrations reach exactly the models, from any store corral meets."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

from corral.errors import StoreError
from corral.store.database import Store, sqlite_url
from corral.store.models import Base
from corral.store.schema import alembic_config, current_revision, head, migration_engine


def schema_differences(engine: Engine) -> list:
    """What alembic finds between the store's tables and the models (empty: the same)."""
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, Base.metadata)


def revision_of(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return current_revision(connection)


def test_a_new_store_is_migrated_to_exactly_the_schema_of_the_models(tmp_path: Path) -> None:
    # fails when models.py changes without a revision in store/migrations/versions
    store = Store(sqlite_url(tmp_path / "corral.db"))
    try:
        assert schema_differences(store.engine) == []
        assert revision_of(store.engine) == head()
    finally:
        store.close()


def test_a_store_in_memory_is_migrated_on_its_own_connection() -> None:
    store = Store("sqlite://")
    try:
        assert schema_differences(store.engine) == []
    finally:
        store.close()


def test_every_revision_goes_down_and_up_again(tmp_path: Path) -> None:
    script = ScriptDirectory.from_config(alembic_config())
    revisions = [r.revision for r in reversed(list(script.walk_revisions()))]
    engine = migration_engine(sqlite_url(tmp_path / "corral.db"))
    config = alembic_config()
    try:
        for revision, before in zip(revisions, ["base", *revisions], strict=False):
            for target in (revision, before, revision):
                with engine.begin() as connection:
                    config.attributes["connection"] = connection
                    if target == before:
                        command.downgrade(config, target)
                    else:
                        command.upgrade(config, target)
            assert revision_of(engine) == revision
        assert schema_differences(engine) == []
    finally:
        engine.dispose()


def test_a_store_from_a_newer_corral_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "corral.db"
    Store(sqlite_url(path)).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE alembic_version SET version_num = '9001'")
    db.close()

    with pytest.raises(StoreError) as refused:
        Store(sqlite_url(path))

    assert "revision 9001" in refused.value.message
    assert refused.value.details == {"revision": "9001", "head": head()}
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [("9001",)]
    db.close()


def test_a_database_with_only_some_of_corrals_tables_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "corral.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name VARCHAR(64))")
    db.close()

    with pytest.raises(StoreError) as refused:
        Store(sqlite_url(path))

    assert "clusters" in refused.value.details["missing"]
    assert "users" not in refused.value.details["missing"]


def test_services_opening_one_new_store_at_once_migrate_it_once(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "corral.db")
    start = threading.Barrier(4)
    stores: list[Store] = []
    failures: list[BaseException] = []

    def open_store() -> None:
        start.wait()
        try:
            stores.append(Store(url))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for store in stores:
        store.close()

    assert failures == []
    store = Store(url)
    try:
        assert revision_of(store.engine) == head()
        assert schema_differences(store.engine) == []
    finally:
        store.close()
