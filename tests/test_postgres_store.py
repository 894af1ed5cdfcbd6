"""The service on PostgreSQL: a throwaway server started for the test, torn down after."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from inprocess import admin_token, api, document, wait_for
from sqlalchemy import select, text
from test_store_schema import revision_of, schema_differences

from corral.broker.api import _record
from corral.broker.peers import peer_of
from corral.broker.schemas import ReportBody
from corral.errors import StoreHeldError
from corral.lifecycle import NodeState
from corral.service.inventory import add_user
from corral.store.database import Store
from corral.store.models import Node, Report, User
from corral.store.schema import alembic_config, head, migration_engine

PG_BIN = Path("/usr/lib/postgresql/15/bin")

pytestmark = pytest.mark.slow


def _as_postgres(*command: str) -> None:
    subprocess.run(
        ["runuser", "-u", "postgres", "--", *command], check=True, capture_output=True, text=True
    )


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server of our own on a unix socket in a fresh directory."""
    root = Path(tempfile.mkdtemp(prefix="corral-pg-"))
    os.chmod(root, 0o755)  # the postgres user must reach its data directory
    data = root / "data"
    data.mkdir()
    shutil.chown(data, "postgres", "postgres")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    try:
        _as_postgres(str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
        _as_postgres(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(data),
            "-w",
            "-l",
            str(data / "log"),
            "-o",
            f"-k {data} -p {port} -c listen_addresses=''",
            "start",
        )
        _as_postgres(str(PG_BIN / "createdb"), "-h", str(data), "-p", str(port), "corral")
        yield f"postgresql+psycopg://postgres@/corral?host={data}&port={port}"
    finally:
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(data),
                "-m",
                "immediate",
                "stop",
            ],
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


def test_the_service_runs_on_postgresql_and_survives_a_restart(
    make_service, postgres_url, tmp_path
):
    first = make_service(db_url=postgres_url)
    with pytest.raises(StoreHeldError) as refused:
        make_service(db_url=postgres_url, data_dir=tmp_path / "another")
    assert refused.value.details["instance"] == first.instance
    client = api(first, admin_token(first))
    cluster_id = client.post("/v1/clusters", json={"document": document()}).json()["id"]
    wait_for(lambda: client.get(f"/v1/clusters/{cluster_id}").json()["state"] == "ready")
    report = ReportBody(phase="configure", role="worker", state="ok", exit_code=0, version=1)
    # a report sent again is stored once, by the unique key of reports
    with first.store.session() as session:
        me = peer_of(session.query(Node).filter_by(cluster_id=cluster_id).first())
        in_one_transaction = [_record(report, me, session), _record(report, me, session)]
    with first.store.session() as session:
        in_another = _record(report, me, session)
        stored = session.query(Report).filter_by(cluster_id=cluster_id).count()
    assert in_one_transaction == [NodeState.READY, None] and in_another is None
    assert stored == 1
    first.stop()

    second = make_service(db_url=postgres_url)
    client = api(second, admin_token(second))
    assert client.get(f"/v1/clusters/{cluster_id}").json()["state"] == "ready"
    assert client.delete(f"/v1/clusters/{cluster_id}").status_code == 202
    wait_for(lambda: client.get(f"/v1/clusters/{cluster_id}").json()["state"] == "terminated")
    events = client.get(f"/v1/clusters/{cluster_id}/events").json()
    assert [e["to_state"] for e in events if e["subject"] == "cluster"] == [
        "launching",
        "ready",
        "terminating",
        "terminated",
    ]


def test_a_postgresql_store_is_migrated_to_the_models_and_one_of_0_1_0_is_upgraded(
    postgres_url,
):
    store = Store(postgres_url)
    try:
        assert schema_differences(store.engine) == []
        with store.session() as session:
            add_user(session, "alice")
    finally:
        store.close()
    # as corral 0.1.0 left a store: the tables of revision 0001, no alembic_version
    config = alembic_config()
    engine = migration_engine(postgres_url)
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, "0001")
            connection.execute(text("DROP TABLE alembic_version"))
    finally:
        engine.dispose()

    store = Store(postgres_url)
    try:
        assert revision_of(store.engine) == head()
        assert schema_differences(store.engine) == []
        with store.session() as session:
            assert session.scalars(select(User.name)).all() == ["alice"]
    finally:
        store.close()
