"""Removing nodes from a running cluster: a resize that shrinks a group, and `destroy
CLUSTER NODE...`. Ready nodes are drained first by their agent (the roles' `drain` hooks),
then removed, and the others run `leave`; a drain that fails keeps the node, saying why.
Refused removals change nothing.

The fake backend runs the real agent on a directory per machine, with recording role
scripts (test_contextualization.make_image).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from inprocess import admin_token, api, document, wait_for
from test_contextualization import launch_ready, make_image, node_roots

from corral.cli import render
from corral.service.schemas import ClusterDetail
from corral.store.models import Cluster

CLUSTER = """
name: shrink
image: test
nodes:
  - group: head
    login: true
    provides: [controller]
    requires: [worker]
  - group: worker
    count: 3
    min: 1
    provides: [worker]
    requires: [controller]
"""

# records its run in $DRAIN_LOG (outside the machine's root, which goes with the machine)
# and, on the node named in $FAIL_NODE, says jobs are still running
DRAIN_SCRIPT = """\
#!/bin/sh
echo "$CORRAL_NODE $CORRAL_DRAIN_TIMEOUT $(date +%s.%N)" >> "$DRAIN_LOG"
if [ "$CORRAL_NODE" = "$FAIL_NODE" ]; then
    echo "job(s) 7 still running on $CORRAL_NODE after the drain timeout" >&2
    exit 1
