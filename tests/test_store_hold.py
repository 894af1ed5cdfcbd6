"""One service acts on a store: a second refuses to start, naming the first (store/hold.py).

In process where the hold itself is the point, and with real `corral serve` processes
for what a user sees: the refusal, kill -9 and a restart, and a service that loses its
store exiting.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import threading
import time
import urllib.request
from contextlib import closing
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from inprocess import admin_token, api, document, wait_for
from served import ServedCorral, client_env, corral, fake_machines, free_port

from corral.errors import StoreHeldError
from corral.store.hold import Process

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def holder_row(db: Path) -> tuple[Any, ...] | None:
    """(instance, pid, api_url) of the store's holder, read with SQLite itself."""
    with closing(sqlite3.connect(db)) as connection:
        return connection.execute("SELECT instance, pid, api_url FROM store_holder").fetchone()


# -- in process ------------------------------------------------------------------------


def test_a_holder_is_known_to_have_ended_only_where_its_pid_tells():
    me = Process.this()
    ended = subprocess.Popen(["true"])
    ended.wait()

    assert not me.has_ended()
    assert replace(me, pid=ended.pid, started=None).has_ended()  # the pid is free
    assert replace(me, started=me.started + 1).has_ended()  # it names a younger process
    # another machine, or another boot or pid namespace: its pid says nothing here
    assert not replace(me, pid=ended.pid, pid_space="another-boot/pid:[4026531836]").has_ended()
    assert not replace(me, pid=ended.pid, pid_space="").has_ended()


def test_a_second_service_on_a_store_refuses_naming_the_first(make_service, tmp_path: Path):
    first = make_service(data_dir=tmp_path / "first")
    shared = first.config.database_url

    with pytest.raises(StoreHeldError) as refused:
        make_service(data_dir=tmp_path / "second", db_url=shared)

    details = refused.value.details
    assert {k: v for k, v in details.items() if k != "since"} == {
        "instance": first.instance,
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "api_url": f"http://{first.config.listen}",
    }
    for named in (first.instance, f"pid {os.getpid()}", first.config.listen, details["since"]):
        assert named in refused.value.message

    make_service.stop(first)
    third = make_service(data_dir=tmp_path / "third", db_url=shared)
    assert holder_row(tmp_path / "first" / "corral.db")[0] == third.instance


def test_a_service_whose_store_is_taken_over_stops_acting_on_machines(
    make_service, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    first = make_service(data_dir=tmp_path / "first", hold_renew_every=timedelta(seconds=0.1))
    lost = threading.Event()
    first.on_store_lost = lost.set
    # a service that deems a hold lapsed at once takes the store from a live first one,
    # as any service would from one that stalled for longer than the time-to-live
    second = make_service(
        data_dir=tmp_path / "second",
        db_url=first.config.database_url,
        hold_ttl=timedelta(0),
    )

    assert lost.wait(10), "the first service did not notice that it lost its store"
    assert first.hold.lost is not None
    assert first.hold.lost.details["instance"] == second.instance
    assert any(
        r.levelname == "ERROR"
        and f"was taken over by corral service {second.instance}" in r.getMessage()
        and "stops acting on machines" in r.getMessage()
        for r in caplog.records
    )
    # a launch now is booted by the second service's engine alone
    client = api(second, admin_token(first))
    cluster_id = client.post("/v1/clusters", json={"document": document()}).json()["id"]
    wait_for(lambda: client.get(f"/v1/clusters/{cluster_id}").json()["state"] == "ready")
    assert second.backend.boots == 3
    assert first.backend.boots == 0


# -- real processes --------------------------------------------------------------------


def launch(served: ServedCorral) -> dict[str, Any]:
    result = corral(
        "run",
        "--cluster",
        str(EXAMPLES / "base-cluster.yaml"),
        "--hours",
        "1",
        "--json",
        env=served.env(),
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def status(served: ServedCorral, cluster_id: str) -> dict[str, Any]:
    result = corral("status", cluster_id, "--events", "--json", env=served.env())
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def instance_of(served: ServedCorral) -> str:
    with urllib.request.urlopen(served.url + "/v1/health", timeout=5) as response:
        return json.load(response)["instance"]


@pytest.mark.slow
def test_a_second_corral_serve_on_the_same_database_exits_and_touches_nothing(tmp_path: Path):
    with ServedCorral(tmp_path / "first") as first:
        cluster = launch(first)
        assert cluster["state"] == "ready"
        before = status(first, cluster["id"])
        machines = fake_machines(first.data_dir)

        second = corral(
            "serve",
            "--data-dir",
            str(tmp_path / "second"),
            "--db",
            f"sqlite:///{first.data_dir / 'corral.db'}",
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--broker-listen",
            f"127.0.0.1:{free_port()}",
            "--tick",
            "0.2",
            env=client_env(tmp_path / "second"),
            timeout=30,
        )

        assert second.returncode == 1, second.stderr
        message = second.stderr.strip().splitlines()[-1]
        assert message.startswith("corral: error: the store sqlite:///")
        for named in (instance_of(first), f"pid {first.process.pid}", first.url):
            assert named in message
        time.sleep(1)  # five of the first's ticks: had anything changed, they would show it
        after = status(first, cluster["id"])
        assert after == {**before, "lease_left_seconds": after["lease_left_seconds"]}
        assert fake_machines(first.data_dir) == machines


@pytest.mark.slow
def test_a_service_killed_with_sigkill_is_restarted_at_once_and_carries_on(tmp_path: Path):
    served = ServedCorral(tmp_path / "data")
    with served:
        cluster = launch(served)
        killed = (instance_of(served), served.process.pid)
        served.kill()
        # at once: the killed one's heartbeat is fresh, so only its ended process lets
        # this one in (a live holder would be refused, and start() raise)
        served.start()

        log = served.log_path.read_text()
        assert (
            f"taking over store sqlite:///{served.data_dir / 'corral.db'} from service "
            f"{killed[0]} (host {socket.gethostname()}, pid {killed[1]}): its process has ended"
        ) in log
        db = served.data_dir / "corral.db"
        assert holder_row(db) == (instance_of(served), served.process.pid, served.url)
        assert status(served, cluster["id"])["state"] == "ready"
        assert corral("destroy", cluster["id"], "--yes", env=served.env()).returncode == 0
        assert status(served, cluster["id"])["state"] == "terminated"
    assert served.process.returncode == 0
    assert holder_row(db) is None  # a clean stop gives the store up


@pytest.mark.slow
def test_a_served_corral_that_loses_its_store_stops_and_exits_saying_why(tmp_path: Path):
    served = ServedCorral(tmp_path / "data").start()
    try:
        db = served.data_dir / "corral.db"
        # what another service writes when it takes over a hold that lapsed
        with closing(sqlite3.connect(db)) as connection, connection:
            connection.execute(
                "UPDATE store_holder SET instance = 'b0b0b0b0b0b0b0b0', hostname = 'elsewhere',"
                " pid = 4242, api_url = 'http://elsewhere:8470'"
            )
        served.process.wait(timeout=15)
    finally:
        served.stop()

    assert served.process.returncode == 1
    log = served.log_path.read_text()
    assert (
        f"ERROR corral.store.hold: the store sqlite:///{db} was taken over by corral service "
        "b0b0b0b0b0b0b0b0 on host elsewhere, pid 4242, API http://elsewhere:8470"
    ) in log
    assert "this service stops acting on machines" in log
    assert "corral: error: the store" in log.splitlines()[-1]
