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

Each workspace becomes a group; `<data>` goes to the document's data. Optional
`<cores>` and `<memory>` (MiB) are understood too. The converted data is validated by
the same path as YAML, so the same cross checks apply and problems carry XML lines.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any
from xml.parsers import expat

from corral import limits
from corral.errors import DocumentError, Problem

from .model import ClusterDocument, check_document
from .problems import Loc, sort_problems

_WORKSPACE_CHILDREN = ("name", "image", "quantity", "nic", "ctx", "cores", "memory")


class _Refused(Exception):
    """What corral will not parse (a DOCTYPE or ENTITY, a document past its bounds),
    with its line."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.line = line


def parse_cluster_xml(text: str, source: str = "<cluster.xml>") -> ClusterDocument:
    """Parse a Nimbus cluster.xml and validate the cluster document it describes.

    Raises DocumentError(source, problems) for malformed XML (with its line), a DOCTYPE
    or ENTITY declaration (refused: entity expansion is a classic XML attack), an
    unknown element, a missing image, a bad quantity, or an invalid converted document.
    """
    root, lines = _parse(text, source)
    problems: list[Problem] = []
    if _local(root.tag) != "cluster":
        problems.append(
            Problem("", f"root element is <{_local(root.tag)}>, expected <cluster>", lines[root])
        )
    workspaces = [el for el in root if _local(el.tag) == "workspace"]
    for el in root:
        if _local(el.tag) != "workspace":
            problems.append(
                Problem(
                    "",
                    f"unknown element <{_local(el.tag)}> in <cluster> (expected <workspace>)",
                    lines[el],
                )
            )
    if not workspaces and not problems:
        problems.append(Problem("", "no <workspace> in <cluster>", lines[root]))

    data: dict[str, str] = {}
    groups: list[dict[str, Any]] = []
    where: dict[Loc, int] = {(): lines[root]}
    for i, workspace in enumerate(workspaces):
        group, found = _convert(workspace, i, lines, data, where)
        groups.append(group)
        problems += found
    if problems:
        raise DocumentError(source, sort_problems(problems))

    document_data: dict[str, Any] = {"nodes": groups}
    if data:
        document_data["data"] = data

    def line_of(loc: Loc, key: bool) -> int | None:
        for end in range(len(loc), -1, -1):
            if loc[:end] in where:
                return where[loc[:end]]
        return None

    document, problems = check_document(document_data, line_of)
    if problems or document is None:
        named = [Problem(_xml_field(p.field), p.message, p.line) for p in problems]
        raise DocumentError(source, sort_problems(named))
    return document


_XML_FIELDS = [
    (r"^nodes\[(\d+)\]", r"workspace[\1]"),
    (r"\.group$", ".name"),
    (r"\.count$", ".quantity"),
    (r"\.(provides|requires)\[(\d+)\]", r".ctx.\1.role[\2]"),
]


def _xml_field(field: str) -> str:
    """A document field path as the cluster.xml element it came from."""
    if not field.startswith("nodes"):
        return field
    for pattern, replacement in _XML_FIELDS:
        field = re.sub(pattern, replacement, field)
    return field


def _convert(
    workspace: ET.Element,
    i: int,
    lines: dict[ET.Element, int],
    data: dict[str, str],
    where: dict[Loc, int],
) -> tuple[dict[str, Any], list[Problem]]:
    """One <workspace> as group data; records each field's line in `where`."""
    here = f"workspace[{i}]"
    problems: list[Problem] = []
    group: dict[str, Any] = {
        "group": f"workspace-{i}",
        "login": False,
        "provides": [],
        "requires": [],
    }
    where[("nodes", i)] = lines[workspace]
    for child in workspace:
        tag, value, line = _local(child.tag), (child.text or "").strip(), lines[child]
        if tag == "name":
            group["group"] = _group_name(value) or group["group"]
            where[("nodes", i, "group")] = line
        elif tag == "image":
            group["image"] = value
            where[("nodes", i, "image")] = line
        elif tag in ("quantity", "cores"):
            field = "count" if tag == "quantity" else "cores"
            number = value.isascii() and value.isdigit()
            if not number:
                problems.append(Problem(f"{here}.{tag}", f"not a whole number: {value!r}", line))
            group[field] = int(value) if number else value
            where[("nodes", i, field)] = line
        elif tag == "memory":
            group["memory"] = f"{value}MiB" if value.isascii() and value.isdigit() else value
            where[("nodes", i, "memory")] = line
        elif tag == "nic":
            group["login"] |= child.get("wantlogin", "").strip().lower() == "true"
        elif tag == "ctx":
            problems += _convert_ctx(child, i, lines, group, data, where)
        else:
            problems.append(
                Problem(
                    f"{here}.{tag}",
                    f"unknown element <{tag}> (understood: {', '.join(_WORKSPACE_CHILDREN)})",
                    line,
                )
            )
    if "image" not in group:
        problems.append(Problem(f"{here}.image", "missing <image>", lines[workspace]))
    return group, problems


