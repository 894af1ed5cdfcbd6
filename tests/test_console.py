"""A node's console: where backends keep it, and `GET .../nodes/{node}/console` over the
fake backend (the command line's `corral console` is in test_cli.py)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from inprocess import admin_token, api, document, wait_for

from corral.backends.base import Capability
from corral.backends.consoles import Consoles, read_tail
from corral.backends.fake import FakeBackend
from corral.cli.render import readable_console

# -- where consoles are kept ---------------------------------------------------------------


def test_read_tail_reads_only_the_last_bytes(tmp_path: Path) -> None:
    path = tmp_path / "console.log"
    path.write_bytes(b"x" * 100_000 + b"the end\n")
    assert read_tail(path, 8) == b"the end\n"
    assert read_tail(path, 10) == b"xxthe end\n"
    assert read_tail(path, 1 << 20) == path.read_bytes()
    assert read_tail(tmp_path / "missing.log", 10) is None


def test_consoles_are_private_and_go_with_their_cluster(tmp_path: Path) -> None:
    consoles = Consoles(tmp_path)
    fd = consoles.open("c-1", "n-1")
    os.write(fd, b"booting\n")
    os.close(fd)
    fd = consoles.open("c-1", "n-1")  # a boot again appends
    os.write(fd, b"again\n")
    os.close(fd)
    other = consoles.open("c-2", "n-2")
    os.close(other)

    path = consoles.path("c-1", "n-1")
    assert path == tmp_path / "consoles" / "c-1" / "n-1.log"
    assert read_tail(path, 100) == b"booting\nagain\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "consoles").stat().st_mode) == 0o700
    assert consoles.find("n-1") == path
    assert consoles.find("n-9") is None

    consoles.remove_cluster("c-1")
    assert consoles.find("n-1") is None
    assert consoles.find("n-2") == consoles.path("c-2", "n-2")
    consoles.remove_cluster("c-1")  # again: nothing to remove is fine
    with pytest.raises(ValueError):
        consoles.path("c-1", "../n-2")


def test_a_console_is_printed_without_its_colours_and_no_control_reaches_the_terminal():
    printed = "\x1b[0;32m  OK  \x1b[0m] Reached target\r\nx\ty\x07\x1b]0;title\x07\n\u202e"
    assert readable_console(printed) == (
        "  OK  ] Reached target\nx\ty\\x07\\x1b]0;title\\x07\n\\u202e"
    )


# -- the API ---------------------------------------------------------------------------------


def launch(client) -> str:
    response = client.post("/v1/clusters", json={"document": document()})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def view(client, cluster_id: str) -> dict:
    return client.get(f"/v1/clusters/{cluster_id}").json()


def console(client, cluster_id: str, node: str, **params):
    return client.get(f"/v1/clusters/{cluster_id}/nodes/{node}/console", params=params)


def test_a_running_nodes_console_is_shown_and_cut_to_the_bytes_asked(make_service) -> None:
    service = make_service()
    client = api(service, admin_token(service))
    cluster_id = launch(client)
    wait_for(lambda: view(client, cluster_id)["state"] == "ready")

    whole = console(client, cluster_id, "worker-0")
    assert whole.status_code == 200, whole.text
    assert whole.json() == {
        "cluster": cluster_id,
        "node": "worker-0",
        "console": "fake: booting worker-0\nfake: running\n",
        "truncated": False,
        "bytes": 37,
    }
    cut = console(client, cluster_id, "worker-0", bytes=14).json()
    assert (cut["console"], cut["truncated"], cut["bytes"]) == ("fake: running\n", True, 14)
    name = view(client, cluster_id)["name"]
    assert console(client, name, "worker-0").json()["cluster"] == cluster_id  # by name too


@pytest.mark.parametrize("asked", [0, -1, 1024 * 1024 + 1, "many"])
def test_a_byte_count_out_of_bounds_is_refused_naming_it(make_service, asked) -> None:
    service = make_service()
    client = api(service, admin_token(service))
    cluster_id = launch(client)
    refused = console(client, cluster_id, "worker-0", bytes=asked)
    assert refused.status_code == 422
    assert refused.json()["message"].startswith("bytes: ")
    assert refused.json()["details"]["problems"][0]["field"] == "bytes"


def test_an_unknown_node_is_not_found_by_name(make_service) -> None:
    service = make_service()
    client = api(service, admin_token(service))
    cluster_id = launch(client)
    missing = console(client, cluster_id, "worker-9")
    assert missing.status_code == 404
    assert missing.json()["message"] == f"cluster {cluster_id} has no node worker-9"


def test_a_failed_launchs_console_is_kept_until_the_cluster_is_destroyed(make_service) -> None:
    service = make_service({"fail": "worker-1:boot"})
    client = api(service, admin_token(service))
    cluster_id = launch(client)

    def removed() -> bool:
        detail = view(client, cluster_id)
        return detail["state"] == "failed" and all(
            n["state"] == "terminated" for n in detail["nodes"]
        )

    wait_for(removed)
    assert service.backend.list_machines() == []
    failed = console(client, cluster_id, "worker-1").json()["console"]
    assert failed == (
        "fake: booting worker-1\nfake: boot failed: injected boot failure for worker-1\n"
    )

    assert client.delete(f"/v1/clusters/{cluster_id}").status_code == 202
    wait_for(lambda: view(client, cluster_id)["state"] == "terminated")
    gone = console(client, cluster_id, "worker-1")
    assert gone.status_code == 404
    assert "no console of node worker-1 is kept" in gone.json()["message"]


def test_a_backend_that_keeps_no_console_is_named(make_service) -> None:
    backend = FakeBackend(boot_delay=0.05)
    backend.capabilities = backend.capabilities - {Capability.KEEPS_CONSOLES}
    service = make_service(backend=backend)
    client = api(service, admin_token(service))
    cluster_id = launch(client)
    refused = console(client, cluster_id, "worker-0")
    assert refused.status_code == 404
    assert refused.json()["message"] == (
        "backend fake keeps no console of its machines; see `corral logs`"
    )
    assert refused.json()["details"]["backend"] == "fake"


def test_another_users_cluster_has_no_console_for_them(make_service) -> None:
    service = make_service()
    admin = api(service, admin_token(service))
    cluster_id = launch(admin)
    token = admin.post("/v1/users", json={"name": "eve"}).json()["token"]
    assert console(api(service, token), cluster_id, "worker-0").status_code == 404
