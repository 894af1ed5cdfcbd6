"""How nodes on a cloud find themselves in their group's one user-data, fetch the agent
on a stock image, and pass on their cloud's notice that it takes them back.

The broker here is the real one over HTTPS; the fake backend writes each node's
bootstrap document into a directory, and the test plays the nodes (see test_trust.py).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from inprocess import wait_for
from test_contextualization import broker_client
from test_trust import cluster, everyone_registered, poll  # noqa: F401 - a fixture

import corral.agent
from corral.agent import BootstrapError, launch_token, parse_bootstrap
from corral.backends.cloud_init import launcher_script

PINS = {
    "corral": 1,
    "broker": "https://203.0.113.9:8471/broker/v1",
    "fingerprint": "sha256:" + "ab" * 32,
    "cluster": "c-12345678",
}


def group_document(indexes: list[list[int]], key: str = "k" * 43) -> bytes:
    return json.dumps(
        PINS | {"launch": {"key": key, "group": "worker", "indexes": indexes}}
    ).encode()


def test_each_node_of_a_launch_finds_its_name_and_token_by_its_launch_index():
    script = launcher_script(group_document([[0, 1], [5, 6]]))
    assert script.startswith(b"#!/bin/sh\n")
    found = [parse_bootstrap(script, "user-data", index) for index in range(4)]
    assert [b.node for b in found] == ["worker-0", "worker-1", "worker-5", "worker-6"]
    assert [b.token for b in found] == [launch_token("k" * 43, b.node) for b in found]
    assert len({b.token for b in found}) == 4
    assert all(b.cluster == "c-12345678" and b.broker == PINS["broker"] for b in found)
    # another key gives other tokens: a token is only as guessable as the key
    other = parse_bootstrap(launcher_script(group_document([[0, 1]], "o" * 43)), "u", 0)
    assert other.token != found[0].token


@pytest.mark.parametrize(
    ("indexes", "launch_index", "error"),
    [
        ([[0, 1]], 2, "launch index past the group's 1 range"),
        ([[0, 1]], None, "no launch index to read"),
        ([[0, "1"]], 0, "`launch.indexes` must be a list of [first, last]"),
        ("0-1", 0, "`launch.indexes` must be a list of [first, last]"),
    ],
)
def test_a_group_document_the_node_cannot_place_itself_in_is_refused(indexes, launch_index, error):
    with pytest.raises(BootstrapError, match=re.escape(error)):
        parse_bootstrap(group_document(indexes), "user-data", launch_index)


def test_a_script_without_exactly_one_bootstrap_line_holds_no_document():
    script = launcher_script(group_document([[0, 0]]))
    line = next(x for x in script.splitlines() if x.startswith(b"# corral-bootstrap: "))
    assert parse_bootstrap(script.replace(line, b"# nothing here"), "u", 0) is None
    assert parse_bootstrap(script + line + b"\n", "u", 0) is None
    assert parse_bootstrap(b"#cloud-config\npackages: [htop]\n", "u", 0) is None


def _fetch_part(script: bytes) -> str:
    """The launcher's Python part, which fetches the agent over pinned TLS."""
    text = script.decode()
    return text[text.index("<<'PY'\n") + len("<<'PY'\n") : text.index("\nPY\n")]


def _run_fetch(tmp_path: Path, document: dict) -> subprocess.CompletedProcess:
    """Run the launcher's fetch as root with a scratch /usr/local/lib of its own (a mount
    namespace), so that it writes where it would on a node without touching this host's."""
    script = tmp_path / "user-data"
    script.write_bytes(launcher_script(json.dumps(document).encode()))
    fetch = tmp_path / "fetch.py"
    fetch.write_text(_fetch_part(script.read_bytes()))
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    shell = (
        f"mount -t tmpfs none /usr/local/lib && mkdir /usr/local/lib/corral && "
        f"{sys.executable} {fetch} {script}; status=$?; "
        f"cp /usr/local/lib/corral/agent.py {out}/ 2>/dev/null; exit $status"
    )
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", shell],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_node_of_a_stock_image_fetches_the_agent_from_the_pinned_broker_only(
    cluster,  # noqa: F811 - the fixture
    tmp_path,
):
    _, _, _, documents = cluster
    document = next(iter(documents.values()))
    fetched = _run_fetch(tmp_path, document)
    assert fetched.returncode == 0, fetched.stderr
    assert (tmp_path / "out" / "agent.py").read_bytes() == Path(corral.agent.__file__).read_bytes()
    (tmp_path / "out" / "agent.py").unlink()
    pinned_elsewhere = document | {"fingerprint": "sha256:" + "00" * 32}
    refused = _run_fetch(tmp_path, pinned_elsewhere)
    assert refused.returncode != 0
    assert "the broker's certificate is not the one pinned" in refused.stderr
    assert not (tmp_path / "out" / "agent.py").exists()


def test_a_node_its_cloud_takes_back_is_lost_with_the_notice_and_leaves_every_view(
    cluster,  # noqa: F811 - the fixture
):
    service, client, cluster_id, documents = cluster
    nodes = everyone_registered(service, documents)
    credential = nodes["worker-1"][0]
    notice = "spot instance-action terminate at 2026-11-29T15:02:00Z"
    with broker_client(service) as broker:
        answer = broker.post(
            "/report",
            json={"phase": "interruption", "state": "failed", "log_tail": notice},
            headers={"Authorization": f"Bearer {credential}"},
        )
    assert answer.status_code == 200, answer.text

    def worker_1() -> dict:
        status = client.get(f"/v1/clusters/{cluster_id}").json()
        return next(n for n in status["nodes"] if n["name"] == "worker-1")

    wait_for(lambda: worker_1()["state"] in ("lost", "terminating", "terminated"))
    events = client.get(f"/v1/clusters/{cluster_id}/events").json()
    assert any(f"interrupted: {notice}" in e["reason"] for e in events), events
    head = nodes["head-0"][0]
    wait_for(lambda: "worker-1" not in hosts_of(poll(service, head)))
    assert "worker-0" in hosts_of(poll(service, head))


def hosts_of(view: dict) -> str:
    return json.dumps(view["hosts"])
