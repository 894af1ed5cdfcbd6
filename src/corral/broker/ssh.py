"""A cluster's two SSH certificate authorities: one for host keys, one for user keys.

The host CA signs each node's host key for the node's name and address, so one
`@cert-authority` line (`known_hosts`) lets users and nodes trust every node of the
cluster. The user CA signs the keys that log in: a user's, for their name, with the
usual interactive permissions, and the root key of each login node, for that node alone
(`root@<node>`), with none of the forwarding permissions. Keeping the two apart means a
host certificate can never be taken for a login, nor a login certificate for a host.

Certificates end when the cluster's lease ends (`not_after`). The keys of a node that
has left are listed as revoked (`known_hosts` for host keys, `revoked_keys` for logins).
Keys are Ed25519; a node may also offer ECDSA or RSA (2048 bits or more) host keys.
Malformed input raises `ValueError` naming the problem.
"""

from __future__ import annotations

import base64
import datetime
import functools
import secrets
import struct
from collections.abc import Iterable

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from corral.broker.pki import CLOCK_SKEW, ClusterAuthority

MIN_RSA_BITS = 2048
_SUPPORTED_KEYS = (ed25519.Ed25519PublicKey, ec.EllipticCurvePublicKey, rsa.RSAPublicKey)
_ED25519 = "ssh-ed25519"
_INTERACTIVE = (
    b"permit-X11-forwarding",
    b"permit-agent-forwarding",
    b"permit-port-forwarding",
    b"permit-pty",
    b"permit-user-rc",
)
_PTY_ONLY = (b"permit-pty",)


def generate_ssh_key() -> tuple[str, str]:
    """Make a fresh Ed25519 SSH key: `(private key in OpenSSH format, public key line)`."""
    key = ed25519.Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    return private.decode(), public.decode()


def public_line(private_key: str) -> str:
    """The public key line of an OpenSSH private key (one this module made)."""
    key = serialization.load_ssh_private_key(private_key.encode(), password=None)
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return public.decode()


def sign_ssh_host_key(
    authority: ClusterAuthority,
    public_key_line: str,
    principals: list[str],
    key_id: str,
    not_after: datetime.datetime,
) -> str:
    """Sign a node's SSH host public key with the host CA; return one OpenSSH line.

    `principals` are the names and addresses clients will connect by; duplicates are
    dropped. The result (`ssh-ed25519-cert-v01@openssh.com AAAA...` for an Ed25519 key)
    is what sshd's `HostCertificate` points at.

    Raises ValueError when the key line does not parse, is already a certificate, is of an
    unsupported type, when no principal is given (OpenSSH would read that as "any host"),
    or when `not_after` has passed.
    """
    return _sign(
        authority.ssh_host_ca_private,
        public_key_line,
        serialization.SSHCertificateType.HOST,
        principals,
        key_id,
        not_after,
        extensions=(),
    )


def sign_ssh_user_key(
    authority: ClusterAuthority,
    public_key_line: str,
    principal: str,
    key_id: str,
    not_after: datetime.datetime,
    forwarding: bool,
) -> str:
    """Sign a key with the user CA, to log in where `principal` is accepted.

    With `forwarding` (a person's key) the certificate carries the usual interactive
    permissions: pty, agent, port and X11 forwarding, user rc. Without it (a node's root
    key) it permits a pty and nothing else.

    Raises ValueError like `sign_ssh_host_key`, and when `principal` is empty.
    """
    return _sign(
        authority.ssh_user_ca_private,
        public_key_line,
        serialization.SSHCertificateType.USER,
        [principal],
        key_id,
        not_after,
        extensions=_INTERACTIVE if forwarding else _PTY_ONLY,
    )


def known_hosts(
    authority: ClusterAuthority, patterns: list[str], revoked: Iterable[str] = ()
) -> str:
    """known_hosts lines trusting every host certificate of the cluster's host CA for
    `patterns`, and refusing the `revoked` host keys (of nodes that left).

    Raises ValueError when `patterns` is empty or a pattern holds a comma or whitespace,
    which would change the line's meaning.
    """
    if not patterns:
        raise ValueError("known_hosts line needs at least one host pattern")
    for pattern in patterns:
        if not pattern or "," in pattern or any(ch.isspace() for ch in pattern):
            raise ValueError(f"host pattern {pattern!r} is empty or holds a comma or space")
    lines = [f"@cert-authority {','.join(patterns)} {authority.ssh_host_ca_public}"]
    lines += [f"@revoked * {_key_only(key)}" for key in revoked]
    return "\n".join(lines) + "\n"


