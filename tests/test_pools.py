"""A service with several pools: each cluster runs in the pool its document, its launch or
the site's default chooses, and every backend call goes through that pool."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from inprocess import admin_token, api, wait_for
from served import ServedCorral, client_env, corral, fake_machines

from corral.backends import registry
from corral.backends.base import Capability, ImageRef, Machine, NodeSpec, Placement
from corral.backends.fake import FakeBackend
from corral.errors import ConflictError
from corral.service.config import PoolConfig, ServiceConfig
from corral.service.config_file import read_config_file
from corral.service.observation import Observer
from corral.service.pools import Pools
from corral.service.process import Service
from corral.store.models import AddressAllocation, Cluster, Node, SubnetAllocation

SMALL = "image: debian-12\nnodes: [{group: head}, {group: worker, count: 2}]\n"


def two_pools(**second: object) -> tuple[PoolConfig, PoolConfig]:
    fast = {"boot_delay": "0.05"}
    return (
        PoolConfig("local", "fake", fast, "10.190.0.0/16"),
        PoolConfig("spare", "fake", fast, "10.191.0.0/16", **second),
    )


def machines_of(service, pool: str) -> set[str]:
    return {m.node_id for m in service.pools.get(pool).backend.list_machines()}


def launched(client, text: str = SMALL, **body) -> dict:
    created = client.post("/v1/clusters", json={"document": text, **body})
    assert created.status_code == 201, created.text
    cluster = created.json()
    wait_for(lambda: client.get(f"/v1/clusters/{cluster['id']}").json()["state"] == "ready")
    return client.get(f"/v1/clusters/{cluster['id']}").json()


def test_clusters_go_to_the_pool_their_document_or_launch_names_else_the_default(make_service):
    service = make_service(pools=two_pools(), default_pool="spare")
    client = api(service, admin_token(service))

    by_default = launched(client)
    by_document = launched(client, "pool: local\n" + SMALL)
    by_launch = launched(client, "pool: local\n" + SMALL, pool="spare")

    assert (by_default["pool"], by_document["pool"], by_launch["pool"]) == (
        "spare",
        "local",
        "spare",
    )
    ids = {c["id"]: {n["id"] for n in c["nodes"]} for c in (by_default, by_document, by_launch)}
    assert machines_of(service, "spare") == ids[by_default["id"]] | ids[by_launch["id"]]
    assert machines_of(service, "local") == ids[by_document["id"]]
    # each cluster's addresses come from its own pool's range
    assert by_default["subnet"].startswith("10.191.")
    assert by_document["subnet"].startswith("10.190.")
    listed = {c["id"]: c["pool"] for c in client.get("/v1/clusters").json()}
    assert listed == {c["id"]: c["pool"] for c in (by_default, by_document, by_launch)}
    health = client.get("/v1/health").json()
    assert [(p["name"], p["default"]) for p in health["pools"]] == [
        ("local", False),
        ("spare", True),
    ]


def test_a_destroyed_cluster_is_removed_through_its_own_pool(make_service):
    service = make_service(pools=two_pools())
    client = api(service, admin_token(service))
    cluster = launched(client, pool="spare")
    assert machines_of(service, "spare")
    assert client.delete(f"/v1/clusters/{cluster['id']}").status_code in (200, 202, 204)
    wait_for(lambda: client.get(f"/v1/clusters/{cluster['id']}").json()["state"] == "terminated")
    assert machines_of(service, "spare") == set() and machines_of(service, "local") == set()


def test_a_launch_into_a_pool_the_service_has_not_is_refused_and_creates_nothing(make_service):
    service = make_service(pools=two_pools())
    client = api(service, admin_token(service))
    refused = client.post("/v1/clusters", json={"document": SMALL, "pool": "elsewhere"})
    assert refused.status_code == 404
    assert refused.json()["details"]["pool"] == "elsewhere"
    assert "local, spare" in refused.json()["message"]
    with service.store.session() as session:
        assert session.query(Cluster).count() == 0


def test_a_pool_refuses_clusters_past_its_node_limit(make_service):
    service = make_service(pools=two_pools(max_nodes=4))
    client = api(service, admin_token(service))
    launched(client, pool="spare")  # 3 of 4
    refused = client.post("/v1/clusters", json={"document": SMALL, "pool": "spare"})
    assert refused.status_code == 409, refused.text
    assert "pool spare runs 3 of its 4 nodes" in refused.json()["message"]
    with service.store.session() as session:
        assert session.query(Node).count() == 3
    launched(client, pool="local")  # the other pool has no such limit


def test_a_machine_no_record_owns_is_removed_from_the_pool_that_runs_it(make_service):
    service = make_service(pools=two_pools())
    spare = service.pools.get("spare").backend
    stray = NodeSpec("n-stray", "c-none", "stray-0", ImageRef("x"), 1, 64)
    spare.boot(stray, Placement("spare"))  # behind the service's back
    wait_for(lambda: spare.describe("n-stray") is None)


class _Counting(FakeBackend):
    """A fake whose listings are counted and which may be listed once a minute."""

    observe_every = 60.0

    def __init__(self) -> None:
        super().__init__(boot_delay=0)
        self.listings = 0

    def list_machines(self) -> list[Machine]:
        self.listings += 1
        return super().list_machines()


def test_a_backend_is_listed_at_its_own_pace_and_a_stale_listing_never_says_gone(tmp_path):
    config = ServiceConfig(data_dir=tmp_path, pools=two_pools())
    paced, free = _Counting(), _Counting()
    free.observe_every = 0.0
    pools = Pools(config, {"local": paced, "spare": free})
    now = [0.0]
    observer = Observer(pools, clock=lambda: now[0])

    first = observer.observe()
    now[0] = 30.0
    second = observer.observe()
    now[0] = 61.0
    third = observer.observe()

    assert paced.listings == 2 and free.listings == 3
    assert [o["local"].fresh for o in (first, second, third)] == [True, False, True]
    assert all(o["spare"].fresh for o in (first, second, third))


def test_a_stale_listing_leaves_a_node_it_does_not_show_alone(make_service):
    paced = _Counting()
    service = make_service(pools=two_pools(), backends={"spare": paced})
    client = api(service, admin_token(service))
    created = client.post("/v1/clusters", json={"document": SMALL, "pool": "spare"})
    assert created.status_code == 201, created.text
    cluster_id = created.json()["id"]

    def states() -> set[str]:
        return {n["state"] for n in client.get(f"/v1/clusters/{cluster_id}").json()["nodes"]}

    # the pool was listed before its nodes booted, and may not be listed again for a
    # minute: its nodes are not lost for being absent from that listing
    wait_for(lambda: states() == {"booting"})
    time.sleep(0.5)  # ten ticks
    assert states() == {"booting"}
    assert paced.listings == 1


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_the_configuration_file_gives_pools_hosts_limits_and_the_default(tmp_path):
    config = ServiceConfig(data_dir=tmp_path)
    read_config_file(
        write(
            tmp_path / "corral.yaml",
            """
