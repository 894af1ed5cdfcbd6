"""A registration retried after its reply was lost gets back in; nothing else does.

The service is real and its broker answers over HTTPS; its fake machines run no agent,
so the test plays each node's agent: it registers, loses the reply (it just ignores it),
and registers again with the same token and identity, as the agent's retry does.
"""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from inprocess import admin_token, api, wait_for
from test_contextualization import broker_client, launch

from corral.backends.base import Capability
from corral.backends.fake import FakeBackend
from corral.broker.credentials import issue_bootstrap_token, secret_digest
from corral.broker.known_nodes import KnownNode, KnownNodes
from corral.broker.peers import peer_of
from corral.store.models import BootstrapToken, Event, Node, NodeSecret, utcnow


@pytest.fixture
def booting(make_service):
    """A service whose cluster's nodes are all booting, waiting for agents to register."""
    backend = FakeBackend(boot_delay=3600)  # its machines never run an agent of their own
    backend.capabilities = backend.capabilities | {Capability.RUNS_AGENT}
    service = make_service(backend=backend, serve=True)
    client = api(service, admin_token(service))
    cluster_id = launch(client)
    wait_for(lambda: set(node_states(client, cluster_id).values()) == {"booting"})
    with broker_client(service) as broker:
        yield Launch(service, client, broker, cluster_id)


class Launch:
    def __init__(self, service, client, broker: httpx.Client, cluster_id: str) -> None:
        self.service = service
        self.client = client
        self.broker = broker
        self.cluster_id = cluster_id

    def token(self, node: str) -> str:
        """A new bootstrap token for `node`, as its boot job would issue."""
        with self.service.store.session() as session:
            return issue_bootstrap_token(
                session, self.node(session, node).id, utcnow(), timedelta(minutes=10)
            )

    def node(self, session, node: str) -> Node:
        return session.query(Node).filter_by(cluster_id=self.cluster_id, name=node).one()

    def register(self, node: str, token: str, identity: dict) -> httpx.Response:
        body = {"cluster": self.cluster_id, "node": node, "token": token, "identity": identity}
        return self.broker.post("/register", json=body)

    def context(self, credential: str) -> httpx.Response:
        return self.broker.get("/context", headers={"Authorization": f"Bearer {credential}"})

    def state(self, node: str) -> str:
        return node_states(self.client, self.cluster_id)[node]


def node_states(client, cluster_id: str) -> dict[str, str]:
    nodes = client.get(f"/v1/clusters/{cluster_id}").json()["nodes"]
    return {n["name"]: n["state"] for n in nodes}


def identity(node: str) -> dict:
    """What an agent on a fresh machine sends: its hostname and a new SSH host key."""
    public = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    return {"hostname": node, "addresses": [], "ssh_host_keys": [f"{public} root@{node}"]}


def registered_twice(launch: Launch, node: str) -> tuple[str, dict, str]:
    """Register `node`, lose the reply, register again; the token, identity, credential."""
    token, me = launch.token(node), identity(node)
    first = launch.register(node, token, me)
    assert first.status_code == 200, first.text
    again = launch.register(node, token, me)
    assert again.status_code == 200, again.text
    return token, me, again.json()["credential"]


