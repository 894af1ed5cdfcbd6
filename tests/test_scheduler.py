"""Placement: every node fits, spread across hosts, all or nothing, and a useful refusal."""

from __future__ import annotations

import copy
from collections import defaultdict

import pytest

from corral.errors import CapacityError
from corral.service.scheduler import HostCapacity, NodeRequest, place

GIB = 1024


def host(name, cores=4, memory_mib=8 * GIB, pool="default", enabled=True, used=(0, 0)):
    used_cores, used_mem = used
    return HostCapacity(
        name=name,
        pool=pool,
        enabled=enabled,
        cores=cores,
        memory_mib=memory_mib,
        free_cores=cores - used_cores,
        free_memory_mib=memory_mib - used_mem,
    )


def group(name, count, cores=1, memory_mib=GIB, pool="default"):
    return [NodeRequest(f"{name}-{i}", name, pool, cores, memory_mib) for i in range(count)]


def assert_fits(placement, requests, hosts):
    """Every request placed once, on a usable host of its pool, within what that host had free."""
    assert sorted(placement) == sorted(r.node for r in requests)
    by_name = {h.name: h for h in hosts}
    used = defaultdict(lambda: [0, 0])
    for req in requests:
        target = by_name[placement[req.node]]
        assert target.pool == req.pool, (req.node, target.name)
        assert target.enabled, (req.node, target.name)
        used[target.name][0] += req.cores
        used[target.name][1] += req.memory_mib
    for name, (cores, mem) in used.items():
        assert cores <= by_name[name].free_cores, name
        assert mem <= by_name[name].free_memory_mib, name


def remaining(hosts, requests, placement):
    """The hosts as they would be after `placement` was booted."""
    after = copy.deepcopy(hosts)
    by_name = {h.name: h for h in after}
    for req in requests:
        by_name[placement[req.node]].free_cores -= req.cores
        by_name[placement[req.node]].free_memory_mib -= req.memory_mib
    return after


# --- placing ---------------------------------------------------------------------------


def test_every_node_is_placed_within_capacity():
    hosts = [
        host("a", cores=8, memory_mib=16 * GIB),
        host("b", cores=4, memory_mib=8 * GIB, used=(2, 2 * GIB)),
        host("c", cores=2, memory_mib=4 * GIB),
    ]
    requests = group("master", 1, cores=2, memory_mib=4 * GIB) + group(
        "worker", 6, cores=1, memory_mib=2 * GIB
    )
    placement = place(requests, hosts)
    assert_fits(placement, requests, hosts)


def test_equal_hosts_get_one_node_each():
    hosts = [host("h1"), host("h2"), host("h3")]
    requests = group("worker", 3, cores=1)
    placement = place(requests, hosts)
    assert sorted(placement.values()) == ["h1", "h2", "h3"]


def test_spreading_prefers_the_host_with_most_free_cores():
    hosts = [host("busy", cores=8, used=(6, 0)), host("idle", cores=8)]
    placement = place(group("worker", 2), hosts)
    assert set(placement.values()) == {"idle"}


def test_only_hosts_of_the_requested_pool_are_used():
    hosts = [
        host("big-a", cores=64, memory_mib=256 * GIB, pool="a"),
        host("b1", pool="b"),
        host("b2", pool="b"),
    ]
    requests = group("worker", 4, pool="b")
    placement = place(requests, hosts)
    assert set(placement.values()) <= {"b1", "b2"}
    assert_fits(placement, requests, hosts)


def test_room_in_another_pool_does_not_help():
    hosts = [host("big-a", cores=64, memory_mib=256 * GIB, pool="a"), host("b1", pool="b")]
    with pytest.raises(CapacityError):
        place(group("worker", 5, pool="b"), hosts)


def test_disabled_hosts_are_skipped():
    hosts = [host("off", cores=64, memory_mib=256 * GIB, enabled=False), host("on")]
    requests = group("worker", 4)
    placement = place(requests, hosts)
    assert set(placement.values()) == {"on"}
    with pytest.raises(CapacityError):
        place(group("worker", 5), hosts)


def test_a_host_short_of_memory_is_skipped_even_with_free_cores():
    hosts = [host("cores", cores=32, memory_mib=GIB), host("memory", cores=2, memory_mib=8 * GIB)]
    placement = place(group("db", 2, cores=1, memory_mib=4 * GIB), hosts)
    assert set(placement.values()) == {"memory"}


def test_no_request_places_nothing():
    assert place([], [host("h1")]) == {}


