"""Convert a Nimbus cloud-client `cluster.xml` into a cluster document.

    <cluster>
      <workspace>
        <name>head-node</name> <image>base-cluster</image> <quantity>1</quantity>
        <nic wantlogin="true">public</nic>
        <ctx>
          <provides><identity/><role>torqueserver</role></provides>
          <requires><identity/><role name="torqueclient" hostname="true" pubkey="true"/>
                    <data name="users">...</data></requires>
        </ctx>
      </workspace>
      ...
    </cluster>

Each workspace becomes a group. Optional `<cores>` and `<memory>` (MiB) are understood
too. The converted data is validated by the same path as YAML, so the same cross checks
apply and problems carry XML lines. A document runs as Nimbus ran it, and where corral
departs from what it says, the conversion returns a warning (with its line):

- a role that no workspace provides is dropped from the workspace that requires it, so
  its nodes configure as Nimbus's did, with no members for it (YAML refuses such a role);
- `<active>` and `<deploy>` are ignored;
- the login node is the first workspace with `<nic wantlogin="true">`, in document order;
  a later `wantlogin` is ignored;
- each `<data>` goes to its own workspace's group (`data` of the group), its value exactly
  as written (whitespace and newlines kept); a name given again in one workspace keeps
  every value: the first under the name, each further one under `NAME.2`, `NAME.3`, ...
  (the next number no other data of the workspace is named).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from corral import names
from corral.errors import DocumentError, Problem

from .model import ClusterDocument, check_document
from .problems import Loc, sort_problems
from .safe_xml import local_name, parse_tree

_WORKSPACE_CHILDREN = ("name", "image", "quantity", "nic", "ctx", "cores", "memory")
# Nimbus workspace settings corral has no use for: read, and ignored with a warning
_IGNORED = {
    "active": "<active> is ignored: corral starts every node it launches",
    "deploy": "<deploy> is ignored: corral takes the lease from the command line or the "
    "service, and cores and memory from <cores> and <memory>",
}


@dataclass
class _Workspace:
    """One <workspace> as read: the group's fields, and the line of each."""

    index: int
    label: str  # as the user wrote its name, for warnings
    fields: dict[str, str | int] = field(default_factory=dict)  # group, image, count, ...
    login_line: int | None = None  # of its first <nic wantlogin="true">
    provides: list[tuple[str, int]] = field(default_factory=list)  # (role, line)
    requires: list[tuple[str, int]] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)  # the index in `requires` of each one kept
    data: list[tuple[str, str, int]] = field(default_factory=list)  # (name, value, line)
    where: dict[Loc, int] = field(default_factory=dict)  # group field -> line

    @property
    def here(self) -> str:
        return f"workspace[{self.index}]"


def parse_cluster_xml(text: str, source: str = "<cluster.xml>") -> ClusterDocument:
    """Parse a Nimbus cluster.xml into a validated cluster document (its warnings dropped;
    `convert_cluster_xml` gives them). Raises DocumentError as that does."""
    return convert_cluster_xml(text, source)[0]


def convert_cluster_xml(
    text: str, source: str = "<cluster.xml>"
) -> tuple[ClusterDocument, list[Problem]]:
    """Parse a Nimbus cluster.xml; return its validated cluster document and the warnings
    of its conversion (what was dropped or ignored, each with its line), in line order.

    Raises DocumentError(source, problems) for malformed XML (with its line), a DOCTYPE
    or ENTITY declaration (refused: entity expansion is a classic XML attack), an
    unknown element, a missing image, a bad quantity, or an invalid converted document.
    """
    root, lines = parse_tree(text, source)
    problems: list[Problem] = []
    warnings: list[Problem] = []
    if local_name(root.tag) != "cluster":
        problems.append(
            Problem(
                "", f"root element is <{local_name(root.tag)}>, expected <cluster>", lines[root]
            )
        )
    elements = [el for el in root if local_name(el.tag) == "workspace"]
    for el in root:
        if local_name(el.tag) != "workspace":
            problems.append(
                Problem(
                    "",
                    f"unknown element <{local_name(el.tag)}> in <cluster> (expected <workspace>)",
                    lines[el],
                )
            )
    if not elements and not problems:
        problems.append(Problem("", "no <workspace> in <cluster>", lines[root]))

    workspaces = []
    for i, element in enumerate(elements):
        workspace = _Workspace(i, f"workspace[{i}]")
        workspace.where[("nodes", i)] = lines[element]
        problems += _read_workspace(element, workspace, lines, warnings)
        workspaces.append(workspace)
    if problems:
        raise DocumentError(source, sort_problems(problems))

    where: dict[Loc, int] = {(): lines[root]}
    login = next((w for w in workspaces if w.login_line is not None), None)
    provided = {role for w in workspaces for role, _ in w.provides}
    groups = []
    for workspace in workspaces:
        groups.append(_group(workspace, workspace is login, provided, warnings))
        where.update(workspace.where)
        if workspace is not login and workspace.login_line is not None and login is not None:
            warnings.append(
                Problem(
                    f"{workspace.here}.nic",
                    f"wantlogin is ignored: the login node is the first workspace that wants "
                    f"it, {login.label!r} (line {login.login_line})",
                    workspace.login_line,
                )
            )

    def line_of(loc: Loc, key: bool) -> int | None:
        for end in range(len(loc), -1, -1):
            if loc[:end] in where:
                return where[loc[:end]]
        return None

    document, problems = check_document({"nodes": groups}, line_of)
    if problems or document is None:
        named = [Problem(_xml_field(p.field, workspaces), p.message, p.line) for p in problems]
        raise DocumentError(source, sort_problems(named))
    return document, _shown(sort_problems(warnings))


