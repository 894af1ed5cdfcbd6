"""Nimbus cluster.xml documents run as Nimbus ran them (issue 20), with a warning wherever
corral drops or ignores what a document says; YAML documents stay as strict as before."""

from __future__ import annotations

import pytest
from inprocess import admin_token, api

from corral.broker.peers import peer_of
from corral.broker.views import build_view
from corral.document import (
    ClusterDocument,
    parse_document,
    parse_yaml,
)
from corral.errors import DocumentError, Problem
from corral.store.models import Node


def refused(text: str) -> list[Problem]:
    with pytest.raises(DocumentError) as caught:
        parse_document(text, "test")
    return caught.value.problems


GROUP_DATA = """\
image: i
data: {site: lab, dataset: s3://run-42}
nodes:
  - group: head
    data: {site: head-room}
  - group: worker
    count: 2
"""


def test_yaml_group_data_survive_a_round_trip():
    doc = parse_yaml(GROUP_DATA)

    assert doc.nodes[0].data == {"site": "head-room"} and doc.nodes[1].data == {}
    assert doc.to_dict()["nodes"][0]["data"] == {"site": "head-room"}
    assert "data" not in doc.to_dict()["nodes"][1]  # stored documents keep their form
    assert ClusterDocument.from_json(doc.to_json()) == doc


def test_group_data_names_follow_the_data_name_rule_with_their_line():
    (problem,) = refused(GROUP_DATA.replace("{site: head-room}", "{'no good': x}"))
    assert problem.field == "nodes[0].data.no good" and problem.line == 5


def test_group_data_count_toward_the_documents_byte_limit():
    half = "x" * (40 * 1024)
    text = f"image: i\ndata: {{a: {half}}}\nnodes:\n  - group: g\n    data: {{b: {half}}}\n"
    (problem,) = refused(text)
    assert (problem.field, problem.line) == ("nodes[0].data", 5)
    assert "more than the limit of 65536" in problem.message
    # each alone is within the limit
    parse_yaml(text.replace("    data: {b: " + half + "}\n", ""))
    parse_yaml(text.replace("data: {a: " + half + "}\n", ""))


def test_group_data_are_bounded_in_items_like_the_documents():
    items = ", ".join(f"k{n}: v" for n in range(257))
    (problem,) = refused(f"image: i\nnodes:\n  - group: g\n    data: {{{items}}}\n")
    assert problem.field == "nodes[0].data" and "more than the limit of 256" in problem.message


def test_a_node_view_gives_the_documents_data_and_its_own_groups(make_service):
    service = make_service()
    client = api(service, admin_token(service))
    response = client.post("/v1/clusters", json={"document": GROUP_DATA})
    assert response.status_code == 201, response.text
    snapshot = service.snapshots.get(response.json()["id"])
    with service.store.session() as session:
        nodes = [peer_of(n) for n in session.query(Node).filter_by(cluster_id=snapshot.cluster_id)]

    views = {p.name: build_view(snapshot, p, None) for p in nodes}
    assert views["head-0"].data == {"site": "head-room", "dataset": "s3://run-42"}
    assert views["worker-1"].data == {"site": "lab", "dataset": "s3://run-42"}
