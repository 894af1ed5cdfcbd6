"""Read XML safely into an ElementTree that knows each element's line.

corral reads untrusted XML (Nimbus cluster.xml documents): DTDs and entity declarations
are refused (entity expansion is a classic XML attack), and the tree is bounded in depth
and in elements like every document (limits.py).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any
from xml.parsers import expat

from corral import limits
from corral.errors import DocumentError, Problem


class _Refused(Exception):
    """What corral will not parse (a DOCTYPE or ENTITY, a document past its bounds),
    with its line."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.line = line


def local_name(tag: str) -> str:
    """A tag without its namespace (`{uri}cluster` or `ns:cluster` -> `cluster`)."""
    return tag.rsplit("}", 1)[-1].rsplit(":", 1)[-1]


def parse_tree(text: str, source: str) -> tuple[ET.Element, dict[ET.Element, int]]:
    """Build an ElementTree with each element's line, refusing DTDs and entities.

    Raises DocumentError(source, [problem with its line]) for malformed XML, a DOCTYPE or
    ENTITY declaration, or a tree past the document bounds.

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
