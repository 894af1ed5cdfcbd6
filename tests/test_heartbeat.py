"""The heartbeat: a ready node whose agent the broker has not heard past it is lost.

The service is real and its broker answers over HTTPS; its fake machines run no agent, so
the test plays each node's agent (register, report ready, poll its context) and stays
silent for the nodes it means to lose. Time passes on the service's clock, not the
test's: the clock is moved past the heartbeat instead of waiting for it.
"""

from __future__ import annotations

from datetime import timedelta

from inprocess import admin_token, api, wait_for
from test_contextualization import broker_client, launch
from test_registration_retry import Launch, identity, node_states

from corral.backends.base import Capability
from corral.backends.fake import FakeBackend
from corral.store.models import utcnow

HEARTBEAT = timedelta(seconds=90)
PAST_IT = HEARTBEAT + timedelta(seconds=5)
NODES = ("head-0", "worker-0", "worker-1", "worker-2")


class Played(Launch):
    """A launch whose agents the test plays, each with its credential once registered."""

    credentials: dict[str, str]

    def poll(self, node: str) -> None:
        """The node's agent polls its context: the broker hears it."""
        assert self.context(self.credentials[node]).status_code == 200

    def detail(self) -> dict:
        return self.client.get(f"/v1/clusters/{self.cluster_id}").json()

    def node_detail(self, node: str) -> dict:
        return next(n for n in self.detail()["nodes"] if n["name"] == node)


def agents_backend() -> FakeBackend:
    backend = FakeBackend(boot_delay=3600)  # its machines never run an agent of their own
    backend.capabilities = backend.capabilities | {Capability.RUNS_AGENT}
    return backend


def serve(make_service, backend, offset: list[timedelta], **settings):
    return make_service(backend=backend, serve=True, clock=lambda: utcnow() + offset[0], **settings)


def launch_ready(service, broker) -> Played:
    """Launch, and play every agent until the cluster is ready."""
    client = api(service, admin_token(service))
    cluster_id = launch(client)
    wait_for(lambda: set(node_states(client, cluster_id).values()) == {"booting"})
    played = Played(service, client, broker, cluster_id)
    played.credentials = {}
    for node in NODES:
        registered = played.register(node, played.token(node), identity(node))
        assert registered.status_code == 200, registered.text
        credential = played.credentials[node] = registered.json()["credential"]
        ready = {"phase": "node", "state": "ready"}
        headers = {"Authorization": f"Bearer {credential}"}
        assert broker.post("/report", headers=headers, json=ready).status_code == 200
    wait_for(lambda: played.detail()["state"] == "ready")
    return played


def test_a_ready_node_whose_agent_falls_silent_is_lost_and_the_heard_ones_stay(make_service):
    offset = [timedelta(0)]
    service = serve(make_service, agents_backend(), offset, heartbeat=HEARTBEAT)
    with broker_client(service) as broker:
        played = launch_ready(service, broker)
        # the others are heard within every heartbeat; worker-1's agent says nothing
        offset[0] = HEARTBEAT - timedelta(seconds=5)
        for node in ("head-0", "worker-0", "worker-2"):
            played.poll(node)
        offset[0] = PAST_IT
        service.engine.poke()
        wait_for(lambda: played.node_detail("worker-1")["state"] == "terminated")

    lost = played.node_detail("worker-1")
    assert lost["failure_phase"] == "run"
    assert lost["failure"].startswith("its agent was silent for 1m3")
    assert lost["failure"].endswith("s (heartbeat 1m30s)")
    detail = played.detail()
    assert detail["state"] == "degraded"
    assert (
        "going on without node worker-1 lost in phase run: its agent was silent"
        in (detail["failure"])
    )
    states = {n["name"]: n["state"] for n in detail["nodes"]}
    assert states == {
        "head-0": "ready",
        "worker-0": "ready",
        "worker-1": "terminated",
        "worker-2": "ready",
    }
    assert service.backend.describe(lost["id"]) is None


def test_a_restarted_service_gives_every_node_one_heartbeat_to_be_heard(make_service, tmp_path):
    """The broker keeps what it heard in memory only: a new service has heard nobody, and
    counts every node as heard at its start, so a restart alone loses no node."""
    backend, data_dir = agents_backend(), tmp_path / "restart"
    offset = [timedelta(0)]
    first = serve(make_service, backend, offset, heartbeat=HEARTBEAT, data_dir=data_dir)
    with broker_client(first) as broker:
        cluster_id = launch_ready(first, broker).cluster_id
    make_service.stop(first)

    offset[0] = timedelta(hours=1)  # the service was away an hour; the agents waited
    second = serve(make_service, backend, offset, heartbeat=HEARTBEAT, data_dir=data_dir)
    client = api(second, admin_token(second))
    second.engine.tick()
    assert set(node_states(client, cluster_id).values()) == {"ready"}

    offset[0] += PAST_IT  # and then none of them is heard for a heartbeat
    second.engine.poke()
    wait_for(lambda: client.get(f"/v1/clusters/{cluster_id}").json()["state"] == "failed")
    failure = client.get(f"/v1/clusters/{cluster_id}").json()["failure"]
    assert failure.startswith("no node is left: node head-0 lost in phase run: its agent was")
    assert failure.count("its agent was silent for") == len(NODES)


def test_an_agent_running_a_hook_has_the_context_timeout_to_be_heard_again(make_service):
    """An agent is silent while its join or leave script runs (up to the script's timeout),
    which may be longer than a heartbeat; it said so when the script started."""
    offset = [timedelta(0)]
    service = serve(make_service, agents_backend(), offset, heartbeat=HEARTBEAT)
    with broker_client(service) as broker:
        played = launch_ready(service, broker)
        join = {"phase": "join", "role": "worker", "state": "running"}
        headers = {"Authorization": f"Bearer {played.credentials['worker-1']}"}
        assert broker.post("/report", headers=headers, json=join).status_code == 200
        for seconds in range(80, 600, 80):  # the others are heard within every heartbeat
            offset[0] = timedelta(seconds=seconds)
            for node in ("head-0", "worker-0", "worker-2"):
                played.poll(node)
            service.engine.tick()
            assert played.node_detail("worker-1")["state"] == "ready", seconds
        offset[0] = timedelta(minutes=10, seconds=5)
        service.engine.poke()
        wait_for(lambda: played.node_detail("worker-1")["state"] == "terminated")
    assert played.node_detail("worker-1")["failure"].endswith(
        "(running a role script; context timeout 10m)"
    )


def test_the_broker_holds_a_poll_a_third_of_the_heartbeat_at_most(make_service):
    """Whatever wait an agent asks for, it is answered in time to be heard again within
    the heartbeat."""
    offset = [timedelta(0)]
    service = serve(make_service, agents_backend(), offset, heartbeat=timedelta(seconds=1.5))
    client = api(service, admin_token(service))
    cluster_id = launch(client)
    wait_for(lambda: set(node_states(client, cluster_id).values()) == {"booting"})
    with broker_client(service) as broker:
        played = Launch(service, client, broker, cluster_id)
        registered = played.register("worker-0", played.token("worker-0"), identity("worker-0"))
        assert registered.status_code == 200, registered.text
        reply = registered.json()
        headers = {"Authorization": f"Bearer {reply['credential']}"}
        # held 0.5 s at most: a hold of the 60 s asked for would time the request out
        since = reply["version"]
        held = broker.get(f"/context?since={since}&wait=60", headers=headers, timeout=10)
        assert held.status_code == 200, held.text
        assert held.json()["version"] == since
