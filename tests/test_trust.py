"""What the broker certifies and for how long, and what a cluster stops trusting.

Nodes here are played by the test over the broker's real HTTPS: the fake backend writes
each node's bootstrap document into a directory, and the test registers each node with
an identity of its choosing, as a hostile or careless node could.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import socket
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from inprocess import admin_token, api, wait_for
from test_contextualization import broker_client, launch

from corral.cli.client import Client
from corral.cli.credentials import cached_credentials
from corral.service.servers import ServersThread

CLUSTER = """
name: trust
image: test
policy: {mode: best-effort}
nodes:
  - group: head
    count: 2
    min: 1
    login: true
    provides: [controller]
    requires: [worker]
  - group: worker
    count: 2
    min: 1
    provides: [worker]
    requires: [controller]
"""


@pytest.fixture
def cluster(make_service, tmp_path):
    """A served service and a launched cluster whose nodes have booted but not registered:
    (service, API client, cluster id, bootstrap document by node name)."""
    boots = tmp_path / "boots"
    service = make_service({"bootstrap_dir": str(boots)}, serve=True)
    client = api(service, admin_token(service))
    cluster_id = launch(client, CLUSTER)
    wait_for(lambda: len(list(boots.glob("*.json"))) == 4)
    documents = [json.loads(p.read_text()) for p in boots.glob("*.json")]
    return service, client, cluster_id, {d["node"]: d for d in documents}


def register(service, bootstrap: dict, hostname: str, addresses=()) -> tuple[str, dict, str]:
    """Register as the node of `bootstrap`, claiming `hostname`; (credential, view, host key)."""
    key = ed25519.Ed25519PrivateKey.generate()
    host_key = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    identity = {"hostname": hostname, "addresses": list(addresses), "ssh_host_keys": [host_key]}
    body = {k: bootstrap[k] for k in ("cluster", "node", "token")} | {"identity": identity}
    with broker_client(service) as broker:
        answer = broker.post("/register", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()["credential"], answer.json()["view"], host_key


def poll(service, credential: str, since: int = 0, wait: float = 0) -> dict:
    with broker_client(service) as broker:
        answer = broker.get(
            "/context",
            params={"since": since, "wait": wait},
            headers={"Authorization": f"Bearer {credential}"},
            timeout=wait + 10,
        )
    assert answer.status_code == 200, answer.text
    return answer.json()


def files_of(view: dict) -> dict[str, bytes]:
    return {f["path"]: base64.b64decode(f["content_b64"]) for f in view["files"]}


def ssh_cert(line: bytes) -> serialization.SSHCertificate:
    return serialization.load_ssh_public_identity(line.strip())


def lease_end(client, cluster_id: str) -> datetime.datetime:
    """The cluster's lease end, to the second (as certificates hold times)."""
    end = client.get(f"/v1/clusters/{cluster_id}").json()["lease_end"]
    return datetime.datetime.fromisoformat(end).replace(microsecond=0)


def seconds(iso: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(iso).replace(microsecond=0)


def everyone_registered(service, documents: dict) -> dict[str, tuple[str, dict, str]]:
    """Register every node honestly; each node's (credential, view, host key)."""
    registered = {name: register(service, doc, name) for name, doc in documents.items()}
    return {
        name: (credential, satisfied(service, credential), key)
        for name, (credential, _, key) in registered.items()
    }


def satisfied(service, credential: str) -> dict:
    """The node's view once its requirements are met (and it has its files)."""
    view = poll(service, credential)
    while not view["satisfied"]:
        view = poll(service, credential, since=view["version"], wait=10)
    return view


def test_certificates_name_only_what_the_service_recorded(cluster):
    service, client, cluster_id, documents = cluster
    addresses = {
        n["name"]: n["address"] for n in client.get(f"/v1/clusters/{cluster_id}").json()["nodes"]
    }
    for head in ("head-0", "head-1"):  # the workers' providers
        register(service, documents[head], head)
    for name, claimed in (("worker-0", "head-0"), ("worker-1", "*")):
        credential, _, _ = register(service, documents[name], claimed, addresses=["10.0.0.99"])
        files = files_of(satisfied(service, credential))
        tls = x509.load_pem_x509_certificate(files["/etc/corral/tls/host.crt"])
        sans = tls.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.DNSName) == [name]
        assert [str(a) for a in sans.get_values_for_type(x509.IPAddress)] == [addresses[name]]
        host = ssh_cert(files["/etc/ssh/ssh_host_ed25519_key-cert.pub"])
        assert host.valid_principals == [name.encode(), addresses[name].encode()]
        assert host.key_id == f"{cluster_id}/{name}".encode()