# --- all or nothing --------------------------------------------------------------------


def test_a_request_that_does_not_fit_places_nothing_and_leaves_hosts_alone():
    hosts = [host("h1", used=(1, GIB)), host("h2")]
    before = copy.deepcopy(hosts)
    with pytest.raises(CapacityError):
        place(group("worker", 8, cores=1), hosts)  # 7 cores free
    assert hosts == before


def test_a_request_that_fits_leaves_hosts_alone_too():
    hosts = [host("h1"), host("h2")]
    before = copy.deepcopy(hosts)
    place(group("worker", 8, cores=1), hosts)
    assert hosts == before


def test_refusal_states_needed_and_available_cores_and_memory():
    hosts = [
        host("h1", cores=4, memory_mib=8 * GIB),
        host("h2", cores=4, memory_mib=8 * GIB, used=(2, 4 * GIB)),
        host("elsewhere", cores=64, memory_mib=64 * GIB, pool="other"),
        host("off", cores=64, memory_mib=64 * GIB, enabled=False),
    ]
    requests = group("worker", 5, cores=2, memory_mib=3 * GIB)
    with pytest.raises(CapacityError) as caught:
        place(requests, hosts)
    error = caught.value
    assert error.details["needed"] == {"nodes": 5, "cores": 10, "memory_mib": 15 * GIB}
    # only enabled hosts of the pool count, with what they have free
    assert error.details["available"] == {"hosts": 2, "cores": 6, "memory_mib": 12 * GIB}
    assert "10 cores" in error.message and "15GiB" in error.message
    assert "6 cores" in error.message and "12GiB" in error.message
    assert "default" in error.message


def test_refusal_names_the_unplaced_nodes():
    hosts = [host("h1", cores=2, memory_mib=64 * GIB)]
    requests = group("master", 1, cores=2) + group("worker", 2, cores=1)
    with pytest.raises(CapacityError) as caught:
        place(requests, hosts)
    error = caught.value
    assert sorted(error.details["unplaced"]) == ["worker-0", "worker-1"]
    assert "worker-0" in error.message and "worker-1" in error.message
    assert "master-0" not in error.details["unplaced"]


# --- order of placement ----------------------------------------------------------------


def test_big_nodes_are_placed_before_small_ones():
    # Two 4-core hosts; one 4-core node and four 1-core nodes fit exactly, but only if the
    # big node gets a whole host before the small ones are spread across both.
    hosts = [host("h1", cores=4, memory_mib=64 * GIB), host("h2", cores=4, memory_mib=64 * GIB)]
    small = group("worker", 4, cores=1)
    big = group("master", 1, cores=4)

    # placing the small ones first, as listed, leaves no host with four free cores
    after_small = remaining(hosts, small, place(small, hosts))
    with pytest.raises(CapacityError):
        place(big, after_small)

    requests = small + big  # the small ones come first in the request
    placement = place(requests, hosts)
    assert_fits(placement, requests, hosts)
    big_host = placement["master-0"]
    assert all(placement[r.node] != big_host for r in small)


def test_ten_hosts_filled_exactly_by_several_groups():
    hosts = [host(f"h{i:02}", cores=16, memory_mib=32 * GIB) for i in range(10)]
    requests = (
        group("tiny", 40, cores=1, memory_mib=2 * GIB)
        + group("medium", 10, cores=4, memory_mib=8 * GIB)
        + group("large", 5, cores=16, memory_mib=32 * GIB)
    )
    assert sum(r.cores for r in requests) == sum(h.cores for h in hosts)
    assert sum(r.memory_mib for r in requests) == sum(h.memory_mib for h in hosts)

    placement = place(requests, hosts)
    assert_fits(placement, requests, hosts)
    assert all(h.free_cores == 0 for h in remaining(hosts, requests, placement))

    one_more = NodeRequest("tiny-40", "tiny", "default", 1, 2 * GIB)
    with pytest.raises(CapacityError) as caught:
        place([*requests, one_more], hosts)
    assert caught.value.details["unplaced"] == ["tiny-40"]


def test_a_memory_heavy_node_counts_as_big_even_with_few_cores():
    hosts = [host("h1", cores=4, memory_mib=8 * GIB), host("h2", cores=4, memory_mib=8 * GIB)]
    requests = group("a", 2, cores=2, memory_mib=GIB) + group("b", 1, cores=1, memory_mib=8 * GIB)
    placement = place(requests, hosts)
    assert_fits(placement, requests, hosts)
    assert placement["a-0"] == placement["a-1"] != placement["b-0"]
