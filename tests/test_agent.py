"""The context agent, run for real against a stub broker over pinned TLS.

`StubBroker` implements register, context (a real long poll) and report of
docs/agent-protocol.md with in-memory state, on 127.0.0.1 behind a self-signed
certificate made here, and records every request it answers. The agent runs as a
subprocess (`python src/corral/agent.py --root ROOT`) on a throwaway root directory, or
in-process through `main`; role scripts are small shell scripts that record their stdin
and environment under `$CORRAL_ROOT`.
"""

from __future__ import annotations

import base64
import datetime
import glob
import hashlib
import http.server
import ipaddress
import json
import os
import secrets
import shutil
import signal
import ssl
import stat
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from corral import agent

AGENT = Path(__file__).resolve().parents[1] / "src" / "corral" / "agent.py"
CLUSTER = "c-1a2b3c4d"
NODE = "worker-0"
HOST_KEYS = {
    "ssh_host_ed25519_key.pub": "ssh-ed25519 AAAAC3NzaEd25519 root@worker-0",
    "ssh_host_rsa_key.pub": "ssh-rsa AAAAB3NzaRsa root@worker-0",
}
TLS_KEY = b"-----BEGIN PRIVATE KEY-----\nTHISISTHENODESSECRETTLSKEY\n-----END PRIVATE KEY-----\n"


# --- the broker's certificate -------------------------------------------------------------


@dataclass(frozen=True)
class Certificate:
    cert_file: Path
    key_file: Path
    fingerprint: str  # sha256:<hex>, as the bootstrap document carries it
    key_fingerprint: str  # sha256:<hex> of the public key's DER SubjectPublicKeyInfo


def make_certificate(
    directory: Path,
    name: str = "corral-broker",
    key: ec.EllipticCurvePrivateKey | None = None,
    lifetime: datetime.timedelta = datetime.timedelta(days=1),
) -> Certificate:
    key = key or ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=2))
        .not_valid_after(now + lifetime)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = directory / f"{name}.crt", directory / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key_digest = hashlib.sha256(spki).hexdigest()
    return Certificate(cert_file, key_file, "sha256:" + digest, "sha256:" + key_digest)


def private_key_of(certificate: Certificate) -> ec.EllipticCurvePrivateKey:
    return serialization.load_pem_private_key(certificate.key_file.read_bytes(), None)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return make_certificate(tmp_path_factory.mktemp("tls"))


# --- the stub broker ------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """One HTTP request the stub answered."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


def member(name: str, address: str, group: str, state: str = "ready") -> dict[str, Any]:
    return {
        "name": name,
        "group": group,
        "address": address,
        "hostname": name,
        "ssh_host_keys": [f"ssh-ed25519 AAAA{name} root@{name}"],
        "state": state,
    }


class _TLSServer(http.server.ThreadingHTTPServer):
    """Does each TLS handshake in the request's own thread and counts the handshakes."""

    daemon_threads = True
    stub: StubBroker

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            tls = self.stub.context.wrap_socket(request, server_side=True)
        except OSError:
            return
        with self.stub.changed:
            self.stub.handshakes += 1
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            tls.close()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _TLSServer

    def do_GET(self) -> None:
        self.server.stub.handle(self, "GET")

    def do_POST(self) -> None:
        self.server.stub.handle(self, "POST")

    def log_message(self, format: str, *args: Any) -> None:
        pass


