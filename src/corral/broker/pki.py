"""The broker's cryptography: its own TLS identity and one authority per cluster.

The broker pins nothing on trust-on-first-use: each node's user-data carries the SHA-256
fingerprint of the broker's self-signed certificate (`load_or_create_broker_identity`,
`fingerprint`). Per cluster the broker is two certificate authorities
(`create_cluster_authority`): an X.509 CA that issues node and user TLS certificates, and
an SSH CA that signs node host keys and user keys, so one `@cert-authority` line
(`known_hosts_line`) lets users and nodes trust every node of the cluster. The munge key
travels with the authority because it is the cluster's other shared secret.

Everything goes in and out as PEM or OpenSSH text so the store can keep it as text.
X.509 keys are ECDSA P-256 (every TLS stack speaks it); SSH keys are Ed25519.
Malformed input raises `ValueError` naming the problem.
"""

from __future__ import annotations

import base64
import datetime
import functools
import hashlib
import ipaddress
import logging
import os
import secrets
import stat
import struct
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

BROKER_CERT_FILE = "broker.crt"
BROKER_KEY_FILE = "broker.key"
MUNGE_KEY_BYTES = 1024
MIN_RSA_BITS = 2048

_BROKER_VALIDITY = datetime.timedelta(days=3650)
_CA_VALIDITY = datetime.timedelta(days=365)
# Back-date every certificate a little so a node whose clock lags the broker's still
# accepts it while NTP catches up.
_CLOCK_SKEW = datetime.timedelta(minutes=5)
_SUPPORTED_SSH_KEYS = (ed25519.Ed25519PublicKey, ec.EllipticCurvePublicKey, rsa.RSAPublicKey)
_ED25519 = "ssh-ed25519"
_SSH_USER_EXTENSIONS = (
    b"permit-X11-forwarding",
    b"permit-agent-forwarding",
    b"permit-port-forwarding",
    b"permit-pty",
    b"permit-user-rc",
)


def fingerprint(cert_pem: str) -> str:
    """Return `sha256:<hex>` over the DER form of a PEM certificate, as agents pin it.

    Raises ValueError when `cert_pem` is not a PEM certificate.
    """
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    der = cert.public_bytes(serialization.Encoding.DER)
    return "sha256:" + hashlib.sha256(der).hexdigest()


# --- the broker's own TLS identity -------------------------------------------------------


@dataclass(frozen=True)
class BrokerIdentity:
    """Where the broker's TLS certificate and key live, and the fingerprint nodes pin."""

    cert_path: Path
    key_path: Path
    fingerprint: str


def load_or_create_broker_identity(
    directory: Path, names: list[str], addresses: list[str]
) -> BrokerIdentity:
    """Load the broker's self-signed TLS identity from `directory`, creating it on first use.

    The certificate is made once (names and addresses become its SANs, valid ten years)
    and reused on every later call whatever `names` and `addresses` say, because nodes
    pin its fingerprint: changing it would strand every booting node. The key file is
    written 0600 (and tightened to 0600 if found looser).

    Raises ValueError when an address is not an IP address, or when the directory holds
    a certificate without its key or a key that does not match the certificate; those
    files are left alone for an operator to look at.
    """
    directory = Path(directory)
    cert_path = directory / BROKER_CERT_FILE
    key_path = directory / BROKER_KEY_FILE

    if cert_path.exists():
        if not key_path.exists():
            raise ValueError(
                f"broker certificate {cert_path} exists but its key {key_path} does not"
            )
        cert_pem = cert_path.read_text()
        key = _load_private_key(key_path.read_text(), str(key_path))
        cert = _load_certificate(cert_pem, str(cert_path))
        if cert.public_key() != key.public_key():
            raise ValueError(f"broker key {key_path} does not match certificate {cert_path}")
        _tighten_mode(key_path)
        return BrokerIdentity(cert_path, key_path, fingerprint(cert_pem))

    sans = _subject_alt_names(names, addresses)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if key_path.exists():
        # A crash between writing the key and the certificate; no node can have pinned
        # a certificate that was never written, so finish the job with the same key.
        key = _load_private_key(key_path.read_text(), str(key_path))
        _tighten_mode(key_path)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        _write_atomically(key_path, _private_pem(key), mode=0o600)

    common_name = names[0] if names else "corral broker"
    subject = _name(common_name, organization="corral")
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + _BROKER_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert_pem = builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()
    _write_atomically(cert_path, cert_pem, mode=0o644)
    identity = BrokerIdentity(cert_path, key_path, fingerprint(cert_pem))
    log.info("created broker TLS identity %s (%s)", cert_path, identity.fingerprint)
    return identity


