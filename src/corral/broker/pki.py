"""The broker's X.509 cryptography: its own TLS identity and one authority per cluster.

The broker pins nothing on trust-on-first-use: each node's user-data carries the SHA-256
fingerprints of the broker's self-signed certificate and of its public key
(`load_or_create_broker_identity`); the agent accepts either, so renewing the certificate
with the same key (which happens by itself once a third of its lifetime is left) never
strands a node. Per cluster the broker is an X.509 CA (`create_ca_certificate`) that
issues node and user TLS certificates and signs the list of revoked ones, and two SSH CAs
(one for host keys, one for user and root keys: broker/ssh.py); `ClusterAuthority` holds
all of them, with the munge key, the cluster's other shared secret.

Every certificate of a cluster ends when its lease ends (`not_after`); an extension
renews them (`renew_cluster_ca`, and `issue_host_certificate` with the node's key).

Everything goes in and out as PEM or OpenSSH text so the store can keep it as text.
X.509 keys are ECDSA P-256 (every TLS stack speaks it). Malformed input raises
`ValueError` naming the problem.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import hmac
import ipaddress
import logging
import os
import stat
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

BROKER_CERT_FILE = "broker.crt"
BROKER_KEY_FILE = "broker.key"
DEFAULT_BROKER_LIFETIME = datetime.timedelta(days=90)

# Back-date every certificate a little so a node whose clock lags the broker's still
# accepts it while NTP catches up.
CLOCK_SKEW = datetime.timedelta(minutes=5)


def fingerprint(cert_pem: str) -> str:
    """Return `sha256:<hex>` over the DER form of a PEM certificate, as agents pin it.

    Raises ValueError when `cert_pem` is not a PEM certificate.
    """
    cert = _load_certificate(cert_pem, "certificate")
    return "sha256:" + hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def key_fingerprint(cert_pem: str) -> str:
    """Return `sha256:<hex>` over the DER SubjectPublicKeyInfo of a PEM certificate's key:
    the pin that holds across renewals of the certificate with the same key.

    Raises ValueError when `cert_pem` is not a PEM certificate.
    """
    key = _load_certificate(cert_pem, "certificate").public_key()
    spki = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(spki).hexdigest()


# --- the broker's own TLS identity -------------------------------------------------------


@dataclass(frozen=True)
class BrokerIdentity:
    """Where the broker's TLS certificate and key live, and the pins nodes are given."""

    cert_path: Path
    key_path: Path
    fingerprint: str  # of the certificate
    key_fingerprint: str  # of its public key: unchanged by a renewal
    not_after: datetime.datetime


def load_or_create_broker_identity(
    directory: Path,
    names: list[str],
    addresses: list[str],
    lifetime: datetime.timedelta = DEFAULT_BROKER_LIFETIME,
    new_key: bool = False,
) -> BrokerIdentity:
    """Load the broker's self-signed TLS identity from `directory`, creating it on first use.

    The certificate is made once (names and addresses become its SANs, valid `lifetime`)
    and kept while more than a third of its lifetime is left; then it is renewed with
    the same key and names, whatever `names` and `addresses` say now, so that the key
    pin every node holds stays true. `new_key` makes a new key and certificate (a
    rotation: running nodes pinned the old key and can no longer reach the broker).
    The key file is written 0600 (and tightened to 0600 if found looser).

    Raises ValueError when an address is not an IP address, when `lifetime` is not
    positive, or when the directory holds a certificate without its key or a key that
    does not match the certificate; those files are left alone for an operator to see.
    """
    if lifetime <= datetime.timedelta(0):
        raise ValueError(f"broker certificate lifetime must be positive, got {lifetime}")
    directory = Path(directory)
    cert_path = directory / BROKER_CERT_FILE
    key_path = directory / BROKER_KEY_FILE

    if cert_path.exists() and not new_key:
        if not key_path.exists():
            raise ValueError(
                f"broker certificate {cert_path} exists but its key {key_path} does not"
            )
        key = _load_private_key(key_path.read_text(), str(key_path))
        cert = _load_certificate(cert_path.read_text(), str(cert_path))
        if cert.public_key() != key.public_key():
            raise ValueError(f"broker key {key_path} does not match certificate {cert_path}")
        _tighten_mode(key_path)
        if cert.not_valid_after_utc - _now() > lifetime / 3:
            return _identity(cert_path, key_path)
        sans = _sans_of(cert)
        common_name = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        log.info("renewing broker TLS certificate %s (same key)", cert_path)
    else:
        sans = _subject_alt_names(names, addresses)
        common_name = names[0] if names else "corral broker"
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if key_path.exists() and not new_key:
            # A crash between writing the key and the certificate; no node can have
            # pinned a certificate that was never written, so finish with the same key.
            key = _load_private_key(key_path.read_text(), str(key_path))
            _tighten_mode(key_path)
        else:
            key = ec.generate_private_key(ec.SECP256R1())
            _write_atomically(key_path, _private_pem(key), mode=0o600)

    subject = _name(common_name, organization="corral")
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert_pem = builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()
    _write_atomically(cert_path, cert_pem, mode=0o644)
    identity = _identity(cert_path, key_path)
    log.info(
        "broker TLS certificate %s valid until %s (key %s)",
        cert_path,
        identity.not_after.isoformat(timespec="seconds"),
        identity.key_fingerprint,
    )
    return identity


