"""corral's context agent: brings one node of a virtual cluster into the roles it plays.

This file is copied into images as it is, so it uses the Python 3.9+ standard library
only and imports nothing from corral. It implements the node side of
docs/agent-protocol.md:

1. find the bootstrap document (`--bootstrap`, the system credential corral.bootstrap,
   the NoCloud seed, var/lib/corral/bootstrap.json, `--metadata-url`, EC2 IMDSv2 with
   `--ec2`);
2. talk to the broker over HTTPS pinned to the SHA-256 of its certificate, register with
   the single-use token (or reuse the stored credential);
3. long-poll the node's view until it is satisfied, then write the files, the /etc/hosts
   block and the ssh_known_hosts block;
4. run /etc/corral/roles/<role>/configure for every role the node provides, report each
   run, then report node/ready (or node/failed);
5. follow the view and run `leave`/`join` when the members of a required role change,
   until SIGTERM (or stop after step 4 with `--once`).

Every path is taken under `--root` (default `/`), so the agent can run without root.

Errors, all raised on purpose and turned into exit status 2 by `main`:

    AgentError              base; the message is what the log shows
    ├── BootstrapError      no usable bootstrap document, or an invalid one
    ├── PinningError        the broker's certificate is not the pinned one (nothing sent)
    ├── BrokerRefused       the broker answered 4xx (spent token, unknown credential, ...)
    ├── BrokerUnavailable   network errors or 5xx for longer than the retry budget
    └── ViewError           the broker sent a view or file the agent cannot use

Exit status: 0 node ready (with `--once`) or stopped by SIGTERM; 1 a role failed and
node/failed was reported; 2 an AgentError.

The bootstrap token, the credential and the content of files are secrets: they are never
logged, and the view handed to role scripts carries file paths and modes, not contents.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import calendar
import contextlib
import datetime
import errno
import glob
import hashlib
import hmac
import http.client
import json
import logging
import os
import re
import select
import signal
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

PROTOCOL_VERSION = 1
USER_AGENT = "corral-agent/1"
BEGIN_MARK = "# BEGIN corral"
END_MARK = "# END corral"
LOG_TAIL_BYTES = 4096
MAX_POLL_WAIT = 60
RETRY_BUDGET_SECONDS = 600.0
FIRST_RETRY_DELAY = 1.0
MAX_RETRY_DELAY = 30.0
REQUEST_TIMEOUT = 30.0
IMDS_URL = "http://169.254.169.254"
# on a cloud, a group's nodes share one user-data: a script whose line of its own
# carries the group's bootstrap document (backends/cloud_init.py)
BOOTSTRAP_LINE = "# corral-bootstrap: "
AGENT_PATH = "/agent.py"  # where the broker serves this program, under its URL
# how often a node on EC2 looks for a spot interruption notice in its metadata
INTERRUPTION_CHECK_SECONDS = 5.0
EC2_SOURCE = "EC2 user-data"
MAX_DRAIN_SECONDS = 7 * 24 * 3600
# a drain hook's own timeout is the drain's and this much more, so that a hook that waits
# out the drain's timeout still says so itself
DRAIN_SCRIPT_MARGIN_SECONDS = 30

# a VM's host hands it over through qemu's fw_cfg, which systemd imports at boot into
# this root-only directory in memory: the token never touches the node's disk
SYSTEM_CREDENTIAL = "/run/credentials/@system/corral.bootstrap"
NOCLOUD_USER_DATA = "/var/lib/cloud/seed/nocloud/user-data"
BOOTSTRAP_FILE = "/var/lib/corral/bootstrap.json"
STATE_DIR = "/var/lib/corral"
CREDENTIAL_FILE = "/var/lib/corral/credential"
STATE_FILE = "/var/lib/corral/state.json"
HOSTS_FILE = "/etc/hosts"
KNOWN_HOSTS_FILE = "/etc/ssh/ssh_known_hosts"
ROLES_DIR = "/etc/corral/roles"
HOME_DIR = "/home"
SKELETON_DIR = "/etc/skel"
ACCOUNT_FILES = (("/etc/passwd", 0o644), ("/etc/group", 0o644), ("/etc/shadow", 0o640))
# where a node that is not the system's own root (a test machine) shows it powered off
POWER_OFF_MARK = "/run/corral/powered-off"

log = logging.getLogger("corral.agent")


class AgentError(Exception):
    """Base of every error the agent raises on purpose; `main` exits 2 on it."""


class BootstrapError(AgentError):
    """Raised by `find_bootstrap` when no source holds a usable bootstrap document."""


class PinningError(AgentError):
    """Raised on connecting when the broker's certificate is not the pinned one."""


class BrokerRefused(AgentError):
    """Raised by `Broker.request` when the broker answers 4xx; it is never retried."""

    def __init__(self, method: str, path: str, status: int, code: str, message: str) -> None:
        super().__init__(f"broker refused {method} {path}: {status} {code}: {message}")
        self.status = status
        self.code = code


class BrokerUnavailable(AgentError):
    """Raised by `Broker.request` when the broker stayed unreachable past the budget."""


class ViewError(AgentError):
    """Raised when the broker sends a view or a file the agent cannot use."""


class StopRequested(Exception):
    """Raised inside an interruptible wait when SIGTERM or SIGINT arrives."""


# --- bootstrap -------------------------------------------------------------------------


@dataclass(frozen=True)
class Bootstrap:
    """The node's bootstrap document; `token` is a secret and stays out of repr."""

    broker: str
    fingerprint: str  # lower-case hex of SHA-256 over the broker certificate's DER
    cluster: str
    node: str
    source: str
    token: str = field(repr=False, default="")
    # lower-case hex of SHA-256 over the broker's public key (DER SubjectPublicKeyInfo):
    # still true after the broker renews its certificate with the same key
    key_fingerprint: str = ""


_FINGERPRINT = re.compile(r"^sha256:([0-9a-f]{64})$", re.IGNORECASE)


def parse_bootstrap(raw: bytes, source: str, launch_index: int | None = None) -> Bootstrap | None:
    """The corral document in `raw` (JSON, or a user-data script with the document on its
    BOOTSTRAP_LINE), or None when `raw` holds no corral document at all. A group's
    document names this node by its `launch_index` (its place in the group's launch).

    Raises BootstrapError when `raw` is a corral document with a bad field.
    """
    doc = _bootstrap_json(raw)
    if not isinstance(doc, dict) or "corral" not in doc:
        return None
    if doc["corral"] != PROTOCOL_VERSION:
        raise BootstrapError(f"{source}: unsupported bootstrap version {doc['corral']!r}")
    if "launch" in doc:  # a group's document: the node is the one at its launch index
        if launch_index is None:
            raise BootstrapError(f"{source}: a group's document, but no launch index to read")
        doc = dict(doc, **_node_of_launch(doc["launch"], launch_index, source))
    for key in ("broker", "fingerprint", "cluster", "node", "token"):
        if not isinstance(doc.get(key), str) or not doc[key]:
            raise BootstrapError(f"{source}: `{key}` missing or not a string")
    try:
        broker = urllib.parse.urlsplit(doc["broker"])
        usable = broker.scheme == "https" and bool(broker.hostname) and broker.port != 0
    except ValueError:  # a port that is not a number
        usable = False
    if not usable:
        raise BootstrapError(f"{source}: broker must be an https://HOST[:PORT]/PATH URL")
    match = _FINGERPRINT.match(doc["fingerprint"].strip())
    if match is None:
        raise BootstrapError(f"{source}: fingerprint must be sha256:<64 hex digits>")
    key = doc.get("key_fingerprint", "")
    key_match = _FINGERPRINT.match(key.strip()) if isinstance(key, str) else None
    if key and key_match is None:
        raise BootstrapError(f"{source}: key_fingerprint must be sha256:<64 hex digits>")
    return Bootstrap(
        broker=doc["broker"].rstrip("/"),
        fingerprint=match.group(1).lower(),
        cluster=doc["cluster"],
        node=doc["node"],
        source=source,
        token=doc["token"],
        key_fingerprint=key_match.group(1).lower() if key_match else "",
    )


