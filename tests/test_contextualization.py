"""Contextualization end to end: real agents, the real broker over TLS, the fake backend.

The fake backend gives each node a root directory copied from a small image whose role
scripts record what they were given, and runs the real agent on it as a process.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import ssl
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from inprocess import admin_token, api, wait_for

from corral.broker.api import _record
from corral.broker.credentials import issue_bootstrap_token
from corral.broker.peers import peer_of
from corral.broker.schemas import ReportBody
from corral.broker.snapshots import Snapshots
from corral.broker.views import build_view, view_json
from corral.lifecycle import NodeState
from corral.store.models import Node, NodeSecret, Report, utcnow
from corral.transitions import move_node

AGENT = Path(__file__).resolve().parent.parent / "src" / "corral" / "agent.py"

CLUSTER = """
name: ctx
image: test
nodes:
  - group: head
    login: true
    provides: [controller]
    requires: [worker]
  - group: worker
    count: 3
    provides: [worker]
    requires: [controller]
"""

RECORDING_SCRIPT = """\
#!/bin/sh
# records each run: its view (stdin) and environment
out="$CORRAL_ROOT/var/log/roles"
mkdir -p "$out"
n=$(ls "$out" | wc -l)
cat > "$out/$CORRAL_ROLE.$n.json"
echo "$CORRAL_CLUSTER $CORRAL_NODE $CORRAL_ROLE" > "$out/$CORRAL_ROLE.$n.env"
if [ "$CORRAL_NODE" = "$FAIL_NODE" ]; then
    echo "slurmd: fatal: cannot reach the controller" >&2
    exit 1
