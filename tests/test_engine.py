"""The engine: failure and policies, timeouts, lost machines, restarts, and leases."""

from __future__ import annotations

from datetime import timedelta

from inprocess import admin_token, api, document, wait_for

from corral.backends.base import ImageRef, NodeSpec, Placement
from corral.store.models import utcnow

BEST_EFFORT = """
image: x
policy: {mode: best-effort}
nodes:
  - group: head
    provides: [ctl]
  - group: worker
    count: 3
    min: 2
    provides: [w]
"""


def launch(client, text=None, **body):
    response = client.post("/v1/clusters", json={"document": text or document(), **body})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def view(client, cluster_id):
    return client.get(f"/v1/clusters/{cluster_id}").json()


def nodes(client, cluster_id):
    return {n["name"]: n for n in view(client, cluster_id)["nodes"]}


def failed_and_removed(client, cluster_id):
    """A failed launch: the cluster failed, and every node of it is terminated."""
    detail = view(client, cluster_id)
    gone = all(n["state"] == "terminated" for n in detail["nodes"])
    return detail["state"] == "failed" and gone


def test_a_failed_node_fails_all_or_nothing_and_the_launch_is_removed(make_service):
    """A failed launch's nodes are removed; its record stays failed, saying why, until
    it is destroyed."""
    service = make_service({"fail": "worker-1:boot"})
    client = api(service, admin_token(service))
    cluster_id = launch(client)
    wait_for(lambda: failed_and_removed(client, cluster_id))
    final = view(client, cluster_id)
    assert "node worker-1 failed in phase boot" in final["failure"]
    assert "injected boot failure" in final["failure"]
    events = client.get(f"/v1/clusters/{cluster_id}/events").json()
    worker = [e["to_state"] for e in events if e["subject"] == "worker-1"]
    assert worker == ["pending", "failed", "terminating", "terminated"]
    wait_for(lambda: service.backend.list_machines() == [])

    assert client.delete(f"/v1/clusters/{cluster_id}").status_code == 202
    wait_for(lambda: view(client, cluster_id)["state"] == "terminated")
    events = client.get(f"/v1/clusters/{cluster_id}/events").json()
    cluster = [e["to_state"] for e in events if e["subject"] == "cluster" and e["to_state"]]
    assert cluster[-3:] == ["failed", "terminating", "terminated"]


def test_keep_on_failure_leaves_the_healthy_nodes_running(make_service):
    service = make_service({"fail": "worker-1:crash"})
    client = api(service, admin_token(service))
    cluster_id = launch(client, keep_on_failure=True)
    wait_for(lambda: view(client, cluster_id)["state"] == "failed")
    wait_for(lambda: nodes(client, cluster_id)["head-0"]["state"] == "ready")
    by_name = nodes(client, cluster_id)
    assert by_name["worker-1"]["state"] == "failed"
    assert by_name["worker-1"]["failure"] == "injected crash during boot"
    assert by_name["worker-1"]["failure_phase"] == "boot"
    running = {m.node_id for m in service.backend.list_machines()}
    assert by_name["head-0"]["id"] in running


def test_best_effort_is_ready_once_each_group_has_its_minimum(make_service):
    service = make_service({"fail": "worker-2:boot"})
    client = api(service, admin_token(service))
    cluster_id = launch(client, BEST_EFFORT)
    wait_for(lambda: view(client, cluster_id)["state"] == "ready")
    wait_for(lambda: nodes(client, cluster_id)["worker-2"]["state"] == "terminated")
    by_name = nodes(client, cluster_id)
    assert [by_name[n]["state"] for n in ("head-0", "worker-0", "worker-1")] == ["ready"] * 3
    assert "injected boot failure" in by_name["worker-2"]["failure"]


def test_best_effort_fails_when_a_group_cannot_reach_its_minimum(make_service):
    service = make_service({"fail": "worker-[12]:boot"})
    client = api(service, admin_token(service))
    cluster_id = launch(client, BEST_EFFORT)
    wait_for(lambda: failed_and_removed(client, cluster_id))
    failure = view(client, cluster_id)["failure"]
    assert "group worker cannot reach its minimum of 2" in failure
    assert "worker-1" in failure and "worker-2" in failure