default_pool: scale
pools:
  - name: local
    backend: fake
  - name: scale
    backend: fake
    options: {boot_delay: 0.5, state_file: ""}
    address_range: 10.181.0.0/16
    subnet_prefix: 26
    hosts: [{name: scale-a, cores: 64, memory: 256GiB}]
    max_nodes: 500
""",
        ),
        config,
    )
    local, scale = config.pool_configs()
    assert config.default_pool_name == "scale"
    assert (local.name, local.backend, local.hosts) == ("local", "fake", ())
    assert scale.options == {"boot_delay": "0.5", "state_file": ""}
    assert (scale.address_range, scale.subnet_prefix, scale.max_nodes) == (
        "10.181.0.0/16",
        26,
        500,
    )
    assert [(h.name, h.cores, h.memory_mib) for h in scale.hosts] == [("scale-a", 64, 262144)]


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("pools: []\n", "pools"),
        ("pools: [{name: a, backend: vmware}]\n", "pools.0.backend"),
        ("pools: [{name: a, backend: fake, colour: red}]\n", "pools.0.colour"),
        ("pools: [{name: a, backend: fake, address_range: 10.0.0.0/33}]\n", "address_range"),
        ("pools: [{name: a, backend: fake, subnet_prefix: 12}]\n", "subnet_prefix"),
        ("pools: [{name: 'a b', backend: fake}]\n", "pools.0.name"),
        ("pools: [{name: a, backend: fake}, {name: a, backend: fake}]\n", "same name"),
        ("default_pool: b\npools: [{name: a, backend: fake}]\n", "default_pool"),
        (
            "pools: [{name: a, backend: fake, hosts: [{name: h, cores: 0, memory: 1G}]}]\n",
            "pools.0.hosts.0.cores",
        ),
        ("pools: &a [*a]\n", "not a valid configuration file"),
    ],
)
def test_a_wrong_configuration_file_is_refused_naming_the_field(tmp_path, text, named):
    path = write(tmp_path / "corral.yaml", text)
    with pytest.raises(ValueError, match="corral.yaml") as refused:
        read_config_file(path, ServiceConfig(data_dir=tmp_path))
    assert named in str(refused.value)


class _WithSecret(FakeBackend):
    name = "with-secret"
    secret_options = frozenset({"secret_key"})

    @classmethod
    def from_options(cls, options, data_dir):
        return cls(boot_delay=float(options.get("boot_delay", "0")))


def test_secret_options_never_reach_the_log(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(registry.BACKENDS, "with-secret", f"{__name__}:_WithSecret")
    pool = PoolConfig("cloud", "with-secret", {"secret_key": "s3cr3t-v4lue", "region": "x"})
    assert "s3cr3t" not in repr(pool)
    assert pool.shown_options() == {"secret_key": "<secret>", "region": "x"}
    config = ServiceConfig(data_dir=tmp_path, pools=(pool,))
    assert "s3cr3t" not in repr(config)
    pools = Pools(config)
    assert not any("s3cr3t" in line for line in pools.describe())
    assert "secret_key" in pools.describe()[0]


def test_corral_serve_with_a_configuration_file_places_and_lists_by_pool(tmp_path):
    config = write(
        tmp_path / "corral.yaml",
        """