def test_credentials_end_with_the_lease_and_are_renewed_when_it_is_extended(cluster):
    service, client, cluster_id, documents = cluster
    nodes = everyone_registered(service, documents)
    end = lease_end(client, cluster_id)
    credential, view, _ = nodes["head-0"]
    files = files_of(view)
    assert seconds(view["lease_end"]) == end
    for path in ("/etc/corral/tls/host.crt", "/etc/corral/tls/ca.crt"):
        assert x509.load_pem_x509_certificate(files[path]).not_valid_after_utc == end
    for path in ("/etc/ssh/ssh_host_ed25519_key-cert.pub", "/root/.ssh/id_ed25519-cert.pub"):
        assert ssh_cert(files[path]).valid_before == int(end.timestamp())
    issued = client.post(f"/v1/clusters/{cluster_id}/credentials").json()
    user_tls = x509.load_pem_x509_certificate(issued["user_cert_pem"].encode())
    assert user_tls.not_valid_after_utc == end
    assert ssh_cert(issued["ssh_user_cert"].encode()).valid_before == int(end.timestamp())
    assert seconds(issued["valid_until"]) == end

    extended = client.post(f"/v1/clusters/{cluster_id}/extend", json={"seconds": 3600})
    assert extended.status_code == 200, extended.text
    later = lease_end(client, cluster_id)
    assert later - end == datetime.timedelta(hours=1)
    renewed = poll(service, credential, since=view["version"], wait=10)
    assert renewed["version"] > view["version"]  # the node was woken for it
    assert seconds(renewed["lease_end"]) == later
    new_files = files_of(renewed)
    host = x509.load_pem_x509_certificate(new_files["/etc/corral/tls/host.crt"])
    ca = x509.load_pem_x509_certificate(new_files["/etc/corral/tls/ca.crt"])
    assert host.not_valid_after_utc == later and ca.not_valid_after_utc == later
    host.verify_directly_issued_by(ca)
    old_host = x509.load_pem_x509_certificate(files["/etc/corral/tls/host.crt"])
    assert host.public_key() == old_host.public_key()  # renewed, not replaced
    assert host.serial_number != old_host.serial_number
    for path in ("/etc/ssh/ssh_host_ed25519_key-cert.pub", "/root/.ssh/id_ed25519-cert.pub"):
        assert ssh_cert(new_files[path]).valid_before == int(later.timestamp())
    assert new_files["/root/.ssh/id_ed25519"] == files["/root/.ssh/id_ed25519"]


def test_each_login_node_has_a_root_key_of_its_own_and_others_none(cluster):
    service, _, cluster_id, documents = cluster
    nodes = everyone_registered(service, documents)
    head = files_of(nodes["head-0"][1])
    root = ssh_cert(head["/root/.ssh/id_ed25519-cert.pub"])
    assert root.type == serialization.SSHCertificateType.USER
    assert root.valid_principals == [b"root@head-0"]
    assert root.key_id == f"{cluster_id}/head-0/root".encode()
    assert set(root.extensions) == {b"permit-pty"}  # no agent, port or X11 forwarding
    for worker in ("worker-0", "worker-1"):
        files = files_of(nodes[worker][1])
        assert "/root/.ssh/id_ed25519" not in files
        # root logs in with the owner's certificate or from the login node, nothing else
        principals = b"admin\nroot@head-0\nroot@head-1\n"
        assert files["/etc/ssh/corral_principals/root"] == principals