def _identity(cert_path: Path, key_path: Path) -> BrokerIdentity:
    cert_pem = cert_path.read_text()
    cert = _load_certificate(cert_pem, str(cert_path))
    return BrokerIdentity(
        cert_path,
        key_path,
        fingerprint(cert_pem),
        key_fingerprint(cert_pem),
        cert.not_valid_after_utc,
    )


def _sans_of(cert: x509.Certificate) -> list[x509.GeneralName]:
    try:
        return list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return []


# --- per-cluster authority ---------------------------------------------------------------


@dataclass(frozen=True)
class ClusterAuthority:
    """One cluster's secrets as text: X.509 CA, the SSH host and user CAs, munge key.

    The private halves are left out of `repr` so an authority that reaches a log or a
    traceback does not carry them along.
    """

    ca_cert_pem: str
    ca_key_pem: str = field(repr=False)
    ssh_host_ca_private: str = field(repr=False)  # OpenSSH private key format
    ssh_host_ca_public: str  # one line: "ssh-ed25519 AAAA... corral-<cluster>-hosts"
    ssh_user_ca_private: str = field(repr=False)
    ssh_user_ca_public: str  # one line: "ssh-ed25519 AAAA... corral-<cluster>-users"
    munge_key_b64: str = field(repr=False)


def create_ca_certificate(cluster_id: str, not_after: datetime.datetime) -> tuple[str, str]:
    """A fresh X.509 CA for `cluster_id`, valid until `not_after` (the lease's end):
    `(cert_pem, key_pem)`.

    Raises ValueError when `cluster_id` is empty or contains whitespace, or `not_after`
    has passed.
    """
    if not cluster_id or any(ch.isspace() for ch in cluster_id):
        raise ValueError(f"cluster id {cluster_id!r} must be non-empty and without whitespace")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    return _ca_certificate(cluster_id, ca_key, not_after), _private_pem(ca_key)


def renew_cluster_ca(authority: ClusterAuthority, not_after: datetime.datetime) -> str:
    """The cluster's CA certificate again, valid until `not_after`: same key, name and key
    identifier, so every certificate it issued before still verifies under it.

    Raises ValueError when `not_after` has passed.
    """
    ca_cert, ca_key = _parsed_x509_authority(authority.ca_cert_pem, authority.ca_key_pem)
    common_name = ca_cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    cluster_id = common_name.removeprefix("corral cluster ").removesuffix(" CA")
    return _ca_certificate(cluster_id, ca_key, not_after)