default_pool: b
pools:
  - {name: a, backend: fake, options: {boot_delay: 0.05}, address_range: 10.192.0.0/16}
  - {name: b, backend: fake, options: {boot_delay: 0.05}, address_range: 10.193.0.0/16}
""",
    )
    cluster_file = write(tmp_path / "small.yaml", SMALL)
    with ServedCorral(tmp_path / "svc", "--config", str(config)) as served:
        env = served.env()
        ran = [
            corral("run", "--cluster", str(cluster_file), "--json", *extra, env=env)
            for extra in ((), ("--pool", "a"))
        ]
        for result in ran:
            assert result.returncode == 0, result.stderr
        pools = [json.loads(r.stdout)["pool"] for r in ran]
        assert pools == ["b", "a"]
        listed = json.loads(corral("list", "--json", env=env).stdout)
        assert sorted(c["pool"] for c in listed) == ["a", "b"]
        table = corral("list", env=env).stdout.splitlines()
        assert table[0].split()[:5] == ["ID", "NAME", "OWNER", "STATE", "POOL"]
        assert sorted(line.split()[4] for line in table[1:]) == ["a", "b"]
        status = json.loads(
            corral("status", json.loads(ran[1].stdout)["id"], "--json", env=env).stdout
        )
        assert status["pool"] == "a"
        # each pool keeps its machines apart: pool a's in a directory of its own
        assert len(fake_machines(served.data_dir / "pools" / "a")) == 3
        assert len(fake_machines(served.data_dir / "pools" / "b")) == 3


def test_corral_serve_refuses_a_configuration_file_with_backend_flags(tmp_path):
    config = write(tmp_path / "corral.yaml", "pools: [{name: a, backend: fake}]\n")
    serving = ("serve", "--data-dir", str(tmp_path / "svc"), "--config", str(config))
    result = corral(*serving, "--backend", "fake", env=client_env(tmp_path))
    assert result.returncode != 0
    assert "with --config, the file describes every pool" in result.stderr


def test_a_pool_whose_backend_places_machines_itself_gets_no_subnet_and_keeps_its_addresses(
    make_service,
):
    cloud = PoolConfig("cloud", "fake", {"boot_delay": "0.05", "places_itself": "true"})
    service = make_service(pools=(two_pools()[0], cloud))
    client = api(service, admin_token(service))
    cluster = launched(client, pool="cloud")

    assert cluster["subnet"] is None
    addresses = {n["name"]: n["address"] for n in cluster["nodes"]}
    machines = {m.node_id: m.address for m in service.pools.get("cloud").backend.list_machines()}
    assert sorted(addresses.values()) == sorted(machines.values())
    assert all(a.startswith("198.18.") for a in addresses.values())
    with service.store.session() as session:
        assert session.query(SubnetAllocation).count() == 0
        assert session.query(AddressAllocation).count() == 0
    events = client.get(f"/v1/clusters/{cluster['id']}/events").json()
    assert any("pool cloud gives its address" in e["reason"] for e in events)


def test_an_address_a_backend_reports_later_is_recorded_once_it_is_seen(make_service):
    # the machine's address is known only once it runs (as on a cloud): the boot returns
    # none, and the engine takes it from the listing
    class LateAddresses(FakeBackend):
        def boot(self, spec, placement):
            machine = super().boot(spec, placement)
            return Machine(machine.node_id, machine.state, machine.host)

    late = LateAddresses(boot_delay=0.05, places_itself=True)
    cloud = PoolConfig("cloud", "fake", {"places_itself": "true"})
    service = make_service(pools=(two_pools()[0], cloud), backends={"cloud": late})
    client = api(service, admin_token(service))
    cluster = launched(client, pool="cloud")
    addresses = sorted(n["address"] for n in cluster["nodes"])
    assert addresses == sorted(m.address for m in late.list_machines())
    assert all(a.startswith("198.18.") for a in addresses)


def test_a_service_that_cannot_start_closes_the_backends_it_built(tmp_path):
    class Closing(FakeBackend):
        closed = False

        def close(self) -> None:
            self.closed = True

    local, spare = Closing(boot_delay=0), Closing(boot_delay=0)
    spare.capabilities = spare.capabilities | {Capability.GATEWAY_SERVICES}
    config = ServiceConfig(
        data_dir=tmp_path,
        pools=two_pools(),
        broker_listen="127.0.0.1:1",  # where no node of a bridge could reach it
    )
    with pytest.raises(ValueError, match="pool spare: .* must listen on all addresses"):
        Service(config, backends={"local": local, "spare": spare})
    assert local.closed and spare.closed
    Service(ServiceConfig(data_dir=tmp_path, pools=two_pools(), listen="127.0.0.1:1")).stop()


def test_a_service_refuses_to_start_without_a_pool_its_live_clusters_run_in(make_service, tmp_path):
    service = make_service(pools=two_pools(), data_dir=tmp_path / "svc")
    client = api(service, admin_token(service))
    launched(client, pool="spare")
    make_service.stop(service)
    with pytest.raises(ConflictError, match="pool spare runs 1 live cluster"):
        make_service(pools=two_pools()[:1], data_dir=tmp_path / "svc")
