"""A store written by an earlier release opens with everything in it intact, and works.

Each directory tests/fixtures/store-<release>/ holds a store that release wrote
(tests/fixtures/make_store.py made it, driving that release's service): two users, a
second host, an image, a ready cluster with its secrets, reports and allocations, a
destroyed one, and a failed launch that was kept.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from inprocess import api, wait_for
from test_store_schema import schema_differences

import corral
from corral.backends.base import ImageRef, NodeSpec, Placement
from corral.backends.fake import FakeBackend
from corral.store.database import Store, sqlite_url
from corral.store.models import Cluster, ClusterSecret, utcnow

FIXTURES = Path(__file__).resolve().parent / "fixtures"
RELEASES = sorted(path.name for path in FIXTURES.glob("store-*") if path.is_dir())
# columns a later revision renamed, (table, old name) -> new name: their values must
# be found under the new name
RENAMED: dict[tuple[str, str], str] = {
    ("cluster_secrets", "ssh_ca_private"): "ssh_host_ca_private",  # 0003
    ("cluster_secrets", "ssh_ca_public"): "ssh_host_ca_public",
    **{  # 0006
        (table, "workspace_id"): "node_id"
        for table in (
            "address_allocations",
            "events",
            "node_secrets",
            "bootstrap_tokens",
            "reports",
        )
    },
}
# tables a later revision renamed
RENAMED_TABLES = {"workspaces": "nodes"}  # 0006
# columns whose values a later revision wrote in another form: old value -> the new form
CONVERTED: dict[tuple[str, str], Callable[[Any], Any]] = {
    ("clusters", "document"): lambda text: json.dumps(  # 0006: YAML became canonical JSON
        yaml.safe_load(text), ensure_ascii=False, separators=(",", ":")
    ),
}
# columns a later revision dropped, each with a check that the row still says the same
DROPPED: dict[tuple[str, str], Callable[[Any, dict[str, Any]], bool]] = {
    # 0006: the policy mode is the document's
    ("clusters", "policy"): lambda mode, row: json.loads(row["document"])["policy"]["mode"] == mode,
}
# the states in which a node's machine runs
RUNNING = ("booting", "registered", "configuring", "ready")
NEW = "name: new\nimage: tiny\nnodes: [{group: worker, count: 2}]\n"


def test_there_is_a_store_of_the_first_release_and_of_this_one() -> None:
    # a release that changes the schema keeps a store it wrote, for every later one to open
    assert "store-0.1.0" in RELEASES
    assert f"store-{corral.__version__}" in RELEASES


@pytest.fixture(params=RELEASES)
def old_store(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A copy of one release's store, as the database of the data directory returned."""
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    shutil.copyfile(FIXTURES / request.param / "corral.db", data_dir / "corral.db")
    (data_dir / "tokens.json").write_text((FIXTURES / request.param / "tokens.json").read_text())
    return data_dir


