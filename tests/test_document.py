"""Cluster documents: parsing, defaults, problems with lines, Nimbus conversion."""

from __future__ import annotations

import json
import time
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
        "    count: -1\n"  # 8
    )
    by_field = {p.field: p for p in problems_of(text)}
    assert set(by_field) == {"nodes[1].cores", "nodes[1].login", "nodes[2].count"}
    assert by_field["nodes[1].cores"].line == 5
    assert "whole number" in by_field["nodes[1].cores"].message
    assert by_field["nodes[1].login"].line == 6
    assert by_field["nodes[2].count"].line == 8
    assert "at least 0" in by_field["nodes[2].count"].message


AUTOSCALED = """\
image: i
nodes:
  - {group: head, provides: [ctl], requires: [w]}
  - {group: worker, count: 0, provides: [w], requires: [ctl]}
autoscale: {group: worker, max: 4, idle: 2m}
"""


def test_an_autoscaled_group_may_start_empty_and_its_roles_need_no_provider():
    doc = parse_yaml(AUTOSCALED)
    assert doc.autoscale.node_names() == ["worker-0", "worker-1", "worker-2", "worker-3"]
    assert doc.elastic_roles() == {"w"}
    assert ClusterDocument.from_json(doc.to_json()) == doc
    assert doc.to_dict()["autoscale"] == {"group": "worker", "min": 0, "max": 4, "idle": "2m"}


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        (("autoscale: {group: worker, max: 4, idle: 2m}", ""), "nodes[1].count", "at least 1"),
        (("group: worker, max", "group: nobody, max"), "autoscale.group", "no group 'nobody'"),
        (("max: 4", "min: 5, max: 4"), "autoscale.min", "larger than max"),
        (("count: 0", "count: 5"), "autoscale", "outside autoscale's min 0 and max 4"),
        (("count: 0,", "count: 1, min: 1,"), "autoscale.group", "autoscale's is its floor"),
        (("max: 4", "max: 0"), "autoscale.max", "at least 1"),
        (("max: 4", "max: 10000"), "autoscale.max", "more than the limit of 10000 nodes"),
    ],
)
def test_autoscale_is_checked_against_its_group(change, field, words):
    problems = {p.field: p.message for p in problems_of(AUTOSCALED.replace(*change))}
    assert field in problems, problems
    assert words in problems[field], problems


MARKETS = """
image: x
pools: [local, ec2]
nodes:
  - {group: head, login: true}
  - {group: worker, count: 3, market: spot, max_price: 0.02}
"""


def test_pools_in_order_and_spot_groups_round_trip():
    doc = parse_yaml(MARKETS, "test")
    assert doc.pool_order == ["local", "ec2"]
    assert (doc.nodes[1].market, doc.nodes[1].max_price) == ("spot", 0.02)
    assert doc.nodes[0].market == "on-demand"
    assert ClusterDocument.from_json(doc.to_json()) == doc


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        (("login: true}", "login: true, market: spot}"), "nodes[0].market", "stays on demand"),
        (("market: spot, ", ""), "nodes[1].max_price", "for `market: spot` groups"),
        (("max_price: 0.02", "max_price: -1"), "nodes[1].max_price", "greater than 0"),
        (("max_price: 0.02", "max_price: 1e9"), "nodes[1].max_price", "at most 10000"),
        (("market: spot", "market: cheap"), "nodes[1].market", "'on-demand' or 'spot'"),
        (("[local, ec2]", "[local, local]"), "pools[1]", "listed twice"),
        (("[local, ec2]", "[]"), "pools", "at least 1"),
        (("[local, ec2]", "[local, ec2]\npool: local"), "pools", "not both"),
        (("[local, ec2]", "[local, 'no pool!']"), "pools[1]", ""),
    ],
)
def test_pools_and_markets_are_checked_naming_the_field(change, field, words):
    problems = {p.field: p.message for p in problems_of(MARKETS.replace(*change))}
    assert field in problems, problems
    assert words in problems[field], problems


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


def test_canonical_json_round_trips():
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
    again = ClusterDocument.from_json(doc.to_json())
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
    assert head.data["users"].startswith("alice ssh-ed25519")
    assert compute.data == {} and doc.data == {}  # a workspace's data are its group's


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
    workspace = "  <workspace>\n    <name>twin</name><image>img</image>\n  </workspace>\n"
    problem = only_problem(f"<cluster>\n{workspace}{workspace}</cluster>\n", parse_cluster_xml)
    assert (problem.field, problem.line) == ("workspace[1].name", 6)
    assert "defined twice" in problem.message


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


