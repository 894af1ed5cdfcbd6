"""Which user accounts a cluster's nodes have: the document's `users`, or its owner's,
fixed at launch, so that a cluster launched before corral made accounts keeps none."""

from __future__ import annotations

import pytest
from inprocess import admin_token, api, document, wait_for

from corral.document import parse_document
from corral.errors import DocumentError
from corral.store.models import Cluster

NODES = "nodes: [{group: head, image: debian-12-slurm}]\n"


def test_a_document_without_users_is_launched_with_its_owners_account():
    doc = parse_document(NODES)
    assert doc.accounts() == []
    launched = doc.with_owner_account("carol")
    assert [(a.name, a.uid, a.gid) for a in launched.accounts()] == [("carol", 2000, 2000)]
    assert launched.to_dict()["users"] == [{"name": "carol"}]


def test_an_owner_named_like_an_image_account_gets_none():
    assert parse_document(NODES).with_owner_account("root").accounts() == []


def test_listed_users_replace_the_owner_and_take_uids_in_order():
    doc = parse_document("users: [{name: alice}, {name: bob}]\n" + NODES)
    assert doc.with_owner_account("carol") is doc
    assert [(a.name, a.uid) for a in doc.accounts()] == [("alice", 2000), ("bob", 2001)]


@pytest.mark.parametrize(
    "users, complaint",
    [
        ("[{name: slurm}]", "users[0].name: 'slurm' is an account of the image itself"),
        ("[{name: a}, {name: a}]", "users[1].name: user 'a' is listed twice"),
        ("[{name: Alice}]", "users[0].name"),
        ("[{name: a, ssh_keys: ['ssh-ed25519 AAAA']}]", "users[0].ssh_keys[0]: not an SSH"),
        ("[{name: a, ssh_keys: ['ssh-ed25519 AAAA\\nssh-rsa B']}]", "users[0].ssh_keys[0]"),
        ("[{name: a, shell: /bin/zsh}]", "users[0].shell"),
    ],
)
def test_bad_users_are_refused_naming_the_field(users, complaint):
    with pytest.raises(DocumentError) as refused:
        parse_document(f"users: {users}\n" + NODES)
    assert complaint in str(refused.value)


def test_the_service_stores_the_owners_account_and_ssh_logs_in_to_it(make_service):
    service = make_service()
    client = api(service, admin_token(service))
    created = client.post("/v1/clusters", json={"document": document()})
    assert created.status_code == 201, created.text
    view = client.get(f"/v1/clusters/{created.json()['id']}").json()
    assert (view["users"], view["login_user"]) == (["admin"], "admin")


def test_a_cluster_launched_before_accounts_keeps_root_as_its_login(make_service, tmp_path):
    """A stored document without `users` (corral 0.3 stored them so) means no accounts:
    its nodes' agents made none, so ssh logs in as root and the broker lists none. The
    store is rewritten while no service runs, as an upgrade finds it."""
    data_dir = tmp_path / "upgraded"
    first = make_service(data_dir=data_dir)
    client = api(first, admin_token(first))
    cluster_id = client.post("/v1/clusters", json={"document": document()}).json()["id"]
    wait_for(lambda: client.get(f"/v1/clusters/{cluster_id}").json()["state"] == "ready")
    first.stop()
    with first.store.session() as session:
        row = session.get(Cluster, cluster_id)
        row.document = parse_document(document()).to_json()  # as 0.3.0 stored it
        session.commit()
    service = make_service(data_dir=data_dir)
    view = api(service, admin_token(service)).get(f"/v1/clusters/{cluster_id}").json()
    assert (view["users"], view["login_user"]) == ([], "root")
    snapshot = service.snapshots.get(cluster_id)
    assert snapshot.accounts == []
    assert not any("/corral_principals/admin" in f.path for f in snapshot.cluster_files)