def _ca_certificate(
    cluster_id: str, ca_key: ec.EllipticCurvePrivateKey, not_after: datetime.datetime
) -> str:
    now = _now()
    _check_ends(not_after, now)
    subject = _name(f"corral cluster {cluster_id} CA", organization="corral")
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def issue_host_certificate(
    authority: ClusterAuthority,
    node: str,
    address: str | None,
    not_after: datetime.datetime,
    serial: int,
    key_pem: str | None = None,
) -> tuple[str, str]:
    """Issue a node's TLS certificate: `(cert_pem, key_pem)`, for a fresh key unless
    `key_pem` is given (a renewal).

    CN and the one DNS name are the node's name; the IP address is the node's, as the
    service recorded them; usable as TLS server and client; valid until `not_after`, cut
    short at the CA's own expiry; `serial` from `certificate_serial`.

    Raises ValueError when `node` is empty, `address` is not an IP address or `not_after`
    has passed.
    """
    if not node:
        raise ValueError("node name must not be empty")
    sans = _subject_alt_names([node], [address] if address else [])
    key = _load_private_key(key_pem, "node key") if key_pem else None
    return _issue(
        authority,
        common_name=node,
        sans=sans,
        usages=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        not_after=not_after,
        serial=serial,
        key=key,
    )


def issue_user_certificate(
    authority: ClusterAuthority, user: str, not_after: datetime.datetime
) -> tuple[str, str]:
    """Issue a user's TLS client certificate (CN=user) and a fresh key: `(cert_pem, key_pem)`.

    Raises ValueError when `user` is empty or `not_after` has passed.
    """
    if not user:
        raise ValueError("user name must not be empty")
    return _issue(
        authority,
        common_name=user,
        sans=[],
        usages=[ExtendedKeyUsageOID.CLIENT_AUTH],
        not_after=not_after,
        serial=x509.random_serial_number(),
    )


def certificate_serial(authority: ClusterAuthority, subject_id: str, generation: int) -> int:
    """The serial of the certificate issued to `subject_id` (a node id) at `generation`
    (how many times the cluster's credentials were renewed).

    Derived, not drawn, so that a revocation list can name every certificate a departed
    node ever held without a record of each; keyed with the CA's private key, so that no
    one else can predict it. 159 bits, positive, as RFC 5280 allows.
    """
    digest = hmac.new(
        authority.ca_key_pem.encode(), f"{subject_id}/{generation}".encode(), hashlib.sha256
    ).digest()
    return (int.from_bytes(digest[:20], "big") >> 1) | 1 << 150


def revocation_list(
    authority: ClusterAuthority, serials: Iterable[int], next_update: datetime.datetime
) -> str:
    """A CRL, signed by the cluster's CA, revoking the certificates with `serials`."""
    return _revocation_list(
        authority.ca_cert_pem, authority.ca_key_pem, tuple(sorted(set(serials))), next_update
    )


@functools.lru_cache(maxsize=64)  # every node of a cluster gets the same one
def _revocation_list(
    ca_cert_pem: str, ca_key_pem: str, serials: tuple[int, ...], next_update: datetime.datetime
) -> str:
    ca_cert, ca_key = _parsed_x509_authority(ca_cert_pem, ca_key_pem)
    now = _now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - CLOCK_SKEW)
        .next_update(max(next_update, now))
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(now - CLOCK_SKEW)
            .build()
        )
    crl = builder.sign(ca_key, hashes.SHA256())
    return crl.public_bytes(serialization.Encoding.PEM).decode()


# --- helpers -----------------------------------------------------------------------------


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def _check_ends(not_after: datetime.datetime, now: datetime.datetime) -> None:
    if not_after.tzinfo is None:
        raise ValueError("a certificate's end must be a timezone-aware time")
    if not_after <= now:
        raise ValueError(f"a certificate's end must be in the future, got {not_after}")


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
    not_after: datetime.datetime,
    serial: int,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> tuple[str, str]:
    now = _now()
    _check_ends(not_after, now)
    ca_cert, ca_key = _parsed_x509_authority(authority.ca_cert_pem, authority.ca_key_pem)
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(min(not_after, ca_cert.not_valid_after_utc))
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


# a broker signs for every node of a cluster with the same authority: parse it once
@functools.lru_cache(maxsize=64)
def _parsed_x509_authority(
    cert_pem: str, key_pem: str
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    return (
        _load_certificate(cert_pem, "cluster CA certificate"),
        _load_private_key(key_pem, "cluster CA key"),
    )


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
