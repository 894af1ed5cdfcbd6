"""A hostile-input corpus (issue 18): documents and API bodies that froze the service,
exhausted its memory or made it answer 500, and their kin. Each is refused in bounded time
and memory, with exit 3 from the CLI (`validate` and `run`) or a 4xx naming the field from
the API, and nothing is created: no cluster, node, user or host row, no event.

The bounds are generous, for a loaded two-core CI machine: what they catch is the
exponential blow-up (43 s and then all memory for a 522-byte document), not a slow parse.
"""

from __future__ import annotations

import json
import resource
import subprocess
import time
import tracemalloc
from pathlib import Path

import pytest
from inprocess import admin_token, api, free_port, post_streamed
from served import client_env, corral_command
from sqlalchemy import func, select

from corral.document import parse_document
from corral.errors import DocumentError
from corral.service.config import ServiceConfig
from corral.service.process import Service
from corral.store.models import Cluster, Event, Host, Node, User

SECONDS = 10.0  # per input, in-process
CLI_SECONDS = 30.0  # per command, interpreter start included
PEAK_BYTES = 64 * 1024 * 1024  # what Python allocates to refuse one input
CLI_ADDRESS_SPACE = 512 * 1024 * 1024  # a whole `corral` process (it runs in 256 MiB)
MIB = 1024 * 1024

HEAD = """\
name: laughs
lease: 1h
image: debian-12-slurm
nodes:
  - group: head
    provides: [slurm-controller]
    requires: [slurm-worker]
  - group: worker
    count: 2
    provides: [slurm-worker]
    requires: [slurm-controller]
"""


def laughs(levels: int, head: str = HEAD) -> str:
    """The issue's reproduction: nested aliases, nine of the level before at each level."""
    text = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for before, level in zip("abcdefghij", "bcdefghijk"[: levels - 1], strict=False):
        text += f"{level}: &{level} [{','.join([f'*{before}'] * 9)}]\n"
    return head + text


# 9**9 strings written out: froze every write of the service for 43 s; 522 bytes, as reported
BILLION_LAUGHS = laughs(9, head="name: laughs\nimage: debian-12-slurm\nnodes:\n  - group: head\n")
BILLION_LAUGHS = "# " + "-" * (522 - len(BILLION_LAUGHS) - 3) + "\n" + BILLION_LAUGHS