# --- per-cluster authority ---------------------------------------------------------------


@dataclass(frozen=True)
class ClusterAuthority:
    """One cluster's secrets as text: X.509 CA, SSH CA and munge key.

    The private halves are left out of `repr` so an authority that reaches a log or a
    traceback does not carry them along.
    """

    ca_cert_pem: str
    ca_key_pem: str = field(repr=False)
    ssh_ca_private: str = field(repr=False)  # OpenSSH private key format
    ssh_ca_public: str  # one line: "ssh-ed25519 AAAA... corral-<cluster>"
    munge_key_b64: str = field(repr=False)


def create_cluster_authority(cluster_id: str) -> ClusterAuthority:
    """Make a fresh authority for `cluster_id`: X.509 CA (one year), SSH CA and munge key.

    Raises ValueError when `cluster_id` is empty or contains whitespace (it becomes the
    SSH CA key's comment and part of the CA's name).
    """
    if not cluster_id or any(ch.isspace() for ch in cluster_id):
        raise ValueError(f"cluster id {cluster_id!r} must be non-empty and without whitespace")

    ca_key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(f"corral cluster {cluster_id} CA", organization="corral")
    now = _now()
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + _CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    ssh_key = ed25519.Ed25519PrivateKey.generate()
    ssh_public = ssh_key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return ClusterAuthority(
        ca_cert_pem=ca_cert.public_bytes(serialization.Encoding.PEM).decode(),
        ca_key_pem=_private_pem(ca_key),
        ssh_ca_private=_openssh_private(ssh_key),
        ssh_ca_public=f"{ssh_public.decode()} corral-{cluster_id}",
        munge_key_b64=base64.b64encode(secrets.token_bytes(MUNGE_KEY_BYTES)).decode(),
    )


def issue_host_certificate(
    authority: ClusterAuthority, node: str, hostname: str, address: str, days: int = 30
) -> tuple[str, str]:
    """Issue a node's TLS certificate and a fresh key: `(cert_pem, key_pem)`.

    CN is the node name; SANs are the node name, its hostname (when different) and its IP
    address; usable as TLS server and client. Validity is `days`, cut short at the CA's
    own expiry.

    Raises ValueError when `node` is empty, `address` is not an IP address or `days` is
    not positive.
    """
    if not node:
        raise ValueError("node name must not be empty")
    sans = _subject_alt_names([node, hostname], [address])
    return _issue(
        authority,
        common_name=node,
        sans=sans,
        usages=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        days=days,
    )


def issue_user_certificate(
    authority: ClusterAuthority, user: str, days: int = 30
) -> tuple[str, str]:
    """Issue a user's TLS client certificate (CN=user) and a fresh key: `(cert_pem, key_pem)`.

    Raises ValueError when `user` is empty or `days` is not positive.
    """
    if not user:
        raise ValueError("user name must not be empty")
    return _issue(
        authority,
        common_name=user,
        sans=[],
        usages=[ExtendedKeyUsageOID.CLIENT_AUTH],
        days=days,
    )


# --- SSH certificates --------------------------------------------------------------------


def sign_ssh_host_key(
    authority: ClusterAuthority,
    public_key_line: str,
    principals: list[str],
    key_id: str,
    days: int = 30,
) -> str:
    """Sign a node's SSH host public key; return the certificate as one OpenSSH line.

    `principals` are the names and addresses clients will connect by; duplicates are
    dropped. The result (`ssh-ed25519-cert-v01@openssh.com AAAA...` for an Ed25519 key)
    is what sshd's `HostCertificate` points at.

    Raises ValueError when the key line does not parse, is already a certificate, is of an
    unsupported type (Ed25519, ECDSA and RSA of at least 2048 bits are accepted), when no
    principal is given (OpenSSH would read that as "any host"), or `days` is not positive.
    """
    return _sign_ssh(
        authority,
        public_key_line,
        serialization.SSHCertificateType.HOST,
        principals,
        key_id,
        days,
        extensions=(),
    )


