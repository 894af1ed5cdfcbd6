"""The cluster's SSH CAs, checked against cryptography's parser and OpenSSH's ssh-keygen."""

from __future__ import annotations

import base64
import dataclasses
import datetime
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest
from authorities import LEASE_END
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa

from corral.broker.pki import ClusterAuthority
from corral.broker.ssh import (
    generate_ssh_key,
    known_hosts,
    public_line,
    revoked_keys,
    sign_ssh_host_key,
    sign_ssh_user_key,
)


def ssh_public_line(key) -> str:
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return public.decode()


def run_ssh_keygen(*args: str | Path) -> str:
    path = shutil.which("ssh-keygen")
    assert path, "ssh-keygen (openssh-client) must be installed to check OpenSSH interop"
    result = subprocess.run([path, *map(str, args)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout


def write_secret(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def host_cert(authority, key_line: str, principals=("n",), key_id="n") -> str:
    return sign_ssh_host_key(authority, key_line, list(principals), key_id, LEASE_END)


def new_key_line() -> str:
    return ssh_public_line(ed25519.Ed25519PrivateKey.generate())


def signer_of(line: str) -> str:
    cert = serialization.load_ssh_public_identity(line.encode())
    signer = cert.signature_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return signer.decode()


def without_comment(line: str) -> str:
    return " ".join(line.split()[:2])


def test_the_host_and_user_cas_are_two_keys(authority: ClusterAuthority) -> None:
    host_type, host_blob, host_comment = authority.ssh_host_ca_public.split(" ")
    user_type, user_blob, user_comment = authority.ssh_user_ca_public.split(" ")
    assert (host_type, user_type) == ("ssh-ed25519", "ssh-ed25519")
    assert host_blob != user_blob
    assert (host_comment, user_comment) == ("corral-c-1a2b3c4d-hosts", "corral-c-1a2b3c4d-users")
    for private, public in (
        (authority.ssh_host_ca_private, authority.ssh_host_ca_public),
        (authority.ssh_user_ca_private, authority.ssh_user_ca_public),
    ):
        assert public_line(private) == without_comment(public)


def test_host_certificates_come_from_the_host_ca_and_logins_from_the_user_ca(
    authority: ClusterAuthority,
) -> None:
    host = host_cert(authority, new_key_line())
    login = sign_ssh_user_key(authority, new_key_line(), "alice", "c/alice", LEASE_END, True)
    assert signer_of(host) == without_comment(authority.ssh_host_ca_public)
    assert signer_of(login) == without_comment(authority.ssh_user_ca_public)


def test_ssh_host_certificate(
    authority: ClusterAuthority, other_authority: ClusterAuthority
) -> None:
    host_key = ed25519.Ed25519PrivateKey.generate()
    line = sign_ssh_host_key(
        authority,
        ssh_public_line(host_key) + " root@worker-0",
        ["worker-0", "10.180.0.3", "worker-0"],
        "c-1a2b3c4d/worker-0",
        LEASE_END,
    )

    assert line.startswith("ssh-ed25519-cert-v01@openssh.com AAAA")
    assert "\n" not in line
    cert = serialization.load_ssh_public_identity(line.encode())
    assert isinstance(cert, serialization.SSHCertificate)
    assert cert.type == serialization.SSHCertificateType.HOST
    assert cert.valid_principals == [b"worker-0", b"10.180.0.3"]
    assert cert.key_id == b"c-1a2b3c4d/worker-0"
    assert cert.public_key() == host_key.public_key()
    cert.verify_cert_signature()
    assert cert.valid_before == int(LEASE_END.timestamp())
    assert signer_of(line) != without_comment(other_authority.ssh_host_ca_public)


def test_ssh_certificate_does_not_verify_under_another_ca(
    authority: ClusterAuthority, other_authority: ClusterAuthority
) -> None:
    """Splice another CA's key into a certificate: the signature must no longer verify."""
    line = host_cert(authority, new_key_line())
    blob = bytearray(base64.b64decode(line.split()[1]))
    ours = base64.b64decode(authority.ssh_host_ca_public.split()[1])
    theirs = base64.b64decode(other_authority.ssh_host_ca_public.split()[1])
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
    line = host_cert(authority, ssh_public_line(key), ["head-0"], "head-0")
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
        host_cert(authority, key_line, ["worker-0"], "worker-0")


def test_ssh_certificate_is_not_signed_again(authority: ClusterAuthority) -> None:
    line = host_cert(authority, new_key_line())
    with pytest.raises(ValueError, match="certificate"):
        host_cert(authority, line)


def test_ssh_certificates_need_a_principal_and_a_future_end(authority: ClusterAuthority) -> None:
    with pytest.raises(ValueError, match="principal"):
        host_cert(authority, new_key_line(), ["", ""], "worker-0")
    with pytest.raises(ValueError, match="principal"):
        sign_ssh_user_key(authority, new_key_line(), "", "id", LEASE_END, True)
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=1)
    with pytest.raises(ValueError, match="future"):
        sign_ssh_host_key(authority, new_key_line(), ["n"], "n", past)


def test_a_user_certificate_carries_interactive_permissions(authority: ClusterAuthority) -> None:
    private_pem, key_line = generate_ssh_key()
    private = serialization.load_ssh_private_key(private_pem.encode(), password=None)
    assert private_pem.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert ssh_public_line(private) == key_line

    line = sign_ssh_user_key(authority, key_line, "alice", "c-1a2b3c4d/alice", LEASE_END, True)
    cert = serialization.load_ssh_public_identity(line.encode())
    assert cert.type == serialization.SSHCertificateType.USER
    assert cert.valid_principals == [b"alice"]
    assert cert.key_id == b"c-1a2b3c4d/alice"
    assert set(cert.extensions) == {
        b"permit-X11-forwarding",
        b"permit-agent-forwarding",
        b"permit-port-forwarding",
        b"permit-pty",
        b"permit-user-rc",
    }
    assert cert.public_key() == private.public_key()
    cert.verify_cert_signature()
    assert cert.valid_before == int(LEASE_END.timestamp())


def test_a_node_root_certificate_permits_no_forwarding(authority: ClusterAuthority) -> None:
    line = sign_ssh_user_key(
        authority, new_key_line(), "root@head-0", "c-1a2b3c4d/head-0/root", LEASE_END, False
    )
    cert = serialization.load_ssh_public_identity(line.encode())
    assert cert.valid_principals == [b"root@head-0"]
    assert set(cert.extensions) == {b"permit-pty"}


def test_known_hosts_trust_the_host_ca_and_refuse_revoked_keys(
    authority: ClusterAuthority,
) -> None:
    gone = new_key_line() + " root@worker-3"
    text = known_hosts(authority, ["*.c-1a2b3c4d", "10.180.0.*"], [gone])
    assert text.splitlines() == [
        f"@cert-authority *.c-1a2b3c4d,10.180.0.* {authority.ssh_host_ca_public}",
        f"@revoked * {without_comment(gone)}",
    ]
    assert known_hosts(authority, ["*"]) == f"@cert-authority * {authority.ssh_host_ca_public}\n"
    with pytest.raises(ValueError):
        known_hosts(authority, [])
    with pytest.raises(ValueError):
        known_hosts(authority, ["a b"])


def test_revoked_keys_lists_one_key_per_line() -> None:
    keys = [new_key_line() + " comment", new_key_line()]
    assert revoked_keys(keys).splitlines() == [without_comment(k) for k in keys]
    assert revoked_keys([]) == ""


# --- OpenSSH's own view ------------------------------------------------------------------


def openssh_listing(tmp_path: Path, cert_line: str) -> dict[str, str | list[str]]:
    """`ssh-keygen -L` of a certificate line, times in UTC, as {field: text or lines}.

    OpenSSH checks the CA's signature as it loads a certificate, so a listing is also
    proof that the signature verifies against the key named as its signer.
    """
    path = tmp_path / "key-cert.pub"
    path.write_text(cert_line + "\n")
    keygen = shutil.which("ssh-keygen")
    assert keygen, "ssh-keygen (openssh-client) must be installed to check OpenSSH interop"
    result = subprocess.run(
        [keygen, "-L", "-f", path], capture_output=True, text=True, timeout=30, env={"TZ": "UTC"}
    )
    assert result.returncode == 0, result.stderr
    fields: dict[str, str | list[str]] = {}
    name = ""
    for line in result.stdout.splitlines()[1:]:
        if line.startswith("        ") and not line.startswith("                "):
            name, _, value = line.strip().partition(":")
            fields[name] = value.strip() if value.strip() else []
        else:
            fields[name].append(line.strip())
    return fields


def openssh_fingerprint(tmp_path: Path, public_line: str) -> str:
    path = tmp_path / "key.pub"
    path.write_text(public_line + "\n")
    return run_ssh_keygen("-l", "-f", path).split()[1]


def utc(timestamp: int) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")


def test_openssh_lists_a_host_certificate_as_signed(
    authority: ClusterAuthority, tmp_path: Path
) -> None:
    key_line = new_key_line()
    before = datetime.datetime.now(datetime.UTC)
    line = sign_ssh_host_key(
        authority,
        key_line,
        ["worker-0", "10.180.0.3", "worker-0"],
        "c-1a2b3c4d/worker-0",
        LEASE_END,
    )
    after = datetime.datetime.now(datetime.UTC)
    cert = serialization.load_ssh_public_identity(line.encode())
    listing = openssh_listing(tmp_path, line)

    assert listing["Type"] == "ssh-ed25519-cert-v01@openssh.com host certificate"
    assert listing["Public key"] == "ED25519-CERT " + openssh_fingerprint(tmp_path, key_line)
    ca_fingerprint = openssh_fingerprint(tmp_path, authority.ssh_host_ca_public)
    assert listing["Signing CA"] == f"ED25519 {ca_fingerprint} (using ssh-ed25519)"
    assert listing["Key ID"] == '"c-1a2b3c4d/worker-0"'
    assert listing["Serial"] == str(cert.serial)
    assert listing["Principals"] == ["worker-0", "10.180.0.3"]
    assert listing["Critical Options"] == "(none)"
    assert listing["Extensions"] == "(none)"
    # valid from five minutes back (clock skew between broker and nodes) to the lease's end
    skew = datetime.timedelta(minutes=5)
    assert int((before - skew).timestamp()) <= cert.valid_after <= (after - skew).timestamp()
    assert listing["Valid"] == f"from {utc(cert.valid_after)} to {utc(int(LEASE_END.timestamp()))}"
    cert.verify_cert_signature()
    assert signer_of(line) == without_comment(authority.ssh_host_ca_public)


def test_openssh_lists_a_users_certificate_with_interactive_permissions(
    authority: ClusterAuthority, tmp_path: Path
) -> None:
    line = sign_ssh_user_key(authority, new_key_line(), "alice", "c/alice", LEASE_END, True)
    listing = openssh_listing(tmp_path, line)

    assert listing["Type"] == "ssh-ed25519-cert-v01@openssh.com user certificate"
    ca_fingerprint = openssh_fingerprint(tmp_path, authority.ssh_user_ca_public)
    assert listing["Signing CA"] == f"ED25519 {ca_fingerprint} (using ssh-ed25519)"
    assert listing["Key ID"] == '"c/alice"'
    assert listing["Principals"] == ["alice"]
    assert listing["Critical Options"] == "(none)"
    assert listing["Extensions"] == [
        "permit-X11-forwarding",
        "permit-agent-forwarding",
        "permit-port-forwarding",
        "permit-pty",
        "permit-user-rc",
    ]
    assert listing["Valid"].endswith(f" to {utc(int(LEASE_END.timestamp()))}")


@pytest.mark.parametrize(
    ("key", "listed_type"),
    [
        (ec.generate_private_key(ec.SECP256R1()), "ecdsa-sha2-nistp256-cert-v01@openssh.com"),
        (rsa.generate_private_key(65537, 2048), "ssh-rsa-cert-v01@openssh.com"),
    ],
    ids=["ecdsa", "rsa-2048"],
)
def test_openssh_lists_host_certificates_of_other_key_types(
    authority: ClusterAuthority, tmp_path: Path, key, listed_type: str
) -> None:
    listing = openssh_listing(tmp_path, host_cert(authority, ssh_public_line(key), ["head-0"]))
    assert listing["Type"] == f"{listed_type} host certificate"
    assert listing["Principals"] == ["head-0"]


def test_openssh_refuses_a_certificate_whose_signature_was_altered(
    authority: ClusterAuthority, tmp_path: Path
) -> None:
    cert_type, blob = host_cert(authority, new_key_line()).split()
    raw = bytearray(base64.b64decode(blob))
    raw[-1] ^= 1  # the last byte of the Ed25519 signature
    forged = f"{cert_type} {base64.b64encode(bytes(raw)).decode()}"
    with pytest.raises(InvalidSignature):
        serialization.load_ssh_public_identity(forged.encode()).verify_cert_signature()
    path = tmp_path / "forged-cert.pub"
    path.write_text(forged + "\n")
    keygen = shutil.which("ssh-keygen")
    result = subprocess.run([keygen, "-L", "-f", path], capture_output=True, timeout=30)
    assert result.returncode != 0


def test_an_ecdsa_ca_signs_host_certificates(authority: ClusterAuthority, tmp_path: Path) -> None:
    ca = ec.generate_private_key(ec.SECP256R1())
    private = ca.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    ecdsa_authority = dataclasses.replace(
        authority, ssh_host_ca_private=private, ssh_host_ca_public=ssh_public_line(ca)
    )
    line = host_cert(ecdsa_authority, new_key_line())

    cert = serialization.load_ssh_public_identity(line.encode())
    cert.verify_cert_signature()
    assert cert.signature_key() == ca.public_key()
    ca_fingerprint = openssh_fingerprint(tmp_path, ssh_public_line(ca))
    listing = openssh_listing(tmp_path, line)
    assert listing["Signing CA"] == f"ECDSA {ca_fingerprint} (using ecdsa-sha2-nistp256)"


def test_openssh_revokes_the_certificates_of_listed_keys(
    authority: ClusterAuthority, tmp_path: Path
) -> None:
    """sshd's RevokedKeys, compiled by ssh-keygen into a KRL, refuses a certificate whose
    key is listed and accepts one whose key is not."""
    gone, staying = new_key_line(), new_key_line()
    revoked = tmp_path / "revoked_keys"
    revoked.write_text(revoked_keys([gone + " root@head-1"]))
    krl = tmp_path / "revoked.krl"
    run_ssh_keygen("-k", "-f", krl, revoked)
    certs = []
    for name, key_line in (("gone", gone), ("staying", staying)):
        certs.append(tmp_path / f"{name}-cert.pub")
        certs[-1].write_text(
            sign_ssh_user_key(authority, key_line, f"root@{name}", name, LEASE_END, False) + "\n"
        )
    keygen = shutil.which("ssh-keygen")
    result = subprocess.run(
        [keygen, "-Q", "-f", krl, *certs], capture_output=True, text=True, timeout=30
    )
    verdicts = [line.rsplit(": ", 1)[1] for line in result.stdout.splitlines()]
    assert verdicts == ["REVOKED", "ok"]


def test_openssh_reads_private_keys_and_login_certificates(
    authority: ClusterAuthority, tmp_path: Path
) -> None:
    private_pem, key_line = generate_ssh_key()
    user_key = write_secret(tmp_path / "id_ed25519", private_pem)
    ca_key = write_secret(tmp_path / "ca", authority.ssh_user_ca_private)
    root_cert = tmp_path / "id_ed25519-cert.pub"
    root_cert.write_text(
        sign_ssh_user_key(authority, key_line, "root@head-0", "c/head-0/root", LEASE_END, False)
        + "\n"
    )

    assert run_ssh_keygen("-y", "-f", user_key).split()[:2] == key_line.split()
    assert (
        run_ssh_keygen("-y", "-f", ca_key).split()[:2] == authority.ssh_user_ca_public.split()[:2]
    )
    listing = run_ssh_keygen("-L", "-f", root_cert)
    assert "ssh-ed25519-cert-v01@openssh.com user certificate" in listing
    extensions = listing.split("Extensions:")[1].split()
    assert extensions == ["permit-pty"]
