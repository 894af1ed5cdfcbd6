"""The store's schema changes: Alembic revisions, run by store/schema.py when a store opens.

Conventions for a new revision (the next is 0007):

- Every change to store/models.py comes with a revision in versions/, in the same commit;
  tests/test_store_schema.py fails while the models and the migrated schema differ.
- Its id is the next four-digit number, and `down_revision` the id of the current head
  (one line of revisions, no branches); the file is `NNNN_what_it_does.py`.
- Generate it against a store at head, then read it and trim it to what changed:

      alembic -c src/corral/store/migrations/alembic.ini -x db=sqlite:////tmp/dev.db upgrade head
      alembic -c src/corral/store/migrations/alembic.ini -x db=sqlite:////tmp/dev.db \\
          revision --autogenerate --rev-id 0003 -m "what changes"

- A revision never imports corral's models (they will have moved on): column types are
  SQLAlchemy's own (`UTCDateTime` is `sa.DateTime(timezone=True)`); data is moved with
  `op.execute` or a table described in the revision itself.
- Alterations of an existing table go through `with op.batch_alter_table(...)` (as
  autogenerate writes them): on SQLite that copies the table, on PostgreSQL it is plain
  ALTERs. The whole upgrade is one transaction, so a failure leaves the store as it was.
- `downgrade()` undoes `upgrade()`; the tests run each revision up, down and up again.
- Stores kept from earlier releases (tests/fixtures/store-*) must open with every row
  intact: a renamed column goes into RENAMED in tests/test_store_upgrade.py; a new NOT
  NULL column needs a `server_default` (or values filled in) for the rows already there.
- A revision that ships in a release is never edited again.
"""