def _bootstrap_json(raw: bytes) -> object:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if text.startswith("#!"):
        lines = [line for line in text.splitlines() if line.startswith(BOOTSTRAP_LINE)]
        if len(lines) != 1:
            return None
        text = lines[0][len(BOOTSTRAP_LINE) :]
    try:
        return json.loads(text)
    except ValueError:
        return None


def launch_token(key: str, node: str) -> str:
    """The bootstrap token of `node` in a group's launch whose key is `key`: the service
    records it as the node's token, and the node derives it from its group's document."""
    digest = hmac.new(key.encode(), node.encode(), hashlib.sha256).digest()
    return "bt_" + base64.urlsafe_b64encode(digest).decode().rstrip("=")


def _node_of_launch(launch: object, index: int, source: str) -> dict[str, str]:
    """The name and token of the node at `index` of a group's launch."""
    if not isinstance(launch, dict):
        raise BootstrapError(f"{source}: `launch` must be an object")
    key, group, ranges = launch.get("key"), launch.get("group"), launch.get("indexes")
    if not (isinstance(key, str) and key and isinstance(group, str) and group):
        raise BootstrapError(f"{source}: `launch` needs a key and a group")
    if not isinstance(ranges, list) or not all(
        isinstance(r, list) and len(r) == 2 and all(type(i) is int for i in r) for r in ranges
    ):
        raise BootstrapError(f"{source}: `launch.indexes` must be a list of [first, last]")
    for first, last in ranges:
        if index <= last - first:
            node = f"{group}-{first + index}"
            return {"node": node, "token": launch_token(key, node)}
        index -= last - first + 1
    raise BootstrapError(f"{source}: launch index past the group's {len(ranges)} range(s)")


def _direct_opener() -> urllib.request.OpenerDirector:
    # Metadata services are link-local; a proxy from the environment must not see them.
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fetch_metadata_url(url: str, attempts: int = 3, delay: float = 2.0) -> bytes | None:
    """The body at `url`, or None when it answers 404 or stays unreachable."""
    opener = _direct_opener()
    for attempt in range(attempts):
        try:
            with opener.open(url, timeout=10) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            log.warning("metadata %s answered %s", url, exc.code)
        except OSError as exc:
            log.warning("metadata %s unreachable: %s", url, exc)
        if attempt + 1 < attempts:
            time.sleep(delay)
    return None


class Imds:
    """EC2's instance metadata, through IMDSv2: a session token first, then reads."""

    def __init__(self, url: str = IMDS_URL) -> None:
        self.url = url
        self._opener = _direct_opener()
        self._token = ""

    def get(self, path: str) -> bytes | None:
        """The value at `path` (under /latest/), or None where there is none (404).
        Raises OSError when the metadata service cannot be reached."""
        if not self._token:
            request = urllib.request.Request(
                self.url + "/latest/api/token",
                method="PUT",
                headers={"X-aws-ec2-metadata-token-ttl-seconds": "21600"},
            )
            with self._opener.open(request, timeout=5) as response:
                self._token = response.read().decode("ascii").strip()
        request = urllib.request.Request(
            f"{self.url}/latest/{path}", headers={"X-aws-ec2-metadata-token": self._token}
        )
        try:
            with self._opener.open(request, timeout=5) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 401:  # the session ended: a new one next time
                self._token = ""
            if exc.code in (401, 404):
                return None
            raise

    def interruption(self) -> str | None:
        """EC2's notice that it takes this spot instance back, as text, or None."""
        raw = self.get("meta-data/spot/instance-action")
        if raw is None:
            return None
        try:
            notice = json.loads(raw)
            return f"spot instance-action {notice['action']} at {notice['time']}"
        except (ValueError, KeyError, TypeError):
            return "spot instance-action: " + raw.decode("utf-8", "replace")[:200]


def fetch_ec2_bootstrap(imds_url: str = IMDS_URL) -> Bootstrap | None:
    """The bootstrap document in EC2 user-data, for this node's launch index, or None."""
    imds = Imds(imds_url)
    try:
        raw = imds.get("user-data")
        if raw is None:
            return None
        index = imds.get("meta-data/ami-launch-index")
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("EC2 instance metadata unreachable: %s", exc)
        return None
    launch_index = int(index) if index is not None and index.strip().isdigit() else None
    return parse_bootstrap(raw, EC2_SOURCE, launch_index)


def find_bootstrap(
    root: str,
    bootstrap_file: str | None = None,
    metadata_url: str | None = None,
    ec2: bool = False,
    imds_url: str = IMDS_URL,
) -> Bootstrap:
    """The first bootstrap document found, in the order of docs/agent-protocol.md.

    An explicit `bootstrap_file` must hold one. Other sources that exist but hold no
    corral document (a plain cloud-config, say) are skipped. Raises BootstrapError.
    """
    if bootstrap_file is not None:
        try:
            with open(bootstrap_file, "rb") as fh:
                raw = fh.read()
        except OSError as exc:
            raise BootstrapError(f"cannot read {bootstrap_file}: {exc.strerror}") from exc
        found = parse_bootstrap(raw, bootstrap_file)
        if found is None:
            raise BootstrapError(f"{bootstrap_file} holds no corral bootstrap document")
        return found
    for relative in (SYSTEM_CREDENTIAL, NOCLOUD_USER_DATA, BOOTSTRAP_FILE):
        path = under_root(root, relative)
        try:
            with open(path, "rb") as fh:
                raw = fh.read()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise BootstrapError(f"cannot read {path}: {exc.strerror}") from exc
        found = parse_bootstrap(raw, path)
        if found is not None:
            return found
        log.info("%s holds no corral bootstrap document; skipped", path)
    if metadata_url:
        raw = fetch_metadata_url(metadata_url)
        found = parse_bootstrap(raw, metadata_url) if raw is not None else None
        if found is not None:
            return found
        log.info("%s holds no corral bootstrap document; skipped", metadata_url)
    if ec2:
        found = fetch_ec2_bootstrap(imds_url)
        if found is not None:
            return found
        log.info("EC2 user-data holds no corral bootstrap document; skipped")
    raise BootstrapError(
        "no bootstrap document: none given with --bootstrap, none in "
        f"{under_root(root, SYSTEM_CREDENTIAL)}, {under_root(root, NOCLOUD_USER_DATA)} or "
        f"{under_root(root, BOOTSTRAP_FILE)}, "
        "and no --metadata-url or --ec2 that had one"
    )


# --- the broker, over pinned TLS ----------------------------------------------------------


