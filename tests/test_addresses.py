"""Subnets and addresses from a pool, against a real SQLite store with foreign keys on."""

from __future__ import annotations

import ipaddress
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from corral.errors import CapacityError
from corral.service.addresses import (
    allocate_addresses,
    allocate_subnet,
    gateway_of,
    release_address,
    release_subnet,
)
from corral.store.database import Store
from corral.store.models import (
    AddressAllocation,
    Cluster,
    Host,
    Node,
    Pool,
    SubnetAllocation,
    User,
    utcnow,
)


@pytest.fixture
def store(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'db'}")
    yield store
    store.close()


def make_pool(store, address_range="10.9.0.0/16", subnet_prefix=24, name="lab"):
    with store.session() as s:
        if s.get(User, 1) is None:
            s.add(User(id=1, name="ada", token_hash="h" * 64))
        s.add(
            Pool(
                name=name, backend="fake", address_range=address_range, subnet_prefix=subnet_prefix
            )
        )
        s.add(Host(name=f"{name}-host", pool_name=name, cores=64, memory_mib=65536))
    return name


def make_cluster(store, cluster_id, nodes=0, pool="lab"):
    """A cluster row with `nodes` node rows; returns the node ids."""
    now = utcnow()
    with store.session() as s:
        s.add(
            Cluster(
                id=cluster_id,
                name=cluster_id,
                owner_id=1,
                state="launching",
                document="",
                pool_name=pool,
                lease_start=now,
                lease_end=now + timedelta(hours=1),
            )
        )
        ids = [f"{cluster_id}-w{i}" for i in range(nodes)]
        for i, ws_id in enumerate(ids):
            s.add(
                Node(
                    id=ws_id,
                    cluster_id=cluster_id,
                    name=f"worker-{i}",
                    group="worker",
                    index=i,
                    host_name=f"{pool}-host",
                    image="debian",
                    cores=1,
                    memory_mib=512,
                    state="pending",
                )
            )
    return ids


def subnet_for(store, pool_name, cluster_id, in_use=()):
    with store.session() as s:
        return allocate_subnet(s, s.get(Pool, pool_name), cluster_id, in_use)


def addresses_for(store, pool_name, subnet, node_ids):
    with store.session() as s:
        return allocate_addresses(s, s.get(Pool, pool_name), subnet, node_ids)


# --- subnets ---------------------------------------------------------------------------


def test_no_cluster_is_given_a_subnet_its_hosts_route_already(store):
    pool = make_pool(store, "10.9.0.0/22", 24)
    routed = [ipaddress.ip_network("10.9.0.0/24"), ipaddress.ip_network("10.9.1.128/25")]
    make_cluster(store, "c1")
    assert subnet_for(store, pool, "c1", routed) == "10.9.2.0/24"
    make_cluster(store, "c2")
    everything = [ipaddress.ip_network("10.9.0.0/16")]
    with pytest.raises(CapacityError, match="routed on its hosts"):
        subnet_for(store, pool, "c2", everything)


def test_each_cluster_gets_its_own_subnet_inside_the_range(store):
    pool = make_pool(store, "10.9.0.0/22", 24)
    subnets = []
    for cluster_id in ("c1", "c2", "c3"):
        make_cluster(store, cluster_id)
        subnets.append(subnet_for(store, pool, cluster_id))
    assert len(set(subnets)) == 3
    networks = [ipaddress.ip_network(n) for n in subnets]
    assert all(n.prefixlen == 24 for n in networks)
    assert all(n.subnet_of(ipaddress.ip_network("10.9.0.0/22")) for n in networks)
    assert not any(a.overlaps(b) for a in networks for b in networks if a is not b)


def test_subnets_run_out_with_a_capacity_error(store):
    pool = make_pool(store, "10.9.0.0/23", 24)  # room for two clusters
    for cluster_id in ("c1", "c2", "c3"):
        make_cluster(store, cluster_id)
    subnet_for(store, pool, "c1")
    subnet_for(store, pool, "c2")
    with pytest.raises(CapacityError) as caught:
        subnet_for(store, pool, "c3")
    assert "10.9.0.0/23" in caught.value.message
    assert caught.value.details["pool"] == pool


def test_a_released_subnet_is_handed_out_again(store):
    pool = make_pool(store, "10.9.0.0/23", 24)
    for cluster_id in ("c1", "c2", "c3"):
        make_cluster(store, cluster_id)
    first = subnet_for(store, pool, "c1")
    subnet_for(store, pool, "c2")
    with store.session() as s:
        release_subnet(s, "c1")
    assert subnet_for(store, pool, "c3") == first


