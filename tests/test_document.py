"""Cluster documents: parsing, defaults, problems with lines, Nimbus conversion."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from corral.document import (
    ClusterDocument,
    NodeGroup,
    load_document,
    parse_cluster_xml,
    parse_document,
    parse_yaml,
    validate_document,
)
from corral.errors import DocumentError, Problem

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def problems_of(text: str, parse=parse_yaml) -> list[Problem]:
    with pytest.raises(DocumentError) as caught:
        parse(text, "test")
    return caught.value.problems


def only_problem(text: str, parse=parse_yaml) -> Problem:
    problems = problems_of(text, parse)
    assert len(problems) == 1, problems
    return problems[0]


# --- examples and defaults -------------------------------------------------------------


def test_base_cluster_example_parses():
    doc = load_document(EXAMPLES / "base-cluster.yaml")
    assert doc.name == "base-cluster"
    assert doc.lease == timedelta(hours=12)
    assert doc.policy.boot_timeout == timedelta(minutes=5)
    assert doc.policy.context_timeout == timedelta(minutes=10)
    head, worker = doc.nodes
    assert (head.group, head.count, head.login, head.memory_mib) == ("head", 1, True, 1024)
    assert head.provides == ["slurm-controller"]
    assert [r.role for r in head.requires] == ["slurm-worker"]
    assert (worker.count, worker.min, worker.min_ready) == (2, 1, 1)
    assert worker.node_names() == ["worker-0", "worker-1"]
    assert doc.total_nodes == 3


def test_defaults_applied():
    doc = parse_yaml("image: img\nnodes:\n  - group: solo\n")
    assert doc.name is None and doc.lease is None and doc.pool is None
    assert doc.policy.mode == "all-or-nothing"
    assert doc.policy.boot_timeout == timedelta(minutes=5)
    assert doc.policy.context_timeout == timedelta(minutes=10)
    assert doc.data == {}
    (group,) = doc.nodes
    assert (group.count, group.min, group.cores, group.memory_mib) == (1, None, 1, 1024)
    assert group.login is False and group.provides == [] and group.requires == []
    assert group.min_ready == 1


def test_requirement_forms():
    doc = parse_yaml(
        "image: i\n"
        "nodes:\n"
        "  - group: a\n"
        "    provides: [x]\n"
        "    requires: [x, {role: y, wait: ready}]\n"
        "  - group: b\n"
        "    provides: [y]\n"
    )
    first, second = doc.nodes[0].requires
    assert (first.role, first.wait) == ("x", "registered")
    assert (second.role, second.wait) == ("y", "ready")


def test_sizes_and_durations_are_parsed():
    doc = parse_yaml(
        "image: i\nlease: 1h30m\npolicy: {boot_timeout: 90s}\n"
        "nodes:\n  - group: a\n    memory: 1536MiB\n"
    )
    assert doc.lease == timedelta(minutes=90)
    assert doc.policy.boot_timeout == timedelta(seconds=90)
    assert doc.nodes[0].memory_mib == 1536


# --- problems and their lines --------------------------------------------------------


def test_unknown_field_reports_line_and_suggestion():
    problem = only_problem((EXAMPLES / "bad-cluster.yaml").read_text())
    assert problem.field == "nodes[1].corez"
    assert problem.line == 21
    assert "unknown field" in problem.message and "'cores'" in problem.message


def test_bad_example_through_load_document_names_path(tmp_path):
    with pytest.raises(DocumentError) as caught:
        load_document(EXAMPLES / "bad-cluster.yaml")
    assert "bad-cluster.yaml" in caught.value.message
    assert "line 21: nodes[1].corez" in caught.value.message


def test_wrong_types_point_at_their_lines():
    text = (
        "image: i\n"  # 1
        "nodes:\n"  # 2
        "  - group: a\n"  # 3
        "  - group: b\n"  # 4
        "    cores: many\n"  # 5
        "    login: perhaps\n"  # 6
        "  - group: c\n"  # 7
        "    count: 0\n"  # 8
    )
    by_field = {p.field: p for p in problems_of(text)}
    assert set(by_field) == {"nodes[1].cores", "nodes[1].login", "nodes[2].count"}
    assert by_field["nodes[1].cores"].line == 5
    assert "whole number" in by_field["nodes[1].cores"].message
    assert by_field["nodes[1].login"].line == 6
    assert by_field["nodes[2].count"].line == 8
    assert "at least 1" in by_field["nodes[2].count"].message


def test_problems_come_in_line_order():
    text = "image: i\nlease: soon\nnodes:\n  - group: a\n    cores: x\n    memory: lots\n"
    assert [p.line for p in problems_of(text)] == [2, 5, 6]


def test_missing_field_points_at_enclosing_mapping():
    problem = only_problem("image: i\nnodes:\n  - group: a\n  - count: 2\n    cores: 1\n")
    assert problem.field == "nodes[1].group"
    assert problem.line == 4
    assert "missing" in problem.message


def test_bad_size_message():
    problem = only_problem("image: i\nnodes:\n  - group: a\n    memory: 1 Gigs\n")
    assert problem.field == "nodes[0].memory"
    assert problem.line == 4
    assert problem.message.startswith("not a size: '1 Gigs'")


def test_bad_duration_message():
    problem = only_problem("image: i\npolicy:\n  context_timeout: later\nnodes: [{group: a}]\n")
    assert problem.field == "policy.context_timeout"
    assert problem.line == 3
    assert problem.message.startswith("not a duration: 'later'")


def test_bad_mode_suggests_the_right_one():
    problem = only_problem("image: i\npolicy: {mode: best-efort}\nnodes: [{group: a}]\n")
    assert problem.field == "policy.mode"
    assert "'best-effort'" in problem.message


def test_yaml_syntax_error_has_line():
    problem = only_problem("image: i\nnodes:\n  - group: a\n   count: 2\n")
    assert problem.line == 4
    assert "not valid YAML" in problem.message


@pytest.mark.parametrize("text", ["", "# only a comment\n", "- a\n- b\n", "just text\n"])
def test_empty_or_non_mapping_document_is_refused(text):
    problem = only_problem(text)
    assert problem.field == ""
    assert "empty" in problem.message or "mapping" in problem.message


def test_no_groups_refused():
    assert "at least one group" in only_problem("image: i\nnodes: []\n").message


def test_duplicate_group_refused():
    problem = only_problem("image: i\nnodes:\n  - group: a\n  - group: a\n")
    assert problem.field == "nodes[1].group"
    assert problem.line == 4
    assert "defined twice" in problem.message


def test_duplicate_yaml_key_refused():
    problem = only_problem("image: i\nnodes:\n  - group: a\n    cores: 1\n    cores: 2\n")
    assert (problem.field, problem.line) == ("nodes[0].cores", 5)


def test_missing_provider_refused():
    text = (
        "image: i\n"
        "nodes:\n"
        "  - group: head\n"
        "    provides: [slurm-controller]\n"
        "    requires: [slurm-worker]\n"
    )
    problem = only_problem(text)
    assert problem.field == "nodes[0].requires[0]"
    assert problem.line == 5
    assert "'slurm-worker' is required by group 'head' but no group provides it" in (
        problem.message
    )


def test_wait_ready_cycle_refused():
    text = (
        "image: i\n"
        "nodes:\n"
        "  - group: head\n"
        "    provides: [ctl]\n"
        "    requires: [{role: wrk, wait: ready}]\n"
        "  - group: worker\n"
        "    provides: [wrk]\n"
        "    requires: [{role: ctl, wait: ready}]\n"
    )
    problem = only_problem(text)
    assert "wait: ready cycle: head -> worker -> head" in problem.message
    assert problem.line == 5


def test_wait_ready_on_own_role_is_a_cycle():
    text = (
        "image: i\nnodes:\n  - group: mpi\n    provides: [peer]\n"
        "    requires: [{role: peer, wait: ready}]\n"
    )
    assert "cycle: mpi -> mpi" in only_problem(text).message


def test_wait_ready_without_cycle_accepted():
    text = (
        "image: i\n"
        "nodes:\n"
        "  - group: head\n"
        "    provides: [ctl]\n"
        "    requires: [wrk]\n"
        "  - group: worker\n"
        "    provides: [wrk]\n"
        "    requires: [{role: ctl, wait: ready}]\n"
    )
    doc = parse_yaml(text)
    assert doc.nodes[1].requires[0].wait == "ready"


def test_min_above_count_refused():
    problem = only_problem("image: i\nnodes:\n  - group: a\n    count: 2\n    min: 3\n")
    assert (problem.field, problem.line) == ("nodes[0].min", 5)


def test_bad_names_refused():
    text = "name: My Cluster\nimage: i\nnodes:\n  - group: Head\n    provides: ['a b']\n"
    assert [p.field for p in problems_of(text)] == [
        "name",
        "nodes[0].group",
        "nodes[0].provides[0]",
    ]


def test_image_resolution():
    doc = parse_yaml("image: base\nnodes:\n  - group: a\n  - group: b\n    image: special\n")
    assert [g.image for g in doc.nodes] == ["base", "special"]


def test_group_without_any_image_refused():
    problem = only_problem("nodes:\n  - group: a\n    image: x\n  - group: b\n    count: 2\n")
    assert (problem.field, problem.line) == ("nodes[1].image", 4)


def test_direct_construction_runs_cross_checks():
    with pytest.raises(ValueError, match="no group provides it"):
        ClusterDocument(nodes=[NodeGroup(group="a", image="i", requires=["x"])])


# --- canonical output ----------------------------------------------------------------


def test_to_yaml_round_trips():
    text = (
        "name: rt\nlease: 1d2h\nimage: base\npool: lab\n"
        "policy: {mode: best-effort, boot_timeout: 45s}\n"
        "data: {users: \"alice key\\nbob key\\n\", port: '8080'}\n"
        "nodes:\n"
        "  - {group: head, login: true, memory: 2GiB, provides: [ctl], requires: [wrk]}\n"
        "  - {group: worker, count: 3, min: 2, image: gpu, memory: 1536MiB, cores: 4,\n"
        "     provides: [wrk], requires: [{role: ctl, wait: ready}]}\n"
    )
    doc = parse_yaml(text)
    again = parse_yaml(doc.to_yaml())
    assert again == doc
    assert validate_document(json.loads(json.dumps(doc.to_dict()))) == doc


# --- Nimbus cluster.xml ---------------------------------------------------------------


def test_nimbus_example_converts():
    doc = load_document(EXAMPLES / "nimbus-cluster.xml")
    head, compute = doc.nodes
    assert (head.group, head.count, head.login, head.image) == (
        "head-node",
        1,
        True,
        "base-cluster-01.gz",
    )
    assert (compute.group, compute.count, compute.login) == ("compute-nodes", 2, False)
    assert head.provides == ["torqueserver", "nfsserver"]
    assert [r.role for r in head.requires] == ["torqueclient", "nfsclient"]
    assert [r.role for r in compute.requires] == ["torqueserver", "nfsserver"]
    assert doc.data["users"].startswith("alice ssh-ed25519")


NIMBUS = """<cluster>
  <workspace>
    <name>Compute Nodes</name>
    <image>img</image>
    <quantity>{quantity}</quantity>
    <cores>4</cores>
    <memory>2048</memory>
    <ctx><provides><identity/><role>node</role></provides>
         <requires><identity/><role name="{needs}"/></requires></ctx>
  </workspace>
