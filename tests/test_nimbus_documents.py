"""Nimbus cluster.xml documents run as Nimbus ran them (issue 20), with a warning wherever
corral drops or ignores what a document says; YAML documents stay as strict as before."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from inprocess import admin_token, api
from served import ServedCorral, client_env, corral

from corral.broker.peers import peer_of
from corral.broker.requirements import blocked_by_group, live_providers
from corral.broker.views import build_view
from corral.document import (
    ClusterDocument,
    convert_cluster_xml,
    load_with_warnings,
    name_from_file,
    parse_document,
    parse_with_warnings,
    parse_yaml,
)
from corral.errors import DocumentError, Problem
from corral.store.models import Node


def converted(text: str) -> tuple[ClusterDocument, list[Problem]]:
    return convert_cluster_xml(text, "test.xml")


def refused(text: str) -> list[Problem]:
    with pytest.raises(DocumentError) as caught:
        parse_document(text, "test")
    return caught.value.problems


def line_of(text: str, fragment: str) -> int:
    (line,) = [n for n, content in enumerate(text.splitlines(), 1) if fragment in content]
    return line


# Nimbus's base-cluster.xml: both workspaces want a login, the head first; the head also
# requires a role nothing provides, as in the zero-to-cloud sample.
BASE_CLUSTER = """\
<cluster xmlns="http://www.globus.org/2008/06/workspace/metadata/logistics">
  <workspace>
    <name>head-node</name>
    <image>base-cluster-01.gz</image>
    <quantity>1</quantity>
    <nic wantlogin="true">public</nic>
    <ctx>
      <provides><identity/><role>torqueserver</role></provides>
      <requires><identity/>
        <role name="storage" hostname="true"/>
        <role name="torqueclient" hostname="true" pubkey="true"/>
      </requires>
    </ctx>
  </workspace>
  <workspace>
    <name>compute-nodes</name>
    <image>base-cluster-01.gz</image>
    <quantity>2</quantity>
    <nic wantlogin="true">public</nic>
    <ctx>
      <provides><identity/><role>torqueclient</role></provides>
      <requires><identity/><role name="torqueserver"/></requires>
    </ctx>
  </workspace>
</cluster>
"""


# -- 1. roles that nothing provides -------------------------------------------------------


def test_a_role_nothing_provides_is_dropped_from_its_workspace_with_a_warning():
    doc, warnings = converted(BASE_CLUSTER)

    head, compute = doc.nodes
    assert [r.role for r in head.requires] == ["torqueclient"]
    assert [r.role for r in compute.requires] == ["torqueserver"]
    (dropped,) = [w for w in warnings if "storage" in w.message]
    assert dropped.line == line_of(BASE_CLUSTER, 'name="storage"')
    assert dropped.field == "workspace[0].ctx.requires.role[0]"
    assert "'head-node'" in dropped.message and "provided by no workspace" in dropped.message


def test_a_workspace_whose_only_requirement_nobody_provides_is_not_blocked():
    text = BASE_CLUSTER.replace('<role name="torqueclient" hostname="true" pubkey="true"/>', "")
    doc, _ = converted(text)

    # the broker's rule: with no node registered yet, the head waits for nothing
    blocked = blocked_by_group(doc, live_providers([], doc))
    assert blocked == {"head-node": [], "compute-nodes": ["torqueserver"]}


def test_a_requirement_kept_after_a_dropped_one_is_named_by_its_own_element():
    text = BASE_CLUSTER.replace('name="torqueclient"', 'name="not a role"')
    (problem,) = refused(text)
    assert problem.field == "workspace[0].ctx.requires.role[1]"
    assert problem.line == line_of(text, "not a role")


def test_yaml_still_refuses_a_role_nothing_provides():
    text = "image: i\nnodes:\n  - group: head\n    requires: [storage]\n"
    (problem,) = refused(text)
    assert (problem.field, problem.line) == ("nodes[0].requires[0]", 4)
    assert "no group provides it" in problem.message
    assert parse_with_warnings(text.replace("[storage]", "[]")).warnings == ()


# -- 2. <active> and <deploy> -------------------------------------------------------------


def test_active_and_deploy_are_ignored_with_a_warning_each():
    text = BASE_CLUSTER.replace(
        "    <quantity>2</quantity>\n",
        "    <quantity>2</quantity>\n    <active>true</active>\n"
        "    <deploy><duration>60</duration></deploy>\n",
    )
    doc, warnings = converted(text)

    assert doc.nodes[1].count == 2
    ignored = {w.field: w for w in warnings if "is ignored:" in w.message and "<" in w.message}
    assert set(ignored) == {"workspace[1].active", "workspace[1].deploy"}
    assert ignored["workspace[1].active"].line == line_of(text, "<active>")
    assert ignored["workspace[1].deploy"].line == line_of(text, "<deploy>")


def test_thousands_of_warnings_show_as_the_first_few_and_a_count():
    many = "<active>true</active>" * 5000
    _, warnings = converted(BASE_CLUSTER.replace("<quantity>1</quantity>", many))
    assert len(warnings) == 20
    assert warnings[-1] == Problem("", "... and 4983 more")  # 5002 warnings, 19 shown


def test_repeats_of_one_data_name_take_the_next_numbers():
    repeats = '<data name="x">v</data>' * 250
    doc, _ = converted(REPEATED.replace('<data name="users">bob</data>', repeats))
    assert doc.nodes[0].data["x.250"] == "v" and len(doc.nodes[0].data) == 250 + 3


def test_fifteen_thousand_repeats_of_one_data_name_are_refused_quickly():
    repeats = '<data name="x"/>' * 15000
    started = time.monotonic()
    problems = refused(REPEATED.replace('<data name="users">bob</data>', repeats))
    assert time.monotonic() - started < 5  # each repeat tries each number once
    assert "more than the limit of 256" in problems[0].message


def test_other_unknown_workspace_elements_are_still_refused():
    text = BASE_CLUSTER.replace("<quantity>2</quantity>", "<quantity>2</quantity><color/>")
    (problem,) = refused(text)
    assert problem.field == "workspace[1].color" and "unknown element" in problem.message


# -- 3. repeated data names -----------------------------------------------------------------

REPEATED = """\
<cluster>
  <workspace>
    <name>solo</name>
    <image>img</image>
    <ctx><requires>
      <data name="users">alice</data>
      <data name="users.2">explicit</data>
      <data name="users">bob</data>
      <data name="users">alice</data>
    </requires></ctx>
  </workspace>