fi
"""
LEAVE_SCRIPT = """\
#!/bin/sh
out="$CORRAL_ROOT/var/log/roles"
mkdir -p "$out"
echo "$(date +%s.%N)" >> "$out/leave.log"
"""


def image_that_drains(directory: Path, drain_log: Path, fail_node: str = "") -> Path:
    make_image(directory)
    roles = directory / "etc" / "corral" / "roles"
    drain = DRAIN_SCRIPT.replace("$FAIL_NODE", fail_node).replace("$DRAIN_LOG", str(drain_log))
    for path, text in (
        (roles / "worker" / "drain", drain),
        (roles / "controller" / "leave", LEAVE_SCRIPT),
    ):
        path.write_text(text)
        path.chmod(0o755)
    return directory


@pytest.fixture
def draining_service(make_service, tmp_path):
    def make(fail_node: str = ""):
        image = image_that_drains(tmp_path / "image", tmp_path / "drain.log", fail_node)
        return make_service({"agent_image": str(image)}, serve=True)

    return make


def cluster(client, cluster_id: str) -> dict:
    detail = client.get(f"/v1/clusters/{cluster_id}").json()
    detail.pop("lease_left_seconds")  # the clock's, not the cluster's
    return detail


def states(client, cluster_id: str) -> dict[str, str]:
    return {n["name"]: n["state"] for n in cluster(client, cluster_id)["nodes"]}


def live(client, cluster_id: str) -> list[str]:
    return sorted(n for n, s in states(client, cluster_id).items() if s != "terminated")


def test_a_shrink_drains_the_newest_worker_then_the_others_see_it_leave(draining_service, tmp_path):
    service = draining_service()
    client, cluster_id = launch_ready(service, CLUSTER)
    roots = node_roots(service)

    shrunk = client.post(
        f"/v1/clusters/{cluster_id}/resize",
        json={"group": "worker", "by": -1, "drain_seconds": 44.2},
    )
    assert shrunk.status_code == 200, shrunk.text
    assert states(client, cluster_id)["worker-2"] in ("draining", "terminating", "terminated")
    wait_for(lambda: live(client, cluster_id) == ["head-0", "worker-0", "worker-1"], timeout=30)
    wait_for(lambda: machines(service) == ready_ids(client, cluster_id))

    drained = drain_log(tmp_path)
    # just it, with the resize's timeout in whole seconds, rounded up
    assert [d[:2] for d in drained] == [["worker-2", "45"]]
    leave = roots["head-0"] / "var/log/roles/leave.log"
    wait_for(leave.exists)
    assert float(leave.read_text().split()[0]) > float(drained[0][2])  # drained, then leave
    hosts = (roots["head-0"] / "etc/hosts").read_text()
    wait_for(lambda: "worker-2" not in (roots["head-0"] / "etc/hosts").read_text())
    assert "worker-1" in hosts
    detail = cluster(client, cluster_id)
    assert detail["state"] == "ready"
    with service.store.session() as session:
        document = json.loads(session.get(Cluster, cluster_id).document)
    worker = next(g for g in document["nodes"] if g["group"] == "worker")
    assert worker["count"] == 2
    moves = [
        e["reason"]
        for e in client.get(f"/v1/clusters/{cluster_id}/events").json()
        if "worker-2" in e["subject"]
    ]
    assert any("draining it first" in m for m in moves), moves
    assert any("drained: its work has ended" in m for m in moves), moves


def test_destroying_chosen_nodes_removes_just_those(draining_service, tmp_path):
    service = draining_service()
    client, cluster_id = launch_ready(service, CLUSTER)

    removed = client.post(
        f"/v1/clusters/{cluster_id}/nodes/remove", json={"nodes": ["worker-0", "worker-2"]}
    )
    assert removed.status_code == 200, removed.text
    wait_for(lambda: live(client, cluster_id) == ["head-0", "worker-1"], timeout=30)
    # the document's policy gives the timeout: 10 minutes by default
    assert sorted(d[:2] for d in drain_log(tmp_path)) == [["worker-0", "600"], ["worker-2", "600"]]


def test_a_drain_that_fails_keeps_the_node_and_says_why(draining_service):
    service = draining_service(fail_node="worker-2")
    client, cluster_id = launch_ready(service, CLUSTER)

    shrunk = client.post(f"/v1/clusters/{cluster_id}/resize", json={"group": "worker", "count": 2})
    assert shrunk.status_code == 200, shrunk.text
    wait_for(lambda: states(client, cluster_id)["worker-2"] == "ready", timeout=30)
    wait_for(lambda: "removal-failed" in kinds(client, cluster_id))
    node = next(n for n in cluster(client, cluster_id)["nodes"] if n["name"] == "worker-2")
    assert "removal failed: drain of role worker failed: job(s) 7 still running" in (
        node["failure"] or ""
    ), node
    assert node["id"] in machines(service)
    detail = client.get(f"/v1/clusters/{cluster_id}").json()
    shown = render.cluster_status(ClusterDetail.model_validate(detail))
    row = next(line for line in shown.splitlines() if line.startswith("worker-2"))
    assert row.split()[1] == "ready" and row.rstrip().endswith("it stays"), row
    assert live(client, cluster_id) == ["head-0", "worker-0", "worker-1", "worker-2"]
    assert cluster(client, cluster_id)["state"] == "ready"


def drain_log(tmp_path: Path) -> list[list[str]]:
    return [line.split() for line in (tmp_path / "drain.log").read_text().splitlines()]


def machines(service) -> set[str]:
    return {m.node_id for m in service.backend.list_machines()}


def ready_ids(client, cluster_id: str) -> set[str]:
    return {n["id"] for n in cluster(client, cluster_id)["nodes"] if n["state"] == "ready"}


def kinds(client, cluster_id: str) -> list[str]:
    return [e["kind"] for e in client.get(f"/v1/clusters/{cluster_id}/events").json()]


def test_refused_removals_change_nothing(draining_service):
    service = draining_service()
    client, cluster_id = launch_ready(service, CLUSTER)
    before = (cluster(client, cluster_id), client.get(f"/v1/clusters/{cluster_id}/events").json())

    for path, body, status, words in [
        ("resize", {"group": "worker", "count": 0}, 409, "below its minimum of 1"),
        ("resize", {"group": "head", "by": -1}, 409, "group head has 1 node(s)"),
        ("resize", {"group": "worker", "count": 2, "by": -1}, 422, "exactly one of count and by"),
        ("resize", {"group": "worker"}, 422, "exactly one of count and by"),
        ("resize", {"group": "worker", "count": 2, "drain_seconds": 0}, 422, "drain_seconds"),
        ("nodes/remove", {"nodes": ["worker-9"]}, 404, "no node worker-9"),
        ("nodes/remove", {"nodes": ["head-0"]}, 409, "below its minimum of 1"),
        ("nodes/remove", {"nodes": []}, 422, "nodes"),
        ("nodes/remove", {"nodes": ["worker-0", "worker-1", "worker-2"]}, 409, "minimum of 1"),
    ]:
        refused = client.post(f"/v1/clusters/{cluster_id}/{path}", json=body)
        assert refused.status_code == status, (body, refused.text)
        assert words in refused.text, (body, refused.text)
    after = (cluster(client, cluster_id), client.get(f"/v1/clusters/{cluster_id}/events").json())
    assert json.dumps(after, sort_keys=True) == json.dumps(before, sort_keys=True)
    assert len(service.backend.list_machines()) == 4


def test_another_users_cluster_cannot_be_shrunk(draining_service):
    service = draining_service()
    client, cluster_id = launch_ready(service, CLUSTER)
    made = client.post("/v1/users", json={"name": "mallory"})
    assert made.status_code == 201, made.text
    mallory = api(service, made.json()["token"])
    refused = mallory.post(f"/v1/clusters/{cluster_id}/nodes/remove", json={"nodes": ["worker-0"]})
    assert refused.status_code == 404, refused.text
    assert live(client, cluster_id) == ["head-0", "worker-0", "worker-1", "worker-2"]


def test_a_resize_past_the_clusters_node_limit_is_refused_whatever_the_quota(make_service):
    service = make_service(default_max_nodes=100_000, default_max_node_hours=1e9)
    client = api(service, admin_token(service))
    created = client.post("/v1/clusters", json={"document": document()})
    assert created.status_code == 201, created.text
    cluster_id = created.json()["id"]
    wait_for(lambda: cluster(client, cluster_id)["state"] == "ready")
    before = client.get(f"/v1/clusters/{cluster_id}/events").json()
    refused = client.post(
        f"/v1/clusters/{cluster_id}/resize", json={"group": "worker", "count": 10_000}
    )
    assert refused.status_code == 409, refused.text
    assert "would give the cluster 10001, more than the limit of 10000" in refused.text
    assert client.get(f"/v1/clusters/{cluster_id}/events").json() == before
    assert len(live(client, cluster_id)) == 3