class PinnedHTTPSConnection(http.client.HTTPSConnection):
    """An HTTPS connection that trusts exactly one certificate, by SHA-256 of its DER, or
    any unexpired certificate of one public key, by SHA-256 of its SubjectPublicKeyInfo.

    The check runs in `connect`, which http.client calls before it sends a byte of the
    request, also when it reconnects on its own.
    """

    def __init__(
        self, host: str, port: int, fingerprint: str, timeout: float, key_fingerprint: str = ""
    ) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # trust comes from the pin, not from a CA
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        super().__init__(host, port, timeout=timeout, context=context)
        self.fingerprint = fingerprint
        self.key_fingerprint = key_fingerprint

    def connect(self) -> None:
        super().connect()
        der = self.sock.getpeercert(binary_form=True) or b""
        try:
            self._check(der)
        except PinningError:
            self.close()
            raise

    def _check(self, der: bytes) -> None:
        seen = hashlib.sha256(der).hexdigest()
        try:
            public_key, not_after = certificate_facts(der)
        except ValueError as exc:
            where = f"{self.host}:{self.port}"
            raise PinningError(f"broker {where} sent no usable certificate") from exc
        seen_key = hashlib.sha256(public_key).hexdigest()
        pinned = hmac.compare_digest(seen, self.fingerprint.lower()) or (
            bool(self.key_fingerprint)
            and hmac.compare_digest(seen_key, self.key_fingerprint.lower())
        )
        if not pinned:
            raise PinningError(
                f"broker {self.host}:{self.port} presented certificate sha256:{seen} "
                f"(key sha256:{seen_key}), not the pinned sha256:{self.fingerprint}"
                + (f" (key sha256:{self.key_fingerprint})" if self.key_fingerprint else "")
                + "; refusing to talk to it"
            )
        if not_after < time.time():
            raise PinningError(
                f"broker {self.host}:{self.port} presented its certificate, which expired at "
                f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(not_after))}; "
                "refusing to talk to it"
            )


def certificate_facts(der: bytes) -> tuple[bytes, float]:
    """The DER SubjectPublicKeyInfo of an X.509 certificate, and its end (Unix time).

    Reads just what it needs of the DER (RFC 5280: Certificate, TBSCertificate, Validity),
    since the standard library parses no certificate it has not verified. Raises
    ValueError on anything else.
    """
    tag, start, _ = _der_item(der, 0)
    tag_tbs, tbs, tbs_end = _der_item(der, start)
    if tag != 0x30 or tag_tbs != 0x30:
        raise ValueError("not a certificate")
    items = []
    at = tbs
    while at < tbs_end and len(items) < 7:
        item = _der_item(der, at)
        items.append(item)
        at = item[2]
    if items and items[0][0] == 0xA0:  # the optional explicit version
        items = items[1:]
    if len(items) < 6 or items[3][0] != 0x30 or items[5][0] != 0x30:
        raise ValueError("not a certificate")
    _, validity, validity_end = items[3]
    not_before = _der_item(der, validity)
    tag_end, end_start, end_end = _der_item(der, not_before[2])
    if end_end != validity_end:
        raise ValueError("not a certificate")
    not_after = _der_time(tag_end, der[end_start:end_end])
    _, _, key_end = items[5]
    key_start = items[4][2]
    return der[key_start:key_end], not_after


def _der_item(data: bytes, at: int) -> tuple[int, int, int]:
    """The DER item at `at`: (tag, where its content starts, where it ends)."""
    if at + 2 > len(data):
        raise ValueError("truncated DER")
    tag, length = data[at], data[at + 1]
    at += 2
    if length & 0x80:
        size = length & 0x7F
        if not 1 <= size <= 4 or at + size > len(data):
            raise ValueError("bad DER length")
        length = int.from_bytes(data[at : at + size], "big")
        at += size
    if at + length > len(data):
        raise ValueError("truncated DER")
    return tag, at, at + length


def _der_time(tag: int, raw: bytes) -> float:
    """A UTCTime (0x17) or GeneralizedTime (0x18) in UTC, as Unix time."""
    text = raw.decode("ascii")
    if tag == 0x17 and len(text) == 13 and text.endswith("Z"):
        year = int(text[:2])
        text = ("19" if year >= 50 else "20") + text
    elif not (tag == 0x18 and len(text) == 15 and text.endswith("Z")):
        raise ValueError("unsupported certificate time")
    fields = time.strptime(text, "%Y%m%d%H%M%SZ")
    return float(calendar.timegm(fields))


class Broker:
    """The broker's API at `base_url`: JSON requests on one kept, pinned connection.

    A TLS handshake costs the broker more than a request, so the connection is kept for
    the agent's life and made again (and the pin checked again) whenever it breaks.

    Network errors and 5xx are retried with exponential backoff until `retry_budget`
    seconds have passed (BrokerUnavailable); 4xx raises BrokerRefused at once; a wrong
    certificate raises PinningError at once.
    """

    def __init__(
        self,
        base_url: str,
        fingerprint: str,
        retry_budget: float = RETRY_BUDGET_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
        key_fingerprint: str = "",
    ) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme != "https" or not parts.hostname:
            raise BootstrapError(f"broker URL must be https://HOST[:PORT]/PATH: {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or 443
        self.prefix = parts.path.rstrip("/")
        self.fingerprint = fingerprint
        self.key_fingerprint = key_fingerprint
        self.retry_budget = retry_budget
        self.sleep = sleep
        self._connection: PinnedHTTPSConnection | None = None  # kept between requests

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        credential: str | None = None,
        timeout: float = REQUEST_TIMEOUT,
    ) -> dict[str, Any]:
        """Send one request (retried as the class says) and return the JSON object answered."""
        payload = json.dumps(body).encode("utf-8") if body is not None else None
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        if credential is not None:
            headers["Authorization"] = "Bearer " + credential
        deadline = time.monotonic() + self.retry_budget
        delay = FIRST_RETRY_DELAY
        while True:
            try:
                status, data = self._exchange(method, path, payload, headers, timeout)
            except (OSError, http.client.HTTPException) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if 200 <= status < 300:
                    return _json_object(data, f"{method} {path}")
                if status < 500:
                    code, message = _error_of(data)
                    raise BrokerRefused(method, path, status, code, message)
                problem = f"HTTP {status}"
            if time.monotonic() + delay > deadline:
                raise BrokerUnavailable(
                    f"broker {self.host}:{self.port} unavailable for "
                    f"{self.retry_budget:g} s ({method} {path}): {problem}"
                )
            log.warning("%s %s failed (%s); retrying in %g s", method, path, problem, delay)
            self.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_DELAY)

    def _exchange(
        self, method: str, path: str, payload: bytes | None, headers: dict, timeout: float
    ) -> tuple[int, bytes]:
        reused = self._connection is not None
        try:
            return self._send(method, path, payload, headers, timeout)
        except (
            http.client.RemoteDisconnected,
            BrokenPipeError,
            ConnectionResetError,
            ssl.SSLEOFError,
        ):
            if not reused:
                raise
            # the broker closed the kept connection while it was idle, before this
            # request reached it: send it again at once on a new one
            return self._send(method, path, payload, headers, timeout)

    def _send(
        self, method: str, path: str, payload: bytes | None, headers: dict, timeout: float
    ) -> tuple[int, bytes]:
        if self._connection is None:
            self._connection = PinnedHTTPSConnection(
                self.host, self.port, self.fingerprint, timeout, self.key_fingerprint
            )
        connection = self._connection
        connection.timeout = timeout  # for when http.client reconnects by itself
        if connection.sock is not None:
            connection.sock.settimeout(timeout)
        try:
            connection.request(method, self.prefix + path, body=payload, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        except BaseException:
            connection.close()
            self._connection = None
            raise


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data.decode("utf-8")) if data else {}
    except (UnicodeDecodeError, ValueError) as exc:
        raise ViewError(f"broker answered {what} with something that is not JSON") from exc
    if not isinstance(value, dict):
        raise ViewError(f"broker answered {what} with JSON that is not an object")
    return value