def test_a_node_that_does_not_boot_in_time_fails_with_the_timeout(make_service):
    service = make_service({"boot_delay": "30"})
    client = api(service, admin_token(service))
    text = "image: x\npolicy: {boot_timeout: 1s}\nnodes:\n  - group: solo\n"
    cluster_id = launch(client, text)
    wait_for(lambda: failed_and_removed(client, cluster_id), timeout=15)
    assert view(client, cluster_id)["failure"] == (
        "node solo-0 failed in phase boot: boot timed out after 1s waiting for the machine to run"
    )


def test_a_ready_cluster_that_loses_a_machine_goes_on_degraded_without_it(make_service):
    """All-or-nothing is the launch's policy: once ready, a lost node is removed and the
    cluster goes on with the others, saying what it lost; with none left, it fails."""
    service = make_service()
    client = api(service, admin_token(service))
    cluster_id = launch(client)
    wait_for(lambda: view(client, cluster_id)["state"] == "ready")
    service.backend.terminate(nodes(client, cluster_id)["worker-0"]["id"])
    wait_for(lambda: view(client, cluster_id)["state"] == "degraded")
    wait_for(lambda: nodes(client, cluster_id)["worker-0"]["state"] == "terminated")
    worker = nodes(client, cluster_id)["worker-0"]
    assert worker["failure_phase"] == "run"
    assert "the backend no longer has this machine" in worker["failure"]
    detail = view(client, cluster_id)
    assert "going on without node worker-0 lost in phase run" in detail["failure"]
    assert {n: v["state"] for n, v in nodes(client, cluster_id).items()} == {
        "head-0": "ready",
        "worker-0": "terminated",
        "worker-1": "ready",
    }
    assert service.backend.describe(worker["id"]) is None

    for name in ("worker-1", "head-0"):  # losing the rest fails it
        service.backend.terminate(nodes(client, cluster_id)[name]["id"])
    wait_for(lambda: view(client, cluster_id)["state"] == "failed")
    assert view(client, cluster_id)["failure"].startswith("no node is left")


def test_a_lost_node_of_a_group_with_replace_gets_a_successor(make_service):
    """The successor takes the group's next index, boots, and the cluster is ready again;
    the lost node's address is not reused while it is being removed."""
    service = make_service()
    client = api(service, admin_token(service))
    text = document().replace(
        "provides: [slurm-worker]", "replace: true\n    provides: [slurm-worker]"
    )
    cluster_id = launch(client, text)
    wait_for(lambda: view(client, cluster_id)["state"] == "ready")
    lost = nodes(client, cluster_id)["worker-1"]
    service.backend.terminate(lost["id"])
    wait_for(lambda: view(client, cluster_id)["state"] == "degraded")
    wait_for(lambda: view(client, cluster_id)["state"] == "ready", timeout=20)
    now = nodes(client, cluster_id)
    assert {name: n["state"] for name, n in now.items()} == {
        "head-0": "ready",
        "worker-0": "ready",
        "worker-1": "terminated",
        "worker-2": "ready",
    }
    assert now["worker-2"]["address"] != lost["address"]
    assert service.backend.describe(now["worker-2"]["id"]) is not None
    events = client.get(f"/v1/clusters/{cluster_id}/events").json()
    reasons = [e["reason"] for e in events if e["subject"] in ("cluster", "worker-2")]
    assert any("replacing 1 of worker" in r for r in reasons)
    assert any(r.startswith("successor of a lost node; placed on local") for r in reasons)
    assert reasons[-1] == "every group has all its nodes ready again"


def test_machines_no_record_owns_are_removed(make_service):
    service = make_service()
    spec = NodeSpec("w-orphan", "c-none", "stray-0", ImageRef("x"), 1, 64)
    service.backend.boot(spec, Placement("local", "local", "10.0.0.9"))
    wait_for(lambda: service.backend.describe("w-orphan") is None)


def test_a_restarted_service_finishes_what_the_last_one_started(make_service, tmp_path):
    data_dir = tmp_path / "restart"
    first = make_service({"boot_delay": "0.5"}, data_dir=data_dir)
    client = api(first, admin_token(first))
    cluster_id = launch(client)
    wait_for(lambda: any(n["state"] == "booting" for n in nodes(client, cluster_id).values()))
    first.stop()
    second = make_service({"boot_delay": "0.5"}, data_dir=data_dir)
    client = api(second, admin_token(second))
    wait_for(lambda: view(client, cluster_id)["state"] == "ready")
    assert len(second.backend.list_machines()) == 3


