"""Read a cluster document from text or a file, YAML or Nimbus cluster.xml alike."""

from __future__ import annotations

import os
from pathlib import Path

from corral.errors import DocumentError, Problem

from .model import ClusterDocument
from .nimbus import parse_cluster_xml
from .yaml_loader import parse_yaml


def looks_like_xml(text: str) -> bool:
    """True when the text starts with `<` (an XML declaration or element) after blanks."""
    return text.lstrip("\ufeff \t\r\n").startswith("<")


def parse_document(text: str, source: str = "<document>") -> ClusterDocument:
    """Parse a cluster document, as Nimbus cluster.xml if it looks like XML, else YAML.

    Raises DocumentError(source, problems) when the document is malformed.
    """
    if looks_like_xml(text):
        return parse_cluster_xml(text, source)
    return parse_yaml(text.lstrip("\ufeff"), source)


def load_document(path: str | os.PathLike[str]) -> ClusterDocument:
    """Read and parse the cluster document at `path`.

    Raises DocumentError naming the path when the file cannot be read or decoded, or
    when the document is malformed.
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise DocumentError(source, [Problem("", f"no such file: {source}")]) from exc
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise DocumentError(source, [Problem("", f"cannot read {source}: {reason}")]) from exc
    return parse_document(text, source)
