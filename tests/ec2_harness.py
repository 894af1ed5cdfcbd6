"""Playing EC2 for tests: moto's server on loopback, a proxy that counts and injects
faults, and a player that boots what moto only records.

    moto_endpoint   (session fixture) moto_server on 127.0.0.1 with fake credentials; it
                    refuses to run when anything could reach a real AWS endpoint
    FaultProxy      between the backend under test and moto: counts calls by EC2 Action,
                    answers some with RequestLimitExceeded or InsufficientInstanceCapacity
    InstancePlayer  plays each instance's boot: a root directory from an image, an IMDSv2
                    server of its own, and the real agent; ends them with the instance

The harness talks to moto directly (`moto_client`), so its own calls are not counted.
Test modules import the fixtures they use from here; this module's name keeps pytest
from collecting it.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import itertools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REGION = "us-east-1"
LOOPBACK = "127.0.0.1"
FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
# what could point boto3 anywhere but the fake credentials and the endpoint given
_AWS_VARIABLES = (
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_EC2",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)
REPO = Path(__file__).resolve().parent.parent
AGENT = REPO / "src" / "corral" / "agent.py"
POWER_OFF_MARK = "run/corral/powered-off"  # backends/fake.py: the node powered itself off
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def refuse_real_aws(endpoint: str) -> None:
    """Fail the test unless boto3 can only reach `endpoint` on loopback, as `testing`."""
    host = urllib.parse.urlsplit(endpoint).hostname
    if host != LOOPBACK:
        pytest.fail(f"refusing to run: the EC2 endpoint {endpoint} is not on {LOOPBACK}")
    import boto3  # only tests that play EC2 load it

    credentials = boto3.session.Session().get_credentials()
    if credentials is None or (credentials.access_key, credentials.secret_key) != (
        FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    ):
        pytest.fail("refusing to run: boto3 would use credentials other than the fake ones")


def reset_moto(endpoint: str) -> None:
    """Forget every resource moto holds, so each test starts from an empty account
    (moto's calls slow down with every instance it keeps, terminated ones too)."""
    refuse_real_aws(endpoint)
    connection = http.client.HTTPConnection(urllib.parse.urlsplit(endpoint).netloc, timeout=30)
    try:
        connection.request("POST", "/moto-api/reset")
        connection.getresponse().read()
    finally:
        connection.close()


def moto_client(endpoint: str):
    """An EC2 client that talks to moto directly, for the harness and the tests' checks."""
    import boto3

    refuse_real_aws(endpoint)
    return boto3.session.Session().client("ec2", region_name=REGION, endpoint_url=endpoint)


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory) -> Iterator[str]:
    """moto's EC2 on a free port of 127.0.0.1, with fake credentials only; its URL."""
    with running_moto(tmp_path_factory.mktemp("moto")) as url:
        yield url