</cluster>
"""


def test_nimbus_cores_memory_and_name_sanitizing():
    doc = parse_cluster_xml(NIMBUS.format(quantity=3, needs="node"), "x")
    (group,) = doc.nodes
    assert (group.group, group.count, group.cores, group.memory_mib) == (
        "compute-nodes",
        3,
        4,
        2048,
    )


def test_nimbus_bad_quantity_has_line():
    problem = only_problem(NIMBUS.format(quantity="lots", needs="node"), parse_cluster_xml)
    assert problem.line == 5
    assert "lots" in problem.message


def test_nimbus_cross_checks_apply_with_lines():
    problem = only_problem(NIMBUS.format(quantity=1, needs="nobody"), parse_cluster_xml)
    assert problem.line == 9
    assert "no group provides it" in problem.message


def test_nimbus_missing_image_refused():
    text = "<cluster>\n<workspace>\n<name>a</name>\n<quantity>1</quantity>\n</workspace>\n"
    text += "</cluster>\n"
    problem = only_problem(text, parse_cluster_xml)
    assert problem.line == 2 and "image" in problem.message


def test_malformed_xml_reports_line():
    problem = only_problem(
        "<cluster>\n  <workspace>\n    <name>a</name>\n</cluster>\n", parse_cluster_xml
    )
    assert problem.line == 4
    assert "XML" in problem.message


def test_doctype_refused():
    text = '<?xml version="1.0"?>\n<!DOCTYPE c [\n<!ENTITY e "boom">\n]>\n<cluster>&e;</cluster>'
    problem = only_problem(text, parse_cluster_xml)
    assert problem.line == 2
    assert "DOCTYPE" in problem.message


# --- loading ---------------------------------------------------------------------------


def test_parse_document_detects_xml_and_yaml():
    declared = '\n  <?xml version="1.0" encoding="ISO-8859-1"?>\n'
    xml_doc = parse_document(declared + NIMBUS.format(quantity=2, needs="node"))
    assert xml_doc.nodes[0].count == 2
    assert parse_document("image: i\nnodes: [{group: a}]\n").nodes[0].group == "a"


def test_load_document_picks_format_by_content_not_name(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text(NIMBUS.format(quantity=2, needs="node"))
    assert load_document(path).nodes[0].group == "compute-nodes"


def test_load_document_names_missing_path(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(DocumentError) as caught:
        load_document(missing)
    assert caught.value.source == str(missing)
    assert str(missing) in caught.value.problems[0].message