def test_host_keys_and_logins_are_certified_by_two_cas(cluster):
    service, client, cluster_id, documents = cluster
    nodes = everyone_registered(service, documents)
    view = nodes["worker-0"][1]
    files = files_of(view)
    user_ca = files["/etc/ssh/corral_user_ca.pub"].decode().split()[:2]
    host_ca = view["ssh_known_hosts"].split()[2:4]
    assert user_ca != host_ca
    signer = ssh_cert(files["/etc/ssh/ssh_host_ed25519_key-cert.pub"]).signature_key()
    assert (
        signer.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
        .split()
        == host_ca
    )
    head_root = ssh_cert(files_of(nodes["head-0"][1])["/root/.ssh/id_ed25519-cert.pub"])
    assert (
        head_root.signature_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
        .split()
        == user_ca
    )
    issued = client.post(f"/v1/clusters/{cluster_id}/credentials").json()
    assert issued["ssh_known_hosts"].split()[2:4] == host_ca


def test_a_node_that_leaves_is_trusted_no_more(cluster):
    service, client, cluster_id, documents = cluster
    nodes = everyone_registered(service, documents)
    gone_credential, gone_view, gone_key = nodes["worker-1"]
    gone_cert = x509.load_pem_x509_certificate(files_of(gone_view)["/etc/corral/tls/host.crt"])
    credential, view, _ = nodes["worker-0"]
    node = next(
        n["id"]
        for n in client.get(f"/v1/clusters/{cluster_id}").json()["nodes"]
        if n["name"] == "worker-1"
    )
    service.backend.terminate(node)  # its machine vanishes behind corral's back

    def trusted_no_more() -> dict | None:
        latest = poll(service, credential)
        return latest if "@revoked" in latest["ssh_known_hosts"] else None

    latest = wait_for(trusted_no_more, timeout=20)
    revoked = [line.split()[2:4] for line in latest["ssh_known_hosts"].splitlines()[1:]]
    assert revoked == [gone_key.split()[:2]]
    crl = x509.load_pem_x509_crl(files_of(latest)["/etc/corral/tls/crl.pem"])
    assert crl.get_revoked_certificate_by_serial_number(gone_cert.serial_number) is not None
    ca = x509.load_pem_x509_certificate(files_of(latest)["/etc/corral/tls/ca.crt"])
    assert crl.is_signature_valid(ca.public_key())
    # nor does the broker answer it
    with broker_client(service) as broker:
        refused = broker.get("/context", headers={"Authorization": f"Bearer {gone_credential}"})
    assert refused.status_code == 401