</cluster>
"""


def test_repeated_data_names_keep_every_value_under_a_derived_name():
    doc, warnings = converted(REPEATED)

    assert doc.nodes[0].data == {
        "users": "alice",
        "users.2": "explicit",
        "users.3": "bob",
        "users.4": "alice",
    }
    again = [w for w in warnings if "given again" in w.message]
    assert [w.line for w in again] == [8, 9]
    assert "first on line 6" in again[0].message and "'users.3'" in again[0].message


def test_the_same_data_name_in_two_workspaces_is_no_repeat():
    text = BASE_CLUSTER.replace(
        '<requires><identity/><role name="torqueserver"/>',
        '<requires><identity/><role name="torqueserver"/><data name="site">compute</data>',
    ).replace("<requires><identity/>\n", '<requires><identity/><data name="site">head</data>\n')
    doc, warnings = converted(text)

    assert [g.data for g in doc.nodes] == [{"site": "head"}, {"site": "compute"}]
    assert not [w for w in warnings if "data" in w.field]


# -- 4. data per group ----------------------------------------------------------------------


def test_workspace_data_reach_only_that_group():
    text = BASE_CLUSTER.replace(
        "<requires><identity/>\n", '<requires><identity/><data name="users">alice</data>\n'
    )
    doc, _ = converted(text)

    head, compute = doc.nodes
    assert (head.data, compute.data, doc.data) == ({"users": "alice"}, {}, {})


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
    assert response.json()["warnings"] == []
    snapshot = service.snapshots.get(response.json()["id"])
    with service.store.session() as session:
        nodes = [peer_of(n) for n in session.query(Node).filter_by(cluster_id=snapshot.cluster_id)]

    views = {p.name: build_view(snapshot, p, None) for p in nodes}
    assert views["head-0"].data == {"site": "head-room", "dataset": "s3://run-42"}
    assert views["worker-1"].data == {"site": "lab", "dataset": "s3://run-42"}


# -- 5. data byte-exact ---------------------------------------------------------------------


def test_data_values_keep_their_whitespace_and_newlines():
    value = "\n  first line  \n\tsecond line\n\n"
    text = REPEATED.replace('<data name="users">alice</data>\n', "", 1).replace(
        '<data name="users.2">explicit</data>',
        f'<data name="script">{value}</data><data name="raw"><![CDATA[  <b> & \n]]></data>',
    )
    doc, _ = converted(text)

    assert doc.nodes[0].data["script"] == value
    assert doc.nodes[0].data["raw"] == "  <b> & \n"
    assert ClusterDocument.from_json(doc.to_json()).nodes[0].data["script"] == value


def test_data_holding_elements_is_refused_not_cut():
    text = REPEATED.replace(">bob<", "><b>bob</b><")
    (problem,) = refused(text)
    assert problem.line == 8 and "holds elements" in problem.message


# -- 6. the login node ----------------------------------------------------------------------


def test_the_first_workspace_that_wants_a_login_is_the_login_node():
    doc, warnings = converted(BASE_CLUSTER)

    assert [(g.group, g.login) for g in doc.nodes] == [
        ("head-node", True),
        ("compute-nodes", False),
    ]
    (ignored,) = [w for w in warnings if "wantlogin" in w.message]
    assert ignored.field == "workspace[1].nic"
    nics = [n for n, text in enumerate(BASE_CLUSTER.splitlines(), 1) if "wantlogin" in text]
    assert ignored.line == nics[1]
    assert f"(line {nics[0]})" in ignored.message
    assert "'head-node'" in ignored.message


def test_document_order_not_the_alphabet_chooses_the_login_node():
    swapped = BASE_CLUSTER.replace("head-node", "zeta").replace("compute-nodes", "alpha")
    doc, _ = converted(swapped)
    assert [g.group for g in doc.nodes if g.login] == ["zeta"]


def test_no_wantlogin_means_no_login_node():
    doc, warnings = converted(BASE_CLUSTER.replace(' wantlogin="true"', ""))
    assert not any(g.login for g in doc.nodes)
    assert not [w for w in warnings if "wantlogin" in w.message]


# -- 7. a cluster is named after its file ---------------------------------------------------


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("base-cluster.xml", "base-cluster"),
        ("/some/dir/My Run.v2.yaml", "my-run-v2"),
        ("42-nodes.xml", "nodes"),
        ("x" * 60 + ".xml", "x" * 41),
        ("a" * 40 + "--b.xml", "a" * 40),
        ("2024.xml", None),
        ("___.yaml", None),
        ("é.xml", None),
    ],
)
def test_a_name_from_a_file_follows_the_cluster_name_rule(path: str, name: str | None):
    assert name_from_file(path) == name


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedCorral]:
    with ServedCorral(tmp_path_factory.mktemp("served")) as service:
        yield service


def run_json(served: ServedCorral, path: Path, *extra: str):
    result = corral("run", "--cluster", str(path), "--no-wait", "--json", *extra, env=served.env())
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), result.stderr


def test_run_names_a_cluster_after_its_file_unless_a_name_is_given(
    served: ServedCorral, tmp_path: Path
) -> None:
    xml = tmp_path / "base-cluster.xml"
    xml.write_text(BASE_CLUSTER.replace("<quantity>2</quantity>", "<quantity>1</quantity>"))
    named = tmp_path / "other-file.yaml"
    named.write_text("name: from-yaml\nimage: i\nnodes: [{group: solo}]\n")

    launched, stderr = run_json(served, xml)
    assert launched["name"] == "base-cluster"
    # the warnings are printed before launching, and the service's answer carries them
    line = line_of(BASE_CLUSTER, 'name="storage"')
    assert f"{xml}: line {line}: warning: workspace[0].ctx.requires.role[0]: " in stderr
    assert {(w["field"], w["line"]) for w in launched["warnings"]} >= {
        ("workspace[0].ctx.requires.role[0]", line)
    }
    assert run_json(served, xml, "--name", "given")[0]["name"] == "given"
    launched, stderr = run_json(served, named)
    assert (launched["name"], launched["warnings"], stderr) == ("from-yaml", [], "")


# -- 8. the warnings channel ----------------------------------------------------------------


def test_validate_prints_warnings_to_stderr_and_in_json(tmp_path: Path) -> None:
    path = tmp_path / "base-cluster.xml"
    path.write_text(BASE_CLUSTER)
    _, warnings = converted(BASE_CLUSTER)

    shown = corral("validate", str(path), env=client_env(tmp_path))
    assert shown.returncode == 0, shown.stderr
    assert "valid: 3 node(s)" in shown.stdout
    lines = shown.stderr.splitlines()
    assert len(lines) == len(warnings) == 2
    assert all(line.startswith(f"{path}: line ") and ": warning: " in line for line in lines)

    as_json = corral("validate", str(path), "--json", env=client_env(tmp_path))
    view = json.loads(as_json.stdout)
    assert view["warnings"] == [
        {"field": w.field, "message": w.message, "line": w.line} for w in warnings
    ]
    assert [g["login"] for g in view["document"]["nodes"]] == [True, False]


def test_load_with_warnings_gives_what_load_document_gives_and_the_warnings(
    tmp_path: Path,
) -> None:
    path = tmp_path / "c.xml"
    path.write_text(BASE_CLUSTER)
    parsed = load_with_warnings(path)
    assert parsed.document == parse_document(BASE_CLUSTER)
    assert list(parsed.warnings) == converted(BASE_CLUSTER)[1]
    assert [w.line for w in parsed.warnings] == sorted(w.line or 0 for w in parsed.warnings)
