"""Overflow: a cluster runs in the first of its pools that takes it whole, says which
pools it passed over and why, and stays in its pool as it grows."""

from __future__ import annotations

from pathlib import Path

import pytest
from inprocess import admin_token, api, wait_for

from corral.backends.fake import FakeBackend
from corral.service.config import HostConfig, PoolConfig, ServiceConfig
from corral.service.config_file import read_config_file
from corral.service.pools import Pools
from corral.store.models import Cluster, Event, Node

FAST = {"boot_delay": "0.05"}
LOCAL = PoolConfig("local", "fake", FAST, "10.190.0.0/16", hosts=(HostConfig("local-a", 4, 8192),))
CLOUD = PoolConfig("cloud", "fake", FAST, "10.191.0.0/16")
CLOUD_CORES = 1024

BIG = "image: debian-12\nnodes: [{group: worker, count: 4, cores: 2, memory: 512MiB}]\n"
SMALL = "image: debian-12\nnodes: [{group: worker, count: 2, cores: 1, memory: 512MiB}]\n"
TO_CLOUD = {
    "pool": "cloud",
    "skipped": [{"pool": "local", "reason": "pool local has room for 4 of the 8 cores asked"}],
}


class _Cloud(FakeBackend):
    """A fake playing a cloud: it places its machines itself and is not limited by this
    machine when its site lists no hosts."""

    def default_capacity(self) -> tuple[int, int]:
        return CLOUD_CORES, 4 << 20


def backends() -> dict[str, FakeBackend]:
    return {
        "local": FakeBackend(boot_delay=0.05, state_file=None),
        "cloud": _Cloud(boot_delay=0.05, state_file=None, places_itself=True),
    }


@pytest.fixture
def service(make_service):
    return make_service(pools=(LOCAL, CLOUD), backends=backends())


def post(client, text: str, **body):
    return client.post("/v1/clusters", json={"document": text, **body})


def launched(client, text: str, **body) -> dict:
    answer = post(client, text, **body)
    assert answer.status_code == 201, answer.text
    return answer.json()


def events_of(client, cluster: dict, kind: str) -> list[str]:
    events = client.get(f"/v1/clusters/{cluster['id']}/events").json()
    return [e["reason"] for e in events if e["kind"] == kind]


def test_a_cluster_too_big_for_the_first_pool_goes_to_the_next_and_says_why(service):
    client = api(service, admin_token(service))

    cluster = launched(client, "pools: [local, cloud]\n" + BIG)

    assert cluster["pool"] == "cloud"
    assert cluster["placement"] == TO_CLOUD
    assert events_of(client, cluster, "placed") == [
        "placed in pool cloud: pool local has room for 4 of the 8 cores asked"
    ]
    assert {n["host"] for n in cluster["nodes"]} == {"cloud"}
    assert cluster["subnet"] is None  # the cloud gives its machines their addresses
    wait_for(lambda: client.get(f"/v1/clusters/{cluster['id']}").json()["state"] == "ready")
    cloud_machines = {m.node_id for m in service.pools.get("cloud").backend.list_machines()}
    assert cloud_machines == {n["id"] for n in cluster["nodes"]}
    assert service.pools.get("local").backend.list_machines() == []


def test_a_cluster_asking_for_a_way_out_passes_over_a_pool_that_forbids_it(make_service):
    closed = PoolConfig("local", "fake", FAST, "10.190.0.0/16", allow_outbound=False)
    service = make_service(pools=(closed, CLOUD), backends=backends())
    client = api(service, admin_token(service))

    cluster = launched(client, "pools: [local, cloud]\nnetwork: {outbound: true}\n" + SMALL)

    assert cluster["placement"] == {
        "pool": "cloud",
        "skipped": [{"pool": "local", "reason": "pool local does not allow outbound access"}],
    }


def test_a_cluster_that_fits_in_the_first_pool_stays_there(service):
    client = api(service, admin_token(service))

    cluster = launched(client, "pools: [local, cloud]\n" + SMALL)

    assert cluster["pool"] == "local"
    assert cluster["placement"] == {"pool": "local", "skipped": []}
    assert events_of(client, cluster, "placed") == []
    assert cluster["subnet"].startswith("10.190.")


def test_a_cluster_no_pool_takes_is_refused_naming_each_pool_and_creates_nothing(make_service):
    small_cloud = PoolConfig("cloud", "fake", FAST, "10.191.0.0/16", max_nodes=2)
    service = make_service(pools=(LOCAL, small_cloud), backends=backends())
    client = api(service, admin_token(service))

    refused = post(client, "pools: [local, cloud]\n" + BIG)

    assert refused.status_code == 409, refused.text
    body = refused.json()
    assert body["error"] == "no-capacity"
    assert body["message"] == (
        "no pool can take the cluster: pool local has room for 4 of the 8 cores asked; "
        "pool cloud runs 0 of its 2 nodes; 4 more do not fit"
    )
    assert [p["pool"] for p in body["details"]["pools"]] == ["local", "cloud"]
    with service.store.session() as session:
        assert session.query(Cluster).count() == 0
        assert session.query(Node).count() == 0
        assert session.query(Event).count() == 0