# --- names and bounds (issue 18: one name rule, bounded input) ----------------------------


def test_a_trailing_newline_is_not_part_of_any_name():
    # `re.match(r"...$")` accepts "head\n": the rules match the whole name
    text = 'name: "base\\n"\nimage: "i\\n"\nnodes:\n  - group: "head\\n"\n    provides: ["r\\n"]\n'
    assert [p.field for p in problems_of(text)] == [
        "name",
        "image",
        "nodes[0].group",
        "nodes[0].provides[0]",
    ]


@pytest.mark.parametrize(
    ("line", "field", "says"),
    [
        ("pool: ../../x", "pool", "not a name"),
        ("image: 'debian 12;$(id)'", "image", "not a image name"),
        ("data: {'../etc/passwd': x}", "data.../etc/passwd", "not a data name"),
        ("name: " + "a" * 200_000, "name", "at most 41 characters"),
    ],
    ids=["pool", "image", "data", "long-name"],
)
def test_pools_images_and_data_names_follow_their_rules(line, field, says):
    problem = only_problem(
        f"{line}\nimage: i\nnodes: [{{group: a}}]\n".replace("image: i\n", "", 1)
    )
    assert (problem.field, problem.line) == (field, 1)
    assert says in problem.message
    assert len(problem.message) < 300  # a long name is shown cut short


def test_data_is_bounded_in_items_and_bytes():
    many = "".join(f"  k{i}: v\n" for i in range(257))
    problem = only_problem(f"image: i\nnodes: [{{group: a}}]\ndata:\n{many}")
    assert problem.field == "data" and "257 items" in problem.message and "256" in problem.message
    big = "  blob: " + "x" * (64 * 1024) + "\n"
    problem = only_problem(f"image: i\nnodes: [{{group: a}}]\ndata:\n{big}")
    assert problem.field == "data" and "65536" in problem.message


@pytest.mark.parametrize(
    ("line", "field", "says"),
    [
        ("lease: .inf", "lease", "too long"),
        ("lease: .nan", "lease", "not a duration"),
        ("lease: 1.0e+300", "lease", "too long"),
        ("lease: 99999999999999999999d", "lease", "at most 3650d"),
        ("policy: {boot_timeout: 9999999999w}", "policy.boot_timeout", "too long"),
        ("nodes: [{group: a, memory: 65TiB}]", "nodes[0].memory", "at most 64TiB"),
        ("nodes: [{group: a, count: 10001}]", "nodes[0].count", "at most 10000"),
        ("nodes: [{group: a, cores: 4097}]", "nodes[0].cores", "at most 4096"),
        ("nodes: [{group: a, memory: " + "9" * 400 + "}]", "", "at most 100"),
        ("nodes: [{group: a, count: " + ":".join(["59"] * 5000) + "}]", "", "at most 100"),
        ("nodes: [{group: a, count: !!int '" + "9" * 5000 + "'}]", "", "at most 100"),
    ],
    ids=lambda value: value[:24] if isinstance(value, str) else None,
)
def test_numbers_durations_and_sizes_are_finite_and_bounded(line, field, says):
    text = f"image: i\n{line}\n" + ("" if line.startswith("nodes") else "nodes: [{group: a}]\n")
    problem = only_problem(text)
    assert (problem.field, problem.line) == (field, 2)
    assert says in problem.message


def test_a_cluster_has_at_most_ten_thousand_nodes():
    problem = only_problem(
        "image: i\nnodes:\n  - {group: a, count: 6000}\n  - {group: b, count: 6000}\n"
    )
    assert problem.field == "nodes" and "12000 nodes" in problem.message


def test_control_characters_are_refused_with_their_line():
    problem = only_problem("image: i\nnodes: [{group: a}]\ndata: {x: 'a\x00b'}\n")
    assert problem.line == 3 and "not allowed" in problem.message
    problem = only_problem("image: i\nnodes: [{group: a}]\nname: \x1b[31mred\n")
    assert problem.line == 3


def test_a_document_over_the_size_limit_is_refused_before_it_is_read_whole(tmp_path):
    text = "image: i\nnodes: [{group: a}]\n# " + "x" * (256 * 1024) + "\n"
    assert "larger than 256 KiB" in only_problem(text, parse_document).message
    path = tmp_path / "huge.yaml"
    path.write_text(text)
    with pytest.raises(DocumentError) as caught:
        load_document(path)
    assert "262144 bytes" in caught.value.problems[0].message
    with pytest.raises(DocumentError) as caught:  # an endless file: only the bound is read
        load_document("/dev/zero")
    assert "larger than 256 KiB" in caught.value.problems[0].message


