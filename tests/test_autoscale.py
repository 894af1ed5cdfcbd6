"""Autoscaling: the cluster's scheduler, on its node, asks for nodes of the autoscaled
group by name and gives them back (`corral-agent scale`, the broker's /scale), within the
document's bounds and the owner's quota; no other node may.

The fake backend runs the real agent on a directory per machine (test_contextualization);
the test runs `corral-agent scale` as the head's agent would be run by Slurm's
ResumeProgram and SuspendProgram, against the broker over pinned TLS.
"""

from __future__ import annotations

import pytest
from inprocess import admin_token, api, wait_for
from test_contextualization import launch, make_image, node_roots

from corral import agent
from corral.store.models import User

CLUSTER = """
name: elastic
image: test
nodes:
  - {group: head, login: true, provides: [controller], requires: [worker]}
  - {group: worker, count: 0, provides: [worker], requires: [controller]}
autoscale: {group: worker, min: 0, max: 2, idle: 1m}
"""


@pytest.fixture
def elastic(make_service, tmp_path):
    """A ready cluster whose worker group starts empty; the service, client and id."""
    service = make_service({"agent_image": str(make_image(tmp_path / "image"))}, serve=True)
    client = api(service, admin_token(service))
    cluster_id = launch(client, CLUSTER)
    wait_for(lambda: detail(client, cluster_id)["state"] == "ready", timeout=60)
    return service, client, cluster_id


def detail(client, cluster_id: str) -> dict:
    return client.get(f"/v1/clusters/{cluster_id}").json()


def live(client, cluster_id: str) -> dict[str, str]:
    nodes = detail(client, cluster_id)["nodes"]
    return {n["name"]: n["state"] for n in nodes if n["state"] != "terminated"}


def test_the_head_asks_for_named_workers_and_gives_them_back(elastic, capsys):
    service, client, cluster_id = elastic
    assert live(client, cluster_id) == {"head-0": "ready"}  # met with no worker at all

    assert agent.scale(["--root", str(node_roots(service)["head-0"]), "resume", "worker-1"]) == 0
    assert capsys.readouterr().out.strip() == "resume: worker-1"
    wait_for(lambda: live(client, cluster_id).get("worker-1") == "ready", timeout=30)
    # asked again, a node that is there is not made twice
    assert agent.scale(["--root", str(node_roots(service)["head-0"]), "resume", "worker-1"]) == 0
    assert capsys.readouterr().out.strip() == "resume: nothing to do"
    head = node_roots(service)["head-0"]
    wait_for(lambda: "worker-1" in (head / "etc/hosts").read_text())

    assert agent.scale(["--root", str(head), "suspend", "worker-1"]) == 0
    wait_for(lambda: live(client, cluster_id) == {"head-0": "ready"}, timeout=30)
    wait_for(lambda: "worker-1" not in (head / "etc/hosts").read_text())

    # the same name again: a new node under the name Slurm knows
    assert agent.scale(["--root", str(head), "resume", "worker-1", "worker-0"]) == 0
    wait_for(
        lambda: (
            live(client, cluster_id)
            == {"head-0": "ready", "worker-0": "ready", "worker-1": "ready"}
        ),
        timeout=30,
    )
    workers = [n for n in detail(client, cluster_id)["nodes"] if n["name"] == "worker-1"]
    assert sorted(n["state"] for n in workers) == ["ready", "terminated"]
    events = client.get(f"/v1/clusters/{cluster_id}/events").json()
    assert any("autoscale: resume asked by head-0" in e["reason"] for e in events)


def test_scaling_is_bounded_and_only_the_scheduler_may_ask(elastic, capsys):
    service, client, cluster_id = elastic
    head = str(node_roots(service)["head-0"])
    before = client.get(f"/v1/clusters/{cluster_id}/events").json()

    assert agent.scale(["--root", head, "resume", "worker-2"]) == 1  # max: 2
    assert "worker-2: not a node autoscale may have (worker-0 to worker-1)" in (
        capsys.readouterr().err
    )
    assert agent.scale(["--root", head, "resume", "head-0"]) == 1
    assert client.get(f"/v1/clusters/{cluster_id}/events").json() == before
    assert live(client, cluster_id) == {"head-0": "ready"}

    # a worker cannot scale its own cluster
    assert agent.scale(["--root", head, "resume", "worker-0"]) == 0
    wait_for(lambda: live(client, cluster_id).get("worker-0") == "ready", timeout=30)
    capsys.readouterr()
    worker = str(node_roots(service)["worker-0"])
    assert agent.scale(["--root", worker, "resume", "worker-1"]) == 1
    assert "node worker-0 may not scale group worker" in capsys.readouterr().err
    assert "worker-1" not in live(client, cluster_id)


def test_the_owners_quota_bounds_what_the_scheduler_gets(elastic, capsys):
    service, client, cluster_id = elastic
    admin = client.get("/v1/whoami").json()["name"]
    with service.store.session() as session:
        user = session.query(User).filter_by(name=admin).one()
        user.max_nodes = 2  # the head and one worker
        session.commit()
    head = str(node_roots(service)["head-0"])
    assert agent.scale(["--root", head, "resume", "worker-0", "worker-1"]) == 1
    assert "quota" in capsys.readouterr().err
    assert live(client, cluster_id) == {"head-0": "ready"}
    assert agent.scale(["--root", head, "resume", "worker-0"]) == 0
    wait_for(lambda: live(client, cluster_id).get("worker-0") == "ready", timeout=30)