# name -> (document, what the refusal says)
DOCUMENTS: dict[str, tuple[str, str]] = {
    "billion-laughs-522-bytes": (BILLION_LAUGHS, "aliases written out"),
    "one-level-deeper": (laughs(10), "aliases written out"),
    "merge-key-laughs": (
        HEAD
        + "a: &a {a1: x, a2: x, a3: x, a4: x, a5: x, a6: x, a7: x, a8: x}\n"
        + "".join(
            f"{c}: &{c} [{', '.join([f'*{p}'] * 12)}]\n"
            for p, c in zip("abcdefg", "bcdefgh", strict=True)
        )
        + "data: {<<: *a}\n",
        "aliases written out",
    ),
    "alias-of-a-long-text": (
        HEAD + "t: &t '" + "x" * 60_000 + "'\ndata: {a: *t, b: *t, c: *t, d: *t, e: *t}\n",
        "characters of text",
    ),
    "alias-loop": (HEAD + "loop: &l [*l]\n", "*l"),
    "lists-10000-deep": ("nodes: " + "[" * 10_000 + "]" * 10_000 + "\n", "32 levels"),
    "mappings-10000-deep": ("nodes: " + "{a: " * 10_000 + "1" + "}" * 10_000 + "\n", "32 levels"),
    "indented-600-deep": ("".join(" " * i + f"k{i}:\n" for i in range(600)), "32 levels"),
    "lease-infinite": (HEAD.replace("lease: 1h", "lease: .inf"), "lease: duration too long"),
    "lease-nan": (HEAD.replace("lease: 1h", "lease: .nan"), "lease: not a duration"),
    "lease-enormous-days": (
        HEAD.replace("lease: 1h", "lease: " + "9" * 30 + "d"),
        "lease: duration too long",
    ),
    "memory-400-digits": (HEAD + "    memory: " + "9" * 400 + "\n", "numbers have at most 100"),
    "memory-400-digits-gib": (HEAD + "    memory: " + "9" * 400 + "GiB\n", "not a size"),
    "count-sexagesimal": (HEAD + "    cores: " + ":".join(["59"] * 20_000) + "\n", "at most 100"),
    "nul-byte": (HEAD + "data: {key: 'a\x00b'}\n", "not allowed"),
    "ansi-escape": (HEAD.replace("name: laughs", "name: \x1b[2J\x1b[31mred"), "not allowed"),
    "pool-path-and-shell": (HEAD + "pool: '../../x;$(id)'\n", "not a name"),
    "name-trailing-newline": (HEAD.replace("laughs", '"laughs\\n"'), "not a cluster name"),
    "name-200000-chars": (HEAD.replace("laughs", "a" * 200_000), "at most 41 characters"),
    "data-key-unicode": (HEAD + "data: {grüße: x}\n", "not a data name"),
    "image-right-to-left": (HEAD.replace("debian-12-slurm", "'debian\u202e'"), "image name"),
    "role-too-long": (HEAD.replace("[slurm-worker]\n  -", f"[{'r' * 65}]\n  -"), "at most 64"),
    "image-path": (HEAD.replace("debian-12-slurm", "../../etc/passwd"), "not a image name"),
    "data-key-path": (HEAD + "data: {'../../etc/cron.d/x': '* * * * * root id'}\n", "data name"),
    "data-too-many": (
        HEAD + "data:\n" + "".join(f"  k{i}: v\n" for i in range(300)),
        "300 items",
    ),
    "data-too-big": (HEAD + "data: {blob: '" + "x" * 70_000 + "'}\n", "65536"),
    "document-10-mib": (HEAD + "# " + "x" * (10 * MIB) + "\n", "larger than 256 KiB"),
    "xml-entity-laughs": (
        '<?xml version="1.0"?>\n<!DOCTYPE c [<!ENTITY a "lol"><!ENTITY b "&a;&a;&a;&a;">]>\n'
        "<cluster>&b;</cluster>\n",
        "DOCTYPE",
    ),
    "xml-10000-deep": (
        "<cluster>" + "<node>" * 10_000 + "</node>" * 10_000 + "</cluster>",
        "32 levels",
    ),
}


def rows(service: Service) -> dict[str, int]:
    with service.store.session() as s:
        return {
            model.__tablename__: s.scalar(select(func.count()).select_from(model))
            for model in (Cluster, Node, Event, User, Host)
        }


class Bounded:
    """Measures one refusal: wall time and the peak of what Python allocated."""

    def __enter__(self) -> Bounded:
        tracemalloc.start()
        self.started = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.monotonic() - self.started
        self.peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()

    def check(self, what: str) -> None:
        assert self.seconds < SECONDS, f"{what}: refused after {self.seconds:.1f}s"
        assert self.peak < PEAK_BYTES, f"{what}: took {self.peak / MIB:.0f} MiB"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory):
    """One service for the whole corpus: each input must leave it as it found it."""
    config = ServiceConfig(
        data_dir=tmp_path_factory.mktemp("hostile") / "service",
        tick_seconds=0.05,
        backend="fake",
        listen=f"127.0.0.1:{free_port()}",
        broker_listen=f"127.0.0.1:{free_port()}",
    )
    running = Service(config)
    running.start()
    yield running
    running.stop()


@pytest.mark.parametrize("name", DOCUMENTS)
def test_a_hostile_document_is_refused_in_bounded_time_and_memory(name: str) -> None:
    text, says = DOCUMENTS[name]
    with Bounded() as bounds, pytest.raises(DocumentError) as caught:
        parse_document(text, "hostile.yaml")
    bounds.check(name)
    assert says in caught.value.message
    assert len(caught.value.message) < 4096  # the input is never echoed whole