@contextlib.contextmanager
def running_moto(scratch: Path) -> Iterator[str]:
    """moto_server on a free port of 127.0.0.1, with this process's AWS settings made
    fake (credentials, no config files, no instance metadata) while it runs; its URL.
    For the tests' fixture and the benchmark alike."""
    environment = pytest.MonkeyPatch()
    for name in _AWS_VARIABLES:
        environment.delenv(name, raising=False)
    for name, value in {
        **FAKE_CREDENTIALS,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": str(scratch / "no-such-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(scratch / "no-such-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        environment.setenv(name, value)
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    command = shutil.which("moto_server")
    argv = [command] if command else [sys.executable, "-m", "moto.server"]
    log = open(scratch / "moto.log", "wb")  # noqa: SIM115 - closed below, after the server
    process = subprocess.Popen(
        [*argv, "-H", LOOPBACK, "-p", str(port)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        refuse_real_aws(url)
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers(url):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"moto_server did not start: {(scratch / 'moto.log').read_text()}")
            time.sleep(0.1)
        yield url
    finally:
        _end(process)
        log.close()
        environment.undo()


def _answers(url: str) -> bool:
    try:
        connection = http.client.HTTPConnection(urllib.parse.urlsplit(url).netloc, timeout=1)
        connection.request("GET", "/moto-api/")
        connection.getresponse().read()
        connection.close()
        return True
    except OSError:
        return False


def _end(process: subprocess.Popen) -> None:
    """SIGTERM the process's session, SIGKILL it after 5 s."""
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(grace)
            return


# --- the proxy ---------------------------------------------------------------------------


def ec2_error(code: str, message: str) -> bytes:
    """An error as EC2's query API answers it."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error>"
        f"</Errors><RequestID>{secrets.token_hex(8)}</RequestID></Response>"
    ).encode()


CAPACITY_MESSAGE = (
    "We currently do not have sufficient t3.micro capacity in the Availability Zone you "
    "requested (us-east-1a). Our system will be working on provisioning additional "
    "capacity. You can currently get t3.micro capacity by not specifying an Availability "
    "Zone in your request or choosing us-east-1b, us-east-1c."
)


class FaultProxy:
    """A threaded HTTP proxy on 127.0.0.1 in front of moto that counts calls by Action and
    injects faults: throttling on every `throttle_every`-th call of any kind (the first,
    then every n-th after it), capacity errors on RunInstances while `capacity_errors`,
    and any error EC2 may answer an action with, from `errors` (action -> (HTTP status,
    code, message))."""

    def __init__(self, target: str) -> None:
        self.target = urllib.parse.urlsplit(target).netloc
        self.calls: Counter[str] = Counter()
        self.throttled = 0
        self.throttle_every = 0  # 0: none
        self.capacity_errors = False
        self.errors: dict[str, tuple[int, str, str]] = {}
        self._lock = threading.Lock()
        self._numbers = itertools.count()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - the http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                proxy._handle(self, body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.server.server_address[1]}"

    def count(self, action: str) -> int:
        with self._lock:
            return self.calls[action]

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()
            self.throttled = 0

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _handle(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        action = urllib.parse.parse_qs(body.decode()).get("Action", ["?"])[0]
        with self._lock:
            self.calls[action] += 1
            number = next(self._numbers)
            throttle = self.throttle_every and number % self.throttle_every == 0
            self.throttled += bool(throttle)
        if throttle:
            self._answer(handler, 503, ec2_error("RequestLimitExceeded", "Request limit exceeded."))
        elif action == "RunInstances" and self.capacity_errors:
            error = ec2_error("InsufficientInstanceCapacity", CAPACITY_MESSAGE)
            self._answer(handler, 500, error)
        elif action in self.errors:
            status, code, message = self.errors[action]
            self._answer(handler, status, ec2_error(code, message))
        else:
            self._forward(handler, body)

    def _forward(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        upstream = http.client.HTTPConnection(self.target, timeout=60)
        try:
            headers = {k: v for k, v in handler.headers.items() if k.lower() != "connection"}
            upstream.request("POST", handler.path, body, headers)
            reply = upstream.getresponse()
            content = reply.read()
            content_type = reply.getheader("Content-Type", "text/xml")
            self._answer(handler, reply.status, content, content_type)
        finally:
            upstream.close()

    @staticmethod
    def _answer(
        handler: BaseHTTPRequestHandler, status: int, body: bytes, content_type: str = "text/xml"
    ) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)


# --- the instance player -----------------------------------------------------------------


@dataclass
class PlayedInstance:
    """One instance as the player runs it: its root, its metadata server and its agent."""

    instance_id: str
    root: Path
    metadata: dict[str, str]  # IMDS path under /latest/meta-data/ -> value
    user_data: bytes = field(repr=False)
    imds: ThreadingHTTPServer | None = None
    imds_thread: threading.Thread | None = None
    agent: subprocess.Popen | None = None
    spot_action: str | None = None  # the interruption notice, once there is one
    tokens: set[str] = field(default_factory=set)

    @property
    def imds_url(self) -> str:
        assert self.imds is not None
        return f"http://{LOOPBACK}:{self.imds.server_address[1]}"


class InstancePlayer:
    """Boots, in play, every instance moto records for `service_tag`: moto runs none.

    Use it as a context manager: leaving it stops every agent and metadata server and
    removes every root, also when the test failed.
    """

    def __init__(
        self, endpoint: str, service_tag: str, image: Path, poll_every: float = 0.2
    ) -> None:
        self.ec2 = moto_client(endpoint)
        self.service_tag = service_tag
        self.image = image
        self.poll_every = poll_every
        self.roots = Path(tempfile.mkdtemp(prefix="corral-instances-"))
        self.instances: dict[str, PlayedInstance] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._timers: list[threading.Timer] = []
        self._thread = threading.Thread(target=self._watch, name="instance-player", daemon=True)
        self._thread.start()

    def __enter__(self) -> InstancePlayer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def wait_for(self, instance_id: str, timeout: float = 10.0) -> PlayedInstance:
        """The played instance, once the player has started it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                played = self.instances.get(instance_id)
            if played is not None and played.agent is not None:
                return played
            time.sleep(0.05)
        raise AssertionError(f"the player did not start {instance_id} within {timeout}s")

    def interrupt(self, instance_id: str, terminate_after: float = 120.0) -> None:
        """Give a spot interruption notice, then terminate the instance as EC2 would."""
        played = self.wait_for(instance_id)
        when = datetime.now(UTC) + timedelta(seconds=120)
        notice = {"action": "terminate", "time": when.strftime("%Y-%m-%dT%H:%M:%SZ")}
        played.spot_action = json.dumps(notice)
        timer = threading.Timer(terminate_after, self._terminate, (instance_id,))
        timer.daemon = True
        self._timers.append(timer)
        timer.start()

    def close(self) -> None:
        """Stop every agent and metadata server and remove every root; may be called again."""
        self._stop.set()
        for timer in self._timers:
            timer.cancel()
        self._thread.join()
        with self._lock:
            played = list(self.instances.values())
        for instance in played:
            self._end(instance)
        shutil.rmtree(self.roots, ignore_errors=True)

    # -- playing ---------------------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception as exc:  # moto going away at the end must not kill the thread
                print(f"instance player: {exc}", file=sys.stderr)
            self._stop.wait(self.poll_every)

    def _step(self) -> None:
        live = {}
        pages = self.ec2.get_paginator("describe_instances").paginate(
            Filters=[
                {"Name": "tag:corral:service", "Values": [self.service_tag]},
                {"Name": "instance-state-name", "Values": ["pending", "running"]},
            ]
        )
        for page in pages:
            for reservation in page["Reservations"]:
                for instance in reservation["Instances"]:
                    live[instance["InstanceId"]] = instance
        with self._lock:
            known = dict(self.instances)
        for instance_id, instance in live.items():
            if instance_id not in known and not self._stop.is_set():
                self._start(instance)
        for instance_id, played in known.items():
            if instance_id not in live:
                self._end(played)
            elif (played.root / POWER_OFF_MARK).exists():
                self._terminate(instance_id)  # InstanceInitiatedShutdownBehavior=terminate

    def _start(self, instance: dict) -> None:
        instance_id = instance["InstanceId"]
        attribute = self.ec2.describe_instance_attribute(
            InstanceId=instance_id, Attribute="userData"
        )
        encoded = attribute.get("UserData", {}).get("Value", "")
        address = instance.get("PrivateIpAddress", "")
        played = PlayedInstance(
            instance_id=instance_id,
            root=self.roots / instance_id,
            user_data=base64.b64decode(encoded) if encoded else b"",
            metadata={
                "instance-id": instance_id,
                "ami-launch-index": str(instance.get("AmiLaunchIndex", 0)),
                "local-ipv4": address,
                "instance-type": instance.get("InstanceType", ""),
                "placement/availability-zone": instance.get("Placement", {}).get(
                    "AvailabilityZone", REGION + "a"
                ),
            },
        )
        with self._lock:
            self.instances[instance_id] = played
        hostname = "ip-" + address.replace(".", "-") if address else instance_id
        _make_root(self.image, played.root, hostname)
        played.imds = ThreadingHTTPServer((LOOPBACK, 0), _imds_handler(played))
        played.imds.daemon_threads = True
        played.imds_thread = threading.Thread(target=played.imds.serve_forever, daemon=True)
        played.imds_thread.start()
        log_file = played.root / "var" / "log" / "corral-agent.log"
        played.agent = subprocess.Popen(
            [
                sys.executable,
                str(AGENT),
                "--root",
                str(played.root),
                "--ec2",
                "--imds-url",
                played.imds_url,
                "--poll-wait",
                "20",
                "--log-file",
                str(log_file),
            ],
            cwd=played.root,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _terminate(self, instance_id: str) -> None:
        with contextlib.suppress(Exception):  # already gone, or moto is shutting down
            self.ec2.terminate_instances(InstanceIds=[instance_id])

    def _end(self, played: PlayedInstance) -> None:
        """Stop the instance's agent (its whole session) and its metadata server."""
        if played.agent is not None:
            _end(played.agent)
        if played.imds is not None:
            played.imds.shutdown()
            played.imds.server_close()
            played.imds_thread.join()
            played.imds = None
        with self._lock:
            self.instances.pop(played.instance_id, None)


@pytest.fixture
def play_instances(moto_endpoint):
    """`play_instances(service_tag, image)` starts an InstancePlayer; every player is
    closed at teardown, also when the test failed."""
    players: list[InstancePlayer] = []

    def play(service_tag: str, image: Path) -> InstancePlayer:
        players.append(InstancePlayer(moto_endpoint, service_tag, image))
        return players[-1]

    yield play
    for player in players:
        player.close()


def _make_root(image: Path, root: Path, hostname: str) -> None:
    """The instance's root: a copy of the image, its hostname and SSH host key."""
    from corral.backends.fake import _write_host_key

    shutil.copytree(image, root, symlinks=True)
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc" / "hostname").write_text(hostname + "\n")
    _write_host_key(root / "etc" / "ssh", hostname)
    (root / "var" / "lib" / "corral").mkdir(parents=True, exist_ok=True)
    (root / "var" / "log").mkdir(parents=True, exist_ok=True)


def _imds_handler(played: PlayedInstance) -> type[BaseHTTPRequestHandler]:
    """IMDSv2 for one instance: a session token first (PUT), then GETs that carry it."""

    class Handler(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:  # noqa: N802 - the http.server's name
            if self.path != "/latest/api/token" or not self.headers.get(
                "X-aws-ec2-metadata-token-ttl-seconds"
            ):
                self._reply(400, b"")
                return
            token = secrets.token_urlsafe(24)
            played.tokens.add(token)
            self._reply(200, token.encode())

        def do_GET(self) -> None:  # noqa: N802
            if self.headers.get("X-aws-ec2-metadata-token") not in played.tokens:
                self._reply(401, b"")
                return
            if self.path == "/latest/user-data":
                self._reply(200, played.user_data)
                return
            name = self.path.removeprefix("/latest/meta-data/")
            if name == "spot/instance-action":
                notice = played.spot_action
                self._reply(200, notice.encode()) if notice else self._reply(404, b"")
            elif name in played.metadata:
                self._reply(200, played.metadata[name].encode())
            else:
                self._reply(404, b"")

        def _reply(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    return Handler