def sign_ssh_user_key(
    authority: ClusterAuthority, public_key_line: str, user: str, days: int = 1
) -> str:
    """Sign a user's SSH public key for login as `user` on the cluster's nodes.

    The certificate carries the usual interactive permissions (pty, agent, port and X11
    forwarding, user rc) and is returned as one OpenSSH line.

    Raises ValueError like `sign_ssh_host_key`, and when `user` is empty.
    """
    return _sign_ssh(
        authority,
        public_key_line,
        serialization.SSHCertificateType.USER,
        [user],
        user,
        days,
        extensions=_SSH_USER_EXTENSIONS,
    )


def generate_ssh_user_key() -> tuple[str, str]:
    """Make a fresh Ed25519 SSH key: `(private key in OpenSSH format, public key line)`."""
    key = ed25519.Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return _openssh_private(key), public.decode()


def known_hosts_line(authority: ClusterAuthority, patterns: list[str]) -> str:
    """The known_hosts line that trusts every host certificate the cluster's SSH CA signs.

    Raises ValueError when `patterns` is empty or a pattern holds a comma or whitespace,
    which would change the line's meaning.
    """
    if not patterns:
        raise ValueError("known_hosts line needs at least one host pattern")
    for pattern in patterns:
        if not pattern or "," in pattern or any(ch.isspace() for ch in pattern):
            raise ValueError(f"host pattern {pattern!r} is empty or holds a comma or space")
    return f"@cert-authority {','.join(patterns)} {authority.ssh_ca_public}\n"


# --- helpers -----------------------------------------------------------------------------


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


def _key_usage(
    digital_signature: bool = False, key_cert_sign: bool = False, crl_sign: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _subject_alt_names(names: Iterable[str], addresses: Iterable[str]) -> list[x509.GeneralName]:
    sans: list[x509.GeneralName] = []
    for name in _unique(names):
        sans.append(x509.DNSName(name))
    for address in _unique(addresses):
        try:
            ip = ipaddress.ip_address(address)
        except ValueError as exc:
            raise ValueError(f"{address!r} is not an IP address") from exc
        sans.append(x509.IPAddress(ip))
    return sans


def _unique(values: Iterable[str]) -> list[str]:
    """Drop empty values and duplicates, keeping first-seen order."""
    return list(dict.fromkeys(value for value in values if value))


def _issue(
    authority: ClusterAuthority,
    common_name: str,
    sans: list[x509.GeneralName],
    usages: list[x509.ObjectIdentifier],
    days: int,
) -> tuple[str, str]:
    if days <= 0:
        raise ValueError(f"certificate lifetime must be positive, got {days} days")
    ca_cert, ca_key = _parsed_x509_authority(authority.ca_cert_pem, authority.ca_key_pem)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    not_after = min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM).decode(), _private_pem(key)


def _sign_ssh(
    authority: ClusterAuthority,
    public_key_line: str,
    cert_type: serialization.SSHCertificateType,
    principals: list[str],
    key_id: str,
    days: int,
    extensions: Iterable[bytes],
) -> str:
    """The certificate as OpenSSH's PROTOCOL.certkeys lays it out, signed by the cluster's
    Ed25519 SSH CA. Encoded here: cryptography's builder parses and re-encodes the key in
    Python and cost three times as much, twice for every node that registers."""
    if days <= 0:
        raise ValueError(f"certificate lifetime must be positive, got {days} days")
    wanted = _unique(principals)
    if not wanted:
        raise ValueError("an SSH certificate needs at least one principal")
    key_type, key_fields = _ssh_key_fields(public_key_line)
    ca_key, ca_blob = _parsed_ssh_authority(authority.ssh_ca_private)
    now = _now()
    name = f"{key_type}-cert-v01@openssh.com".encode()
    body = b"".join(
        (
            _ssh_string(name),
            _ssh_string(secrets.token_bytes(32)),  # nonce
            key_fields,
            struct.pack(">QI", secrets.randbits(64), cert_type.value),  # serial, type
            _ssh_string(key_id.encode()),
            _ssh_string(b"".join(_ssh_string(p.encode()) for p in wanted)),
            struct.pack(
                ">QQ",
                int((now - _CLOCK_SKEW).timestamp()),
                int((now + datetime.timedelta(days=days)).timestamp()),
            ),
            _ssh_string(b""),  # critical options
            _ssh_string(b"".join(_ssh_string(e) + _ssh_string(b"") for e in sorted(extensions))),
            _ssh_string(b""),  # reserved
            _ssh_string(ca_blob),
        )
    )
    signature = _ssh_string(_ED25519.encode()) + _ssh_string(ca_key.sign(body))
    return f"{name.decode()} {base64.b64encode(body + _ssh_string(signature)).decode()}"