def _convert_ctx(
    ctx: ET.Element,
    i: int,
    lines: dict[ET.Element, int],
    group: dict[str, Any],
    data: dict[str, str],
    where: dict[Loc, int],
) -> list[Problem]:
    problems: list[Problem] = []
    here = f"workspace[{i}].ctx"
    for section in ctx:
        kind = _local(section.tag)
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
            tag, line = _local(item.tag), lines[item]
            if tag == "identity":
                continue  # corral always shares every node's identity
            if tag == "role" and kind == "provides":
                where[("nodes", i, "provides", len(group["provides"]))] = line
                group["provides"].append((item.text or "").strip())
            elif tag == "role":
                where[("nodes", i, "requires", len(group["requires"]))] = line
                group["requires"].append(item.get("name", "").strip())
            elif tag == "data" and kind == "requires":
                name, value = item.get("name", "").strip(), (item.text or "").strip()
                if not name:
                    problems.append(Problem(f"{here}.requires.data", "<data> without a name", line))
                elif data.get(name, value) != value:
                    problems.append(
                        Problem(
                            f"{here}.requires.data",
                            f"data {name!r} is given twice with different values",
                            line,
                        )
                    )
                else:
                    data[name] = value
                    where[("data", name)] = line
            else:
                problems.append(
                    Problem(f"{here}.{kind}.{tag}", f"unknown element <{tag}> in <{kind}>", line)
                )
    return problems


def _group_name(name: str) -> str:
    """A Nimbus workspace name as a corral group name (`Compute Nodes` -> `compute-nodes`)."""
    name = re.sub(r"[^a-z0-9]+", "-", name.lower())
    name = re.sub(r"^[^a-z]+", "", name)
    return name[:31].strip("-")


def _local(tag: str) -> str:
    """A tag without its namespace (`{uri}cluster` or `ns:cluster` -> `cluster`)."""
    return tag.rsplit("}", 1)[-1].rsplit(":", 1)[-1]


def _parse(text: str, source: str) -> tuple[ET.Element, dict[ET.Element, int]]:
    """Build an ElementTree with each element's line, refusing DTDs and entities.

    expat feeds ElementTree's TreeBuilder directly because ElementTree alone does not
    keep line numbers.
    """
    declaration = re.match(r"\s*<\?xml[^>]*\?>", text)
    if declaration:
        # The text is already decoded, so the declaration's encoding no longer applies;
        # blanking it (newlines kept) also lets it follow leading blank lines.
        text = re.sub(r"[^\n]", " ", declaration.group()) + text[declaration.end() :]
    builder = ET.TreeBuilder()
    lines: dict[ET.Element, int] = {}
    parser = expat.ParserCreate()

    depth = 0

    def start(tag: str, attrs: dict[str, str]) -> None:
        nonlocal depth
        depth += 1
        if depth > limits.MAX_DOCUMENT_DEPTH:
            raise _Refused(
                f"elements nested more than {limits.MAX_DOCUMENT_DEPTH} levels deep, "
                "the limit for a document",
                parser.CurrentLineNumber,
            )
        if len(lines) + 1 > limits.MAX_DOCUMENT_VALUES:
            raise _Refused(
                f"more than {limits.MAX_DOCUMENT_VALUES} elements, the limit for a document",
                parser.CurrentLineNumber,
            )
        lines[builder.start(tag, attrs)] = parser.CurrentLineNumber

    def end(tag: str) -> None:
        nonlocal depth
        depth -= 1
        builder.end(tag)

    def refuse(what: str) -> Any:
        def handler(*_: object) -> None:
            raise _Refused(
                f"{what} declarations are not accepted (corral does not process DTDs or entities)",
                parser.CurrentLineNumber,
            )

        return handler

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = builder.data
    parser.StartDoctypeDeclHandler = refuse("DOCTYPE")
    parser.EntityDeclHandler = refuse("ENTITY")
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    try:
        parser.Parse(text, True)
    except _Refused as exc:
        raise DocumentError(source, [Problem("", str(exc), exc.line)]) from exc
    except expat.ExpatError as exc:
        message = f"not well-formed XML: {expat.ErrorString(exc.code)}"
        raise DocumentError(source, [Problem("", message, exc.lineno)]) from exc
    return builder.close(), lines
