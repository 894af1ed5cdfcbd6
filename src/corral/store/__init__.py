"""The service's records, on SQLAlchemy: SQLite (WAL) by default, PostgreSQL possible."""