def revoked_keys(keys: Iterable[str]) -> str:
    """sshd's RevokedKeys file: one public key per line (empty: nothing revoked).

    sshd refuses a certificate whose key is listed, whoever signed it.
    """
    return "".join(f"{_key_only(key)}\n" for key in keys)


def _key_only(line: str) -> str:
    """`type base64` of a public key line, without its comment."""
    return " ".join(line.split()[:2])


def _sign(
    ca_private: str,
    public_key_line: str,
    cert_type: serialization.SSHCertificateType,
    principals: list[str],
    key_id: str,
    not_after: datetime.datetime,
    extensions: Iterable[bytes],
) -> str:
    """The certificate as OpenSSH's PROTOCOL.certkeys lays it out, signed by an Ed25519
    CA. Encoded here: cryptography's builder parses and re-encodes the key in Python and
    cost three times as much, twice for every node that registers (tests/test_ssh.py
    checks the result with ssh-keygen and with cryptography's parser)."""
    now = datetime.datetime.now(datetime.UTC)
    if not_after.tzinfo is None or not_after <= now:
        raise ValueError(f"a certificate's end must be an aware time in the future: {not_after}")
    wanted = list(dict.fromkeys(p for p in principals if p))
    if not wanted:
        raise ValueError("an SSH certificate needs at least one principal")
    key_type, key_fields = _key_fields(public_key_line)
    ca_key, ca_blob = _parsed_ca(ca_private)
    name = f"{key_type}-cert-v01@openssh.com".encode()
    body = b"".join(
        (
            _string(name),
            _string(secrets.token_bytes(32)),  # nonce
            key_fields,
            struct.pack(">QI", secrets.randbits(64), cert_type.value),  # serial, type
            _string(key_id.encode()),
            _string(b"".join(_string(p.encode()) for p in wanted)),
            struct.pack(">QQ", int((now - CLOCK_SKEW).timestamp()), int(not_after.timestamp())),
            _string(b""),  # critical options
            _string(b"".join(_string(e) + _string(b"") for e in sorted(extensions))),
            _string(b""),  # reserved
            _string(ca_blob),
        )
    )
    signature = _string(_ED25519.encode()) + _string(ca_key.sign(body))
    return f"{name.decode()} {base64.b64encode(body + _string(signature)).decode()}"


def _key_fields(line: str) -> tuple[str, bytes]:
    """A public key line's type and its key fields, as a certificate carries them.

    An Ed25519 key, what nodes offer, is checked here; any other goes through
    `_parse_public_key`. Raises ValueError as that does.
    """
    text = line.strip()
    if not text or "\n" in text:
        raise ValueError("expected exactly one SSH public key line")
    key_type, _, rest = text.partition(" ")
    if key_type != _ED25519:
        _parse_public_key(text)
    try:
        blob = base64.b64decode(rest.split(maxsplit=1)[0], validate=True)
    except (IndexError, ValueError):  # binascii.Error is a ValueError
        blob = b""
    prefix = _string(key_type.encode())
    fields = blob[len(prefix) :]
    ed25519_ok = fields[:4] == struct.pack(">I", 32) and len(fields) == 36
    if not blob.startswith(prefix) or (key_type == _ED25519 and not ed25519_ok):
        raise ValueError(f"cannot parse SSH public key {_abbreviate(text)!r}")
    return key_type, fields


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _parse_public_key(
    text: str,
) -> ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
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
    if not isinstance(identity, _SUPPORTED_KEYS):
        raise ValueError(f"unsupported SSH key type {text.split()[0]!r}")
    return identity


def _abbreviate(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


# a broker signs for every node of a cluster with the same CA: parse it once
@functools.lru_cache(maxsize=128)
def _parsed_ca(private_key: str) -> tuple[ed25519.Ed25519PrivateKey, bytes]:
    """An SSH CA's key, and its public key as a certificate names its signer."""
    key = serialization.load_ssh_private_key(private_key.encode(), password=None)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError("the cluster's SSH CA key is not an Ed25519 key")
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return key, _string(_ED25519.encode()) + _string(public)