def _ssh_key_fields(line: str) -> tuple[str, bytes]:
    """A public key line's type and its key fields, as a certificate carries them.

    An Ed25519 key, what nodes offer, is checked here; any other goes through
    `_parse_ssh_public_key`. Raises ValueError as that does.
    """
    text = line.strip()
    if not text or "\n" in text:
        raise ValueError("expected exactly one SSH public key line")
    key_type, _, rest = text.partition(" ")
    if key_type != _ED25519:
        _parse_ssh_public_key(text)
    try:
        blob = base64.b64decode(rest.split(maxsplit=1)[0], validate=True)
    except (IndexError, ValueError):  # binascii.Error is a ValueError
        blob = b""
    prefix = _ssh_string(key_type.encode())
    fields = blob[len(prefix) :]
    ed25519_ok = fields[:4] == struct.pack(">I", 32) and len(fields) == 36
    if not blob.startswith(prefix) or (key_type == _ED25519 and not ed25519_ok):
        raise ValueError(f"cannot parse SSH public key {_abbreviate(text)!r}")
    return key_type, fields


def _ssh_string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _parse_ssh_public_key(
    line: str,
) -> ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    text = line.strip()
    if not text or "\n" in text:
        raise ValueError("expected exactly one SSH public key line")
    try:
        identity = serialization.load_ssh_public_identity(text.encode())
    except UnsupportedAlgorithm as exc:
        raise ValueError(f"unsupported SSH key type {text.split()[0]!r}") from exc
    except ValueError as exc:
        raise ValueError(f"cannot parse SSH public key {_abbreviate(text)!r}: {exc}") from exc
    if isinstance(identity, serialization.SSHCertificate):
        raise ValueError("expected an SSH public key, got a certificate")
    if isinstance(identity, rsa.RSAPublicKey) and identity.key_size < MIN_RSA_BITS:
        raise ValueError(f"RSA key of {identity.key_size} bits is too weak (< {MIN_RSA_BITS})")
    if not isinstance(identity, _SUPPORTED_SSH_KEYS):
        raise ValueError(f"unsupported SSH key type {text.split()[0]!r}")
    return identity


def _abbreviate(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


# a broker signs for every node of a cluster with the same authority: parse it once
@functools.lru_cache(maxsize=64)
def _parsed_x509_authority(
    cert_pem: str, key_pem: str
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    return (
        _load_certificate(cert_pem, "cluster CA certificate"),
        _load_private_key(key_pem, "cluster CA key"),
    )


@functools.lru_cache(maxsize=64)
def _parsed_ssh_authority(private_key: str) -> tuple[ed25519.Ed25519PrivateKey, bytes]:
    """The cluster's SSH CA key, and its public key as a certificate names its signer."""
    key = serialization.load_ssh_private_key(private_key.encode(), password=None)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError("the cluster's SSH CA key is not an Ed25519 key")
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return key, _ssh_string(_ED25519.encode()) + _ssh_string(public)


def _load_certificate(pem: str, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem.encode())
    except ValueError as exc:
        raise ValueError(f"{what} is not a PEM certificate: {exc}") from exc


def _load_private_key(pem: str, what: str) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"{what} is not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{what} is not an ECDSA key")
    return key


def _private_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _openssh_private(key: ed25519.Ed25519PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()


def _write_atomically(path: Path, text: str, mode: int) -> None:
    """Write via a temporary file in the same directory, created with `mode` from the start."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _tighten_mode(key_path: Path) -> None:
    mode = stat.S_IMODE(key_path.stat().st_mode)
    if mode & 0o077:
        log.warning("broker key %s had mode %o; setting 0600", key_path, mode)
        key_path.chmod(0o600)
