"""The service through its HTTP API, in-process, with the fake backend and a real store."""

from __future__ import annotations

import ipaddress
import logging

from inprocess import admin_token, api, document, wait_for
from sqlalchemy import func, select

from corral.store.models import (
    AddressAllocation,
    Cluster,
    Event,
    Node,
    SubnetAllocation,
    User,
)


def launch(client, text=None, **body):
    return client.post("/v1/clusters", json={"document": text or document(), **body})


def state_of(client, cluster_id):
    return client.get(f"/v1/clusters/{cluster_id}").json()["state"]


def counts(service):
    """How many rows of each launch-created kind the store holds."""
    with service.store.session() as s:
        return {
            model.__tablename__: s.scalar(select(func.count()).select_from(model))
            for model in (Cluster, Node, Event, AddressAllocation, SubnetAllocation)
        }


def test_launch_reaches_ready_with_every_node_placed_and_addressed(make_service):
    service = make_service()
    client = api(service, admin_token(service))
    created = launch(client, lease_seconds=3600)
    assert created.status_code == 201, created.text
    cluster_id = created.json()["id"]
    wait_for(lambda: state_of(client, cluster_id) == "ready")
    view = client.get(f"/v1/clusters/{cluster_id}").json()
    assert [n["name"] for n in view["nodes"]] == ["head-0", "worker-0", "worker-1"]
    assert all(n["state"] == "ready" and n["host"] == "local" for n in view["nodes"])
    subnet = ipaddress.ip_network(view["subnet"])
    addresses = [ipaddress.ip_address(n["address"]) for n in view["nodes"]]
    assert len(set(addresses)) == 3
    assert all(a in subnet and a != next(subnet.hosts()) for a in addresses)
    assert [n["login"] for n in view["nodes"]] == [True, False, False]
    assert view["ready_count"] == 3 and view["lease_left_seconds"] > 3500


def test_destroy_twice_succeeds_and_leaves_nothing_on_the_backend(make_service):
    service = make_service()
    client = api(service, admin_token(service))
    cluster_id = launch(client).json()["id"]
    wait_for(lambda: state_of(client, cluster_id) == "ready")
    first = client.delete(f"/v1/clusters/{cluster_id}")
    assert first.status_code == 202 and first.json()["state"] == "terminating"
    wait_for(lambda: state_of(client, cluster_id) == "terminated")
    second = client.delete(f"/v1/clusters/{cluster_id}")
    assert second.status_code == 202 and second.json()["state"] == "terminated"
    assert service.backend.list_machines() == []
    assert counts(service)["address_allocations"] == 0
    assert counts(service)["subnet_allocations"] == 0
    host = client.get("/v1/hosts").json()[0]
    assert (host["free_cores"], host["free_memory_mib"]) == (host["cores"], host["memory_mib"])


def test_every_state_change_is_an_event_with_reason(make_service):
    service = make_service()
    client = api(service, admin_token(service))
    cluster_id = launch(client).json()["id"]
    wait_for(lambda: state_of(client, cluster_id) == "ready")
    client.delete(f"/v1/clusters/{cluster_id}")
    wait_for(lambda: state_of(client, cluster_id) == "terminated")
    events = client.get(f"/v1/clusters/{cluster_id}/events").json()
    head = [(e["from_state"], e["to_state"]) for e in events if e["subject"] == "head-0"]
    assert head == [
        (None, "pending"),
        ("pending", "booting"),
        ("booting", "ready"),
        ("ready", "terminating"),
        ("terminating", "terminated"),
    ]
    cluster = [e["to_state"] for e in events if e["subject"] == "cluster"]
    assert cluster == ["launching", "ready", "terminating", "terminated"]
    assert all(e["reason"] for e in events)
    later = client.get(f"/v1/clusters/{cluster_id}/events", params={"since": events[-2]["id"]})
    assert [e["id"] for e in later.json()] == [events[-1]["id"]]


def test_names_are_made_unique_and_clusters_are_found_by_name(make_service):
    service = make_service(cpu_overcommit=16)
    client = api(service, admin_token(service))
    first = launch(client).json()
    second = launch(client).json()
    assert (first["name"], second["name"]) == ("base-cluster", "base-cluster-2")
    assert client.get("/v1/clusters/base-cluster-2").json()["id"] == second["id"]
    assert launch(client, name="mine").json()["name"] == "mine"