def test_pools_hand_out_subnets_independently(store):
    make_pool(store, "10.9.0.0/24", 24, name="a")
    make_pool(store, "10.9.0.0/24", 24, name="b")
    make_cluster(store, "ca", pool="a")
    make_cluster(store, "cb", pool="b")
    assert subnet_for(store, "a", "ca") == subnet_for(store, "b", "cb") == "10.9.0.0/24"


# --- addresses -------------------------------------------------------------------------


def test_addresses_are_distinct_inside_the_subnet_and_never_the_gateway(store):
    pool = make_pool(store, "10.9.0.0/16", 24)
    ids = make_cluster(store, "c1", nodes=20)
    subnet = subnet_for(store, pool, "c1")
    addresses = addresses_for(store, pool, subnet, ids)
    assert sorted(addresses) == sorted(ids)
    values = list(addresses.values())
    assert len(set(values)) == len(values)
    assert gateway_of(subnet) not in values
    network = ipaddress.ip_network(subnet)
    assert all(ipaddress.ip_address(a) in network for a in values)
    assert network.broadcast_address not in {ipaddress.ip_address(a) for a in values}


def test_later_allocations_do_not_reuse_addresses(store):
    pool = make_pool(store, "10.9.0.0/16", 24)
    ids = make_cluster(store, "c1", nodes=6)
    subnet = subnet_for(store, pool, "c1")
    first = addresses_for(store, pool, subnet, ids[:3])
    second = addresses_for(store, pool, subnet, ids[3:])
    assert not set(first.values()) & set(second.values())
    assert gateway_of(subnet) not in second.values()


def test_a_full_subnet_raises_a_capacity_error_and_keeps_nothing(store):
    # a /29 has six host addresses; the gateway takes one, leaving five
    pool = make_pool(store, "10.9.0.0/16", 29)
    ids = make_cluster(store, "c1", nodes=6)
    subnet = subnet_for(store, pool, "c1")
    with pytest.raises(CapacityError) as caught:
        addresses_for(store, pool, subnet, ids)
    assert subnet in caught.value.message
    # the failed request left no address behind: five still fit
    five = addresses_for(store, pool, subnet, ids[:5])
    assert len(set(five.values())) == 5
    assert gateway_of(subnet) not in five.values()
    with pytest.raises(CapacityError):
        addresses_for(store, pool, subnet, ids[5:])


def test_a_released_address_is_handed_out_again(store):
    pool = make_pool(store, "10.9.0.0/16", 29)
    ids = make_cluster(store, "c1", nodes=6)
    subnet = subnet_for(store, pool, "c1")
    five = addresses_for(store, pool, subnet, ids[:5])
    with store.session() as s:
        release_address(s, ids[2])
    sixth = addresses_for(store, pool, subnet, ids[5:])
    assert sixth == {ids[5]: five[ids[2]]}


# --- the keys --------------------------------------------------------------------------


def test_the_store_refuses_one_address_for_two_workspaces(store):
    pool = make_pool(store)
    ids = make_cluster(store, "c1", nodes=2)
    with store.session() as s:
        s.add(AddressAllocation(pool_name=pool, address="10.9.0.2", node_id=ids[0]))
    with pytest.raises(IntegrityError), store.session() as s:
        s.add(AddressAllocation(pool_name=pool, address="10.9.0.2", node_id=ids[1]))
    with store.session() as s:
        rows = s.scalars(select(AddressAllocation)).all()
    assert [(r.address, r.node_id) for r in rows] == [("10.9.0.2", ids[0])]


def test_the_store_refuses_two_addresses_for_one_workspace(store):
    pool = make_pool(store)
    ids = make_cluster(store, "c1", nodes=1)
    with store.session() as s:
        s.add(AddressAllocation(pool_name=pool, address="10.9.0.2", node_id=ids[0]))
    with pytest.raises(IntegrityError), store.session() as s:
        s.add(AddressAllocation(pool_name=pool, address="10.9.0.3", node_id=ids[0]))


def test_the_store_refuses_one_subnet_for_two_clusters(store):
    pool = make_pool(store)
    make_cluster(store, "c1")
    make_cluster(store, "c2")
    with store.session() as s:
        s.add(SubnetAllocation(pool_name=pool, subnet="10.9.1.0/24", cluster_id="c1"))
    with pytest.raises(IntegrityError), store.session() as s:
        s.add(SubnetAllocation(pool_name=pool, subnet="10.9.1.0/24", cluster_id="c2"))


def test_the_store_refuses_an_address_for_an_unknown_workspace(store):
    pool = make_pool(store)
    with pytest.raises(IntegrityError), store.session() as s:
        s.add(AddressAllocation(pool_name=pool, address="10.9.0.2", node_id="nobody"))