def test_the_lease_warns_before_and_ends_the_cluster_at_expiry(make_service):
    offset = [timedelta(0)]
    service = make_service(clock=lambda: utcnow() + offset[0])
    client = api(service, admin_token(service))
    cluster_id = launch(client, lease_seconds=3600)
    wait_for(lambda: view(client, cluster_id)["state"] == "ready")

    def kinds():
        return [e["kind"] for e in client.get(f"/v1/clusters/{cluster_id}/events").json()]

    offset[0] = timedelta(minutes=45)
    service.engine.poke()
    wait_for(lambda: view(client, cluster_id)["state"] == "ready" and kinds())
    assert "lease-warning" not in kinds()
    offset[0] = timedelta(minutes=51)  # inside the 10-minute warning window
    service.engine.poke()
    wait_for(lambda: "lease-warning" in kinds())
    assert view(client, cluster_id)["state"] == "ready"
    offset[0] = timedelta(minutes=61)
    service.engine.poke()
    wait_for(lambda: view(client, cluster_id)["state"] == "terminated")
    events = client.get(f"/v1/clusters/{cluster_id}/events").json()
    (ending,) = [e for e in events if e["to_state"] == "terminating" and e["subject"] == "cluster"]
    assert ending["reason"].startswith("lease expired at")
    assert kinds().count("lease-warning") == 1
    assert service.backend.list_machines() == []


def test_an_extended_lease_warns_again_before_its_new_end(make_service):
    offset = [timedelta(0)]
    service = make_service(clock=lambda: utcnow() + offset[0])
    client = api(service, admin_token(service))
    cluster_id = launch(client, lease_seconds=3600)
    wait_for(lambda: view(client, cluster_id)["state"] == "ready")
    offset[0] = timedelta(minutes=55)
    service.engine.poke()
    warnings = lambda: [  # noqa: E731
        e
        for e in client.get(f"/v1/clusters/{cluster_id}/events").json()
        if e["kind"] == "lease-warning"
    ]
    wait_for(lambda: len(warnings()) == 1)
    assert client.post(f"/v1/clusters/{cluster_id}/extend", json={"seconds": 3600}).is_success
    offset[0] = timedelta(minutes=115)
    service.engine.poke()
    wait_for(lambda: len(warnings()) == 2)
    assert view(client, cluster_id)["state"] == "ready"


def test_a_group_grows_with_the_next_indexes_and_a_refused_resize_changes_nothing(make_service):
    service = make_service()
    client = api(service, admin_token(service))
    cluster_id = launch(client)
    wait_for(lambda: view(client, cluster_id)["state"] == "ready")
    grown = client.post(f"/v1/clusters/{cluster_id}/resize", json={"group": "worker", "count": 4})
    assert grown.status_code == 200, grown.text
    wait_for(lambda: all(n["state"] == "ready" for n in nodes(client, cluster_id).values()))
    assert sorted(nodes(client, cluster_id)) == [
        "head-0", "worker-0", "worker-1", "worker-2", "worker-3",
    ]  # fmt: skip
    assert view(client, cluster_id)["state"] == "ready"
    assert len(service.backend.list_machines()) == 5
    detail = client.get(f"/v1/clusters/{cluster_id}").json()
    before = client.get(f"/v1/clusters/{cluster_id}/events").json()

    for body, status, words in [
        ({"group": "worker", "count": 500}, 403, "quota"),
        ({"group": "nobody", "count": 3}, 404, "no group nobody (groups: head, worker)"),
        ({"group": "head", "count": 0}, 409, "below its minimum of 1"),
        ({"group": "worker", "count": -1}, 422, "count"),
    ]:
        refused = client.post(f"/v1/clusters/{cluster_id}/resize", json=body)
        assert refused.status_code == status, refused.text
        assert words in refused.text
    assert client.get(f"/v1/clusters/{cluster_id}/events").json() == before
    assert len(service.backend.list_machines()) == 5
    after = client.get(f"/v1/clusters/{cluster_id}").json()
    assert (after["nodes"], after["state"]) == (detail["nodes"], detail["state"])

    # machines that run no agent have nothing to drain: a shrink removes them at once
    shrunk = client.post(f"/v1/clusters/{cluster_id}/resize", json={"group": "worker", "by": -3})
    assert shrunk.status_code == 200, shrunk.text
    wait_for(lambda: len(service.backend.list_machines()) == 2)
    live = {n for n, w in nodes(client, cluster_id).items() if w["state"] != "terminated"}
    assert live == {"head-0", "worker-0"}