def _error_of(data: bytes) -> tuple[str, str]:
    try:
        body = json.loads(data.decode("utf-8"))
        return str(body.get("error", "error")), str(body.get("message", ""))
    except (UnicodeDecodeError, ValueError, AttributeError):
        return "error", data[:200].decode("utf-8", errors="replace")


# --- the node's identity -------------------------------------------------------------


def under_root(root: str, path: str) -> str:
    """`path` (absolute, as on the node) inside `root`."""
    return os.path.join(root, path.lstrip("/"))


def is_system_root(root: str) -> bool:
    return os.path.realpath(root) == "/"


def gather_identity(root: str, node: str) -> dict[str, Any]:
    """Hostname, addresses and SSH host public keys, as `register` wants them."""
    if is_system_root(root):
        hostname = socket.gethostname()
        addresses = _ipv4_addresses()
    else:
        hostname = _read_text(under_root(root, "/etc/hostname")).strip() or node
        addresses = []
    keys = []
    for path in sorted(glob.glob(under_root(root, "/etc/ssh/ssh_host_*_key.pub"))):
        line = _read_text(path).strip()
        if line:
            keys.append(line)
    return {"hostname": hostname, "addresses": addresses, "ssh_host_keys": keys}


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return ""


def _ipv4_addresses() -> list[str]:
    """Global IPv4 addresses from `ip -o -4 addr` (best effort: none if it is missing)."""
    try:
        out = subprocess.run(
            ["ip", "-o", "-4", "addr", "show"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    found = []
    for line in out.splitlines():
        words = line.split()
        if "inet" in words[:-1]:
            address = words[words.index("inet") + 1].split("/")[0]
            if not address.startswith("127.") and address not in found:
                found.append(address)
    return found


# --- writing files ----------------------------------------------------------------------


def write_file(path: str, content: bytes, mode: int, owner_root: bool = False) -> bool:
    """Make `path` hold `content` with `mode`, atomically; False if it already did.

    The new content goes to a temporary file in the same directory, gets its mode before
    its first byte, and replaces the old file in one rename.
    """
    try:
        st = os.stat(path)
        with open(path, "rb") as fh:
            same = fh.read() == content
        if (
            same
            and stat.S_IMODE(st.st_mode) == mode
            and (not owner_root or (st.st_uid, st.st_gid) == (0, 0))
        ):
            return False
    except FileNotFoundError:
        pass
    directory, name = os.path.split(path)
    os.makedirs(directory, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".corral-tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            if owner_root:
                os.fchown(fh.fileno(), 0, 0)
            fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.replace(temporary, path)
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
            # A bind-mounted file (a container's /etc/hosts) cannot be renamed over.
            with open(path, "r+b") as fh:
                fh.write(content)
                fh.truncate()
            os.unlink(temporary)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return True


def with_managed_block(text: str, body: Sequence[str]) -> str:
    """`text` with the corral block holding `body` lines, everything else kept as it was.

    An existing block is replaced where it stands; otherwise the block is appended.
    """
    block = [BEGIN_MARK + "\n", *(line + "\n" for line in body), END_MARK + "\n"]
    lines = text.splitlines(keepends=True)
    marks = [line.rstrip("\r\n") for line in lines]
    if BEGIN_MARK not in marks:
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        return "".join(lines + block)
    start = marks.index(BEGIN_MARK)
    end = next((i for i in range(start + 1, len(lines)) if marks[i] == END_MARK), len(lines) - 1)
    return "".join(lines[:start] + block + lines[end + 1 :])


def write_managed_block(path: str, body: Sequence[str], owner_root: bool) -> bool:
    """Put `body` into the corral block of `path` (created 0644 if missing)."""
    try:
        with open(path, "rb") as fh:
            current = fh.read().decode("utf-8", errors="surrogateescape")
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        current, mode = "", 0o644
    wanted = with_managed_block(current, body).encode("utf-8", errors="surrogateescape")
    return write_file(path, wanted, mode, owner_root=owner_root)


# --- user accounts --------------------------------------------------------------------------


@dataclass(frozen=True)
class Account:
    """A user account as the view gives it: the same on every node of the cluster."""

    name: str
    uid: int
    ssh_keys: tuple[str, ...]

    @property
    def home(self) -> str:
        return f"{HOME_DIR}/{self.name}"

    def entries(self) -> tuple[str, str, str]:
        """Its lines for /etc/passwd, /etc/group and /etc/shadow: no password (logins are
        by key or certificate only; `*` is not a locked account to sshd, `!` would be)
        and no password ageing (a last change of 0 would force a change at login)."""
        return (
            f"{self.name}:x:{self.uid}:{self.uid}::{self.home}:/bin/bash",
            f"{self.name}:x:{self.uid}:",
            f"{self.name}:*:::::::",
        )


ACCOUNT_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")


def accounts_of(view: dict[str, Any]) -> list[Account]:
    """The view's `users`, checked: names that are safe in account files and paths, UIDs
    of ordinary users, key lines without line breaks. Raises ViewError otherwise."""
    found = []
    for item in view.get("users") or []:
        if not isinstance(item, dict):
            raise ViewError("broker sent a user that is not an object")
        name, uid, keys = item.get("name"), item.get("uid"), item.get("ssh_keys") or []
        if not isinstance(name, str) or not ACCOUNT_NAME.match(name):
            raise ViewError(f"broker sent a bad user name: {name!r}")
        if type(uid) is not int or not 1000 <= uid < 60000 or item.get("gid") != uid:
            raise ViewError(f"broker sent user {name} with a bad UID or GID")
        if not isinstance(keys, list) or not all(
            isinstance(k, str) and "\n" not in k and "\r" not in k for k in keys
        ):
            raise ViewError(f"broker sent user {name} with bad SSH keys")
        found.append(Account(name, uid, tuple(keys)))
    return found


def add_account_entries(root: str, accounts: Sequence[Account]) -> list[str]:
    """Add each account to /etc/passwd, /etc/group and /etc/shadow where it is missing;
    the names added. Lines are appended, so each file keeps its owner and mode.

    Raises ViewError when a name or number is already another account's: the nodes
    would disagree about who owns the shared files.
    """
    added = []
    for column, (path, mode) in enumerate(ACCOUNT_FILES):
        target = under_root(root, path)
        current = _read_text(target)
        ids = {}
        for line in current.splitlines():
            fields = line.split(":")
            if len(fields) > 2:
                ids[fields[0]] = fields[2]
        missing = []
        for account in accounts:
            wanted = account.entries()[column]
            if account.name in ids:
                if column < 2 and ids[account.name] != str(account.uid):
                    raise ViewError(
                        f"account {account.name} exists in {path} with id "
                        f"{ids[account.name]}, not {account.uid}"
                    )
                continue
            if column < 2 and str(account.uid) in ids.values():
                other = next(n for n, i in ids.items() if i == str(account.uid))
                raise ViewError(f"id {account.uid} of {account.name} is {other}'s in {path}")
            missing.append(wanted)
            if column == 0:
                added.append(account.name)
        if missing:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, mode)
            with os.fdopen(fd, "a", encoding="utf-8") as fh:
                separator = "\n" if current and not current.endswith("\n") else ""
                fh.write(separator + "".join(f"{line}\n" for line in missing))
    return added


def prepare_home(root: str, account: Account, owner_root: bool) -> None:
    """The account's home (from /etc/skel when new), its SSH key pair for logins inside
    the cluster, and its authorized_keys: the document's keys and that pair's.

    Every node does this; with a shared /home they race, so each file appears by one
    atomic link or rename, and the first key pair made is the one kept.
    """
    home = under_root(root, account.home)
    ssh_dir = os.path.join(home, ".ssh")

    def own(path: str) -> None:
        if owner_root:
            os.lchown(path, account.uid, account.uid)

    try:
        os.makedirs(os.path.dirname(home), exist_ok=True)
        os.mkdir(home, 0o700)
    except FileExistsError:
        pass
    else:
        own(home)
        skeleton = under_root(root, SKELETON_DIR)
        for name in sorted(os.listdir(skeleton)) if os.path.isdir(skeleton) else []:
            source = os.path.join(skeleton, name)
            if os.path.isfile(source) and not os.path.islink(source):
                with open(source, "rb") as fh:
                    write_file(os.path.join(home, name), fh.read(), 0o644)
                own(os.path.join(home, name))
    with contextlib.suppress(FileExistsError):
        os.mkdir(ssh_dir, 0o700)
        own(ssh_dir)
    key = os.path.join(ssh_dir, "id_ed25519")
    if not os.path.exists(key + ".pub"):
        _make_key_pair(key, account, own)
    own_key = _read_text(key + ".pub").strip()
    authorized = os.path.join(ssh_dir, "authorized_keys")
    write_managed_block(authorized, [*account.ssh_keys, own_key], owner_root=False)
    own(authorized)


def _make_key_pair(key: str, account: Account, own: Callable[[str], None]) -> None:
    """Make `key` and `key.pub` unless another node got there first (the public key's
    link decides who does, and only the winner links the private key)."""
    fresh = f"{key}.{os.getpid()}.{time.monotonic_ns()}.corral-tmp"
    comment = f"{account.name}@corral"
    made = subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", fresh],
        capture_output=True,
        text=True,
    )
    if made.returncode != 0:
        raise ViewError(f"ssh-keygen for {account.name}: {made.stderr.strip()}")
    try:
        for path in (fresh, fresh + ".pub"):
            own(path)
        try:
            os.link(fresh + ".pub", key + ".pub")
        except FileExistsError:
            return
        os.replace(fresh, key)
    finally:
        for path in (fresh, fresh + ".pub"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


# --- role scripts -------------------------------------------------------------------------


@dataclass(frozen=True)
class ScriptResult:
    """How a role script ended: `exit_code` None when it never ran or was killed."""

    exit_code: int | None
    log_tail: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def run_script(
    path: str, stdin: bytes, env: dict[str, str], cwd: str, timeout: float
) -> ScriptResult:
    """Run `path` with `stdin`; kill its whole process group after `timeout` seconds.

    The output (stdout and stderr together) goes to a temporary file, so a chatty script
    never blocks on a pipe and only its last LOG_TAIL_BYTES are kept.
    """
    if not os.access(path, os.X_OK):
        return ScriptResult(None, f"[corral-agent] {path} is not executable\n")
    with tempfile.TemporaryFile() as given, tempfile.TemporaryFile() as output:
        given.write(stdin)
        given.seek(0)
        try:
            process = subprocess.Popen(
                [path],
                stdin=given,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            return ScriptResult(None, f"[corral-agent] cannot run {path}: {exc.strerror}\n")
        note = b""
        exit_code = wait_for_exit(process, timeout)
        if exit_code is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            exit_code = None
            note = f"\n[corral-agent] {path} timed out after {timeout:g} s; killed\n".encode()
        keep = LOG_TAIL_BYTES - len(note)
        size = output.seek(0, os.SEEK_END)
        output.seek(max(0, size - keep))
        tail = output.read(keep) + note
    return ScriptResult(exit_code, tail.decode("utf-8", errors="replace"))


def wait_for_exit(process: subprocess.Popen, timeout: float) -> int | None:
    """The exit status of `process`, or None if it still runs after `timeout` seconds.

    `Popen.wait(timeout)` sleeps between checks, up to 50 ms at a time, and so made every
    role script seem up to 50 ms longer than it ran; a pidfd wakes us as it exits.
    """
    try:
        pidfd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):  # Linux before 5.3
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        exited = poller.poll(timeout * 1000)
    finally:
        os.close(pidfd)
    return process.wait() if exited else None


def script_view(view: dict[str, Any]) -> dict[str, Any]:
    """The view role scripts see: file contents are on disk, not in their stdin or env."""
    shown = dict(view)
    if "files" in view:
        shown["files"] = [
            {k: v for k, v in f.items() if k != "content_b64"}
            for f in view["files"]
            if isinstance(f, dict)
        ]
    return shown


# --- local state --------------------------------------------------------------------------


class State:
    """What the agent remembers in var/lib/corral/state.json, written deterministically.

    `configured` maps each role configured ok to the view version it was configured at;
    `membership` maps each required role to the member names last acted upon.
    """

    def __init__(self, path: str, data: dict[str, Any]) -> None:
        self.path = path
        self.data = data
        self.foreign = False  # the file on disk belonged to another cluster or node

    @classmethod
    def load(cls, path: str, cluster: str, node: str) -> State:
        """The state at `path`; a fresh one if it is missing, unreadable or someone else's."""
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            data = None
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s: %s", path, exc)
            data = None
        state = cls(path, {"cluster": cluster, "node": node, "configured": {}})
        if isinstance(data, dict):
            if (data.get("cluster"), data.get("node")) == (cluster, node):
                state.data.update(data)
            else:
                log.warning("%s belongs to another cluster or node; starting afresh", path)
                state.foreign = True
        return state

    def configured(self, role: str) -> bool:
        return role in self.data["configured"]

    def mark_configured(self, role: str, version: int) -> None:
        self.data["configured"][role] = {"version": version}
        self.save()

    @property
    def membership(self) -> dict[str, list[str]] | None:
        return self.data.get("membership")

    def set_membership(self, membership: dict[str, list[str]]) -> None:
        self.data["membership"] = membership
        self.save()

    def save(self) -> None:
        text = json.dumps(self.data, indent=2, sort_keys=True) + "\n"
        write_file(self.path, text.encode("utf-8"), 0o644)


def membership_of(view: dict[str, Any]) -> dict[str, list[str]]:
    """Sorted member names of each role the view requires."""
    roles = view.get("roles") or {}
    required = [r.get("role") for r in view.get("requires") or [] if isinstance(r, dict)]
    names = {}
    for role in sorted({r for r in required if isinstance(r, str)} | set(roles)):
        members = roles.get(role) or []
        names[role] = sorted({m["name"] for m in members if isinstance(m, dict) and "name" in m})
    return names


# --- the agent --------------------------------------------------------------------------


class LeaseEnd:
    """Powers the node off once its lease is over, whether or not the broker answers.

    The lease's end comes with every view and is kept in state.json, so an agent that
    starts again (after a crash, or with the service gone) still knows it. On a node that
    is the system's own root, a systemd timer of its own (`corral-lease-end.timer`) runs
    `systemctl poweroff` then, even if the agent has exited; on EC2 a power-off ends the
    instance too. Under any other root (a test machine) a thread of the agent leaves
    POWER_OFF_MARK under the root at that time and stops the agent.
    """

    UNIT = "corral-lease-end"

    def __init__(self, root: str, stop: Callable[[], None]) -> None:
        self.root = root
        self.stop = stop
        self.system = is_system_root(root) and os.geteuid() == 0
        self.at: float | None = None
        self._timer: threading.Timer | None = None

    def set(self, text: object) -> bool:
        """Expect the lease to end at `text` (ISO 8601); True if that is news."""
        when = _iso_time(text)
        if when is None or when == self.at:
            return False
        self.at = when
        shown = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when))
        log.info("lease ends %s: the node powers itself off then", shown)
        if self.system:
            self._arm_systemd(shown, when)
        else:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = threading.Timer(max(0.0, when - time.time()), self._power_off)
            self._timer.daemon = True
            self._timer.start()
        return True

    def _arm_systemd(self, shown: str, when: float) -> None:
        subprocess.run(["systemctl", "stop", f"{self.UNIT}.timer"], capture_output=True)
        if when <= time.time():
            self._power_off()
            return
        armed = subprocess.run(
            [
                "systemd-run",
                f"--unit={self.UNIT}",
                f"--on-calendar={shown}",
                "--timer-property=AccuracySec=1s",
                "systemctl",
                "poweroff",
            ],
            capture_output=True,
            text=True,
        )
        if armed.returncode != 0:
            log.error("could not arm the lease's end: %s", armed.stderr.strip())

    def _power_off(self) -> None:
        log.warning("the lease has ended: powering the node off")
        if self.system:
            subprocess.run(["systemctl", "poweroff"], check=False)
            return
        mark = under_root(self.root, POWER_OFF_MARK)
        os.makedirs(os.path.dirname(mark), exist_ok=True)
        write_file(mark, b"lease ended\n", 0o644)
        self.stop()