def test_over_capacity_is_refused_with_needed_and_available_and_creates_nothing(make_service):
    service = make_service()
    client = api(service, admin_token(service))
    before = counts(service)
    text = "image: x\nnodes:\n  - group: worker\n    count: 3\n    cores: 100\n"
    refused = launch(client, text)
    assert refused.status_code == 409
    body = refused.json()
    assert body["error"] == "no-capacity"
    free = client.get("/v1/hosts").json()[0]["free_cores"]
    assert "needed 300 cores" in body["message"]
    assert f"available {free} cores" in body["message"]
    assert body["details"]["needed"]["cores"] == 300
    assert body["details"]["available"]["cores"] == free
    assert counts(service) == before


def test_over_quota_is_refused_and_creates_nothing(make_service):
    service = make_service()
    admin = api(service, admin_token(service))
    token = admin.post("/v1/users", json={"name": "bob", "max_nodes": 2}).json()["token"]
    bob = api(service, token)
    before = counts(service)
    refused = launch(bob)
    assert refused.status_code == 403
    assert refused.json()["error"] == "quota-exceeded"
    assert refused.json()["details"] == {"quota": "nodes", "needed": 3, "used": 0, "limit": 2}
    assert counts(service) == before
    hours = admin.post("/v1/users", json={"name": "carol", "max_node_hours": 5}).json()["token"]
    refused = launch(api(service, hours), lease_seconds=2 * 3600)  # 3 nodes x 2h = 6 > 5
    assert refused.status_code == 403 and refused.json()["details"]["quota"] == "node-hours"
    assert counts(service) == before


def test_quota_counts_what_a_user_already_holds(make_service):
    service = make_service()
    admin = api(service, admin_token(service))
    token = admin.post("/v1/users", json={"name": "bob", "max_nodes": 4}).json()["token"]
    bob = api(service, token)
    assert launch(bob).status_code == 201
    refused = launch(bob)
    assert refused.status_code == 403 and refused.json()["details"]["used"] == 3
    assert bob.get("/v1/whoami").json()["nodes_in_use"] == 3


def test_a_second_user_cannot_see_extend_or_destroy_anothers_cluster(make_service):
    service = make_service()
    admin = api(service, admin_token(service))
    alice = api(service, admin.post("/v1/users", json={"name": "alice"}).json()["token"])
    bob = api(service, admin.post("/v1/users", json={"name": "bob"}).json()["token"])
    cluster_id = launch(alice).json()["id"]
    assert bob.get(f"/v1/clusters/{cluster_id}").status_code == 404
    assert bob.get("/v1/clusters/base-cluster").status_code == 404
    assert bob.get(f"/v1/clusters/{cluster_id}/events").status_code == 404
    assert bob.post(f"/v1/clusters/{cluster_id}/extend", json={"seconds": 60}).status_code == 404
    assert bob.delete(f"/v1/clusters/{cluster_id}").status_code == 404
    assert bob.get("/v1/clusters").json() == []
    assert state_of(alice, cluster_id) in ("launching", "ready")
    assert [c["id"] for c in admin.get("/v1/clusters", params={"all": True}).json()] == [cluster_id]
    assert admin.get("/v1/clusters").json() == []  # without all, admins see their own


def test_only_admins_manage_users_and_hosts_and_tokens_are_required(make_service):
    service = make_service()
    admin = api(service, admin_token(service))
    bob = api(service, admin.post("/v1/users", json={"name": "bob"}).json()["token"])
    assert bob.post("/v1/users", json={"name": "eve"}).status_code == 403
    assert bob.post("/v1/hosts", json={"name": "h", "cores": 1, "memory_mib": 1}).status_code == 403
    assert api(service).get("/v1/clusters").status_code == 401
    assert api(service, "crl_wrong").get("/v1/clusters").status_code == 401
    admin.delete("/v1/users/bob")
    assert bob.get("/v1/clusters").status_code == 401


def test_hosts_add_capacity_and_busy_hosts_cannot_be_removed(make_service):
    service = make_service()
    admin = api(service, admin_token(service))
    added = admin.post("/v1/hosts", json={"name": "big", "cores": 64, "memory_mib": 65536})
    assert added.status_code == 201 and added.json()["free_cores"] == 64
    text = "image: x\nnodes:\n  - group: worker\n    count: 2\n    cores: 32\n"
    cluster_id = launch(admin, text).json()["id"]
    view = admin.get(f"/v1/clusters/{cluster_id}").json()
    assert {n["host"] for n in view["nodes"]} == {"big"}
    busy = admin.delete("/v1/hosts/big")
    assert busy.status_code == 409 and "2 node" in busy.json()["message"]
    assert (
        admin.post(
            "/v1/hosts", json={"name": "x", "pool": "nope", "cores": 1, "memory_mib": 1}
        ).status_code
        == 404
    )