def rows(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table, read with SQLite itself, in a stable order."""
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    try:
        tables = [
            name
            for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if not name.startswith("sqlite_") and name != "alembic_version"
        ]
        return {
            table: sorted((dict(row) for row in db.execute(f'SELECT * FROM "{table}"')), key=repr)
            for table in tables
        }
    finally:
        db.close()


def test_every_row_of_an_old_store_is_there_after_the_upgrade(old_store: Path) -> None:
    path = old_store / "corral.db"
    before = rows(path)
    assert before["clusters"] and before["events"] and before["cluster_secrets"]

    store = Store(sqlite_url(path))
    try:
        assert schema_differences(store.engine) == []
    finally:
        store.close()

    after = rows(path)
    for table, old in before.items():
        new_table = RENAMED_TABLES.get(table, table)
        dropped = [c for (of, c) in DROPPED if of == table and old and c in old[0]]
        if dropped:  # each row is still there, by id, and still says what the column said
            by_id = {row["id"]: row for row in after[new_table]}
            for old_row in old:
                new_row = by_id.get(old_row["id"])
                assert new_row is not None, (table, old_row)
                for column in dropped:
                    assert DROPPED[table, column](old_row[column], new_row), (table, column)
        columns = {
            c: RENAMED.get((table, c), c)
            for c in (old[0] if old else [])
            if (table, c) not in DROPPED
        }
        kept = sorted(
            ({c: row[new] for c, new in columns.items()} for row in after[new_table]), key=repr
        )
        expected = sorted(
            ({c: CONVERTED.get((table, c), lambda v: v)(row[c]) for c in columns} for row in old),
            key=repr,
        )
        assert kept == expected, table


def node_table(db: sqlite3.Connection) -> str:
    """The table of nodes, by the name the store's release gave it."""
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
    return "nodes" if "nodes" in tables else "workspaces"  # renamed by 0006


def machines_of(path: Path) -> FakeBackend:
    """A fake backend that still runs every machine the old store's live nodes had."""
    backend = FakeBackend(boot_delay=0.05)
    db = sqlite3.connect(path)
    try:
        table = node_table(db)
        running = db.execute(
            "SELECT w.id, w.cluster_id, w.name, w.host_name, w.image, w.cores, w.memory_mib,"
            f" w.address, c.subnet FROM {table} w JOIN clusters c ON c.id = w.cluster_id"
            f" WHERE w.state IN {RUNNING}"
        ).fetchall()
    finally:
        db.close()
    for row in running:
        node_id, cluster_id, name, host, image, cores, memory_mib, address, subnet = row
        spec = NodeSpec(node_id, cluster_id, name, ImageRef(image), cores, memory_mib)
        backend.boot(spec, Placement("local", host, address or "", subnet or ""))
    return backend


def test_the_service_carries_on_with_an_old_store(old_store: Path, make_service) -> None:
    path = old_store / "corral.db"
    tokens = json.loads((old_store / "tokens.json").read_text())
    before = rows(path)
    by_name = {c["name"]: c for c in before["clusters"]}
    # the service runs as if shortly after the store was written: leases have not ended
    shift = datetime.fromisoformat(tokens["made_at"]) + timedelta(minutes=1) - utcnow()
    backend = machines_of(path)
    service = make_service(data_dir=old_store, backend=backend, clock=lambda: utcnow() + shift)
    admin, alice = api(service, tokens["admin"]), api(service, tokens["alice"])

    assert admin.get("/v1/whoami").json()["admin"] is True
    assert {u["name"] for u in admin.get("/v1/users").json()} == {"admin", "alice"}
    assert {"local", "rack-1"} <= {h["name"] for h in admin.get("/v1/hosts").json()}
    assert [i["name"] for i in admin.get("/v1/images").json()] == ["tiny"]
    mine = {c["name"]: c for c in alice.get("/v1/clusters", params={"all": True}).json()}
    assert {name: c["state"] for name, c in mine.items()} == {
        "live": "ready",
        "ended": "terminated",
    }
    failed = admin.get(f"/v1/clusters/{by_name['failed']['id']}").json()
    assert failed["state"] == "failed" and failed["failure"] == by_name["failed"]["failure"]

    for cluster in before["clusters"]:
        events = api(service, tokens["admin"]).get(f"/v1/clusters/{cluster['id']}/events")
        stored = [e for e in before["events"] if e["cluster_id"] == cluster["id"]]
        assert [e["reason"] for e in events.json()][: len(stored)] == [
            e["reason"] for e in sorted(stored, key=lambda e: e["id"])
        ]
    live = by_name["live"]["id"]
    logs = alice.get(f"/v1/clusters/{live}/nodes/head-0/logs").json()
    assert any("configured controller on head-0" in r["log_tail"] for r in logs)

    # the cluster's CA key is still there, in the upgraded store, and still signs what its
    # certificate vouches for
    with service.store.session() as session:
        kept = session.get(ClusterSecret, live)
        ca_cert_pem, ca_key_pem = kept.ca_cert_pem, kept.ca_key_pem
    (secret,) = [s for s in before["cluster_secrets"] if s["cluster_id"] == live]
    assert ca_cert_pem == secret["ca_cert_pem"]
    ca = x509.load_pem_x509_certificate(ca_cert_pem.encode())
    ca_key = serialization.load_pem_private_key(ca_key_pem.encode(), password=None)
    signature = ca_key.sign(b"still signs", ec.ECDSA(hashes.SHA256()))
    ca.public_key().verify(signature, b"still signs", ec.ECDSA(hashes.SHA256()))
    # and while its certificate is valid, the service issues users' credentials with it.
    # Certificates start by this machine's clock, not the service's shifted one: a store
    # written more than its lease ago has a CA that has ended, and issues nothing
    if ca.not_valid_after_utc > datetime.now(UTC) + timedelta(minutes=5):
        with service.store.session() as session:
            stored = session.get(Cluster, live)
            stored.lease_end = max(stored.lease_end, utcnow() + timedelta(minutes=5))
            session.commit()
        credentials = alice.post(f"/v1/clusters/{live}/credentials").json()
        assert credentials["ca_cert_pem"] == ca_cert_pem
        user_cert = x509.load_pem_x509_certificate(credentials["user_cert_pem"].encode())
        user_cert.verify_directly_issued_by(ca)

    # its nodes still run: ticks of the engine find their machines and leave them be
    time.sleep(0.5)
    nodes = alice.get(f"/v1/clusters/{live}").json()["nodes"]
    assert [(n["name"], n["state"]) for n in nodes] == [
        ("head-0", "ready"),
        ("worker-0", "ready"),
        ("worker-1", "ready"),
    ]

    # and the service goes on: a new launch, then the old and new clusters destroyed
    launched = alice.post("/v1/clusters", json={"document": NEW}).json()
    wait_for(lambda: alice.get(f"/v1/clusters/{launched['id']}").json()["state"] == "ready")
    held = {c["subnet"] for c in before["clusters"] if c["state"] != "terminated"}
    assert launched["subnet"] not in held
    for cluster_id in (live, launched["id"]):
        assert alice.delete(f"/v1/clusters/{cluster_id}").status_code == 202
    for cluster_id in (live, launched["id"]):
        wait_for(
            lambda c=cluster_id: alice.get(f"/v1/clusters/{c}").json()["state"] == "terminated"
        )
    assert {m.node_id for m in backend.list_machines()} == {
        w["id"]
        for w in before.get("nodes", before.get("workspaces", []))
        if w["cluster_id"] == by_name["failed"]["id"] and w["state"] in RUNNING
    }
