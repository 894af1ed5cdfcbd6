"""The metadata service: who gets a booting node's bootstrap document, and how often.

It answers only on its own, cluster-facing listener, by the real address of the peer,
never on the API's listener, and never because of a proxy header.
"""

from __future__ import annotations

import httpx
import pytest
from fastapi.testclient import TestClient
from inprocess import admin_token, api, wait_for
from test_contextualization import broker_client, launch

from corral.backends.base import Capability
from corral.backends.fake import FakeBackend
from corral.service.metadata import MAX_BOOTSTRAP_TOKENS


@pytest.fixture
def booting(make_service):
    """A served service whose nodes stay booting (no agent of their own comes to register),
    and its cluster's nodes."""
    backend = FakeBackend(boot_delay=3600)
    backend.capabilities = backend.capabilities | {Capability.RUNS_AGENT}
    service = make_service(backend=backend, serve=True)
    client = api(service, admin_token(service))
    cluster_id = launch(client)

    def nodes():
        return client.get(f"/v1/clusters/{cluster_id}").json()["nodes"]

    wait_for(lambda: all(n["state"] == "booting" for n in nodes()))
    return service, cluster_id, nodes()


def as_peer(service, address: str) -> TestClient:
    """The metadata app, asked from `address` as the connection's real peer."""
    return TestClient(service.metadata_app, client=(address, 40000))


def test_a_booting_node_gets_its_bootstrap_from_its_own_address_until_it_registers(booting):
    service, cluster_id, nodes = booting
    node = nodes[1]
    fetched = as_peer(service, node["address"]).get("/metadata/v1/user-data")
    assert fetched.status_code == 200
    bootstrap = fetched.json()
    assert (bootstrap["cluster"], bootstrap["node"]) == (cluster_id, node["name"])
    assert bootstrap["fingerprint"] == service.broker_identity.fingerprint
    meta = as_peer(service, node["address"]).get("/metadata/v1/meta-data").text
    assert "instance-id: " + node["id"] in meta
    assert as_peer(service, "10.99.0.1").get("/metadata/v1/user-data").status_code == 404
    identity = {"hostname": node["name"], "addresses": [], "ssh_host_keys": []}
    body = {k: bootstrap[k] for k in ("cluster", "node", "token")} | {"identity": identity}
    with broker_client(service) as broker:
        assert broker.post("/register", json=body).status_code == 200
    # registered: its address gets nothing more
    assert as_peer(service, node["address"]).get("/metadata/v1/user-data").status_code == 404


def test_no_listener_hands_out_a_bootstrap_for_a_forwarded_for_header(booting):
    service, _, nodes = booting
    claimed = {"X-Forwarded-For": nodes[0]["address"], "X-Real-IP": nodes[0]["address"]}
    for base in (f"http://{service.config.listen}", f"http://{service.config.metadata_listen}"):
        # over real sockets, from 127.0.0.1, which a proxy header would trust by default
        answer = httpx.get(base + "/metadata/v1/user-data", headers=claimed)
        assert answer.status_code == 404, (base, answer.text)
        assert "bt_" not in answer.text


def test_asking_again_and_again_mints_a_bounded_number_of_tokens(booting):
    service, _, nodes = booting
    peer = as_peer(service, nodes[0]["address"])
    answers = [peer.get("/metadata/v1/user-data") for _ in range(3 * MAX_BOOTSTRAP_TOKENS)]
    given = [a for a in answers if a.status_code == 200]
    # the boot job's own token counts: the node is given the rest of the allowance
    assert len(given) == MAX_BOOTSTRAP_TOKENS - 1
    refused = answers[len(given)]
    assert refused.status_code == 429
    assert refused.json()["error"] == "too-many-requests"
    assert nodes[0]["name"] in refused.json()["message"]