class StubBroker:
    """The broker side of the protocol for one node, `worker-0`, in memory.

    The node provides `slurm-worker` and `munge-client` and requires `slurm-controller`.
    Tests change the world with `change()`, which bumps the view's version and wakes
    long polls, and read what the agent did from `requests` and `reports`.
    """

    def __init__(self, certificate: Certificate) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(certificate.cert_file, certificate.key_file)
        self.fingerprint = certificate.fingerprint
        self.token = "bt_" + secrets.token_hex(16)
        self.credential = "nc_" + secrets.token_hex(16)
        self.munge_key = secrets.token_bytes(64)
        self.spent = False
        self.changed = threading.Condition()
        self.version = 1
        self.satisfied = True
        self.provides = ["slurm-worker", "munge-client"]
        self.controllers = [member("head-0", "10.180.0.2", "controller")]
        self.fail_next = 0
        self.lease_end: str | None = None
        self.drop_kept_connections = False
        self.handshakes = 0
        self.requests: list[Seen] = []
        self.closing = False
        self.server = _TLSServer(("127.0.0.1", 0), _Handler)
        self.server.stub = self
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server.server_address[1]}/broker/v1"

    def bootstrap(self, **changes: Any) -> dict[str, Any]:
        return {
            "corral": 1,
            "broker": self.url,
            "fingerprint": self.fingerprint,
            "cluster": CLUSTER,
            "node": NODE,
            "token": self.token,
            **changes,
        }

    def files(self) -> list[tuple[str, str, bytes]]:
        return [
            ("/etc/munge/munge.key", "0400", self.munge_key),
            ("/etc/corral/tls/host.key", "0600", TLS_KEY),
            ("/etc/corral/tls/host.crt", "0644", b"HOST CERT\n"),
            ("/etc/corral/tls/ca.crt", "0644", b"CA CERT\n"),
            ("/etc/ssh/ssh_host_ed25519_key-cert.pub", "0644", b"ssh-ed25519-cert-v01 AAAA\n"),
            (
                "/etc/ssh/sshd_config.d/corral.conf",
                "0644",
                b"HostCertificate /etc/ssh/ssh_host_ed25519_key-cert.pub\n",
            ),
        ]

    def view(self) -> dict[str, Any]:
        members = [*self.controllers, member(NODE, "10.180.0.3", "worker", "registered")]
        view = {
            "version": self.version,
            "cluster": CLUSTER,
            "node": NODE,
            "group": "worker",
            "provides": list(self.provides),
            "requires": [{"role": "slurm-controller", "wait": "registered"}],
            "satisfied": self.satisfied,
            "blocked_on": [] if self.satisfied else ["slurm-controller"],
            "roles": {"slurm-controller": list(self.controllers)},
            "members": members,
            "hosts": [{"name": m["name"], "address": m["address"]} for m in members],
            "data": {"users": "alice"},
            "ssh_known_hosts": f"@cert-authority * ssh-ed25519 AAAACA corral-{CLUSTER}\n",
        }
        if self.lease_end is not None:
            view["lease_end"] = self.lease_end
        if self.satisfied:
            view["files"] = [
                {"path": p, "mode": m, "content_b64": base64.b64encode(c).decode()}
                for p, m, c in self.files()
            ]
        return view

    def change(self, **attributes: Any) -> None:
        with self.changed:
            for name, value in attributes.items():
                setattr(self, name, value)
            self.version += 1
            self.changed.notify_all()

    # what the agent did

    def seen(self, method: str, endpoint: str) -> list[Seen]:
        with self.changed:
            return [r for r in self.requests if (r.method, r.path) == (method, endpoint)]

    @property
    def reports(self) -> list[dict[str, Any]]:
        return [r.body for r in self.seen("POST", "/broker/v1/report")]

    def report_keys(self) -> list[tuple[str, str | None, str]]:
        return [(r["phase"], r.get("role"), r["state"]) for r in self.reports]

    # serving

    def handle(self, handler: _Handler, method: str) -> None:
        url = urllib.parse.urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        seen = Seen(
            method,
            url.path,
            dict(urllib.parse.parse_qsl(url.query)),
            dict(handler.headers.items()),
            json.loads(raw) if raw else None,
        )
        with self.changed:
            self.requests.append(seen)
            failing = self.fail_next > 0
            self.fail_next -= failing
        if failing:
            return self.answer(handler, 503, {"error": "unavailable", "message": "try later"})
        route = {
            ("POST", "/broker/v1/register"): self.register,
            ("GET", "/broker/v1/context"): self.context_view,
            ("POST", "/broker/v1/report"): self.report,
        }.get((method, url.path))
        if route is None:
            return self.answer(handler, 404, {"error": "not-found", "message": url.path})
        if route != self.register and seen.headers.get("Authorization") != (
            "Bearer " + self.credential
        ):
            return self.answer(handler, 401, {"error": "unauthorized", "message": "credential"})
        status, body = route(seen)
        self.answer(handler, status, body)
        if self.drop_kept_connections:  # as a server does with a connection it kept idle
            handler.close_connection = True

    def register(self, seen: Seen) -> tuple[int, dict[str, Any]]:
        body = seen.body or {}
        with self.changed:
            good = (
                not self.spent
                and body.get("token") == self.token
                and (body.get("cluster"), body.get("node")) == (CLUSTER, NODE)
            )
            if not good:
                return 401, {"error": "bad-token", "message": "token spent, expired or wrong"}
            self.spent = True
            return 200, {"credential": self.credential, "version": self.version}

    def context_view(self, seen: Seen) -> tuple[int, dict[str, Any]]:
        since = int(seen.query["since"])
        deadline = time.monotonic() + min(float(seen.query["wait"]), 60)
        with self.changed:
            while self.version <= since and not self.closing:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self.changed.wait(remaining)
            return 200, self.view()

    def report(self, seen: Seen) -> tuple[int, dict[str, Any]]:
        return 200, {}

    @staticmethod
    def answer(handler: _Handler, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def stop(self) -> None:
        with self.changed:
            self.closing = True
            self.changed.notify_all()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def broker(certificate: Certificate) -> Iterator[StubBroker]:
    stub = StubBroker(certificate)
    stub.thread.start()
    yield stub
    stub.stop()


# --- the node's root directory ----------------------------------------------------------------

RECORDING_SCRIPT = """#!/bin/sh
out="$CORRAL_ROOT/out/$CORRAL_ROLE.{phase}"
mkdir -p "$CORRAL_ROOT/out"
cat > "$out.stdin"
printf '%s' "$CORRAL_CONTEXT" > "$out.context"
printf 'cluster=%s node=%s role=%s root=%s cwd=%s\\n' \\
    "$CORRAL_CLUSTER" "$CORRAL_NODE" "$CORRAL_ROLE" "$CORRAL_ROOT" "$(pwd)" > "$out.env"
echo run >> "$out.count"
echo "{phase} $CORRAL_ROLE done"
"""


def script(root: Path, role: str, phase: str, text: str, executable: bool = True) -> Path:
    path = root / "etc" / "corral" / "roles" / role / phase
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755 if executable else 0o644)
    return path