def _shown(warnings: list[Problem]) -> list[Problem]:
    """The first warnings, and how many more: a document may repeat an ignored element
    thousands of times."""
    if len(warnings) <= DocumentError.MAX_SHOWN:
        return warnings
    more = len(warnings) - DocumentError.MAX_SHOWN + 1
    return [*warnings[: DocumentError.MAX_SHOWN - 1], Problem("", f"... and {more} more")]


_XML_FIELDS = [
    (r"^nodes\[(\d+)\]", r"workspace[\1]"),
    (r"\.group$", ".name"),
    (r"\.count$", ".quantity"),
    (r"\.(provides|requires)\[(\d+)\]", r".ctx.\1.role[\2]"),
    (r"(\.requires\.role\[\d+\])\.role$", r"\1"),  # a requirement's name is its role
    (r"\.data\b", ".ctx.requires.data"),
]


def _xml_field(field: str, workspaces: list[_Workspace]) -> str:
    """A document field path as the cluster.xml element it came from."""
    if not field.startswith("nodes"):
        return field
    # a requirement's index among those kept, as its index among the workspace's roles
    field = re.sub(
        r"^nodes\[(\d+)\]\.requires\[(\d+)\]",
        lambda m: f"nodes[{m[1]}].requires[{workspaces[int(m[1])].kept[int(m[2])]}]",
        field,
    )
    for pattern, replacement in _XML_FIELDS:
        field = re.sub(pattern, replacement, field)
    return field


def _read_workspace(
    element: ET.Element,
    workspace: _Workspace,
    lines: dict[ET.Element, int],
    warnings: list[Problem],
) -> list[Problem]:
    """Read one <workspace> into `workspace`; return its problems, add its warnings."""
    i, here, problems = workspace.index, workspace.here, []
    fields = workspace.fields
    fields["group"] = f"workspace-{i}"
    for child in element:
        tag, value, line = local_name(child.tag), (child.text or "").strip(), lines[child]
        if tag == "name":
            workspace.label = value or workspace.label
            fields["group"] = _group_name(value) or fields["group"]
            workspace.where[("nodes", i, "group")] = line
        elif tag == "image":
            fields["image"] = value
            workspace.where[("nodes", i, "image")] = line
        elif tag in ("quantity", "cores"):
            name = "count" if tag == "quantity" else "cores"
            number = value.isascii() and value.isdigit()
            if not number:
                problems.append(Problem(f"{here}.{tag}", f"not a whole number: {value!r}", line))
            fields[name] = int(value) if number else value
            workspace.where[("nodes", i, name)] = line
        elif tag == "memory":
            fields["memory"] = f"{value}MiB" if value.isascii() and value.isdigit() else value
            workspace.where[("nodes", i, "memory")] = line
        elif tag == "nic":
            wants = child.get("wantlogin", "").strip().lower() == "true"
            if wants and workspace.login_line is None:
                workspace.login_line = line
        elif tag == "ctx":
            problems += _read_ctx(child, workspace, lines)
        elif tag in _IGNORED:
            warnings.append(Problem(f"{here}.{tag}", _IGNORED[tag], line))
        else:
            problems.append(
                Problem(
                    f"{here}.{tag}",
                    f"unknown element <{tag}> (understood: {', '.join(_WORKSPACE_CHILDREN)})",
                    line,
                )
            )
    if "image" not in fields:
        problems.append(Problem(f"{here}.image", "missing <image>", lines[element]))
    return problems