fi
sleep "${CONFIGURE_SECONDS:-0}"
echo "configured $CORRAL_ROLE on $CORRAL_NODE"
"""


def make_image(directory: Path, fail_node: str = "", configure_seconds: float = 0) -> Path:
    """An image tree with a recording `configure` for the roles controller and worker."""
    for role in ("controller", "worker"):
        script = directory / "etc" / "corral" / "roles" / role / "configure"
        script.parent.mkdir(parents=True)
        script.write_text(
            RECORDING_SCRIPT.replace("$FAIL_NODE", fail_node).replace(
                "${CONFIGURE_SECONDS:-0}", str(configure_seconds)
            )
        )
        script.chmod(0o755)
    (directory / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    return directory


def node_roots(service) -> dict[str, Path]:
    with service.store.session() as session:
        names = {w.id: w.name for w in session.query(Node)}
    roots = service.config.data_dir / "fake-roots"
    return {names[p.name]: p for p in roots.iterdir() if p.name in names}


def launch(client, text: str = CLUSTER) -> str:
    response = client.post("/v1/clusters", json={"document": text})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def launch_ready(service, text: str = CLUSTER) -> tuple:
    """Launch as admin and wait until ready; returns the API client and the cluster id."""
    client = api(service, admin_token(service))
    cluster_id = launch(client, text)
    wait_for(lambda: state(client, cluster_id) == "ready", timeout=60)
    return client, cluster_id


def state(client, cluster_id: str) -> str:
    return client.get(f"/v1/clusters/{cluster_id}").json()["state"]


@pytest.fixture
def agent_service(make_service, tmp_path):
    def make(**image_options):
        image = make_image(tmp_path / f"image-{len(list(tmp_path.iterdir()))}", **image_options)
        return make_service({"agent_image": str(image)}, serve=True)

    return make


def broker_client(service) -> httpx.Client:
    """A client of the broker that trusts exactly its certificate."""
    context = ssl.create_default_context(cafile=str(service.broker_identity.cert_path))
    return httpx.Client(base_url=service.config.advertised_broker_url(), verify=context)


def test_four_nodes_find_each_other_and_each_role_configures_once(agent_service):
    service = agent_service()
    client, cluster_id = launch_ready(service)

    roots = node_roots(service)
    assert sorted(roots) == ["head-0", "worker-0", "worker-1", "worker-2"]
    view = client.get(f"/v1/clusters/{cluster_id}").json()
    addresses = {n["name"]: n["address"] for n in view["nodes"]}
    every_node = [f"{address} {other}" for other, address in addresses.items()]
    for name, root in roots.items():
        # a node may be ready before the last ones registered: its agent, following its
        # view, adds them to /etc/hosts as they come
        wait_for(lambda root=root: all(h in (root / "etc/hosts").read_text() for h in every_node))
        hosts = (root / "etc" / "hosts").read_text()
        assert hosts.startswith("127.0.0.1 localhost\n")  # what was there is kept
        for other, address in addresses.items():
            assert f"{address} {other}" in hosts, (name, hosts)
        runs = sorted((root / "var" / "log" / "roles").glob("*.json"))
        role = "controller" if name == "head-0" else "worker"
        assert [p.name for p in runs] == [f"{role}.0.json"]  # exactly once, one role
        given = json.loads(runs[0].read_text())
        assert given["node"] == name and given["cluster"] == cluster_id
        wanted = "worker" if role == "controller" else "controller"
        expected = sorted(n for n in roots if (n == "head-0") == (wanted == "controller"))
        assert sorted(m["name"] for m in given["roles"][wanted]) == expected
        assert all(m["ssh_host_keys"] for m in given["roles"][wanted])
        env = (root / "var" / "log" / "roles" / f"{role}.0.env").read_text().split()
        assert env == [cluster_id, name, role]


def test_secrets_arrive_root_only_and_host_keys_are_signed_by_the_cluster(agent_service):
    service = agent_service()
    client, cluster_id = launch_ready(service)
    root = node_roots(service)["worker-0"]
    modes = {
        "etc/munge/munge.key": 0o400,
        "etc/corral/tls/host.key": 0o600,
        "etc/corral/tls/host.crt": 0o644,
        "etc/corral/tls/ca.crt": 0o644,
        "etc/ssh/ssh_host_ed25519_key-cert.pub": 0o644,
    }
    for path, mode in modes.items():
        assert stat.S_IMODE((root / path).stat().st_mode) == mode, path
    assert len((root / "etc/munge/munge.key").read_bytes()) == 1024
    listing = subprocess.run(
        ["ssh-keygen", "-L", "-f", str(root / "etc/ssh/ssh_host_ed25519_key-cert.pub")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "host certificate" in listing and "worker-0" in listing
    known = (root / "etc/ssh/ssh_known_hosts").read_text()
    assert "@cert-authority * ssh-ed25519 " in known


def test_a_bootstrap_token_works_once_and_not_after_it_expires(agent_service):
    service = agent_service()
    client, cluster_id = launch_ready(service)
    root = node_roots(service)["worker-0"]
    bootstrap = json.loads((root / "var/lib/corral/bootstrap.json").read_text())
    identity = {"hostname": "worker-0", "addresses": [], "ssh_host_keys": []}
    body = {k: bootstrap[k] for k in ("cluster", "node", "token")} | {"identity": identity}
    with broker_client(service) as broker:
        again = broker.post("/register", json=body)
        assert again.status_code == 401 and "already used" in again.json()["message"]

        with service.store.session() as session:
            ws = session.query(Node).filter_by(cluster_id=cluster_id, name="worker-1").one()
            old = issue_bootstrap_token(
                session, ws.id, utcnow() - timedelta(minutes=11), timedelta(minutes=10)
            )
        expired = broker.post("/register", json=body | {"node": "worker-1", "token": old})
        assert expired.status_code == 401 and "expired" in expired.json()["message"]

        with service.store.session() as session:
            ws = session.query(Node).filter_by(cluster_id=cluster_id, name="worker-2").one()
            fresh = issue_bootstrap_token(session, ws.id, utcnow(), timedelta(minutes=10))
        stolen = broker.post("/register", json=body | {"node": "worker-1", "token": fresh})
        assert stolen.status_code == 401 and "another node" in stolen.json()["message"]


def test_a_node_credential_reads_only_its_own_view_and_reports_only_for_itself(agent_service):
    service = agent_service()
    client = api(service, admin_token(service))
    first = launch(client)
    second = launch(client)
    wait_for(lambda: {state(client, first), state(client, second)} == {"ready"}, timeout=90)
    by_cluster: dict[str, dict[str, Path]] = {}
    with service.store.session() as session:
        for ws in session.query(Node):
            root = service.config.data_dir / "fake-roots" / ws.id
            by_cluster.setdefault(ws.cluster_id, {})[ws.name] = root
    credential = (by_cluster[first]["worker-0"] / "var/lib/corral/credential").read_text().strip()
    other_munge = (by_cluster[second]["worker-0"] / "etc/munge/munge.key").read_bytes()
    with broker_client(service) as broker:
        headers = {"Authorization": f"Bearer {credential}"}
        answer = broker.get("/context", headers=headers)
        assert answer.headers["content-type"] == "application/json"
        view = answer.json()
        assert (view["cluster"], view["node"]) == (first, "worker-0")
        # members: itself and the provider of the role it requires; hosts: the whole cluster
        assert {m["name"] for m in view["members"]} == {"head-0", "worker-0"}
        assert {h["name"] for h in view["hosts"]} == {"head-0", "worker-0", "worker-1", "worker-2"}
        assert not any(m.get("address") in _addresses(client, second) for m in view["members"])
        munge = next(f for f in view["files"] if f["path"] == "/etc/munge/munge.key")
        assert base64.b64decode(munge["content_b64"]) != other_munge
        for_other = broker.post(
            "/report",
            headers=headers,
            json={"phase": "node", "state": "failed", "node": "worker-1"},
        )
        assert for_other.status_code == 422  # a report names no node: it is the caller's
        assert for_other.json()["error"] == "bad-request"
        assert for_other.json()["message"].startswith("node: ")
        backwards = broker.get("/context", params={"since": -1}, headers=headers)
        assert backwards.status_code == 422 and "since" in backwards.json()["message"]
        sleepy = broker.get("/context", params={"since": 0, "wait": "soon"}, headers=headers)
        assert sleepy.status_code == 422 and sleepy.json()["message"].startswith("wait: ")
        nobody = broker.get("/context", headers={"Authorization": "Bearer nc_forged"})
        assert nobody.status_code == 401
        wrong_method = broker.post("/context", headers=headers, json={})
        assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "GET"
        no_such_path = broker.get("/contexts", headers=headers)
        assert no_such_path.status_code == 404
        assert no_such_path.json()["error"] == "not-found"
    assert state(client, first) == "ready"


def test_a_report_sent_again_is_stored_once(agent_service):
    service = agent_service()
    _, cluster_id = launch_ready(service)
    credential = (node_roots(service)["worker-1"] / "var/lib/corral/credential").read_text()
    report = {"phase": "configure", "role": "worker", "state": "ok", "exit_code": 0}
    report["version"] = 99
    with broker_client(service) as broker:
        headers = {"Authorization": f"Bearer {credential.strip()}"}
        first = broker.post("/report", headers=headers, json=report)
        again = broker.post("/report", headers=headers, json=report)
        newer = broker.post("/report", headers=headers, json=report | {"version": 100})
    assert first.json() == {"status": "recorded"}
    assert again.json() == {"status": "already recorded"}
    assert newer.json() == {"status": "recorded"}
    # twice in one transaction, as a burst of the group commit may hold them
    with service.store.session() as session:
        me = peer_of(session.query(Node).filter_by(name="worker-1").one())
        twice = ReportBody.model_validate(report | {"version": 101})
        assert _record(twice, me, session) is NodeState.READY
        assert _record(twice, me, session) is None
    with service.store.session() as session:
        stored = session.query(Report).filter_by(cluster_id=cluster_id, node="worker-1")
        assert sorted(r.version for r in stored if r.version >= 99) == [99, 100, 101]


def test_a_view_serialized_with_its_shared_hosts_is_the_view_itself(agent_service):
    service = agent_service()
    cluster_id = launch(api(service, admin_token(service)))
    wait_for(lambda: state(api(service, admin_token(service)), cluster_id) == "ready", 90)
    snapshot = service.snapshots.get(cluster_id)
    with service.store.session() as session:
        nodes = list(session.query(Node).filter_by(cluster_id=cluster_id))
        secrets = {ws.id: session.get(NodeSecret, ws.id) for ws in nodes}
    assert len(snapshot.hosts) == 4
    for ws in nodes:
        me = peer_of(ws)
        whole = build_view(snapshot, me, secrets[ws.id]).model_dump(mode="json")
        assert json.loads(view_json(snapshot, me, secrets[ws.id])) == whole
    # a node that registered after the snapshot was read still finds itself among the hosts,
    # in its place by name, whether that is first, among the others or last
    for name in ("a-first", "head-1", "worker-9"):
        newcomer = replace(peer_of(nodes[0]), id="ws-new", name=name, address="10.9.9.9")
        hosts = json.loads(view_json(snapshot, newcomer, None))["hosts"]
        assert {"name": name, "address": "10.9.9.9"} in hosts and len(hosts) == 5
        assert [h["name"] for h in hosts] == sorted(h["name"] for h in hosts)
        whole = build_view(snapshot, newcomer, None).model_dump(mode="json")
        assert json.loads(view_json(snapshot, newcomer, None)) == whole


def test_a_refresh_told_which_nodes_changed_reads_just_them(agent_service):
    service = agent_service()
    _, cluster_id = launch_ready(service)
    service.engine.stop()  # it would act on the failed node below
    snapshots = Snapshots(service.store, service.documents, lambda _: None)  # the service's own
    before = snapshots.get(cluster_id)  # would be refreshed by its notifier meanwhile
    with service.store.session() as session:
        nodes = {ws.name: ws for ws in session.query(Node).filter_by(cluster_id=cluster_id)}
        for name in ("worker-0", "worker-1"):
            nodes[name].hostname = f"{name}.renamed"
        # a state change names its node for the broker to re-read
        move_node(session, nodes["worker-1"], NodeState.FAILED, "for the test")
        assert session.info["changed_contexts"] == {cluster_id: {nodes["worker-1"].id}}
        ids = {name: ws.id for name, ws in nodes.items()}

    groups = snapshots.refresh(cluster_id, {ids["worker-1"]})
    partial = snapshots.latest(cluster_id)
    assert partial.version > before.version and groups
    assert partial.nodes[ids["worker-1"]].hostname == "worker-1.renamed"
    assert partial.state_of(ids["worker-1"]) == "failed"
    assert partial.nodes[ids["worker-0"]].hostname == "worker-0"  # not named: not read
    assert "worker-1" not in [p.name for p in partial.peers["head"]]

    snapshots.refresh(cluster_id, None)  # anything may have changed: the whole cluster
    assert snapshots.latest(cluster_id).nodes[ids["worker-0"]].hostname == "worker-0.renamed"


def _addresses(client, cluster_id):
    return {n["address"] for n in client.get(f"/v1/clusters/{cluster_id}").json()["nodes"]}


def test_a_failing_role_script_fails_its_node_with_exit_code_and_stderr(agent_service):
    service = agent_service(fail_node="worker-1")
    client = api(service, admin_token(service))
    response = client.post("/v1/clusters", json={"document": CLUSTER, "keep_on_failure": True})
    cluster_id = response.json()["id"]
    wait_for(lambda: state(client, cluster_id) == "failed", timeout=60)
    view = client.get(f"/v1/clusters/{cluster_id}").json()
    worker = next(n for n in view["nodes"] if n["name"] == "worker-1")
    assert worker["state"] == "failed" and worker["failure_phase"] == "configure"
    assert "exited 1" in worker["failure"]
    assert "cannot reach the controller" in worker["failure"]
    assert "node worker-1 failed in phase configure" in view["failure"]
    logs = client.get(f"/v1/clusters/{cluster_id}/nodes/worker-1/logs").json()
    failed = [r for r in logs if r["phase"] == "configure" and r["state"] == "failed"]
    assert failed and failed[0]["exit_code"] == 1
    assert "slurmd: fatal: cannot reach the controller" in failed[0]["log_tail"]


def test_best_effort_with_its_minimum_met_ends_ready(agent_service):
    service = agent_service(fail_node="worker-2")
    client = api(service, admin_token(service))
    text = CLUSTER.replace("name: ctx", "name: ctx\npolicy: {mode: best-effort}").replace(
        "count: 3", "count: 3\n    min: 2"
    )
    cluster_id = launch(client, text)
    wait_for(lambda: state(client, cluster_id) == "ready", timeout=60)
    nodes = {n["name"]: n for n in client.get(f"/v1/clusters/{cluster_id}").json()["nodes"]}
    wait_for(
        lambda: client.get(f"/v1/clusters/{cluster_id}").json()["nodes"][3]["state"] == "terminated"
    )
    assert [nodes[n]["state"] for n in ("head-0", "worker-0", "worker-1")] == ["ready"] * 3


def test_logs_outlive_the_node(agent_service):
    service = agent_service()
    client, cluster_id = launch_ready(service)
    client.delete(f"/v1/clusters/{cluster_id}")
    wait_for(lambda: state(client, cluster_id) == "terminated")
    assert service.backend.list_machines() == []
    logs = client.get(f"/v1/clusters/{cluster_id}/nodes/head-0/logs").json()
    assert any("configured controller on head-0" in r["log_tail"] for r in logs)
    assert client.get(f"/v1/clusters/{cluster_id}/nodes/nope-0/logs").status_code == 404


def test_a_service_restarted_while_nodes_configure_still_gets_the_cluster_ready(
    make_service, tmp_path
):
    image = make_image(tmp_path / "image", configure_seconds=3)
    first = make_service({"agent_image": str(image)}, serve=True, data_dir=tmp_path / "svc")
    client = api(first, admin_token(first))
    cluster_id = launch(client)
    wait_for(
        lambda: any(
            n["state"] == "configuring"
            for n in client.get(f"/v1/clusters/{cluster_id}").json()["nodes"]
        ),
        timeout=60,
    )
    assert state(client, cluster_id) == "launching"
    make_service.stop(first)  # as a kill would: machines and agents keep running
    second = make_service(
        {"agent_image": str(image)},
        serve=True,
        data_dir=tmp_path / "svc",
        broker_listen=first.config.broker_listen,  # where the agents keep calling
    )
    client = api(second, admin_token(second))
    wait_for(lambda: state(client, cluster_id) == "ready", timeout=90)


def test_stopping_the_service_answers_held_long_polls_instead_of_dropping_them(
    agent_service, make_service
):
    service = agent_service()
    launch_ready(service)
    headers = {"Authorization": f"Bearer {_worker_credential(service)}"}
    with broker_client(service) as broker:
        version = broker.get("/context", headers=headers).json()["version"]
        answers = _hold_long_poll(broker, headers, version, lambda: make_service.stop(service))
    assert len(answers) == 1 and isinstance(answers[0], httpx.Response), answers
    assert answers[0].status_code == 200
    assert answers[0].json()["version"] == version  # nothing changed; the agent asks again


def test_a_destroyed_clusters_credentials_are_refused_even_during_a_held_long_poll(
    agent_service,
):
    service = agent_service()
    client, cluster_id = launch_ready(service)
    credential = _worker_credential(service)
    headers = {"Authorization": f"Bearer {credential}"}
    with broker_client(service) as broker:
        version = broker.get("/context", headers=headers).json()["version"]
        assert service.known_nodes.cached(credential) is not None
        answers = _hold_long_poll(
            broker, headers, version, lambda: client.delete(f"/v1/clusters/{cluster_id}")
        )
        assert answers and answers[0].status_code == 401, answers
        assert "terminat" in answers[0].json()["message"]
        wait_for(lambda: state(client, cluster_id) == "terminated")
        # the broker lets go of a terminated cluster's nodes, and reads the store again
        wait_for(lambda: service.known_nodes.cached(credential) is None)
        later = broker.get("/context", headers=headers)
        assert later.status_code == 401 and "terminated" in later.json()["message"]


def _worker_credential(service) -> str:
    return (node_roots(service)["worker-0"] / "var/lib/corral/credential").read_text().strip()


def _hold_long_poll(
    broker: httpx.Client, headers: dict[str, str], since: int, meanwhile: Callable[[], object]
) -> list[httpx.Response | Exception]:
    """Hold a long poll of /context past `since`, run `meanwhile` as it waits; its answer."""
    answers: list[httpx.Response | Exception] = []

    def hold() -> None:
        try:
            params = {"since": since, "wait": 30}
            answers.append(broker.get("/context", params=params, headers=headers, timeout=60))
        except httpx.HTTPError as exc:
            answers.append(exc)

    poll = threading.Thread(target=hold)
    poll.start()
    time.sleep(1)  # let the request reach the broker and wait there
    meanwhile()
    poll.join(timeout=60)
    return answers


def test_running_the_agent_again_leaves_every_file_byte_identical(agent_service):
    service = agent_service()
    client, cluster_id = launch_ready(service)
    roots = node_roots(service)
    root = roots["worker-0"]
    # the cluster can be ready before worker-0's agent, following its view, has written
    # the hosts of the nodes that registered after it; the run below would write them
    wait_for(lambda: set(roots) <= set((root / "etc/hosts").read_text().split()), timeout=30)
    before = tree_digest(root)
    rerun = subprocess.run(
        [sys.executable, str(AGENT), "--root", str(root), "--once", "--poll-wait", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert tree_digest(root) == before


def tree_digest(root: Path) -> dict[str, str]:
    """Content and mode of every file the agent manages (its own log excepted)."""
    digests = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and "var/log" not in str(path.relative_to(root)):
            mode = stat.S_IMODE(path.stat().st_mode)
            digests[str(path.relative_to(root))] = (
                f"{mode:o}:" + hashlib.sha256(path.read_bytes()).hexdigest()
            )
    return digests


WAIT_READY = CLUSTER.replace(
    "requires: [controller]", "requires: [{role: controller, wait: ready}]"
)


def test_wait_ready_holds_workers_until_the_controller_is_ready_and_says_so(make_service, tmp_path):
    image = make_image(tmp_path / "image", configure_seconds=2)
    service = make_service({"agent_image": str(image)}, serve=True)
    client = api(service, admin_token(service))
    cluster_id = launch(client, WAIT_READY)

    def waiting_workers():
        nodes = client.get(f"/v1/clusters/{cluster_id}").json()["nodes"]
        return [n for n in nodes if n["blocked_on"] == ["controller"]]

    waiting = wait_for(waiting_workers, timeout=60)
    assert {n["group"] for n in waiting} == {"worker"}
    credential = node_roots(service)[waiting[0]["name"]] / "var/lib/corral/credential"
    wait_for(credential.exists, timeout=10)  # its agent writes it once the reply arrives
    with broker_client(service) as broker:
        headers = {"Authorization": f"Bearer {credential.read_text().strip()}"}
        view = broker.get("/context", headers=headers).json()
    assert (view["satisfied"], view["blocked_on"]) == (False, ["controller"])
    # it has its files, but configures nothing while it waits
    assert "/etc/corral/tls/host.crt" in {f["path"] for f in view["files"]}
    assert not (node_roots(service)[waiting[0]["name"]] / "var/log/roles").exists()

    wait_for(lambda: state(client, cluster_id) == "ready", timeout=60)
    logs = {
        name: client.get(f"/v1/clusters/{cluster_id}/nodes/{name}/logs").json()
        for name in ("head-0", "worker-0")
    }
    head_ready = next(r["at"] for r in logs["head-0"] if r["phase"] == "node")
    worker_started = next(r["at"] for r in logs["worker-0"] if r["state"] == "running")
    assert worker_started > head_ready


def test_contextualization_that_takes_too_long_fails_the_node(make_service, tmp_path):
    image = make_image(tmp_path / "image", configure_seconds=30)
    service = make_service({"agent_image": str(image)}, serve=True)
    client = api(service, admin_token(service))
    text = CLUSTER.replace("name: ctx", "name: ctx\npolicy: {context_timeout: 2s}")
    cluster_id = launch(client, text)
    wait_for(lambda: state(client, cluster_id) == "failed", timeout=60)
    failure = client.get(f"/v1/clusters/{cluster_id}").json()["failure"]
    assert "contextualization timed out after 2s" in failure


def test_no_token_credential_or_key_reaches_the_service_log(agent_service, caplog):
    caplog.set_level(logging.DEBUG)
    service = agent_service()
    client, cluster_id = launch_ready(service)
    secrets = []
    for root in node_roots(service).values():
        secrets.append(json.loads((root / "var/lib/corral/bootstrap.json").read_text())["token"])
        secrets.append((root / "var/lib/corral/credential").read_text().strip())
        secrets.append((root / "etc/corral/tls/host.key").read_text().splitlines()[1])
        agent_log = (root / "var/log/corral-agent.log").read_text()
        assert not any(s in agent_log for s in secrets)
    assert caplog.records
    assert not any(s in caplog.text for s in secrets)