def test_a_login_node_that_leaves_loses_root_on_the_others(cluster):
    service, client, cluster_id, documents = cluster
    nodes = everyone_registered(service, documents)
    head_key = files_of(nodes["head-1"][1])["/root/.ssh/id_ed25519"]
    root_public = (
        serialization.load_ssh_private_key(head_key, None)
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    credential = nodes["worker-0"][0]
    head = next(
        n["id"]
        for n in client.get(f"/v1/clusters/{cluster_id}").json()["nodes"]
        if n["name"] == "head-1"
    )
    service.backend.terminate(head)

    def revoked() -> dict | None:
        files = files_of(poll(service, credential))
        return files if files["/etc/ssh/corral_revoked_keys"] else None

    files = wait_for(revoked, timeout=20)
    assert files["/etc/ssh/corral_revoked_keys"].split() == root_public.split()[:2]
    assert files["/etc/ssh/corral_principals/root"] == b"admin\nroot@head-0\n"
    sshd = files["/etc/ssh/sshd_config.d/corral.conf"].decode()
    assert "RevokedKeys /etc/ssh/corral_revoked_keys" in sshd


def test_the_bootstrap_document_pins_the_broker_certificate_and_its_key(cluster):
    service, _, _, documents = cluster
    identity = service.broker_identity
    for document in documents.values():
        assert document["fingerprint"] == identity.fingerprint
        assert document["key_fingerprint"] == identity.key_fingerprint


def test_the_broker_serves_its_renewed_certificate_without_a_restart(make_service, tmp_path):
    service = make_service(
        {"bootstrap_dir": str(tmp_path / "boots")},
        broker_cert_lifetime=datetime.timedelta(days=30),
    )
    servers = ServersThread(service, renewal_check_seconds=0.1).start()
    try:
        first = service.broker_identity
        assert served_fingerprint(service) == first.fingerprint
        service.config.broker_cert_lifetime = datetime.timedelta(days=100)  # now due
        wait_for(lambda: served_fingerprint(service) != first.fingerprint)
    finally:
        servers.stop()
    renewed = service.broker_identity
    assert served_fingerprint.last == renewed.fingerprint
    assert renewed.key_fingerprint == first.key_fingerprint
    # what a node learns from now on carries the renewed certificate's pin
    assert service.engine.bootstrap.identity() == renewed


def served_fingerprint(service) -> str:
    """The SHA-256 of the certificate the broker presents to a new connection."""
    host, port = service.config.broker_listen.rsplit(":", 1)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        context.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    served_fingerprint.last = "sha256:" + hashlib.sha256(der).hexdigest()
    return served_fingerprint.last


def test_the_cli_fetches_new_credentials_once_the_lease_is_extended(
    make_service, tmp_path, monkeypatch
):
    monkeypatch.setenv("CORRAL_HOME", str(tmp_path / "user"))
    service = make_service(serve=True)
    client = Client(f"http://{service.config.listen}", admin_token(service))
    try:
        cluster_id = launch(api(service, admin_token(service)), CLUSTER)
        cluster = client.cluster(cluster_id).model
        directory = cached_credentials(client, cluster)
        first = (directory / "id_ed25519-cert.pub").read_text()
        assert seconds((directory / "valid_until").read_text().strip()) == seconds(
            cluster.lease_end.isoformat()
        )
        assert cached_credentials(client, cluster) == directory
        assert (directory / "id_ed25519-cert.pub").read_text() == first  # still good
        client.extend(cluster_id, 3600)
        extended = client.cluster(cluster_id).model
        cached_credentials(client, extended)
        renewed = (directory / "id_ed25519-cert.pub").read_text()
        assert renewed != first
        assert ssh_cert(renewed.encode()).valid_before == int(
            seconds(extended.lease_end.isoformat()).timestamp()
        )
    finally:
        client.close()


WAITING = CLUSTER.replace("requires: [controller]", "requires: [{role: controller, wait: ready}]")


def test_a_blocked_node_is_woken_when_a_node_leaves_and_not_by_a_new_login_node(
    make_service, tmp_path
):
    boots = tmp_path / "boots"
    service = make_service({"bootstrap_dir": str(boots)}, serve=True)
    client = api(service, admin_token(service))
    cluster_id = launch(client, WAITING)
    wait_for(lambda: len(list(boots.glob("*.json"))) == 4)
    documents = {d["node"]: d for d in (json.loads(p.read_text()) for p in boots.glob("*.json"))}
    credential, first, _ = register(service, documents["worker-0"], "worker-0")
    register(service, documents["worker-1"], "worker-1")
    blocked = poll(service, credential)
    assert not blocked["satisfied"]  # its controllers are not ready: they never report
    register(service, documents["head-0"], "head-0")  # a login node: a new root principal
    unmoved = poll(service, credential, since=blocked["version"], wait=2)
    assert unmoved["version"] == blocked["version"]
    gone = next(
        n["id"]
        for n in client.get(f"/v1/clusters/{cluster_id}").json()["nodes"]
        if n["name"] == "worker-1"
    )
    service.backend.terminate(gone)
    woken = poll(service, credential, since=blocked["version"], wait=20)
    assert woken["version"] > blocked["version"] and not woken["satisfied"]
    assert "@revoked" in woken["ssh_known_hosts"]