def test_a_path_with_a_nul_byte_is_a_document_error():
    with pytest.raises(DocumentError) as caught:
        load_document("cluster\x00.yaml")
    assert "cannot read" in caught.value.problems[0].message


def laughs(levels: int) -> str:
    """Nested aliases: each level stands for nine of the one before."""
    lines = [
        "image: i",
        "nodes: [{group: a}]",
        "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]",
    ]
    lines += [f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 9)}]" for n in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_alias_expansion_is_bounded_by_what_the_aliases_stand_for():
    problem = only_problem(laughs(6))  # 9**6 values, written out; 9**5 are too many
    assert problem.line == 7 and "more than 20000 values (aliases written out)" in problem.message
    long_text = "image: i\nx: &x '" + "a" * 100_000 + "'\nnodes: [{group: a}]\ny: [*x, *x, *x]\n"
    assert "characters of text" in only_problem(long_text).message
    twenty = "[" * 20 + "x" + "]" * 20
    deep = f"image: i\nnodes: [{{group: a}}]\na: &a {twenty}\nb: [[[[[[[[[[[[[*a]]]]]]]]]]]]]\n"
    assert "32 levels" in only_problem(deep).message


def test_an_alias_inside_its_own_anchor_is_refused():
    problem = only_problem("image: i\nnodes: &n [{group: a}, *n]\n")
    assert problem.line == 2 and "*n" in problem.message


@pytest.mark.parametrize(
    "text",
    [
        "nodes: " + "[" * 10_000 + "]" * 10_000 + "\n",
        "nodes: " + "{a: " * 10_000 + "1" + "}" * 10_000 + "\n",
        "".join("  " * i + f"k{i}:\n" for i in range(10_000)),
        "".join("  " * i + "-\n" for i in range(10_000)),
    ],
    ids=["lists", "mappings", "block-mappings", "block-lists"],
)
def test_nesting_ten_thousand_deep_is_refused_without_recursion(text):
    problem = only_problem(text[: 256 * 1024 - 1], parse_document)
    assert "nested more than 32 levels deep" in problem.message


def test_xml_nesting_and_size_are_bounded_too():
    deep = "<cluster>" + "<workspace>" * 10_000 + "</workspace>" * 10_000 + "</cluster>"
    assert "32 levels" in only_problem(deep, parse_cluster_xml).message
    many = "<cluster>" + "<workspace><image>i</image><x/></workspace>" * 7000 + "</cluster>"
    assert "more than 20000 elements" in only_problem(many, parse_cluster_xml).message


def test_a_document_with_thousands_of_faults_shows_the_first_few():
    text = "image: i\nnodes:\n" + "".join(f"  - {{group: g{i}, corez: 1}}\n" for i in range(3000))
    problems = problems_of(text)
    assert len(problems) == DocumentError.MAX_SHOWN
    assert problems[0].field == "nodes[0].corez" and problems[0].line == 3
    assert problems[-1].message == f"... and {3000 - DocumentError.MAX_SHOWN + 1} more"


def test_wait_ready_cycles_are_found_in_time_that_grows_with_the_document():
    # three layers of 650 groups, each group waiting for a role every group of the next
    # layer provides: 845,000 group-to-group waits from 100 KiB of text (a search per
    # group over them took 10 s; the roles' graph takes half a second)
    layers = [("a", "b", ""), ("b", "c", "b"), ("c", "", "c")]
    text = "image: i\nnodes:\n"
    for name, needs, gives in layers:
        requires = f", requires: [{{role: {needs}, wait: ready}}]" if needs else ""
        provides = f", provides: [{gives}]" if gives else ""
        text += "".join(f"  - {{group: {name}{i}{provides}{requires}}}\n" for i in range(650))
    started = time.monotonic()
    assert parse_yaml(text).total_nodes == 1950
    assert time.monotonic() - started < 5
    # c0 waits for the b layer too: each of the 650 b groups is on a cycle
    cyclic = text.replace("provides: [c]}", "provides: [c], requires: [{role: b, wait: ready}]}", 1)
    started = time.monotonic()
    problems = problems_of(cyclic)
    assert time.monotonic() - started < 5
    assert "wait: ready cycle: b0 -> c0 -> b0" in problems[0].message
    assert problems[-1].message == f"... and {650 - DocumentError.MAX_SHOWN + 1} more"
