"""Files that hold secrets are the service's alone (0600): the store, its WAL, the tokens."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from inprocess import admin_token, api, document, wait_for

from corral.store.database import Store, sqlite_url


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def usual_umask() -> Iterator[None]:
    """Files made under the umask most users have (0022) would be readable by all."""
    before = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(before)


def test_the_store_and_its_wal_are_made_0600(make_service, tmp_path: Path, usual_umask) -> None:
    service = make_service(data_dir=tmp_path / "data")
    client = api(service, admin_token(service))
    cluster_id = client.post("/v1/clusters", json={"document": document()}).json()["id"]
    wait_for(lambda: client.get(f"/v1/clusters/{cluster_id}").json()["state"] == "ready")

    files = sorted((tmp_path / "data").glob("corral.db*"))
    assert [f.name for f in files] == ["corral.db", "corral.db-shm", "corral.db-wal"]
    assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}
    assert mode(tmp_path / "data" / "admin.token") == 0o600
    assert mode(tmp_path / "data" / "broker" / "broker.key") == 0o600


def test_a_store_found_readable_by_others_is_tightened_at_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "corral.db"
    Store(sqlite_url(path)).close()
    path.chmod(0o644)

    with caplog.at_level(logging.WARNING, logger="corral.store.database"):
        Store(sqlite_url(path)).close()

    assert mode(path) == 0o600
    assert [r.getMessage() for r in caplog.records] == [
        f"{path} had mode 644, which lets other users read the secrets in it: made it 0600"
    ]


def test_an_admin_token_file_found_readable_by_others_is_rewritten_0600(
    make_service, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "admin.token").write_text("left over from another store\n")
    (data_dir / "admin.token").chmod(0o644)

    service = make_service(data_dir=data_dir)

    assert mode(data_dir / "admin.token") == 0o600
    assert api(service, admin_token(service)).get("/v1/whoami").json()["name"] == "admin"
