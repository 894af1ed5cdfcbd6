"""Alembic's environment: runs revisions of versions/ on one connection.

corral hands it the connection of the upgrade it began (store/schema.py) in
`config.attributes["connection"]`; a developer's `alembic` command names the database
with `-x db=URL` instead (see alembic.ini beside this file).
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

from corral.store.models import Base, UTCDateTime
from corral.store.schema import migration_engine

config = context.config


def render_item(kind: str, value: object, _context: object) -> str | bool:
    """Write our column types as SQLAlchemy's in new revisions: those outlive models.py."""
    if kind == "type" and isinstance(value, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite alters most things by copying the table: batch mode does that
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        render_item=render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("corral's migrations run on a database: give one with -x db=URL")
if (given := config.attributes.get("connection")) is not None:
    run(given)
else:
    if config.config_file_name is not None:
        fileConfig(config.config_file_name)
    url = context.get_x_argument(as_dictionary=True).get("db")
    if not url:
        raise SystemExit("name the database: alembic -x db=URL ...")
    engine = migration_engine(url)
    try:
        with engine.begin() as connection:
            run(connection)
    finally:
        engine.dispose()