def _iso_time(text: object) -> float | None:
    """Unix time of an ISO 8601 time with its zone, or None if `text` is not one."""
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment.timestamp() if moment.tzinfo is not None else None


class Stopper:
    """Turns SIGTERM/SIGINT into a stop: at once inside `interruptible()`, else when checked.

    Long polls and retry sleeps are interruptible; registering, role scripts and file
    writes are not, so a stop never loses a credential or orphans a script.
    """

    def __init__(self) -> None:
        self.requested = False
        self._interruptible = False

    def handle(self, signum: int, frame: object) -> None:
        self.requested = True
        if self._interruptible:
            raise StopRequested()

    def check(self) -> None:
        if self.requested:
            raise StopRequested()

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        self.check()
        outer, self._interruptible = self._interruptible, True
        try:
            yield
        finally:
            self._interruptible = outer


@dataclass(frozen=True)
class Options:
    """The command line, parsed."""

    root: str = "/"
    bootstrap: str | None = None
    metadata_url: str | None = None
    ec2: bool = False
    once: bool = False
    script_timeout: float = 600.0
    poll_wait: int = 30
    log_file: str | None = None
    imds_url: str = IMDS_URL  # EC2's instance metadata; a test's own server otherwise


class Agent:
    """One run of the agent on one node; `run()` returns the exit status."""

    def __init__(
        self,
        options: Options,
        stopper: Stopper | None = None,
        imds_url: str | None = None,
        retry_budget: float = RETRY_BUDGET_SECONDS,
    ) -> None:
        self.options = options
        self.root = options.root
        self.stopper = stopper or Stopper()
        self.imds_url = imds_url or options.imds_url
        self.retry_budget = retry_budget
        self.owner_root = is_system_root(self.root) and os.geteuid() == 0
        self.broker: Broker
        self.credential = ""
        self.first_view: dict[str, Any] | None = None  # what register answered, if anything
        self.lease = LeaseEnd(self.root, lambda: os.kill(os.getpid(), signal.SIGTERM))
        self.state: State | None = None
        self.accounts_made: list[Account] = []  # accounts are fixed at launch: made once
        self.drained_in: int | None = None  # the view version whose drain was run

    def path(self, node_path: str) -> str:
        return under_root(self.root, node_path)

    def run(self) -> int:
        o = self.options
        bootstrap = find_bootstrap(o.root, o.bootstrap, o.metadata_url, o.ec2, self.imds_url)
        log.info(
            "bootstrap from %s: cluster %s, node %s, broker %s",
            bootstrap.source,
            bootstrap.cluster,
            bootstrap.node,
            bootstrap.broker,
        )
        self.broker = Broker(
            bootstrap.broker,
            bootstrap.fingerprint,
            self.retry_budget,
            self._sleep,
            key_fingerprint=bootstrap.key_fingerprint,
        )
        state = State.load(self.path(STATE_FILE), bootstrap.cluster, bootstrap.node)
        self.state = state
        # where the broker is, for `corral-agent scale` (the cluster's scheduler asking
        # for nodes), which has no bootstrap document to read once the node registered
        broker = {
            "url": bootstrap.broker,
            "fingerprint": bootstrap.fingerprint,
            "key_fingerprint": bootstrap.key_fingerprint,
        }
        if state.data.get("broker") != broker:
            state.data["broker"] = broker
            state.save()
        self.lease.set(state.data.get("lease_end"))  # also while the broker is away
        self.credential = self._credential(bootstrap, state)
        if bootstrap.source == EC2_SOURCE:
            self._watch_for_interruption(bootstrap)
        view = self._wait_until_satisfied()
        try:
            self._apply(view)
        except (OSError, ViewError) as exc:
            log.error("could not install the view: %s", exc)
            self._report("node", None, "failed", view, log_tail=f"could not install: {exc}")
            return 1
        failed = self._configure(view, state)
        if failed:
            self._report(
                "node", None, "failed", view, log_tail="configure failed: " + ", ".join(failed)
            )
            return 1
        if state.membership is None:
            state.set_membership(membership_of(view))
        self._report("node", None, "ready", view)
        if o.once:
            return 0
        self._follow(view, state)
        return 0  # _follow only ends by StopRequested; kept for the type checker

    # steps ------------------------------------------------------------------------------

    def _credential(self, bootstrap: Bootstrap, state: State) -> str:
        path = self.path(CREDENTIAL_FILE)
        stored = _read_text(path).strip()
        if stored and not state.foreign:
            log.info("using the stored credential in %s", path)
            return stored
        identity = gather_identity(self.root, bootstrap.node)
        log.info(
            "registering as %s/%s (hostname %s, %d addresses, %d host keys)",
            bootstrap.cluster,
            bootstrap.node,
            identity["hostname"],
            len(identity["addresses"]),
            len(identity["ssh_host_keys"]),
        )
        answer = self.broker.request(
            "POST",
            "/register",
            {
                "cluster": bootstrap.cluster,
                "node": bootstrap.node,
                "token": bootstrap.token,
                "identity": identity,
            },
        )
        credential = answer.get("credential")
        if not isinstance(credential, str) or not credential:
            raise ViewError("broker answered register without a credential")
        os.makedirs(self.path(STATE_DIR), mode=0o700, exist_ok=True)
        write_file(path, (credential + "\n").encode("utf-8"), 0o600, self.owner_root)
        state.foreign = False
        state.save()
        log.info("registered; credential stored in %s", path)
        first = answer.get("view")
        if isinstance(first, dict) and isinstance(first.get("version"), int):
            self.first_view = first
            self._note_lease(first)
        return credential

    def _poll(self, since: int) -> dict[str, Any]:
        wait = self.options.poll_wait
        with self.stopper.interruptible():
            view = self.broker.request(
                "GET",
                f"/context?since={since}&wait={wait}",
                credential=self.credential,
                timeout=wait + REQUEST_TIMEOUT,
            )
        if not isinstance(view.get("version"), int):
            raise ViewError("broker sent a view without an integer version")
        self._note_lease(view)
        return view

    def _note_lease(self, view: dict[str, Any]) -> None:
        """Follow the lease's end the view gives, and keep it for a later run."""
        if self.lease.set(view.get("lease_end")) and self.state is not None:
            self.state.data["lease_end"] = view["lease_end"]
            self.state.save()

    def _wait_until_satisfied(self) -> dict[str, Any]:
        since = 0
        while True:
            view, self.first_view = self.first_view or self._poll(since), None
            if view.get("satisfied"):
                log.info("view %d: satisfied", view["version"])
                return view
            blocked = ", ".join(str(r) for r in view.get("blocked_on") or []) or "nothing named"
            if view["version"] > since:
                log.info("view %d: waiting, blocked on %s", view["version"], blocked)
            since = max(since, view["version"])

    def _apply(self, view: dict[str, Any]) -> list[str]:
        """Install the view's accounts, files, hosts and known hosts; the files that
        changed. Accounts come first: the files may include their login principals."""
        accounts = accounts_of(view)
        if accounts != self.accounts_made:
            added = add_account_entries(self.root, accounts)
            if added:
                log.info("accounts added: %s", ", ".join(added))
            for account in accounts:
                prepare_home(self.root, account, self.owner_root)
            self.accounts_made = accounts
        written = []
        for item in view.get("files") or []:
            path, mode, content = self._file_of(item)
            changed = write_file(self.path(path), content, mode, self.owner_root)
            log.info("file %s (%04o) %s", path, mode, "written" if changed else "unchanged")
            if changed:
                written.append(path)
        hosts = [
            f"{h['address']} {h['name']}"
            for h in view.get("hosts") or []
            if isinstance(h, dict) and h.get("address") and h.get("name")
        ]
        changed = write_managed_block(self.path(HOSTS_FILE), hosts, self.owner_root)
        log.info("%s: %d hosts %s", HOSTS_FILE, len(hosts), "written" if changed else "unchanged")
        if isinstance(view.get("ssh_known_hosts"), str):
            lines = [line for line in view["ssh_known_hosts"].splitlines() if line.strip()]
            path = self.path(KNOWN_HOSTS_FILE)
            changed = write_managed_block(path, lines, self.owner_root)
            log.info(
                "%s: %d lines %s",
                KNOWN_HOSTS_FILE,
                len(lines),
                "written" if changed else "unchanged",
            )
        return written

    @staticmethod
    def _file_of(item: Any) -> tuple[str, int, bytes]:
        if not isinstance(item, dict):
            raise ViewError("broker sent a file that is not an object")
        path = item.get("path")
        if not isinstance(path, str) or not path.startswith("/") or ".." in path.split("/"):
            raise ViewError(f"broker sent a file with a bad path: {path!r}")
        try:
            mode = int(str(item.get("mode")), 8)
            content = base64.b64decode(item.get("content_b64") or "", validate=True)
        except (ValueError, binascii.Error) as exc:
            raise ViewError(f"broker sent {path} with a bad mode or content") from exc
        if not 0 <= mode <= 0o7777:
            raise ViewError(f"broker sent {path} with a bad mode {item.get('mode')!r}")
        return path, mode, content

    def _configure(self, view: dict[str, Any], state: State) -> list[str]:
        """Run `configure` of each provided role not configured yet; the roles that failed."""
        failed = []
        for role in view.get("provides") or []:
            self.stopper.check()
            if state.configured(role):
                log.info("role %s: configured before; not run again", role)
                continue
            result = self._run_role_script(role, "configure", view)
            if result is None:
                continue
            if result.ok:
                state.mark_configured(role, view["version"])
            else:
                failed.append(role)
        return failed

    def _follow(self, view: dict[str, Any], state: State) -> None:
        log.info("following the view from version %d", view["version"])
        self._act_on_membership(view, state)
        self._drain_if_asked(view)
        version = view["version"]
        while True:
            self.stopper.check()
            new = self._poll(version)
            if new["version"] <= version:
                continue
            version = new["version"]
            log.info("view %d received", version)
            # installed even while blocked again: whom the cluster trusts may have changed
            try:
                written = self._apply(new)
            except (OSError, ViewError) as exc:
                log.error("could not install view %d: %s", version, exc)
            else:
                self._reload_sshd(written)
            self._act_on_membership(new, state)
            self._drain_if_asked(new)

    def _reload_sshd(self, written: list[str]) -> None:
        """sshd reads its host certificate when it starts: after the broker renewed it (the
        lease was extended), it reloads. Role scripts start sshd in the first place."""
        if not self.owner_root or not any(p.startswith("/etc/ssh/") for p in written):
            return
        reloaded = subprocess.run(
            ["systemctl", "reload-or-restart", "ssh"], capture_output=True, text=True
        )
        if reloaded.returncode != 0:
            log.error("could not reload sshd: %s", reloaded.stderr.strip())
        else:
            log.info("sshd reloaded for its new files")

    def _act_on_membership(self, view: dict[str, Any], state: State) -> None:
        before = state.membership or {}
        now = membership_of(view)
        joined = {r: sorted(set(now[r]) - set(before.get(r, []))) for r in now}
        left = {r: sorted(set(before[r]) - set(now.get(r, []))) for r in before}
        joined = {r: names for r, names in joined.items() if names}
        left = {r: names for r, names in left.items() if names}
        if not joined and not left:
            return
        log.info("members changed: joined %s, left %s", joined or "none", left or "none")
        for phase, changed in (("leave", left), ("join", joined)):
            if changed:
                for role in view.get("provides") or []:
                    self._run_role_script(role, phase, view)
        state.set_membership(now)

    def _drain_if_asked(self, view: dict[str, Any]) -> None:
        """The node is to be removed: run each provided role's `drain` hook (each lets the
        node's work end, waiting at most the view's timeout), then say how the drain
        ended. The service removes the node once drained; a drain that failed leaves it."""
        drain = view.get("drain")
        if not isinstance(drain, dict) or self.drained_in == view["version"]:
            return
        self.drained_in = view["version"]
        timeout = drain.get("timeout_seconds")
        if not isinstance(timeout, int) or not 0 < timeout <= MAX_DRAIN_SECONDS:
            why = f"broker sent a drain with a bad timeout: {timeout!r}"
            log.error("%s", why)
            self._report("drain", None, "failed", view, log_tail=why)
            return
        log.info("asked to drain, waiting at most %d s for the node's work to end", timeout)
        failed = []
        for role in view.get("provides") or []:
            result = self._run_role_script(
                role,
                "drain",
                view,
                timeout=timeout + DRAIN_SCRIPT_MARGIN_SECONDS,
                extra_env={"CORRAL_DRAIN_TIMEOUT": str(timeout)},
            )
            if result is not None and not result.ok:
                tail = result.log_tail.strip().splitlines()[-1:] or ["no output"]
                failed.append(f"drain of role {role} failed: {tail[0]}")
        if failed:
            self._report("drain", None, "failed", view, log_tail="; ".join(failed))
        else:
            self._report("drain", None, "ok", view)

    def _run_role_script(
        self,
        role: str,
        phase: str,
        view: dict[str, Any],
        timeout: float | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> ScriptResult | None:
        """Run roles/<role>/<phase> and report it; None when the role has no such script.
        `timeout` (default: the agent's script timeout) and `extra_env` are for this run."""
        node_path = f"{ROLES_DIR}/{role}/{phase}"
        path = self.path(node_path)
        if not os.path.lexists(path):
            log.info("role %s: no %s script; skipped", role, phase)
            return None
        context = json.dumps(script_view(view), sort_keys=True)
        env = dict(os.environ)
        env.update(
            CORRAL_CONTEXT=context,
            CORRAL_CLUSTER=str(view.get("cluster", "")),
            CORRAL_NODE=str(view.get("node", "")),
            CORRAL_ROLE=role,
            CORRAL_ROOT=self.root,
        )
        env.update(extra_env or {})
        self._report(phase, role, "running", view)
        log.info("role %s: running %s", role, node_path)
        started = time.monotonic()
        result = run_script(
            path, context.encode("utf-8"), env, self.root, timeout or self.options.script_timeout
        )
        took = time.monotonic() - started
        if result.ok:
            log.info("role %s: %s ok in %.1f s", role, phase, took)
        elif result.exit_code is None:
            log.error("role %s: %s failed without an exit code after %.1f s", role, phase, took)
        else:
            log.error("role %s: %s failed with exit code %d", role, phase, result.exit_code)
        self._report(
            phase,
            role,
            "ok" if result.ok else "failed",
            view,
            exit_code=result.exit_code,
            log_tail=result.log_tail,
            finished=True,
        )
        return result

    def _report(
        self,
        phase: str,
        role: str | None,
        state: str,
        view: dict[str, Any],
        exit_code: int | None = None,
        log_tail: str | None = None,
        finished: bool = False,
    ) -> None:
        body: dict[str, Any] = {"phase": phase, "state": state, "version": view["version"]}
        if role is not None:
            body["role"] = role
        if finished:
            body["exit_code"] = exit_code
        if log_tail is not None:
            body["log_tail"] = log_tail
        self.broker.request("POST", "/report", body, credential=self.credential)
        log.info("reported %s%s: %s", phase, f"/{role}" if role else "", state)

    def _watch_for_interruption(self, bootstrap: Bootstrap) -> None:
        """Look for EC2's notice that it takes this (spot) instance back, and pass it on
        to the broker at once: the service then counts the node lost, two minutes before
        it is gone, rather than once it stops answering."""
        imds = Imds(self.imds_url)
        # its own connection: the main one may be held by a long poll
        broker = Broker(
            bootstrap.broker,
            bootstrap.fingerprint,
            self.retry_budget,
            time.sleep,
            key_fingerprint=bootstrap.key_fingerprint,
        )

        def watch() -> None:
            while True:
                time.sleep(INTERRUPTION_CHECK_SECONDS)
                try:
                    notice = imds.interruption()
                except OSError:
                    continue  # the metadata service is away for a moment
                if notice is None:
                    continue
                log.warning("EC2 takes this instance back: %s", notice)
                body = {"phase": "interruption", "state": "failed", "log_tail": notice}
                try:
                    broker.request("POST", "/report", body, credential=self.credential)
                except AgentError as exc:
                    log.error("could not report the interruption: %s", exc)
                return

        threading.Thread(target=watch, name="interruption", daemon=True).start()

    def _sleep(self, seconds: float) -> None:
        # The attempt before this sleep failed, so nothing is in flight: safe to stop here.
        with self.stopper.interruptible():
            time.sleep(seconds)


# --- command line -------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="corral-agent",
        description="corral's context agent: register with the broker, install the node's "
        "view and run its role scripts.",
    )
    parser.add_argument("--root", default="/", help="directory every path is under (/)")
    parser.add_argument("--bootstrap", metavar="FILE", help="the bootstrap document")
    parser.add_argument("--metadata-url", metavar="URL", help="fetch the document from URL")
    parser.add_argument("--ec2", action="store_true", help="fetch it from EC2 IMDSv2")
    parser.add_argument("--imds-url", default=IMDS_URL, help=argparse.SUPPRESS)  # tests
    parser.add_argument("--once", action="store_true", help="exit once the node is ready")
    parser.add_argument("--script-timeout", type=float, default=600.0, metavar="SECONDS")
    parser.add_argument("--poll-wait", type=int, default=30, metavar="SECONDS")
    parser.add_argument("--log-file", metavar="FILE", help="also log to FILE")
    args = parser.parse_args(argv)
    if args.script_timeout <= 0:
        parser.error("--script-timeout must be positive")
    if not 1 <= args.poll_wait <= MAX_POLL_WAIT:
        parser.error(f"--poll-wait must be between 1 and {MAX_POLL_WAIT}")
    return Options(
        root=args.root,
        bootstrap=args.bootstrap,
        metadata_url=args.metadata_url,
        ec2=args.ec2,
        once=args.once,
        script_timeout=args.script_timeout,
        poll_wait=args.poll_wait,
        log_file=args.log_file,
        imds_url=args.imds_url,
    )


