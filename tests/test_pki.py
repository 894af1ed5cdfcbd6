"""The broker's cryptography, checked against real TLS handshakes and OpenSSH's own parser."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import shutil
import socket
import ssl
import stat
import subprocess
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from corral.broker.pki import (
    ClusterAuthority,
    create_cluster_authority,
    fingerprint,
    generate_ssh_user_key,
    issue_host_certificate,
    issue_user_certificate,
    known_hosts_line,
    load_or_create_broker_identity,
    sign_ssh_host_key,
    sign_ssh_user_key,
)


@pytest.fixture(scope="module")
def authority() -> ClusterAuthority:
    return create_cluster_authority("c-1a2b3c4d")


@pytest.fixture(scope="module")
def other_authority() -> ClusterAuthority:
    return create_cluster_authority("c-99999999")


def load_cert(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def ssh_public_line(key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> str:
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return public.decode()


def ssh_keygen() -> str:
    path = shutil.which("ssh-keygen")
    assert path, "ssh-keygen (openssh-client) must be installed to check OpenSSH interop"
    return path


def run_ssh_keygen(*args: str | Path) -> str:
    result = subprocess.run(
        [ssh_keygen(), *map(str, args)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


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


def test_fingerprint_rejects_non_certificate() -> None:
    with pytest.raises(ValueError):
        fingerprint("not a certificate")


def test_broker_identity_is_created_once_and_reused(tmp_path: Path) -> None:
    directory = tmp_path / "broker"
    first = load_or_create_broker_identity(directory, ["corral.example"], ["127.0.0.1"])
    again = load_or_create_broker_identity(directory, ["renamed.example"], ["10.0.0.1"])

    assert again == first
    assert first.fingerprint == fingerprint(first.cert_path.read_text())
    assert stat.S_IMODE(first.key_path.stat().st_mode) == 0o600
    cert = load_cert(first.cert_path.read_text())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["corral.example"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime.days >= 3649


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


def test_cluster_ca_is_a_constrained_ca(authority: ClusterAuthority) -> None:
    ca = load_cert(authority.ca_cert_pem)
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value

    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    common_name = ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert common_name == "corral cluster c-1a2b3c4d CA"
    ca.verify_directly_issued_by(ca)
    assert 364 <= (ca.not_valid_after_utc - ca.not_valid_before_utc).days <= 366


def test_authority_repr_hides_secrets(authority: ClusterAuthority) -> None:
    text = repr(authority)
    assert authority.ca_key_pem not in text
    assert authority.ssh_ca_private not in text
    assert authority.munge_key_b64 not in text
    assert "PRIVATE" not in text


def test_munge_key_is_1024_random_bytes_per_cluster(
    authority: ClusterAuthority, other_authority: ClusterAuthority
) -> None:
    assert len(base64.b64decode(authority.munge_key_b64, validate=True)) == 1024
    assert authority.munge_key_b64 != other_authority.munge_key_b64


def test_host_certificate_verifies_and_names_the_node(
    authority: ClusterAuthority, other_authority: ClusterAuthority
) -> None:
    cert_pem, key_pem = issue_host_certificate(
        authority, "worker-0", "worker-0.cluster", "10.180.0.3", days=7
    )
    cert = load_cert(cert_pem)
    ca = load_cert(authority.ca_cert_pem)

    cert.verify_directly_issued_by(ca)
    with pytest.raises(ValueError, match="subject"):
        cert.verify_directly_issued_by(load_cert(other_authority.ca_cert_pem))
    # Same cluster id, so the same CA name: only the signature can tell them apart.
    impostor = create_cluster_authority("c-1a2b3c4d")
    with pytest.raises(InvalidSignature):
        cert.verify_directly_issued_by(load_cert(impostor.ca_cert_pem))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "worker-0"
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["worker-0", "worker-0.cluster"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.180.0.3")]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    assert key.public_key() == cert.public_key()
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 7


def test_host_certificate_deduplicates_names(authority: ClusterAuthority) -> None:
    cert_pem, _ = issue_host_certificate(authority, "head-0", "head-0", "fd00::2")
    sans = load_cert(cert_pem).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert sans.value.get_values_for_type(x509.DNSName) == ["head-0"]
    assert sans.value.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("fd00::2")]


def test_host_certificate_rejects_bad_input(authority: ClusterAuthority) -> None:
    with pytest.raises(ValueError, match="not an IP"):
        issue_host_certificate(authority, "worker-0", "worker-0", "worker-0")
    with pytest.raises(ValueError, match="positive"):
        issue_host_certificate(authority, "worker-0", "worker-0", "10.0.0.1", days=0)


def test_user_certificate_is_client_only(authority: ClusterAuthority) -> None:
    cert_pem, key_pem = issue_user_certificate(authority, "alice")
    cert = load_cert(cert_pem)

    cert.verify_directly_issued_by(load_cert(authority.ca_cert_pem))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    assert key.public_key() == cert.public_key()


def test_mutual_tls_between_node_and_user(authority: ClusterAuthority, tmp_path: Path) -> None:
    host_cert, host_key = issue_host_certificate(authority, "head-0", "head-0", "127.0.0.1")
    user_cert, user_key = issue_user_certificate(authority, "alice")
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
    host_cert, host_key = issue_host_certificate(authority, "head-0", "head-0", "127.0.0.1")
    server = server_context(
        write_secret(tmp_path / "host.crt", host_cert),
        write_secret(tmp_path / "host.key", host_key),
    )
    with tls_server(server) as (port, _), pytest.raises(ssl.SSLCertVerificationError):
        tls_fetch(port, verifying_client(other_authority.ca_cert_pem), "head-0")


# --- SSH CA ------------------------------------------------------------------------------


def test_ssh_ca_public_line(authority: ClusterAuthority) -> None:
    key_type, blob, comment = authority.ssh_ca_public.split(" ")
    assert (key_type, comment) == ("ssh-ed25519", "corral-c-1a2b3c4d")
    private = serialization.load_ssh_private_key(authority.ssh_ca_private.encode(), None)
    assert ssh_public_line(private) == f"{key_type} {blob}"


def test_ssh_host_certificate(
    authority: ClusterAuthority, other_authority: ClusterAuthority
) -> None:
    host_key = ed25519.Ed25519PrivateKey.generate()
    line = sign_ssh_host_key(
        authority,
        ssh_public_line(host_key) + " root@worker-0",
        ["worker-0", "worker-0.cluster", "10.180.0.3", "worker-0"],
        key_id="c-1a2b3c4d/worker-0",
    )

    assert line.startswith("ssh-ed25519-cert-v01@openssh.com AAAA")
    assert "\n" not in line
    cert = serialization.load_ssh_public_identity(line.encode())
    assert isinstance(cert, serialization.SSHCertificate)
    assert cert.type == serialization.SSHCertificateType.HOST
    assert cert.valid_principals == [b"worker-0", b"worker-0.cluster", b"10.180.0.3"]
    assert cert.key_id == b"c-1a2b3c4d/worker-0"
    assert cert.public_key() == host_key.public_key()
    signer = cert.signature_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    assert signer.decode() == authority.ssh_ca_public.rsplit(" ", 1)[0]
    cert.verify_cert_signature()
    assert 29 <= (cert.valid_before - cert.valid_after) / 86400 <= 31

    other_ca = serialization.load_ssh_public_key(other_authority.ssh_ca_public.encode())
    assert cert.signature_key() != other_ca


def test_ssh_certificate_does_not_verify_under_another_ca(
    authority: ClusterAuthority, other_authority: ClusterAuthority
) -> None:
    """Splice another CA's key into a certificate: the signature must no longer verify."""
    line = sign_ssh_host_key(
        authority, ssh_public_line(ed25519.Ed25519PrivateKey.generate()), ["n"], "n"
    )
    blob = bytearray(base64.b64decode(line.split()[1]))
    ours = base64.b64decode(authority.ssh_ca_public.split()[1])
    theirs = base64.b64decode(other_authority.ssh_ca_public.split()[1])
    start = blob.index(ours)
    blob[start : start + len(ours)] = theirs
    forged = serialization.load_ssh_public_identity(
        b"ssh-ed25519-cert-v01@openssh.com " + base64.b64encode(bytes(blob))
    )
    with pytest.raises(InvalidSignature):
        forged.verify_cert_signature()


