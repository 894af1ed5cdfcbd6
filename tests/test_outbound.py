"""A way out for clusters that ask for it (`network: {outbound: true}`), and for no other:
the document field, the site's setting and the engine's order, in-process on the fake
backend."""

from __future__ import annotations

import pytest
from inprocess import admin_token, api, wait_for
from sqlalchemy import func, select

from corral.backends.fake import FakeBackend
from corral.document import parse_document
from corral.errors import DocumentError
from corral.service.config import PoolConfig, ServiceConfig
from corral.service.config_file import read_config_file
from corral.store.models import Cluster, Event, Node, SubnetAllocation

OUTBOUND = "image: x\nnetwork: {outbound: true}\nnodes: [{group: head}, {group: worker}]\n"
CLOSED = "image: x\nnodes: [{group: head}]\n"


# -- the document and the site ----------------------------------------------------------


def test_a_document_keeps_its_way_out_only_when_it_asks_for_one():
    asked = parse_document(OUTBOUND)
    assert asked.network.outbound
    assert asked.to_dict()["network"] == {"outbound": True}
    assert type(asked).from_json(asked.to_json()) == asked
    closed = parse_document(CLOSED)
    assert not closed.network.outbound
    assert "network" not in closed.to_dict()  # stored documents stay as they were
    with pytest.raises(DocumentError, match=r"line 2: network.outbund: unknown field"):
        parse_document("image: x\nnetwork: {outbund: true}\nnodes: [{group: head}]\n")


def test_a_site_forbids_outbound_per_pool_in_its_file(tmp_path):
    path = tmp_path / "corral.yaml"
    path.write_text(
        "pools:\n"
        "  - {name: open, backend: fake}\n"
        "  - {name: closed, backend: fake, address_range: 10.181.0.0/16, allow_outbound: false}\n"
    )
    config = ServiceConfig()
    read_config_file(path, config)
    assert [(p.name, p.allow_outbound) for p in config.pool_configs()] == [
        ("open", True),
        ("closed", False),
    ]
    assert ServiceConfig(allow_outbound=False).pool_configs()[0].allow_outbound is False


def rows(service) -> dict[str, int]:
    with service.store.session() as session:
        return {
            model.__tablename__: session.scalar(select(func.count()).select_from(model))
            for model in (Cluster, Node, Event, SubnetAllocation)
        }


def test_a_launch_asking_for_a_way_out_where_it_is_forbidden_is_refused_and_creates_nothing(
    make_service,
):
    fast = {"boot_delay": "0.05"}
    service = make_service(
        pools=(
            PoolConfig("closed", "fake", fast, "10.190.0.0/16", allow_outbound=False),
            PoolConfig("open", "fake", fast, "10.191.0.0/16"),
        )
    )
    client = api(service, admin_token(service))
    before = rows(service)
    refused = client.post("/v1/clusters", json={"document": OUTBOUND})
    assert refused.status_code == 409, refused.text
    body = refused.json()
    assert body["error"] == "refused"
    assert body["message"].startswith("network.outbound: pool closed does not allow")
    assert body["details"] == {"field": "network.outbound", "pool": "closed"}
    assert rows(service) == before
    assert service.pools.get("closed").backend.list_machines() == []
    # the same pool takes a cluster that does not ask, and another pool takes this one
    for text, pool in ((CLOSED, "closed"), (OUTBOUND, "open")):
        created = client.post("/v1/clusters", json={"document": text, "pool": pool})
        assert created.status_code == 201, created.text


class SpecsKept(FakeBackend):
    """The fake backend, keeping every NodeSpec it is asked to boot."""

    def __init__(self) -> None:
        super().__init__(boot_delay=0.05)
        self.specs = []

    def boot(self, spec, placement):
        self.specs.append(spec)
        return super().boot(spec, placement)


def test_the_engine_tells_the_backend_which_nodes_have_a_way_out(make_service):
    backend = SpecsKept()
    service = make_service(backend=backend)
    client = api(service, admin_token(service))
    launched = {}
    for text in (OUTBOUND, CLOSED):
        created = client.post("/v1/clusters", json={"document": text})
        assert created.status_code == 201, created.text
        launched[created.json()["id"]] = "network: {outbound: true}" in text
    wait_for(lambda: len(backend.specs) == 3)
    assert {(s.cluster_id, s.outbound) for s in backend.specs} == set(launched.items())