def scale(argv: Sequence[str]) -> int:
    """`corral-agent scale [--root R] resume|suspend NODE...`: as the node, ask the broker
    for nodes of the cluster's autoscaled group, or give them back (run by the Slurm
    controller's ResumeProgram and SuspendProgram, as root). Prints the nodes acted on."""
    parser = argparse.ArgumentParser(prog="corral-agent scale")
    parser.add_argument("--root", default="/", help="directory every path is under (/)")
    parser.add_argument("action", choices=("resume", "suspend"))
    parser.add_argument("nodes", nargs="+", metavar="NODE")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # a bad command line: argparse said why
        return exc.code if isinstance(exc.code, int) else 2
    try:
        with open(under_root(args.root, STATE_FILE), encoding="utf-8") as fh:
            where = json.load(fh).get("broker") or {}
        credential = _read_text(under_root(args.root, CREDENTIAL_FILE)).strip()
        if not where.get("url") or not credential:
            raise AgentError("this node has not registered: no broker or credential yet")
        broker = Broker(
            where["url"], where["fingerprint"], 60.0, key_fingerprint=where["key_fingerprint"]
        )
        answer = broker.request(
            "POST", "/scale", {"action": args.action, "nodes": args.nodes}, credential=credential
        )
    except (OSError, ValueError, KeyError, AgentError) as exc:
        print(f"corral-agent scale: {exc}", file=sys.stderr)
        return 1
    print(f"{args.action}: {' '.join(answer.get('nodes') or []) or 'nothing to do'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the agent with command line `argv`; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["scale"]:
        return scale(argv[1:])
    try:
        options = parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    formatter = logging.Formatter("%(asctime)s corral-agent %(levelname)s %(message)s")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if options.log_file:
        handlers.append(logging.FileHandler(options.log_file, encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(formatter)
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    stopper = Stopper()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, stopper.handle)
    try:
        return Agent(options, stopper).run()
    except StopRequested:
        log.info("stopped on request")
        return 0
    except AgentError as exc:
        log.error("%s", exc)
        return 2
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for handler in handlers:
            log.removeHandler(handler)
            handler.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
