"""The broker's cryptography, checked against real TLS handshakes and OpenSSH's own parser."""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import socket
import ssl
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from authorities import LEASE_END, NOW
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from corral.broker.issuance import create_cluster_authority
from corral.broker.pki import (
    ClusterAuthority,
    certificate_serial,
    fingerprint,
    issue_host_certificate,
    issue_user_certificate,
    key_fingerprint,
    load_or_create_broker_identity,
    renew_cluster_ca,
    revocation_list,
)


def host_certificate(authority, node="worker-0", address="10.180.0.3", key_pem=None):
    serial = certificate_serial(authority, f"w-{node}", 0)
    return issue_host_certificate(authority, node, address, LEASE_END, serial, key_pem)


def load_cert(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def write_secret(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


# --- real TLS over loopback --------------------------------------------------------------


@contextmanager
def tls_server(context: ssl.SSLContext) -> Iterator[tuple[int, dict[str, object]]]:
    """Accept one TLS connection on 127.0.0.1 in a thread; yield (port, outcome)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    outcome: dict[str, object] = {}

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError as exc:
            outcome["error"] = exc
            return
        conn.settimeout(10)
        try:
            with context.wrap_socket(conn, server_side=True) as tls:
                outcome["peer"] = tls.getpeercert()
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as exc:
            outcome["error"] = exc
        finally:
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], outcome
    finally:
        thread.join(timeout=10)
        listener.close()


def tls_fetch(port: int, context: ssl.SSLContext, server_hostname: str | None) -> bytes:
    """Handshake with the server on `port`; return the server certificate's DER."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=server_hostname) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert tls.recv(2) == b"ok"
        assert der is not None
        return der


def server_context(cert: Path, key: Path, client_ca: str | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.verify_flags |= ssl.VERIFY_X509_STRICT
        context.load_verify_locations(cadata=client_ca)
    return context


def verifying_client(ca_pem: str, cert: Path | None = None, key: Path | None = None):
    context = ssl.create_default_context(cadata=ca_pem)
    # Python 3.13 turns strict checking on by default; hold our certificates to it now.
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


# --- fingerprint and broker identity -----------------------------------------------------


def test_fingerprint_is_sha256_of_der(authority: ClusterAuthority) -> None:
    der = load_cert(authority.ca_cert_pem).public_bytes(serialization.Encoding.DER)
    assert fingerprint(authority.ca_cert_pem) == "sha256:" + hashlib.sha256(der).hexdigest()


def test_key_fingerprint_is_sha256_of_the_public_key_info(authority: ClusterAuthority) -> None:
    spki = (
        load_cert(authority.ca_cert_pem)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert key_fingerprint(authority.ca_cert_pem) == "sha256:" + hashlib.sha256(spki).hexdigest()


def test_fingerprint_rejects_non_certificate() -> None:
    with pytest.raises(ValueError):
        fingerprint("not a certificate")


def test_broker_identity_is_created_once_and_reused(tmp_path: Path) -> None:
    directory = tmp_path / "broker"
    first = load_or_create_broker_identity(directory, ["corral.example"], ["127.0.0.1"])
    again = load_or_create_broker_identity(directory, ["renamed.example"], ["10.0.0.1"])

    assert again == first
    assert first.fingerprint == fingerprint(first.cert_path.read_text())
    assert first.key_fingerprint == key_fingerprint(first.cert_path.read_text())
    assert stat.S_IMODE(first.key_path.stat().st_mode) == 0o600
    cert = load_cert(first.cert_path.read_text())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["corral.example"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]


def test_broker_certificate_lives_its_configured_lifetime(tmp_path: Path) -> None:
    identity = load_or_create_broker_identity(
        tmp_path, ["corral"], [], lifetime=datetime.timedelta(days=30)
    )
    cert = load_cert(identity.cert_path.read_text())
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=30) <= lifetime <= datetime.timedelta(days=30, minutes=6)
    assert identity.not_after == cert.not_valid_after_utc
    with pytest.raises(ValueError, match="positive"):
        load_or_create_broker_identity(tmp_path / "x", [], [], datetime.timedelta(0))


def test_broker_certificate_is_renewed_with_its_key_once_a_third_of_it_is_left(
    tmp_path: Path,
) -> None:
    first = load_or_create_broker_identity(
        tmp_path, ["corral.example"], ["127.0.0.1"], lifetime=datetime.timedelta(days=30)
    )
    # a site that asks for longer certificates: 30 days left is less than a third of 100
    renewed = load_or_create_broker_identity(
        tmp_path, ["other"], [], lifetime=datetime.timedelta(days=100)
    )
    assert renewed.fingerprint != first.fingerprint
    assert renewed.key_fingerprint == first.key_fingerprint  # the pin nodes hold
    assert renewed.not_after - first.not_after >= datetime.timedelta(days=69)
    cert = load_cert(renewed.cert_path.read_text())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["corral.example"]  # names kept
    kept = load_or_create_broker_identity(tmp_path, [], [], lifetime=datetime.timedelta(days=100))
    assert kept == renewed


def test_a_new_broker_key_changes_both_pins(tmp_path: Path) -> None:
    first = load_or_create_broker_identity(tmp_path, ["corral"], [])
    rotated = load_or_create_broker_identity(tmp_path, ["corral"], [], new_key=True)
    assert rotated.fingerprint != first.fingerprint
    assert rotated.key_fingerprint != first.key_fingerprint


def test_broker_identity_refuses_certificate_without_key(tmp_path: Path) -> None:
    identity = load_or_create_broker_identity(tmp_path, ["corral"], [])
    identity.key_path.unlink()
    with pytest.raises(ValueError, match="key"):
        load_or_create_broker_identity(tmp_path, ["corral"], [])


def test_broker_identity_refuses_key_of_another_certificate(tmp_path: Path) -> None:
    ours = load_or_create_broker_identity(tmp_path / "a", ["corral"], [])
    theirs = load_or_create_broker_identity(tmp_path / "b", ["corral"], [])
    ours.key_path.write_text(theirs.key_path.read_text())
    with pytest.raises(ValueError, match="does not match"):
        load_or_create_broker_identity(tmp_path / "a", ["corral"], [])


def test_broker_identity_refuses_bad_address(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not-an-ip"):
        load_or_create_broker_identity(tmp_path, ["corral"], ["not-an-ip"])


def test_pinned_fingerprint_matches_real_tls_handshake(tmp_path: Path) -> None:
    identity = load_or_create_broker_identity(tmp_path, ["localhost"], ["127.0.0.1"])
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE  # the agent pins instead of verifying a chain

    with tls_server(server_context(identity.cert_path, identity.key_path)) as (port, outcome):
        der = tls_fetch(port, client, server_hostname=None)

    assert "error" not in outcome
    assert "sha256:" + hashlib.sha256(der).hexdigest() == identity.fingerprint


# --- cluster X.509 CA --------------------------------------------------------------------


def test_cluster_ca_is_a_constrained_ca_ending_with_the_lease(authority: ClusterAuthority) -> None:
    ca = load_cert(authority.ca_cert_pem)
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value

    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    common_name = ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert common_name == "corral cluster c-1a2b3c4d CA"
    ca.verify_directly_issued_by(ca)
    assert ca.not_valid_after_utc == LEASE_END


def test_a_renewed_ca_still_verifies_what_it_issued(authority: ClusterAuthority) -> None:
    cert_pem, _ = host_certificate(authority)
    later = LEASE_END + datetime.timedelta(hours=6)
    renewed = load_cert(renew_cluster_ca(authority, later))
    assert renewed.not_valid_after_utc == later
    assert renewed.subject == load_cert(authority.ca_cert_pem).subject
    load_cert(cert_pem).verify_directly_issued_by(renewed)


def test_certificates_cannot_end_in_the_past(authority: ClusterAuthority) -> None:
    past = NOW - datetime.timedelta(seconds=1)
    with pytest.raises(ValueError, match="future"):
        create_cluster_authority("c-1", past)
    with pytest.raises(ValueError, match="future"):
        issue_user_certificate(authority, "alice", past)
    with pytest.raises(ValueError, match="future"):
        issue_host_certificate(authority, "worker-0", "10.0.0.1", past, 1)


def test_authority_repr_hides_secrets(authority: ClusterAuthority) -> None:
    text = repr(authority)
    assert authority.ca_key_pem not in text
    assert authority.ssh_host_ca_private not in text
    assert authority.ssh_user_ca_private not in text
    assert authority.munge_key_b64 not in text
    assert "PRIVATE" not in text


def test_munge_key_is_1024_random_bytes_per_cluster(
    authority: ClusterAuthority, other_authority: ClusterAuthority
) -> None:
    assert len(base64.b64decode(authority.munge_key_b64, validate=True)) == 1024
    assert authority.munge_key_b64 != other_authority.munge_key_b64


def test_host_certificate_names_only_the_node_and_its_address(
    authority: ClusterAuthority, other_authority: ClusterAuthority
) -> None:
    cert_pem, key_pem = host_certificate(authority)
    cert = load_cert(cert_pem)
    ca = load_cert(authority.ca_cert_pem)

    cert.verify_directly_issued_by(ca)
    with pytest.raises(ValueError, match="subject"):
        cert.verify_directly_issued_by(load_cert(other_authority.ca_cert_pem))
    # Same cluster id, so the same CA name: only the signature can tell them apart.
    impostor = create_cluster_authority("c-1a2b3c4d", LEASE_END)
    with pytest.raises(InvalidSignature):
        cert.verify_directly_issued_by(load_cert(impostor.ca_cert_pem))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "worker-0"
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["worker-0"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.180.0.3")]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    assert key.public_key() == cert.public_key()
    assert cert.not_valid_after_utc == LEASE_END
    assert cert.serial_number == certificate_serial(authority, "w-worker-0", 0)


def test_a_renewed_host_certificate_keeps_its_key(authority: ClusterAuthority) -> None:
    first, key_pem = host_certificate(authority)
    later = LEASE_END - datetime.timedelta(hours=1)
    renewed, same_key = issue_host_certificate(
        authority, "worker-0", "10.180.0.3", later, 7, key_pem=key_pem
    )
    assert same_key == key_pem
    assert load_cert(renewed).public_key() == load_cert(first).public_key()
    assert load_cert(renewed).not_valid_after_utc == later


def test_serials_differ_per_node_and_generation_and_are_unguessable(
    authority: ClusterAuthority, other_authority: ClusterAuthority
) -> None:
    serials = {
        certificate_serial(authority, node, generation)
        for node in ("w-1", "w-2")
        for generation in (0, 1)
    }
    assert len(serials) == 4
    assert all(0 < s < 2**159 for s in serials)
    assert certificate_serial(authority, "w-1", 0) == certificate_serial(authority, "w-1", 0)
    assert certificate_serial(other_authority, "w-1", 0) not in serials


def test_the_revocation_list_names_revoked_serials_and_verifies(
    authority: ClusterAuthority, tmp_path: Path
) -> None:
    revoked_pem, revoked_key = host_certificate(authority, "worker-1", "127.0.0.1")
    serial = load_cert(revoked_pem).serial_number
    crl = x509.load_pem_x509_crl(revocation_list(authority, [serial], LEASE_END).encode())
    assert crl.is_signature_valid(load_cert(authority.ca_cert_pem).public_key())
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    assert crl.next_update_utc == LEASE_END
    # a TLS client that checks the list refuses the revoked node, and accepts another
    server = server_context(
        write_secret(tmp_path / "host.crt", revoked_pem),
        write_secret(tmp_path / "host.key", revoked_key),
    )
    checking = verifying_client(authority.ca_cert_pem)
    crl_path = tmp_path / "crl.pem"  # only a file may hold a CRL for Python's ssl
    crl_path.write_text(revocation_list(authority, [serial], LEASE_END))
    checking.load_verify_locations(cafile=crl_path)
    checking.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    with tls_server(server) as (port, _), pytest.raises(ssl.SSLCertVerificationError):
        tls_fetch(port, checking, "worker-1")
    kept_pem, kept_key = host_certificate(authority, "worker-2", "127.0.0.1")
    server = server_context(
        write_secret(tmp_path / "kept.crt", kept_pem),
        write_secret(tmp_path / "kept.key", kept_key),
    )
    with tls_server(server) as (port, outcome):
        tls_fetch(port, checking, "worker-2")
    assert "error" not in outcome


def test_host_certificate_rejects_bad_input(authority: ClusterAuthority) -> None:
    with pytest.raises(ValueError, match="not an IP"):
        issue_host_certificate(authority, "worker-0", "worker-0", LEASE_END, 1)
    with pytest.raises(ValueError, match="empty"):
        issue_host_certificate(authority, "", "10.0.0.1", LEASE_END, 1)


def test_user_certificate_is_client_only(authority: ClusterAuthority) -> None:
    cert_pem, key_pem = issue_user_certificate(authority, "alice", LEASE_END)
    cert = load_cert(cert_pem)

    cert.verify_directly_issued_by(load_cert(authority.ca_cert_pem))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    assert key.public_key() == cert.public_key()
    assert cert.not_valid_after_utc == LEASE_END


def test_mutual_tls_between_node_and_user(authority: ClusterAuthority, tmp_path: Path) -> None:
    host_cert, host_key = host_certificate(authority, "head-0", "127.0.0.1")
    user_cert, user_key = issue_user_certificate(authority, "alice", LEASE_END)
    server = server_context(
        write_secret(tmp_path / "host.crt", host_cert),
        write_secret(tmp_path / "host.key", host_key),
        client_ca=authority.ca_cert_pem,
    )
    client = verifying_client(
        authority.ca_cert_pem,
        write_secret(tmp_path / "user.crt", user_cert),
        write_secret(tmp_path / "user.key", user_key),
    )

    for server_name in ("head-0", "127.0.0.1"):
        with tls_server(server) as (port, outcome):
            tls_fetch(port, client, server_hostname=server_name)
        assert "error" not in outcome
        assert outcome["peer"]["subject"] == ((("commonName", "alice"),),)


def test_client_of_another_cluster_rejects_node(
    authority: ClusterAuthority, other_authority: ClusterAuthority, tmp_path: Path
) -> None:
    host_cert, host_key = host_certificate(authority, "head-0", "127.0.0.1")
    server = server_context(
        write_secret(tmp_path / "host.crt", host_cert),
        write_secret(tmp_path / "host.key", host_key),
    )
    with tls_server(server) as (port, _), pytest.raises(ssl.SSLCertVerificationError):
        tls_fetch(port, verifying_client(other_authority.ca_cert_pem), "head-0")