def test_the_documents_order_is_followed(service):
    client = api(service, admin_token(service))

    cluster = launched(client, "pools: [cloud, local]\n" + SMALL)

    assert cluster["placement"] == {"pool": "cloud", "skipped": []}


def test_a_pool_the_launch_names_overrides_the_documents_order(service):
    client = api(service, admin_token(service))

    chosen = launched(client, "pools: [cloud, local]\n" + SMALL, pool="local")
    assert chosen["placement"] == {"pool": "local", "skipped": []}

    # with one pool named there is nowhere to overflow to: its own refusal, unchanged
    refused = post(client, "pools: [local, cloud]\n" + BIG, pool="local")
    assert refused.status_code == 409, refused.text
    assert refused.json()["message"].startswith("no room for 3 of 4 node(s)")
    assert refused.json()["details"]["pool"] == "local"


def test_a_pool_in_the_order_that_is_not_configured_is_refused_naming_it(service):
    client = api(service, admin_token(service))

    refused = post(client, "pools: [local, elsewhere]\n" + SMALL)

    assert refused.status_code == 404, refused.text
    assert refused.json()["details"]["pool"] == "elsewhere"
    with service.store.session() as session:
        assert session.query(Cluster).count() == 0


def test_the_sites_overflow_order_is_the_default(make_service):
    service = make_service(pools=(LOCAL, CLOUD), backends=backends(), overflow=("local", "cloud"))
    client = api(service, admin_token(service))

    assert launched(client, BIG)["placement"] == TO_CLOUD
    assert launched(client, SMALL)["placement"] == {"pool": "local", "skipped": []}
    # a document's own order still wins over the site's
    assert launched(client, "pool: cloud\n" + SMALL)["pool"] == "cloud"


def test_without_an_order_a_cluster_uses_only_the_default_pool(service):
    client = api(service, admin_token(service))

    refused = post(client, BIG)

    assert refused.status_code == 409, refused.text
    assert refused.json()["details"]["pool"] == "local"


def test_a_pool_without_hosts_gets_its_backends_default_capacity(service):
    client = api(service, admin_token(service))

    hosts = {h["name"]: h for h in client.get("/v1/hosts").json()}

    assert hosts["cloud"]["pool"] == "cloud"
    assert hosts["cloud"]["cores"] == CLOUD_CORES
    assert hosts["local-a"]["cores"] == 4


def test_a_cluster_grows_in_its_own_pool(service):
    client = api(service, admin_token(service))
    cluster = launched(client, "pools: [local, cloud]\n" + BIG)
    wait_for(lambda: client.get(f"/v1/clusters/{cluster['id']}").json()["state"] == "ready")

    # the local pool has room for two more such nodes; they go to the cluster's pool anyway
    grown = client.post(f"/v1/clusters/{cluster['id']}/resize", json={"group": "worker", "by": 2})

    assert grown.status_code == 200, grown.text
    nodes = client.get(f"/v1/clusters/{cluster['id']}").json()["nodes"]
    hosts = {n["name"]: n["host"] for n in nodes}
    assert sorted(hosts) == [f"worker-{i}" for i in range(6)]
    assert set(hosts.values()) == {"cloud"}


def test_the_config_file_refuses_an_overflow_pool_it_does_not_configure(tmp_path: Path):
    path = tmp_path / "corral.yaml"
    path.write_text(
        "overflow: [local, nowhere]\n"
        "pools:\n"
        "  - {name: local, backend: fake}\n"
        "  - {name: cloud, backend: fake, address_range: 10.181.0.0/16}\n"
    )

    with pytest.raises(ValueError, match=r"overflow\.1: no pool named nowhere"):
        read_config_file(path, ServiceConfig())


def test_the_config_file_gives_the_overflow_order(tmp_path: Path):
    path = tmp_path / "corral.yaml"
    path.write_text(
        "overflow: [cloud, local]\n"
        "pools:\n"
        "  - {name: local, backend: fake}\n"
        "  - {name: cloud, backend: fake, address_range: 10.181.0.0/16}\n"
    )
    config = ServiceConfig()

    read_config_file(path, config)

    assert config.default_pool_order == ["cloud", "local"]


def test_pools_refuse_an_overflow_pool_that_is_not_configured(tmp_path: Path):
    config = ServiceConfig(data_dir=tmp_path, pools=(LOCAL, CLOUD), overflow=("local", "gone"))

    with pytest.raises(ValueError, match=r"overflow\.1: pool gone is not configured"):
        Pools(config, backends())
