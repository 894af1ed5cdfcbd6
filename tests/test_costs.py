"""Cost: each node's price comes from its pool's backend when the node is made; a launch
is estimated per hour and for its lease, and clusters show what they cost so far."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from inprocess import admin_token, api, wait_for
from sqlalchemy import select

from corral.backends.base import ImageRef, NodeSpec
from corral.backends.fake import FakeBackend
from corral.lifecycle import NodeState
from corral.service.config import PoolConfig
from corral.service.costs import Estimate, Tally, estimate
from corral.store.models import Node

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
FAST = {"boot_delay": "0.05"}
PRICED = {**FAST, "price_per_core_hour": "0.01", "spot_price_per_core_hour": "0.004"}
POOLS = (
    PoolConfig("local", "fake", FAST, "10.190.0.0/16"),
    PoolConfig("cloud", "fake", PRICED, "10.191.0.0/16"),
)
# a head of 1 core on demand (0.01/h) and two spot workers of 2 cores (0.008/h each)
MIXED = """\
image: debian-12
lease: 12h
nodes:
  - {group: head, cores: 1, memory: 512MiB, login: true}
  - {group: worker, count: 2, cores: 2, memory: 512MiB, market: spot}
"""
PER_HOUR = 0.026  # 0.01 + 2 * 0.008


def hours(n: float) -> timedelta:
    return timedelta(hours=n)


# -- the arithmetic, with a fixed clock -------------------------------------------------


def test_an_estimate_is_the_nodes_prices_per_hour_and_over_the_lease():
    assert estimate([0.01, 0.008, 0.008], hours(12)) == Estimate(0.026, 0.312)
    assert estimate([0.0832], hours(12)) == Estimate(0.0832, 0.9984)


def test_nodes_without_a_price_give_no_estimate():
    assert estimate([None, None], hours(12)) is None
    assert estimate([], hours(12)) is None


def test_cost_so_far_counts_each_node_from_its_creation_to_its_end_or_now():
    tally = Tally()
    now = T0 + hours(3)
    tally.add(0.1, T0, NodeState.READY, T0 + hours(1), now)  # 3h so far, still running
    tally.add(0.2, T0, NodeState.TERMINATED, T0 + hours(1), now)  # ended after 1h
    tally.add(0.5, T0 + hours(2), NodeState.PENDING, T0 + hours(2), now)  # made 1h ago

    assert tally.rounded() == Tally(cost_so_far=0.3 + 0.2 + 0.5, hourly_cost=0.1 + 0.5)


def test_a_cluster_whose_nodes_have_ended_costs_nothing_more_per_hour():
    tally = Tally()
    tally.add(0.2, T0, NodeState.TERMINATED, T0 + hours(0.5), T0 + hours(9))

    assert tally.rounded() == Tally(cost_so_far=0.1, hourly_cost=0.0)


def test_nodes_without_a_price_have_no_cost():
    tally = Tally()
    tally.add(None, T0, NodeState.READY, T0, T0 + hours(1))

    assert tally.rounded() == Tally(None, None)


# -- the fake backend's prices ------------------------------------------------------------


def spec(cores: int, market: str = "on-demand") -> NodeSpec:
    return NodeSpec("w-1", "c-1", "worker-0", ImageRef("debian-12"), cores, 512, market=market)


def test_the_fake_backend_prices_per_core_hour_by_market(tmp_path: Path):
    fake = FakeBackend.from_options({**PRICED, "state_file": ""}, tmp_path)

    assert fake.hourly_price(spec(2)) == pytest.approx(0.02)
    assert fake.hourly_price(spec(2, "spot")) == pytest.approx(0.008)
    assert FakeBackend(state_file=None).hourly_price(spec(2)) is None


def test_the_fake_backend_refuses_a_price_that_is_not_one(tmp_path: Path):
    with pytest.raises(ValueError, match="price_per_core_hour must be a price"):
        FakeBackend.from_options({"price_per_core_hour": "-1"}, tmp_path)
    with pytest.raises(ValueError, match="spot_price_per_core_hour needs price_per_core_hour"):
        FakeBackend.from_options({"spot_price_per_core_hour": "0.1"}, tmp_path)


# -- through the API ----------------------------------------------------------------------


def launched(client, text: str, pool: str) -> dict:
    answer = client.post("/v1/clusters", json={"document": text, "pool": pool})
    assert answer.status_code == 201, answer.text
    return answer.json()


def age_nodes(service, cluster_id: str, by: timedelta) -> None:
    """As if the cluster's nodes had been made `by` earlier."""
    with service.decisions, service.store.session() as session:
        for node in session.scalars(select(Node).where(Node.cluster_id == cluster_id)):
            node.created_at -= by


def test_a_launch_in_a_priced_pool_is_estimated_and_shows_its_cost_so_far(make_service):
    service = make_service(pools=POOLS)
    client = api(service, admin_token(service))

    cluster = launched(client, MIXED, "cloud")

    assert cluster["estimated_cost"] == {"per_hour": PER_HOUR, "lease": round(PER_HOUR * 12, 4)}
    with service.store.session() as session:
        prices = dict(session.execute(select(Node.name, Node.hourly_price)).all())
    assert prices == pytest.approx({"head-0": 0.01, "worker-0": 0.008, "worker-1": 0.008})

    age_nodes(service, cluster["id"], hours(2))
    (listed,) = client.get("/v1/clusters").json()
    detail = client.get(f"/v1/clusters/{cluster['id']}").json()
    for view in (listed, detail):
        assert view["cost_so_far"] == pytest.approx(PER_HOUR * 2, abs=1e-3)
        assert view["hourly_cost"] == pytest.approx(PER_HOUR)


def test_nodes_a_cluster_grows_by_are_priced_too(make_service):
    service = make_service(pools=POOLS)
    client = api(service, admin_token(service))
    cluster = launched(client, MIXED, "cloud")
    wait_for(lambda: client.get(f"/v1/clusters/{cluster['id']}").json()["state"] == "ready")

    grown = client.post(f"/v1/clusters/{cluster['id']}/resize", json={"group": "worker", "by": 1})

    assert grown.status_code == 200, grown.text
    detail = client.get(f"/v1/clusters/{cluster['id']}").json()
    assert detail["hourly_cost"] == pytest.approx(PER_HOUR + 0.008)


def test_an_ended_cluster_keeps_its_cost_and_costs_nothing_more(make_service):
    service = make_service(pools=POOLS)
    client = api(service, admin_token(service))
    cluster = launched(client, MIXED, "cloud")
    age_nodes(service, cluster["id"], hours(1))

    client.delete(f"/v1/clusters/{cluster['id']}")
    wait_for(lambda: client.get(f"/v1/clusters/{cluster['id']}").json()["state"] == "terminated")

    detail = client.get(f"/v1/clusters/{cluster['id']}").json()
    assert detail["hourly_cost"] == 0.0
    assert detail["cost_so_far"] == pytest.approx(PER_HOUR, abs=1e-3)


def test_a_pool_without_prices_shows_no_cost(make_service):
    service = make_service(pools=POOLS)
    client = api(service, admin_token(service))

    cluster = launched(client, MIXED, "local")

    assert cluster["estimated_cost"] is None
    (listed,) = client.get("/v1/clusters").json()
    detail = client.get(f"/v1/clusters/{cluster['id']}").json()
    for view in (cluster, listed, detail):
        assert view["cost_so_far"] is None
        assert view["hourly_cost"] is None