def test_a_host_that_only_terminated_clusters_used_can_be_removed_and_added_again(make_service):
    service = make_service()
    admin = api(service, admin_token(service))
    admin.post("/v1/hosts", json={"name": "big", "cores": 64, "memory_mib": 65536})
    text = "image: x\nnodes:\n  - group: worker\n    count: 2\n    cores: 32\n"
    cluster_id = launch(admin, text).json()["id"]
    admin.delete(f"/v1/clusters/{cluster_id}")
    wait_for(lambda: admin.get(f"/v1/clusters/{cluster_id}").json()["state"] == "terminated")

    assert admin.delete("/v1/hosts/big").status_code == 204
    assert "big" not in [h["name"] for h in admin.get("/v1/hosts").json()]
    assert admin.delete("/v1/hosts/big").status_code == 404
    assert launch(admin, text).status_code == 409  # no room
    history = admin.get(f"/v1/clusters/{cluster_id}").json()
    assert {n["host"] for n in history["nodes"]} == {"big"}  # the record keeps its host

    again = admin.post("/v1/hosts", json={"name": "big", "cores": 32, "memory_mib": 32768})
    assert again.status_code == 201 and again.json()["cores"] == 32
    assert launch(admin, text.replace("count: 2", "count: 1")).status_code == 201


def test_bad_documents_and_leases_are_refused_with_field_and_line(make_service):
    service = make_service()
    client = api(service, admin_token(service))
    before = counts(service)
    bad = launch(client, "nodes:\n  - group: head\n    corez: 2\n    image: x\n")
    assert bad.status_code == 422
    (problem,) = bad.json()["details"]["problems"]
    assert problem["field"] == "nodes[0].corez" and problem["line"] == 3
    too_long = launch(client, lease_seconds=49 * 3600)
    assert too_long.status_code == 422 and too_long.json()["error"] == "lease-refused"
    missing_pool = launch(client, "pool: elsewhere\n" + document())
    assert missing_pool.status_code == 404 and "elsewhere" in missing_pool.json()["message"]
    assert counts(service) == before


def test_extend_moves_the_deadline_within_policy(make_service):
    service = make_service()
    client = api(service, admin_token(service))
    created = launch(client, lease_seconds=3600).json()
    extended = client.post(f"/v1/clusters/{created['id']}/extend", json={"seconds": 1800})
    assert extended.status_code == 200
    moved = extended.json()["lease_left_seconds"] - created["lease_left_seconds"]
    assert 1790 < moved <= 1800
    too_far = client.post(f"/v1/clusters/{created['id']}/extend", json={"seconds": 48 * 3600})
    assert too_far.status_code == 422
    client.delete(f"/v1/clusters/{created['id']}")
    wait_for(lambda: state_of(client, created["id"]) == "terminated")
    ended = client.post(f"/v1/clusters/{created['id']}/extend", json={"seconds": 60})
    assert ended.status_code == 422 and "ended" in ended.json()["message"]
    events = client.get(f"/v1/clusters/{created['id']}/events").json()
    assert [e["kind"] for e in events].count("lease-extended") == 1


def test_openapi_description_lists_the_api(make_service):
    service = make_service()
    spec = api(service).get("/openapi.json").json()
    assert {"/v1/clusters", "/v1/clusters/{ref}", "/v1/clusters/{ref}/extend"} <= set(spec["paths"])


def test_no_api_token_reaches_the_log(make_service, caplog):
    caplog.set_level(logging.DEBUG)
    service = make_service()
    admin_secret = admin_token(service)
    admin = api(service, admin_secret)
    bob_secret = admin.post("/v1/users", json={"name": "bob"}).json()["token"]
    bob = api(service, bob_secret)
    cluster_id = launch(bob).json()["id"]
    wait_for(lambda: state_of(bob, cluster_id) == "ready")
    bob.delete(f"/v1/clusters/{cluster_id}")
    wait_for(lambda: state_of(bob, cluster_id) == "terminated")
    api(service, "crl_not-a-token").get("/v1/clusters")
    assert caplog.records  # the service did log its actions
    assert admin_secret not in caplog.text and bob_secret not in caplog.text
    with service.store.session() as s:  # only hashes are stored
        stored = " ".join(s.scalars(select(User.token_hash)))
    assert admin_secret not in stored and bob_secret not in stored
