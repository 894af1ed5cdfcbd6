"""What `corral run`, `list` and `status` say of where a cluster went and what it costs,
against a real `corral serve` with two pools: a small one without prices, and a priced
one playing a cloud."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from served import ServedCorral, corral

CONFIG = """\
overflow: [local, cloud]
pools:
  - name: local
    backend: fake
    options: {boot_delay: 0.05}
    address_range: 10.194.0.0/16
    hosts: [{name: local-a, cores: 4, memory: 8GiB}]
  - name: cloud
    backend: fake
    options: {boot_delay: 0.05, places_itself: true, price_per_core_hour: 0.0104}
    address_range: 10.195.0.0/16
    hosts: [{name: cloud-a, cores: 256, memory: 1TiB}]
"""
BIG = "image: debian-12\nnodes: [{group: worker, count: 4, cores: 2, memory: 512MiB}]\n"
SMALL = "image: debian-12\nnodes: [{group: worker, count: 2, cores: 1, memory: 512MiB}]\n"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedCorral]:
    data = tmp_path_factory.mktemp("placement")
    (data / "corral.yaml").write_text(CONFIG)
    with ServedCorral(data / "svc", "--config", str(data / "corral.yaml")) as service:
        yield service


def document(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return str(path)


def ran(result) -> str:
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout


def test_run_says_where_a_cluster_went_and_what_it_will_cost(served, tmp_path):
    result = corral("run", "--cluster", document(tmp_path, "big", BIG), env=served.env())

    ran(result)
    assert (
        "cluster big goes to pool cloud: pool local has room for 4 of the 8 cores asked"
        in result.stderr
    )
    # 8 cores at 0.0104 an hour, for the service's default lease of 2h
    assert "estimated cost: $0.0832/h, $0.17 for the 2h lease" in result.stderr


def test_run_says_nothing_of_a_cluster_that_stays_in_its_first_pool(served, tmp_path):
    result = corral("run", "--cluster", document(tmp_path, "small", SMALL), env=served.env())

    ran(result)
    assert "goes to pool" not in result.stderr
    assert "estimated cost" not in result.stderr  # the local pool has no prices


def test_run_json_carries_placement_and_estimate(served, tmp_path):
    result = corral(
        "run", "--cluster", document(tmp_path, "big-json", BIG), "--hours", "12", "--json",
        env=served.env(),
    )  # fmt: skip

    cluster = json.loads(ran(result))
    assert cluster["state"] == "ready"
    placement = cluster["placement"]
    assert placement["pool"] == "cloud"
    (skipped,) = placement["skipped"]  # the local pool's room depends on the tests before
    assert skipped["pool"] == "local"
    assert skipped["reason"].endswith("of the 8 cores asked")
    assert cluster["estimated_cost"] == {"per_hour": 0.0832, "lease": 0.9984}


def test_list_and_status_show_cost_so_far(served, tmp_path):
    launched = json.loads(
        ran(corral("run", "--cluster", document(tmp_path, "costed", BIG), "--json",
                   env=served.env()))
    )  # fmt: skip

    listed = {c["id"]: c for c in json.loads(ran(corral("list", "--json", env=served.env())))}
    status = json.loads(ran(corral("status", launched["id"], "--json", env=served.env())))

    for view in (listed[launched["id"]], status):
        assert view["hourly_cost"] == 0.0832
        assert 0 <= view["cost_so_far"] < 0.01  # a few seconds of 8 cores
    table = ran(corral("list", env=served.env())).splitlines()
    assert table[0].split()[-1] == "COST"
    (row,) = [line for line in table if line.startswith(launched["id"])]
    assert row.split()[-1].startswith("$0.0")
    assert "cost so far $0.0" in ran(corral("status", launched["id"], env=served.env()))
