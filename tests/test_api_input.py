"""What the REST API takes from clients (issue 18): one rule per kind of name, bounded
numbers and bodies, errors in the documented shape, and documents parsed outside the lock.

In-process through the app (an httpx transport, or the bare ASGI interface where the
point is what the app reads), and over a real socket where the server's part matters.
"""

from __future__ import annotations

import json
import socket
import threading

import pytest
from inprocess import admin_token, api, document, post_streamed
from sqlalchemy import func, select

from corral.store.models import Cluster, Event, Host, Node, User

MIB = 1024 * 1024


def rows(service) -> dict[str, int]:
    """How many rows of each kind a refused request must not add."""
    with service.store.session() as s:
        return {
            model.__tablename__: s.scalar(select(func.count()).select_from(model))
            for model in (Cluster, Node, Event, User, Host)
        }


def post(client, path: str, body: dict):
    """POST `body` as JSON as Python writes it: Infinity and NaN included, as a client
    may send them (JSON has no such numbers, and httpx refuses to write them)."""
    return client.post(path, content=json.dumps(body).encode(), headers=_json)


def refused(response, status: int, field: str) -> dict:
    """The ErrorView of a refused request that names `field` first."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "message", "details"}
    assert body["message"].startswith(f"{field}: "), body["message"]
    return body


@pytest.mark.parametrize(
    "name",
    ["../../x;$(id)", "a" * 200_000, "ok\n\x1b[2J\x1b[31mFORGED log line", "base\n", "Ünïcode"],
    ids=["path-and-shell", "200000-chars", "newline-and-ansi", "trailing-newline", "unicode"],
)
def test_a_launch_name_follows_the_cluster_name_rule(make_service, name):
    service = make_service()
    client = api(service, admin_token(service))
    before = rows(service)
    body = refused(
        client.post("/v1/clusters", json={"document": document(), "name": name}), 422, "name"
    )
    assert body["error"] == "bad-request"
    assert "not a cluster name" in body["message"] and len(body["message"]) < 300
    assert rows(service) == before


def test_users_hosts_pools_and_images_follow_their_name_rules(make_service):
    service = make_service()
    admin = api(service, admin_token(service))
    before = rows(service)
    refused(admin.post("/v1/users", json={"name": "../root"}), 422, "name")
    refused(admin.post("/v1/users", json={"name": "bob\n"}), 422, "name")
    host = {"name": "h1", "cores": 1, "memory_mib": 1}
    refused(admin.post("/v1/hosts", json={**host, "name": "h 1;reboot"}), 422, "name")
    refused(admin.post("/v1/hosts", json={**host, "pool": "../../etc"}), 422, "pool")
    image = {"name": "Bad/Name", "digest": "sha256:" + "0" * 64}
    refused(admin.post("/v1/images", json=image), 422, "name")
    # names in paths too: a name that cannot exist is a bad request, not a lookup
    refused(admin.delete("/v1/users/bob%0Aforged"), 422, "name")
    refused(admin.delete("/v1/hosts/" + "h" * 65), 422, "name")
    refused(admin.get("/v1/clusters/Not_A_Name"), 422, "ref")
    refused(admin.get("/v1/clusters/c-1/nodes/head%3Bid/logs"), 422, "node")
    assert rows(service) == before


@pytest.mark.parametrize("seconds", [float("inf"), float("-inf"), float("nan"), 1e300, 2**70])
def test_leases_and_extensions_are_finite_and_bounded(make_service, seconds):
    service = make_service()
    client = api(service, admin_token(service))
    before = rows(service)
    launched = post(client, "/v1/clusters", {"document": document(), "lease_seconds": seconds})
    refused(launched, 422, "lease_seconds")
    assert rows(service) == before
    cluster = client.post("/v1/clusters", json={"document": document()}).json()
    extended = post(client, f"/v1/clusters/{cluster['id']}/extend", {"seconds": seconds})
    refused(extended, 422, "seconds")
    assert client.get(f"/v1/clusters/{cluster['id']}").json()["lease_end"] == cluster["lease_end"]


def test_huge_numbers_for_users_hosts_images_and_events_are_refused(make_service):
    service = make_service()
    admin = api(service, admin_token(service))
    before = rows(service)
    huge = 2**70  # SQLite holds at most 2**63 - 1
    refused(admin.post("/v1/users", json={"name": "bob", "max_nodes": huge}), 422, "max_nodes")
    infinite = {"name": "bob", "max_node_hours": float("inf")}
    refused(post(admin, "/v1/users", infinite), 422, "max_node_hours")
    host = {"name": "big", "cores": 1, "memory_mib": 1}
    refused(admin.post("/v1/hosts", json={**host, "cores": huge}), 422, "cores")
    refused(admin.post("/v1/hosts", json={**host, "memory_mib": huge}), 422, "memory_mib")
    image = {"name": "img", "digest": "sha256:" + "0" * 64, "size_bytes": huge}
    refused(admin.post("/v1/images", json=image), 422, "size_bytes")
    assert rows(service) == before
    cluster_id = admin.post("/v1/clusters", json={"document": document()}).json()["id"]
    refused(admin.get(f"/v1/clusters/{cluster_id}/events", params={"since": huge}), 422, "since")


def test_request_errors_are_error_views_naming_each_field(make_service):
    service = make_service()
    admin = api(service, admin_token(service))
    body = refused(
        admin.post("/v1/users", json={"name": 5, "max_nodes": -1, "extra": 1}), 422, "name"
    )
    assert body["error"] == "bad-request"
    fields = [p["field"] for p in body["details"]["problems"]]
    assert fields == ["name", "max_nodes", "extra"]
    body = refused(admin.post("/v1/users", content=b'{"name": ', headers=_json), 422, "body")
    assert "not valid JSON" in body["message"]
    body = refused(admin.post("/v1/users", content=b"\xff\xfe", headers=_json), 422, "body")
    refused(
        admin.post("/v1/clusters", json={"document": document(), "source": "a\nb"}), 422, "source"
    )


_json = {"content-type": "application/json"}


def test_documents_are_parsed_outside_the_service_lock(make_service):
    service = make_service()
    client = api(service, admin_token(service))
    answers = []
    with service.decisions:  # as the engine or a slow write would hold it
        asking = threading.Thread(
            target=lambda: answers.append(
                client.post("/v1/clusters", json={"document": "nodes: [{corez: 1}]\n"})
            ),
            daemon=True,
        )
        asking.start()
        asking.join(timeout=10)
        assert answers, "a bad document waited for the service's lock"
    assert answers[0].status_code == 422 and answers[0].json()["error"] == "invalid-document"


def test_every_operation_documents_its_errors_as_error_views(make_service):
    service = make_service()
    spec = api(service).get("/openapi.json").json()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status in ("401", "404", "413", "422"):
                schema = operation["responses"][status]["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorView"}, (method, path)
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


# -- bodies over the limit ---------------------------------------------------------------


def test_a_streamed_300_mib_body_is_refused_after_the_limit_not_read_whole(make_service):
    service = make_service()
    before = rows(service)
    taken, status, headers, error = post_streamed(service.app, admin_token(service), 300 * MIB)
    assert taken <= 2 * MIB + 64 * 1024  # the limit and the chunk that passed it
    assert status == 413 and (b"connection", b"close") in headers
    assert error["error"] == "payload-too-large" and "2097152 bytes" in error["message"]
    assert rows(service) == before
    # a body within the limit still reaches the API
    padded = document() + "#" * (200 * 1024) + "\n"  # under the document's own limit too
    client = api(service, admin_token(service))
    assert client.post("/v1/clusters", json={"document": padded}).status_code == 201


def test_a_body_declared_at_300_mib_is_refused_at_once_over_a_socket(make_service):
    service = make_service(serve=True)
    host, port = service.config.listen.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/clusters HTTP/1.1\r\nHost: corral\r\n"
            b"Content-Type: application/json\r\nContent-Length: 314572800\r\n\r\n"
        )
        answer = b""
        while chunk := sock.recv(65536):  # the server answers, then closes: no body waited for
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b'"error":"payload-too-large"' in answer and b"(314572800 bytes)" in answer