def test_a_registration_retried_after_a_lost_reply_gets_back_in(booting):
    token, me = booting.token("worker-0"), identity("worker-0")
    first = booting.register("worker-0", token, me)
    assert first.status_code == 200, first.text
    lost = first.json()["credential"]
    assert booting.context(lost).status_code == 200  # known to the broker, in memory too
    with booting.service.store.session() as session:
        ws = booting.node(session, "worker-0")
        issued, registered_at = session.get(NodeSecret, ws.id).tls_cert_pem, ws.registered_at

    # the comment of a key line is not part of the key
    me_again = me | {"ssh_host_keys": [me["ssh_host_keys"][0].replace("root@", "admin@")]}
    again = booting.register("worker-0", token, me_again)

    assert again.status_code == 200, again.text
    credential = again.json()["credential"]
    assert credential != lost
    assert again.json()["view"]["node"] == "worker-0"
    view = booting.context(credential)
    assert view.status_code == 200 and view.json()["node"] == "worker-0"
    refused = booting.context(lost)  # the credential it never received works no more
    assert refused.status_code == 401, refused.text
    # the node keeps its state, its registration time and what was issued to it
    assert booting.state("worker-0") == "registered"
    with booting.service.store.session() as session:
        ws = booting.node(session, "worker-0")
        assert session.get(NodeSecret, ws.id).tls_cert_pem == issued
        assert ws.registered_at == registered_at
        kinds = [e.kind for e in session.query(Event).filter_by(node_id=ws.id)]
    assert kinds[-1] == "registered-again"
    # and it gets back in as often as its replies are lost, the last credential alone working
    third = booting.register("worker-0", token, me)
    assert third.status_code == 200
    assert booting.context(credential).status_code == 401
    assert booting.context(third.json()["credential"]).status_code == 200


def _another_nodes_token(launch, token, me):
    refused = launch.register("worker-1", token, me | {"hostname": "worker-1"})
    assert launch.state("worker-1") == "booting"
    return refused


def _another_host_key(launch, token, me):
    return launch.register("worker-0", token, identity("worker-0"))


def _another_hostname(launch, token, me):
    return launch.register("worker-0", token, me | {"hostname": "worker-0.elsewhere"})


def _an_expired_token(launch, token, me):
    with launch.service.store.session() as session:
        session.get(BootstrapToken, secret_digest(token)).expires_at = utcnow()
    return launch.register("worker-0", token, me)


def _a_node_that_ended(launch, token, me):
    launch.client.delete(f"/v1/clusters/{launch.cluster_id}")
    wait_for(lambda: launch.state("worker-0") in ("terminating", "terminated"))
    return launch.register("worker-0", token, me)


def _a_node_whose_reply_arrived(launch, token, me):
    # its agent used the credential it received: the node went on to configure
    credential = launch.register("worker-0", token, me).json()["credential"]
    running = {"phase": "configure", "role": "worker", "state": "running", "version": 1}
    headers = {"Authorization": f"Bearer {credential}"}
    assert launch.broker.post("/report", headers=headers, json=running).status_code == 200
    assert launch.state("worker-0") == "configuring"
    return launch.register("worker-0", token, me)


@pytest.mark.parametrize(
    ("retry", "said"),
    [
        pytest.param(case, said, id=case.__name__.strip("_"))
        for case, said in [
            (_another_nodes_token, "belongs to another node"),
            (_another_host_key, "another hostname or other SSH host keys"),
            (_another_hostname, "another hostname or other SSH host keys"),
            (_an_expired_token, "was already used and expired at"),
            (_a_node_that_ended, "node worker-0 is terminat"),
            (_a_node_whose_reply_arrived, "was already used, and worker-0 is configuring"),
        ]
    ],
)
def test_a_spent_token_is_refused_to_anything_but_a_retried_registration(booting, retry, said):
    token, me, _ = registered_twice(booting, "worker-0")
    refused = retry(booting, token, me)
    assert refused.status_code == 401, refused.text
    assert said in refused.json()["message"]


def test_a_replaced_credential_is_never_remembered_again(booting):
    # a request that read the store before the replacement committed must not bring it back
    with booting.service.store.session() as session:
        ws = booting.node(session, "worker-0")
        known = KnownNode(booting.cluster_id, peer_of(ws), None)
    nodes = KnownNodes(booting.service.store)
    nodes.remember("nc_lost", known)
    nodes.remember("nc_new", known)
    nodes.retire(booting.cluster_id, secret_digest("nc_lost"))
    nodes.remember("nc_lost", known)
    assert nodes.cached("nc_lost") is None
    assert nodes.cached("nc_new") == known