@pytest.fixture
def root(tmp_path: Path, broker: StubBroker) -> Path:
    """A node's file system: hostname, host keys, /etc/hosts, role scripts, NoCloud seed."""
    root = tmp_path / "root"
    (root / "etc" / "ssh").mkdir(parents=True)
    (root / "etc" / "hostname").write_text("worker-0.example\n")
    for name, key in HOST_KEYS.items():
        (root / "etc" / "ssh" / name).write_text(key + "\n")
    (root / "etc" / "ssh" / "ssh_host_ed25519_key").write_text("PRIVATE HOST KEY\n")
    (root / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    script(root, "slurm-worker", "configure", RECORDING_SCRIPT.format(phase="configure"))
    (root / "etc" / "corral" / "roles" / "munge-client").mkdir()
    seed = root / "var" / "lib" / "cloud" / "seed" / "nocloud" / "user-data"
    seed.parent.mkdir(parents=True)
    seed.write_text(json.dumps(broker.bootstrap()))
    return root


def run_agent(
    root: Path, *args: str, python: str = sys.executable, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [python, str(AGENT), "--root", str(root), "--poll-wait", "1", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def start_agent(root: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(AGENT), "--root", str(root), "--poll-wait", "1", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def tree(root: Path) -> dict[str, tuple[str, int, int]]:
    """Every file under `root`: sha256, mode and mtime, by relative path."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            info = path.stat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            found[str(path.relative_to(root))] = (digest, info.st_mode, info.st_mtime_ns)
    return found


def without_contents(view: dict[str, Any]) -> dict[str, Any]:
    files = [{k: v for k, v in f.items() if k != "content_b64"} for f in view["files"]]
    return {**view, "files": files}


# --- the lease ----------------------------------------------------------------------------------

POWERED_OFF = Path("run/corral/powered-off")


def test_the_node_powers_itself_off_when_its_lease_ends(broker: StubBroker, root: Path) -> None:
    end = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=3)
    broker.lease_end = end.isoformat()
    running = start_agent(root)
    try:
        wait_for(lambda: (root / "out" / "slurm-worker.configure.stdin").exists(), "configure")
        assert not (root / POWERED_OFF).exists()
        wait_for(lambda: running.poll() is not None, "the agent to stop at the lease's end")
    finally:
        running.kill()
        running.communicate()
    assert running.returncode == 0
    assert (root / POWERED_OFF).exists()
    assert datetime.datetime.now(datetime.UTC) >= end
    state = json.loads((root / "var" / "lib" / "corral" / "state.json").read_text())
    assert state["lease_end"] == end.isoformat()


def test_an_extension_moves_the_power_off(broker: StubBroker, root: Path) -> None:
    now = datetime.datetime.now(datetime.UTC)
    broker.lease_end = (now + datetime.timedelta(seconds=4)).isoformat()
    running = start_agent(root)
    try:
        wait_for(lambda: (root / "out" / "slurm-worker.configure.stdin").exists(), "configure")
        broker.change(lease_end=(now + datetime.timedelta(hours=1)).isoformat())
        time.sleep(6)
        assert running.poll() is None
        assert not (root / POWERED_OFF).exists()
    finally:
        running.terminate()
        running.communicate()


def test_a_lease_that_ended_while_the_broker_was_away_powers_the_node_off(
    broker: StubBroker, root: Path
) -> None:
    broker.lease_end = (
        datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    ).isoformat()
    assert run_agent(root, "--once").returncode == 0
    broker.stop()  # the service is gone for good
    state_file = root / "var" / "lib" / "corral" / "state.json"
    state = json.loads(state_file.read_text())
    assert "lease_end" in state
    state["lease_end"] = (
        datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=1)
    ).isoformat()
    state_file.write_text(json.dumps(state))
    started = time.monotonic()
    done = run_agent(root)
    assert done.returncode == 0, done.stderr
    assert (root / POWERED_OFF).exists()
    assert time.monotonic() - started < 20  # at once, not after the broker's retry budget


# --- trust --------------------------------------------------------------------------------------


def test_a_broker_with_another_certificate_gets_no_request(
    broker: StubBroker, root: Path, tmp_path: Path
) -> None:
    other = make_certificate(tmp_path / "other", "impostor")
    seed = root / "var" / "lib" / "cloud" / "seed" / "nocloud" / "user-data"
    seed.write_text(json.dumps(broker.bootstrap(fingerprint=other.fingerprint)))

    done = run_agent(root, "--once")

    assert done.returncode == 2
    assert "pinned" in done.stderr
    wait_for(lambda: broker.handshakes >= 1, "the agent's TLS handshake")
    assert broker.requests == []
    assert broker.token not in done.stderr
    assert not (root / "var" / "lib" / "corral" / "credential").exists()


def test_a_renewed_broker_certificate_is_accepted_by_its_pinned_key(
    certificate: Certificate, root: Path, tmp_path: Path
) -> None:
    renewed = make_certificate(tmp_path / "renewed", key=private_key_of(certificate))
    assert renewed.fingerprint != certificate.fingerprint
    stub = StubBroker(renewed)
    stub.thread.start()
    try:
        seed = root / "var" / "lib" / "cloud" / "seed" / "nocloud" / "user-data"
        old_pins = {"fingerprint": certificate.fingerprint}
        seed.write_text(json.dumps(stub.bootstrap(**old_pins)))
        refused = run_agent(root, "--once")
        assert refused.returncode == 2 and "pinned" in refused.stderr
        seed.write_text(
            json.dumps(stub.bootstrap(**old_pins, key_fingerprint=certificate.key_fingerprint))
        )
        assert run_agent(root, "--once").returncode == 0
    finally:
        stub.stop()


def test_an_expired_broker_certificate_is_refused_though_pinned(root: Path, tmp_path: Path) -> None:
    expired = make_certificate(tmp_path / "expired", lifetime=-datetime.timedelta(hours=1))
    stub = StubBroker(expired)
    stub.thread.start()
    try:
        seed = root / "var" / "lib" / "cloud" / "seed" / "nocloud" / "user-data"
        seed.write_text(json.dumps(stub.bootstrap(key_fingerprint=expired.key_fingerprint)))
        done = run_agent(root, "--once")
        assert done.returncode == 2
        assert "expired" in done.stderr
        assert stub.requests == []
    finally:
        stub.stop()


@pytest.mark.parametrize(
    "key",
    [ec.generate_private_key(ec.SECP384R1()), rsa.generate_private_key(65537, 2048)],
    ids=["ecdsa-p384", "rsa"],
)
@pytest.mark.parametrize("years", [1, 40], ids=["utctime", "generalizedtime"])
def test_certificate_facts_read_as_cryptography_reads_them(tmp_path: Path, key, years: int) -> None:
    made = make_certificate(tmp_path, key=key, lifetime=datetime.timedelta(days=365 * years))
    cert = x509.load_pem_x509_certificate(made.cert_file.read_bytes())
    public_key, not_after = agent.certificate_facts(cert.public_bytes(serialization.Encoding.DER))
    assert public_key == cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert not_after == cert.not_valid_after_utc.timestamp()


@pytest.mark.parametrize("der", [b"", b"\x30\x03\x02\x01", b"\x30\x84\xff\xff\xff\xff", b"x" * 64])
def test_certificate_facts_refuse_what_is_no_certificate(der: bytes) -> None:
    with pytest.raises(ValueError):
        agent.certificate_facts(der)


def test_the_pin_compares_case_insensitively(broker: StubBroker, root: Path) -> None:
    seed = root / "var" / "lib" / "cloud" / "seed" / "nocloud" / "user-data"
    seed.write_text(json.dumps(broker.bootstrap(fingerprint=broker.fingerprint.upper())))

    assert run_agent(root, "--once").returncode == 0


def test_a_plain_http_broker_is_refused(broker: StubBroker, root: Path) -> None:
    seed = root / "var" / "lib" / "cloud" / "seed" / "nocloud" / "user-data"
    plain = broker.url.replace("https://", "http://")
    seed.write_text(json.dumps(broker.bootstrap(broker=plain)))

    done = run_agent(root, "--once")

    assert done.returncode == 2
    assert "https" in done.stderr
    assert broker.handshakes == 0 and broker.requests == []


# --- registering ----------------------------------------------------------------------------


def test_register_sends_the_identity_and_stores_the_credential(
    broker: StubBroker, root: Path
) -> None:
    done = run_agent(root, "--once")
    assert done.returncode == 0, done.stderr

    [register] = broker.seen("POST", "/broker/v1/register")
    assert register.body == {
        "cluster": CLUSTER,
        "node": NODE,
        "token": broker.token,
        "identity": {
            "hostname": "worker-0.example",
            "addresses": [],
            "ssh_host_keys": [HOST_KEYS[k] for k in sorted(HOST_KEYS)],
        },
    }
    assert "Authorization" not in register.headers
    assert register.headers["Content-Type"] == "application/json"
    credential = root / "var" / "lib" / "corral" / "credential"
    assert credential.read_text().strip() == broker.credential
    assert mode_of(credential) == 0o600
    later = [r for r in broker.requests if r is not register]
    assert later and all(r.headers["Authorization"] == "Bearer " + broker.credential for r in later)


def test_a_spent_token_stops_the_agent(broker: StubBroker, root: Path) -> None:
    broker.spent = True

    done = run_agent(root, "--once")

    assert done.returncode == 2
    assert "401" in done.stderr
    assert [r.path for r in broker.requests] == ["/broker/v1/register"]
    assert not (root / "var" / "lib" / "corral" / "credential").exists()


def test_server_errors_are_retried(broker: StubBroker, root: Path) -> None:
    broker.fail_next = 1

    done = run_agent(root, "--once")

    assert done.returncode == 0, done.stderr
    assert "retrying" in done.stderr
    assert [r.path for r in broker.requests[:2]] == ["/broker/v1/register"] * 2


def test_the_agent_keeps_one_connection_to_the_broker(broker: StubBroker, root: Path) -> None:
    done = run_agent(root, "--once")

    assert done.returncode == 0, done.stderr
    assert len(broker.requests) >= 3  # register, reports
    assert broker.handshakes == 1


def test_a_kept_connection_the_broker_closed_is_made_again_at_once(
    broker: StubBroker, root: Path
) -> None:
    broker.drop_kept_connections = True

    done = run_agent(root, "--once")

    assert done.returncode == 0, done.stderr
    assert "retrying" not in done.stderr  # no back-off: the request never reached it
    assert broker.handshakes == len(broker.requests) >= 3


# --- waiting --------------------------------------------------------------------------------------


def test_a_blocked_node_waits_quietly_then_proceeds(broker: StubBroker, root: Path) -> None:
    broker.satisfied = False
    process = start_agent(root, "--once")
    try:
        wait_for(lambda: len(broker.seen("GET", "/broker/v1/context")) >= 3, "long polls")
        assert broker.reports == []
        assert not (root / "etc" / "munge").exists()
        assert not (root / "out").exists()

        broker.change(satisfied=True)
        assert process.wait(timeout=20) == 0
    finally:
        process.kill()
        stderr = process.communicate()[1]

    polls = broker.seen("GET", "/broker/v1/context")
    assert polls[0].query == {"since": "0", "wait": "1"}
    assert {p.query["since"] for p in polls[1:]} == {"1"}
    assert "blocked on slurm-controller" in stderr
    assert broker.report_keys()[-1] == ("node", None, "ready")
    assert broker.reports[-1]["version"] == 2


# --- writing ------------------------------------------------------------------------------------


def test_files_are_written_with_their_modes(broker: StubBroker, root: Path) -> None:
    assert run_agent(root, "--once").returncode == 0

    for path, mode, content in broker.files():
        written = root / path.lstrip("/")
        assert written.read_bytes() == content, path
        assert mode_of(written) == int(mode, 8), path
    assert mode_of(root / "etc" / "munge" / "munge.key") == 0o400
    assert mode_of(root / "etc" / "corral" / "tls" / "host.key") == 0o600
    leftovers = [p for p in root.rglob("*") if p.name.endswith(".corral-tmp")]
    assert leftovers == []


def test_the_hosts_block_is_replaced_in_place(broker: StubBroker, root: Path) -> None:
    hosts = root / "etc" / "hosts"
    hosts.write_text(
        "127.0.0.1 localhost\n"
        "# BEGIN corral\n10.0.0.99 stale-node\n# END corral\n"
        "192.168.1.5 printer  # mine\n"
    )
    hosts.chmod(0o644)

    assert run_agent(root, "--once").returncode == 0

    assert hosts.read_text() == (
        "127.0.0.1 localhost\n"
        "# BEGIN corral\n10.180.0.2 head-0\n10.180.0.3 worker-0\n# END corral\n"
        "192.168.1.5 printer  # mine\n"
    )
    assert mode_of(hosts) == 0o644


def test_known_hosts_gets_a_managed_block(broker: StubBroker, root: Path) -> None:
    assert run_agent(root, "--once").returncode == 0

    known_hosts = root / "etc" / "ssh" / "ssh_known_hosts"
    assert known_hosts.read_text() == (
        f"# BEGIN corral\n@cert-authority * ssh-ed25519 AAAACA corral-{CLUSTER}\n# END corral\n"
    )
    assert mode_of(known_hosts) == 0o644
    assert (root / "etc" / "hosts").read_text().startswith("127.0.0.1 localhost\n# BEGIN corral\n")


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("", "# BEGIN corral\nA\n# END corral\n"),
        ("x\ny", "x\ny\n# BEGIN corral\nA\n# END corral\n"),
        ("x\n# BEGIN corral\nold\n# END corral\ny\n", "x\n# BEGIN corral\nA\n# END corral\ny\n"),
        ("x\n# BEGIN corral\nold\n", "x\n# BEGIN corral\nA\n# END corral\n"),
        (
            "x\r\n# BEGIN corral\r\nold\r\n# END corral\r\n",
            "x\r\n# BEGIN corral\nA\n# END corral\n",
        ),
    ],
)
def test_managed_block(before: str, after: str) -> None:
    assert agent.with_managed_block(before, ["A"]) == after
    assert agent.with_managed_block(after, ["A"]) == after


# --- role scripts -------------------------------------------------------------------------------


def test_configure_runs_once_per_role_with_the_view(broker: StubBroker, root: Path) -> None:
    done = run_agent(root, "--once")
    assert done.returncode == 0, done.stderr

    out = root / "out"
    view = without_contents(broker.view())
    assert json.loads((out / "slurm-worker.configure.stdin").read_text()) == view
    assert json.loads((out / "slurm-worker.configure.context").read_text()) == view
    assert (out / "slurm-worker.configure.env").read_text() == (
        f"cluster={CLUSTER} node={NODE} role=slurm-worker root={root} cwd={root}\n"
    )
    assert (out / "slurm-worker.configure.count").read_text() == "run\n"
    assert not list(out.glob("munge-client.*"))
    assert broker.report_keys() == [
        ("configure", "slurm-worker", "running"),
        ("configure", "slurm-worker", "ok"),
        ("node", None, "ready"),
    ]
    ok = broker.reports[1]
    assert ok["exit_code"] == 0
    assert ok["log_tail"] == "configure slurm-worker done\n"
    assert {r["version"] for r in broker.reports} == {1}
    state = json.loads((root / "var" / "lib" / "corral" / "state.json").read_text())
    assert state["configured"] == {"slurm-worker": {"version": 1}}
    assert state["membership"] == {"slurm-controller": ["head-0"]}


def test_a_failing_script_fails_the_node(broker: StubBroker, root: Path) -> None:
    script(
        root,
        "slurm-worker",
        "configure",
        "#!/bin/sh\necho starting\necho 'no slurm.conf' >&2\nexit 1\n",
    )

    done = run_agent(root, "--once")

    assert done.returncode == 1
    assert broker.report_keys() == [
        ("configure", "slurm-worker", "running"),
        ("configure", "slurm-worker", "failed"),
        ("node", None, "failed"),
    ]
    failed = broker.reports[1]
    assert failed["exit_code"] == 1
    assert failed["log_tail"] == "starting\nno slurm.conf\n"
    assert "slurm-worker" in broker.reports[2]["log_tail"]
    state = json.loads((root / "var" / "lib" / "corral" / "state.json").read_text())
    assert state["configured"] == {}


def test_a_script_that_runs_too_long_is_killed(broker: StubBroker, root: Path) -> None:
    pid_file = root / "sleeper.pid"
    script(
        root,
        "slurm-worker",
        "configure",
        f"#!/bin/sh\necho started\nsleep 60 &\necho $! > {pid_file}\nwait\n",
    )

    started = time.monotonic()
    done = run_agent(root, "--once", "--script-timeout", "1")

    assert done.returncode == 1
    assert time.monotonic() - started < 20
    failed = broker.reports[1]
    assert (failed["phase"], failed["state"], failed["exit_code"]) == ("configure", "failed", None)
    assert failed["log_tail"].startswith("started\n")
    assert "timed out after 1 s" in failed["log_tail"]
    sleeper = int(pid_file.read_text())
    wait_for(lambda: not alive(sleeper), "the script's child to be killed", timeout=5)


def test_waiting_for_a_script_gives_its_exit_status_or_none_while_it_still_runs() -> None:
    quick = subprocess.Popen(["sh", "-c", "exit 3"])
    assert agent.wait_for_exit(quick, timeout=20) == 3

    slow = subprocess.Popen(["sleep", "30"])
    try:
        assert agent.wait_for_exit(slow, timeout=0.2) is None
        assert slow.poll() is None
    finally:
        slow.kill()
        slow.wait()


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def test_a_script_that_is_not_executable_fails(broker: StubBroker, root: Path) -> None:
    script(root, "slurm-worker", "configure", "#!/bin/sh\nexit 0\n", executable=False)

    assert run_agent(root, "--once").returncode == 1

    failed = broker.reports[1]
    assert (failed["state"], failed["exit_code"]) == ("failed", None)
    assert "not executable" in failed["log_tail"]


def test_the_output_tail_is_the_last_4_kib(broker: StubBroker, root: Path) -> None:
    script(root, "slurm-worker", "configure", "#!/bin/sh\nseq 1 5000\n")

    assert run_agent(root, "--once").returncode == 0

    tail = broker.reports[1]["log_tail"]
    assert len(tail.encode()) == 4096
    assert tail.endswith("4999\n5000\n")


# --- running again ------------------------------------------------------------------------------


def test_a_second_run_changes_nothing(broker: StubBroker, root: Path, tmp_path: Path) -> None:
    assert run_agent(root, "--once").returncode == 0
    before = tree(root)
    requests_before = len(broker.requests)

    done = run_agent(root, "--once", "--log-file", str(tmp_path / "second.log"))

    assert done.returncode == 0, done.stderr
    assert tree(root) == before
    assert len(broker.seen("POST", "/broker/v1/register")) == 1
    again = broker.requests[requests_before:]
    assert "/broker/v1/register" not in [r.path for r in again]
    assert [(r["phase"], r["state"]) for r in broker.reports[3:]] == [("node", "ready")]
    assert (root / "out" / "slurm-worker.configure.count").read_text() == "run\n"
    assert "configured before" in done.stderr


def test_a_role_that_failed_runs_again_on_the_next_run(broker: StubBroker, root: Path) -> None:
    good = (root / "etc" / "corral" / "roles" / "slurm-worker" / "configure").read_text()
    script(root, "slurm-worker", "configure", "#!/bin/sh\nexit 3\n")
    assert run_agent(root, "--once").returncode == 1

    script(root, "slurm-worker", "configure", good)
    assert run_agent(root, "--once").returncode == 0

    assert len(broker.seen("POST", "/broker/v1/register")) == 1
    assert broker.report_keys()[-1] == ("node", None, "ready")
    assert (root / "out" / "slurm-worker.configure.count").read_text() == "run\n"


def test_state_of_another_node_is_not_trusted(broker: StubBroker, root: Path) -> None:
    assert run_agent(root, "--once").returncode == 0
    state_file = root / "var" / "lib" / "corral" / "state.json"
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({**state, "node": "worker-9"}))
    broker.spent = False  # a fresh token for this node

    done = run_agent(root, "--once")

    assert done.returncode == 0, done.stderr
    assert "another cluster or node" in done.stderr
    assert len(broker.seen("POST", "/broker/v1/register")) == 2
    assert (root / "out" / "slurm-worker.configure.count").read_text() == "run\nrun\n"
    assert json.loads(state_file.read_text())["node"] == NODE


# --- following membership --------------------------------------------------------------------


def test_following_runs_join_and_leave_once_per_change(broker: StubBroker, root: Path) -> None:
    script(root, "slurm-worker", "join", RECORDING_SCRIPT.format(phase="join"))
    script(root, "slurm-worker", "leave", RECORDING_SCRIPT.format(phase="leave"))
    out = root / "out"
    process = start_agent(root)
    try:
        wait_for(lambda: ("node", None, "ready") in broker.report_keys(), "node/ready")

        head_1 = member("head-1", "10.180.0.9", "controller")
        broker.change(controllers=[*broker.controllers, head_1])
        wait_for(lambda: ("join", "slurm-worker", "ok") in broker.report_keys(), "join")
        joined = json.loads((out / "slurm-worker.join.stdin").read_text())
        assert [m["name"] for m in joined["roles"]["slurm-controller"]] == ["head-0", "head-1"]
        assert joined["version"] == 2
        wait_for(lambda: "10.180.0.9 head-1" in (root / "etc/hosts").read_text(), "hosts")

        broker.change(controllers=[head_1])
        wait_for(lambda: ("leave", "slurm-worker", "ok") in broker.report_keys(), "leave")
        left = json.loads((out / "slurm-worker.leave.stdin").read_text())
        assert [m["name"] for m in left["roles"]["slurm-controller"]] == ["head-1"]

        broker.change(data={"users": "bob"})  # a new version, same members
        wait_for(
            lambda: any(p.query["since"] == "4" for p in broker.seen("GET", "/broker/v1/context")),
            "the agent to take in version 4",
        )

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()
        stderr = process.communicate()[1]

    assert (out / "slurm-worker.join.count").read_text() == "run\n"
    assert (out / "slurm-worker.leave.count").read_text() == "run\n"
    assert (out / "slurm-worker.configure.count").read_text() == "run\n"
    assert [k for k in broker.report_keys() if k[0] in ("join", "leave")] == [
        ("join", "slurm-worker", "running"),
        ("join", "slurm-worker", "ok"),
        ("leave", "slurm-worker", "running"),
        ("leave", "slurm-worker", "ok"),
    ]
    assert "stopped on request" in stderr
    state = json.loads((root / "var" / "lib" / "corral" / "state.json").read_text())
    assert state["membership"] == {"slurm-controller": ["head-1"]}


def test_sigterm_while_blocked_exits_cleanly(broker: StubBroker, root: Path) -> None:
    broker.satisfied = False
    process = start_agent(root, "--poll-wait", "30")
    try:
        wait_for(lambda: broker.seen("GET", "/broker/v1/context"), "a long poll")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
    finally:
        process.kill()
        process.communicate()
    assert broker.reports == []


# --- secrets ------------------------------------------------------------------------------------


def test_no_secret_reaches_the_log(broker: StubBroker, root: Path, tmp_path: Path) -> None:
    log_file = tmp_path / "agent.log"
    script(root, "slurm-worker", "join", "#!/bin/sh\nexit 0\n")
    process = start_agent(root, "--log-file", str(log_file))
    try:
        wait_for(lambda: ("node", None, "ready") in broker.report_keys(), "node/ready")
        broker.change(controllers=[*broker.controllers, member("head-1", "10.0.0.9", "c")])
        wait_for(lambda: ("join", "slurm-worker", "ok") in broker.report_keys(), "join")
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)
    finally:
        process.kill()
        stdout, stderr = process.communicate()

    logged = stdout + stderr + log_file.read_text()
    assert "registered" in logged and "reported node: ready" in logged
    secrets_ = [
        broker.token,
        broker.credential,
        base64.b64encode(broker.munge_key).decode(),
        base64.b64encode(TLS_KEY).decode(),
        "THISISTHENODESSECRETTLSKEY",
    ]
    for secret in secrets_:
        assert secret not in logged
    stdin_seen = (root / "out" / "slurm-worker.configure.stdin").read_text()
    assert "THISISTHENODESSECRETTLSKEY" not in stdin_seen
    assert base64.b64encode(TLS_KEY).decode() not in stdin_seen


# --- in-process, and under the oldest Python we support -----------------------------------------


def test_main_runs_in_process(broker: StubBroker, root: Path, tmp_path: Path) -> None:
    log_file = tmp_path / "agent.log"

    status = agent.main(
        ["--root", str(root), "--once", "--poll-wait", "1", "--log-file", str(log_file)]
    )

    assert status == 0
    assert broker.report_keys()[-1] == ("node", None, "ready")
    assert "reported node: ready" in log_file.read_text()
    assert broker.token not in log_file.read_text()


def python39() -> str | None:
    candidates = [shutil.which("python3.9")]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.9*/bin/python3.9")))
    for candidate in filter(None, candidates):
        probe = subprocess.run(
            [candidate, "-c", "import sys; assert sys.version_info[:2] == (3, 9)"],
            capture_output=True,
        )
        if probe.returncode == 0:
            return candidate
    return None


def test_the_agent_runs_under_python_3_9(broker: StubBroker, root: Path) -> None:
    python = python39()
    assert python, "no Python 3.9 found (this machine kind ships one under ~/.pyenv)"

    done = run_agent(root, "--once", python=python)

    assert done.returncode == 0, done.stderr
    assert broker.report_keys()[-1] == ("node", None, "ready")


# --- finding the bootstrap document ----------------------------------------------------------


def bootstrap_doc(node: str) -> str:
    return json.dumps(
        {
            "corral": 1,
            "broker": "https://10.180.0.1:8471/broker/v1",
            "fingerprint": "sha256:" + "ab" * 32,
            "cluster": CLUSTER,
            "node": node,
            "token": "bt_secret",
        }
    )


class _Metadata(http.server.BaseHTTPRequestHandler):
    """A plain metadata URL at /user-data and EC2's IMDSv2 under /latest."""

    def do_GET(self) -> None:
        if self.path == "/user-data":
            self.reply(200, bootstrap_doc("from-metadata"))
        elif self.path == "/latest/user-data":
            if self.headers.get("X-aws-ec2-metadata-token") == "imds-session":
                self.reply(200, bootstrap_doc("from-ec2"))
            else:
                self.reply(401, "")
        else:
            self.reply(404, "")

    def do_PUT(self) -> None:
        if self.path == "/latest/api/token" and self.headers.get(
            "X-aws-ec2-metadata-token-ttl-seconds"
        ):
            self.reply(200, "imds-session")
        else:
            self.reply(400, "")

    def reply(self, status: int, text: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def metadata() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Metadata)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_bootstrap_sources_in_order(tmp_path: Path, metadata: str) -> None:
    root = tmp_path / "node"
    given = tmp_path / "given.json"
    given.write_text(bootstrap_doc("from-file"))
    seed = root / "var" / "lib" / "cloud" / "seed" / "nocloud" / "user-data"
    seed.parent.mkdir(parents=True)
    seed.write_text(bootstrap_doc("from-seed"))
    stored = root / "var" / "lib" / "corral" / "bootstrap.json"
    stored.parent.mkdir(parents=True)
    stored.write_text(bootstrap_doc("from-corral"))
    credential = root / "run" / "credentials" / "@system" / "corral.bootstrap"
    credential.parent.mkdir(parents=True)
    credential.write_text(bootstrap_doc("from-credential"))

    def found(**options: Any) -> str:
        sources = {"metadata_url": metadata + "/user-data", "ec2": True, "imds_url": metadata}
        return agent.find_bootstrap(str(root), **{**sources, **options}).node

    assert found(bootstrap_file=str(given)) == "from-file"
    assert found() == "from-credential"
    credential.unlink()
    assert found() == "from-seed"
    seed.write_text("#cloud-config\npackages: [htop]\n")  # someone else's user-data
    assert found() == "from-corral"
    stored.unlink()
    assert found() == "from-metadata"
    assert found(metadata_url=None) == "from-ec2"
    assert found(metadata_url=metadata + "/missing") == "from-ec2"
    with pytest.raises(agent.BootstrapError, match="no bootstrap document"):
        found(metadata_url=None, ec2=False)


def test_a_bad_bootstrap_document_is_an_error(tmp_path: Path) -> None:
    given = tmp_path / "given.json"
    doc = json.loads(bootstrap_doc("n"))

    given.write_text(json.dumps({**doc, "fingerprint": "md5:abc"}))
    with pytest.raises(agent.BootstrapError, match="fingerprint"):
        agent.find_bootstrap(str(tmp_path), str(given))
    given.write_text(json.dumps({**doc, "corral": 2}))
    with pytest.raises(agent.BootstrapError, match="version"):
        agent.find_bootstrap(str(tmp_path), str(given))
    given.write_text("not json")
    with pytest.raises(agent.BootstrapError, match="no corral bootstrap document"):
        agent.find_bootstrap(str(tmp_path), str(given))
    bootstrap = agent.parse_bootstrap(json.dumps(doc).encode(), "x")
    assert bootstrap is not None and "bt_secret" not in repr(bootstrap)


def test_scale_before_the_node_registered_says_so_and_fails(tmp_path, capsys):
    assert agent.scale(["--root", str(tmp_path), "resume", "worker-0"]) == 1
    assert "corral-agent scale:" in capsys.readouterr().err
    (tmp_path / "var/lib/corral").mkdir(parents=True)
    (tmp_path / "var/lib/corral/state.json").write_text('{"cluster": "c-1", "node": "head-0"}')
    assert agent.scale(["--root", str(tmp_path), "suspend", "worker-0"]) == 1
    assert "this node has not registered" in capsys.readouterr().err
    assert agent.main(["scale", "--root", str(tmp_path), "sideways", "worker-0"]) == 2