def _read_ctx(
    ctx: ET.Element, workspace: _Workspace, lines: dict[ET.Element, int]
) -> list[Problem]:
    problems: list[Problem] = []
    here = f"{workspace.here}.ctx"
    for section in ctx:
        kind = local_name(section.tag)
        if kind not in ("provides", "requires"):
            problems.append(
                Problem(
                    f"{here}.{kind}",
                    f"unknown element <{kind}> (expected <provides> or <requires>)",
                    lines[section],
                )
            )
            continue
        for item in section:
            tag, line = local_name(item.tag), lines[item]
            if tag == "identity":
                continue  # corral always shares every node's identity
            if tag == "role" and kind == "provides":
                workspace.provides.append(((item.text or "").strip(), line))
            elif tag == "role":
                workspace.requires.append((item.get("name", "").strip(), line))
            elif tag == "data" and kind == "requires":
                name = item.get("name", "").strip()
                if not name:
                    problems.append(Problem(f"{here}.requires.data", "<data> without a name", line))
                elif len(item):
                    problems.append(
                        Problem(
                            f"{here}.requires.data",
                            f"data {name!r} holds elements; its value must be text "
                            "(wrap markup in <![CDATA[...]]>)",
                            line,
                        )
                    )
                else:
                    workspace.data.append((name, item.text or "", line))  # exactly as written
            else:
                problems.append(
                    Problem(f"{here}.{kind}.{tag}", f"unknown element <{tag}> in <{kind}>", line)
                )
    return problems


def _group(
    workspace: _Workspace, login: bool, provided: set[str], warnings: list[Problem]
) -> dict[str, object]:
    """The workspace as plain group data for check_document; records the line of each
    role and data item in `workspace.where`."""
    i, where = workspace.index, workspace.where
    group: dict[str, object] = {**workspace.fields, "login": login}
    provides = []
    for role, line in workspace.provides:
        where[("nodes", i, "provides", len(provides))] = line
        provides.append(role)
    requires = []
    for j, (role, line) in enumerate(workspace.requires):
        if role not in provided and names.ROLE.matches(role):
            warnings.append(
                Problem(
                    f"{workspace.here}.ctx.requires.role[{j}]",
                    f"role {role!r} is provided by no workspace: the requirement is dropped, "
                    f"so {workspace.label!r} configures without members for it (as Nimbus did)",
                    line,
                )
            )
            continue
        where[("nodes", i, "requires", len(requires))] = line
        workspace.kept.append(j)
        requires.append(role)
    group.update(provides=provides, requires=requires)
    data = _workspace_data(workspace, warnings)
    if data:
        group["data"] = data
    return group


def _workspace_data(workspace: _Workspace, warnings: list[Problem]) -> dict[str, str]:
    """The workspace's data, every value kept: a name given again is kept under the next
    free `NAME.N` (N from 2), with a warning."""
    i, where = workspace.index, workspace.where
    named = {name for name, _, _ in workspace.data}
    data: dict[str, str] = {}
    first_line: dict[str, int] = {}
    tried: dict[str, int] = {}  # the last number tried for a name: each is tried once
    for name, value, line in workspace.data:
        key = name
        if name in data:
            number = tried.get(name, 1) + 1
            while f"{name}.{number}" in named or f"{name}.{number}" in data:
                number += 1
            tried[name] = number
            key = f"{name}.{number}"
            warnings.append(
                Problem(
                    f"{workspace.here}.ctx.requires.data",
                    f"data {name!r} is given again (first on line {first_line[name]}); "
                    f"this value is kept as {key!r}",
                    line,
                )
            )
        first_line.setdefault(name, line)
        where.setdefault(("nodes", i, "data"), line)
        where[("nodes", i, "data", key)] = line
        data[key] = value
    return data


def _group_name(name: str) -> str:
    """A Nimbus workspace name as a corral group name (`Compute Nodes` -> `compute-nodes`)."""
    name = re.sub(r"[^a-z0-9]+", "-", name.lower())
    name = re.sub(r"^[^a-z]+", "", name)
    return name[:31].strip("-")