@pytest.mark.parametrize(
    ("key", "cert_type"),
    [
        (ec.generate_private_key(ec.SECP256R1()), "ecdsa-sha2-nistp256-cert-v01@openssh.com"),
        (rsa.generate_private_key(65537, 2048), "ssh-rsa-cert-v01@openssh.com"),
    ],
    ids=["ecdsa", "rsa-2048"],
)
def test_ssh_host_certificate_for_other_key_types(
    authority: ClusterAuthority, key, cert_type: str
) -> None:
    line = sign_ssh_host_key(authority, ssh_public_line(key), ["head-0"], "head-0")
    assert line.split()[0] == cert_type
    serialization.load_ssh_public_identity(line.encode()).verify_cert_signature()


def dsa_line() -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ssh_public_line(dsa.generate_private_key(1024))


def ed25519_named_line(key, extra: bytes = b"") -> str:
    """A line that says ssh-ed25519 whatever key its blob holds."""
    blob = base64.b64decode(ssh_public_line(key).split()[1]) + extra
    return "ssh-ed25519 " + base64.b64encode(blob).decode()


@pytest.mark.parametrize(
    ("key_line", "problem"),
    [
        ("", "one SSH public key"),
        ("garbage", "cannot parse"),
        ("not a key", "unsupported SSH key type 'not'"),
        ("ssh-ed25519 AAAA!!!!", "cannot parse"),
        ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA", "cannot parse"),
        (ssh_public_line(rsa.generate_private_key(65537, 1024)), "too weak"),
        (dsa_line(), "unsupported"),
        (ed25519_named_line(ec.generate_private_key(ec.SECP256R1())), "cannot parse"),
        (ed25519_named_line(ed25519.Ed25519PrivateKey.generate(), extra=b"\0"), "cannot parse"),
        (ssh_public_line(ed25519.Ed25519PrivateKey.generate()) + "\nssh-ed25519 AAAA", "one"),
    ],
    ids=[
        "empty",
        "garbage",
        "unknown-type",
        "bad-base64",
        "truncated",
        "rsa-1024",
        "dsa",
        "ecdsa-blob-named-ed25519",
        "ed25519-with-trailing-bytes",
        "two-lines",
    ],
)
def test_bad_ssh_key_lines_are_refused(
    authority: ClusterAuthority, key_line: str, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        sign_ssh_host_key(authority, key_line, ["worker-0"], "worker-0")


def test_ssh_certificate_is_not_signed_again(authority: ClusterAuthority) -> None:
    line = sign_ssh_host_key(
        authority, ssh_public_line(ed25519.Ed25519PrivateKey.generate()), ["n"], "n"
    )
    with pytest.raises(ValueError, match="certificate"):
        sign_ssh_host_key(authority, line, ["n"], "n")


def test_ssh_host_certificate_needs_a_principal(authority: ClusterAuthority) -> None:
    key_line = ssh_public_line(ed25519.Ed25519PrivateKey.generate())
    with pytest.raises(ValueError, match="principal"):
        sign_ssh_host_key(authority, key_line, ["", ""], "worker-0")


def test_ssh_user_key_and_certificate(authority: ClusterAuthority) -> None:
    private_pem, public_line = generate_ssh_user_key()
    private = serialization.load_ssh_private_key(private_pem.encode(), password=None)
    assert private_pem.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert ssh_public_line(private) == public_line

    line = sign_ssh_user_key(authority, public_line, "alice")
    cert = serialization.load_ssh_public_identity(line.encode())
    assert cert.type == serialization.SSHCertificateType.USER
    assert cert.valid_principals == [b"alice"]
    assert cert.key_id == b"alice"
    assert b"permit-pty" in cert.extensions
    assert cert.public_key() == private.public_key()
    cert.verify_cert_signature()
    assert (cert.valid_before - cert.valid_after) / 86400 <= 1.01

    with pytest.raises(ValueError, match="principal"):
        sign_ssh_user_key(authority, public_line, "")


def test_known_hosts_line(authority: ClusterAuthority) -> None:
    line = known_hosts_line(authority, ["*.c-1a2b3c4d", "10.180.0.*"])
    assert line == f"@cert-authority *.c-1a2b3c4d,10.180.0.* {authority.ssh_ca_public}\n"
    with pytest.raises(ValueError):
        known_hosts_line(authority, [])
    with pytest.raises(ValueError):
        known_hosts_line(authority, ["a b"])


# --- OpenSSH's own view ------------------------------------------------------------------


def test_openssh_parses_host_certificate(authority: ClusterAuthority, tmp_path: Path) -> None:
    host_key = ed25519.Ed25519PrivateKey.generate()
    cert_path = tmp_path / "ssh_host_ed25519_key-cert.pub"
    cert_path.write_text(
        sign_ssh_host_key(
            authority, ssh_public_line(host_key), ["worker-0", "10.180.0.3"], "worker-0"
        )
        + "\n"
    )
    ca_path = tmp_path / "ca.pub"
    ca_path.write_text(authority.ssh_ca_public + "\n")

    listing = run_ssh_keygen("-L", "-f", cert_path)
    ca_fingerprint = run_ssh_keygen("-l", "-f", ca_path).split()[1]

    assert "ssh-ed25519-cert-v01@openssh.com host certificate" in listing
    assert 'Key ID: "worker-0"' in listing
    principals = listing.split("Principals:")[1].split("Critical Options:")[0].split()
    assert principals == ["worker-0", "10.180.0.3"]
    assert f"Signing CA: ED25519 {ca_fingerprint}" in listing


def test_openssh_reads_private_keys_and_user_certificate(
    authority: ClusterAuthority, tmp_path: Path
) -> None:
    private_pem, public_line = generate_ssh_user_key()
    user_key = write_secret(tmp_path / "id_ed25519", private_pem)
    ca_key = write_secret(tmp_path / "ca", authority.ssh_ca_private)
    cert_path = tmp_path / "id_ed25519-cert.pub"
    cert_path.write_text(sign_ssh_user_key(authority, public_line, "alice") + "\n")

    assert run_ssh_keygen("-y", "-f", user_key).split()[:2] == public_line.split()
    assert run_ssh_keygen("-y", "-f", ca_key).split()[:2] == authority.ssh_ca_public.split()[:2]
    listing = run_ssh_keygen("-L", "-f", cert_path)
    assert "ssh-ed25519-cert-v01@openssh.com user certificate" in listing
    assert "permit-pty" in listing