@pytest.mark.parametrize("name", DOCUMENTS)
def test_a_hostile_document_is_refused_by_the_api_and_creates_nothing(
    service: Service, name: str
) -> None:
    text, says = DOCUMENTS[name]
    client = api(service, admin_token(service))
    before = rows(service)
    with Bounded() as bounds:
        answer = client.post("/v1/clusters", json={"document": text, "source": "hostile.yaml"})
    bounds.check(name)
    body = answer.json()
    if len(text) > 2 * MIB:  # the body itself is over the API's limit
        assert (answer.status_code, body["error"]) == (413, "payload-too-large")
    else:
        assert (answer.status_code, body["error"]) == (422, "invalid-document"), body
        assert says in body["message"]
    assert len(answer.content) < 8192  # the input is never echoed whole
    assert rows(service) == before


def run_corral(*args: str, home: Path) -> tuple[int, str]:
    """Run `corral ARGS` for at most CLI_SECONDS with at most CLI_ADDRESS_SPACE of memory
    (a blow-up ends in a MemoryError, exit 1); returns its exit code and stderr.

    The bound is set on the running child: its own peak RSS cannot be read afterwards,
    since Linux keeps the parent's (this test process's) across fork and exec."""
    child = subprocess.Popen(
        [corral_command(), *args],
        env=client_env(home),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    resource.prlimit(child.pid, resource.RLIMIT_AS, (CLI_ADDRESS_SPACE, CLI_ADDRESS_SPACE))
    try:
        _, stderr = child.communicate(timeout=CLI_SECONDS)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        raise AssertionError(f"corral {args[0]} still ran after {CLI_SECONDS}s") from None
    return child.returncode, stderr


# the issue's own reproductions run on every test run; the rest of the corpus, at two
# `corral` processes each, with the slow tests
CLI_EVERY_RUN = (
    "billion-laughs-522-bytes",
    "lists-10000-deep",
    "lease-infinite",
    "memory-400-digits",
    "nul-byte",
    "pool-path-and-shell",
    "document-10-mib",
)


@pytest.mark.parametrize(
    "name",
    [n if n in CLI_EVERY_RUN else pytest.param(n, marks=pytest.mark.slow) for n in DOCUMENTS],
)
def test_a_hostile_document_makes_validate_and_run_exit_3(tmp_path: Path, name: str) -> None:
    text, says = DOCUMENTS[name]
    path = tmp_path / "hostile.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    for command in (["validate", str(path)], ["run", "--cluster", str(path), "--hours", "1"]):
        code, stderr = run_corral(*command, home=tmp_path)
        assert code == 3, f"{command[0]}: exit {code}\n{stderr}"
        assert says in stderr and "Traceback" not in stderr
        assert len(stderr) < 8192  # the input is never echoed whole
    assert not (tmp_path / "service.json").exists()  # `run` started no service either


# -- API bodies --------------------------------------------------------------------------

HUGE = 2**70  # past the store's 64-bit integers
LAUNCH = {"document": HEAD}
HOST = {"name": "h1", "cores": 1, "memory_mib": 1024}

# name -> (method, path, JSON body or raw bytes, field the refusal names)
BODIES: dict[str, tuple[str, str, object, str]] = {
    "name-path-and-shell": ("POST", "/v1/clusters", {**LAUNCH, "name": "../../x;$(id)"}, "name"),
    "name-200000-chars": ("POST", "/v1/clusters", {**LAUNCH, "name": "a" * 200_000}, "name"),
    "name-newline-ansi": (
        "POST",
        "/v1/clusters",
        {**LAUNCH, "name": "ok\n2026-01-01 INFO corral: \x1b[31mforged"},
        "name",
    ),
    "name-nul": ("POST", "/v1/clusters", {**LAUNCH, "name": "a\x00b"}, "name"),
    "name-unicode": ("POST", "/v1/clusters", {**LAUNCH, "name": "clüster"}, "name"),
    "source-control-chars": ("POST", "/v1/clusters", {**LAUNCH, "source": "a\x1b[2Jb"}, "source"),
    "lease-infinity": (
        "POST",
        "/v1/clusters",
        {**LAUNCH, "lease_seconds": float("inf")},
        "lease_seconds",
    ),
    "lease-minus-infinity": (
        "POST",
        "/v1/clusters",
        {**LAUNCH, "lease_seconds": float("-inf")},
        "lease_seconds",
    ),
    "lease-nan": (
        "POST",
        "/v1/clusters",
        {**LAUNCH, "lease_seconds": float("nan")},
        "lease_seconds",
    ),
    "lease-1e300": ("POST", "/v1/clusters", {**LAUNCH, "lease_seconds": 1e300}, "lease_seconds"),
    "document-not-text": ("POST", "/v1/clusters", {"document": {"nodes": []}}, "document"),
    "document-lone-surrogate": ("POST", "/v1/clusters", b'{"document": "a: \\ud800"}', ""),
    "json-10000-deep": ("POST", "/v1/clusters", b'{"document": ' + b"[" * 10_000, "body"),
    "json-nul-bytes": ("POST", "/v1/clusters", b"\x00" * 100, "body"),
    "body-3-mib": ("POST", "/v1/clusters", {"document": "#" * (3 * MIB)}, ""),
    "user-path-name": ("POST", "/v1/users", {"name": "../../root"}, "name"),
    "user-huge-quota": ("POST", "/v1/users", {"name": "bob", "max_nodes": HUGE}, "max_nodes"),
    "user-infinite-hours": (
        "POST",
        "/v1/users",
        {"name": "bob", "max_node_hours": float("inf")},
        "max_node_hours",
    ),
    "host-shell-name": ("POST", "/v1/hosts", {**HOST, "name": "h;reboot"}, "name"),
    "host-huge-cores": ("POST", "/v1/hosts", {**HOST, "cores": HUGE}, "cores"),
    "host-huge-memory": ("POST", "/v1/hosts", {**HOST, "memory_mib": HUGE}, "memory_mib"),
    "host-pool-path": ("POST", "/v1/hosts", {**HOST, "pool": "../x"}, "pool"),
    "image-huge-size": (
        "POST",
        "/v1/images",
        {"name": "i", "digest": "sha256:" + "0" * 64, "size_bytes": HUGE},
        "size_bytes",
    ),
    "events-huge-since": ("GET", f"/v1/clusters/c-00000000/events?since={HUGE}", None, "since"),
    "remove-user-newline": ("DELETE", "/v1/users/admin%0Aforged", None, "name"),
    "remove-host-shell": ("DELETE", "/v1/hosts/h%3B%20reboot", None, "name"),
}


@pytest.mark.parametrize("name", BODIES)
def test_a_hostile_api_body_is_refused_naming_the_field_and_creates_nothing(
    service: Service, name: str
) -> None:
    method, path, body, field = BODIES[name]
    client = api(service, admin_token(service))
    raw = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
    before = rows(service)
    with Bounded() as bounds:
        answer = client.request(
            method, path, content=raw, headers={"content-type": "application/json"}
        )
    bounds.check(name)
    assert 400 <= answer.status_code < 500, answer.text[:500]
    error = answer.json()
    assert set(error) == {"error", "message", "details"}
    assert error["message"].startswith(f"{field}: " if field else ""), error["message"][:200]
    assert len(answer.content) < 8192  # the input is never echoed whole
    assert rows(service) == before


def test_a_streamed_300_mib_body_is_refused_and_creates_nothing(service: Service) -> None:
    before = rows(service)
    with Bounded() as bounds:
        taken, status, _, error = post_streamed(service.app, admin_token(service), 300 * MIB)
    bounds.check("300 MiB streamed")
    assert (status, error["error"]) == (413, "payload-too-large")
    assert taken <= 3 * MIB
    assert rows(service) == before
