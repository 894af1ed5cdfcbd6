"""Read a cluster document from text or a file, YAML or Nimbus cluster.xml alike."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from corral import limits, names
from corral.errors import DocumentError, Problem

from .model import ClusterDocument
from .nimbus import convert_cluster_xml
from .yaml_loader import parse_yaml


@dataclass(frozen=True)
class Parsed:
    """A valid document, and what its reading accepted but changed or ignored.

    Each warning is a Problem (field, message, line) that did not stop the document: a
    Nimbus construct corral drops or ignores (nimbus.py). YAML documents have none.
    """

    document: ClusterDocument
    warnings: tuple[Problem, ...] = ()


def looks_like_xml(text: str) -> bool:
    """True when the text starts with `<` (an XML declaration or element) after blanks."""
    return text.lstrip("\ufeff \t\r\n").startswith("<")


def parse_document(text: str, source: str = "<document>") -> ClusterDocument:
    """Parse a cluster document, as Nimbus cluster.xml if it looks like XML, else YAML.

    Raises DocumentError(source, problems) when the document is larger than
    limits.MAX_DOCUMENT_BYTES or malformed.
    """
    return parse_with_warnings(text, source).document


def parse_with_warnings(text: str, source: str = "<document>") -> Parsed:
    """`parse_document`, with the warnings of the reading; raises as that does."""
    # characters are at most as many as UTF-8 bytes: only a short text is encoded to count
    if len(text) > limits.MAX_DOCUMENT_BYTES or (
        len(text.encode("utf-8", "surrogatepass")) > limits.MAX_DOCUMENT_BYTES
    ):
        raise DocumentError(source, [_too_large()])
    if looks_like_xml(text):
        document, warnings = convert_cluster_xml(text, source)
        return Parsed(document, tuple(warnings))
    return Parsed(parse_yaml(text.lstrip("\ufeff"), source))


def read_document(path: str | os.PathLike[str]) -> str:
    """The text of the cluster document at `path`, read only up to the size limit.

    Raises DocumentError naming the path when the file cannot be read or decoded, or is
    larger than limits.MAX_DOCUMENT_BYTES.
    """
    source = str(path)
    try:
        with Path(path).open("rb") as file:
            data = file.read(limits.MAX_DOCUMENT_BYTES + 1)
        if len(data) > limits.MAX_DOCUMENT_BYTES:
            raise DocumentError(source, [_too_large()])
        return data.decode("utf-8")
    except FileNotFoundError as exc:
        raise DocumentError(source, [Problem("", f"no such file: {source!r}")]) from exc
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path, or not UTF-8
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise DocumentError(source, [Problem("", f"cannot read {source!r}: {reason}")]) from exc


def load_document(path: str | os.PathLike[str]) -> ClusterDocument:
    """Read and parse the cluster document at `path`.

    Raises DocumentError naming the path when the file cannot be read or decoded, is too
    large, or when the document is malformed.
    """
    return load_with_warnings(path).document


def load_with_warnings(path: str | os.PathLike[str]) -> Parsed:
    """`load_document`, with the warnings of the reading; raises as that does."""
    return parse_with_warnings(read_document(path), str(path))


def name_from_file(path: str | os.PathLike[str]) -> str | None:
    """A cluster name made from a document's file name, for a document that has none:
    `base-cluster.xml` -> `base-cluster`, `My Run.v2.yaml` -> `my-run-v2`; None when
    nothing of the name fits the cluster name rule (names.CLUSTER)."""
    stem = Path(path).stem.lower()
    name = re.sub(r"^[^a-z]+", "", re.sub(r"[^a-z0-9]+", "-", stem))
    name = name[: names.CLUSTER.max_length].strip("-")
    return name if names.CLUSTER.matches(name) else None


def _too_large() -> Problem:
    return Problem(
        "",
        f"the document is larger than {limits.MAX_DOCUMENT_BYTES // limits.KIB} KiB "
        f"({limits.MAX_DOCUMENT_BYTES} bytes), the limit for a document",
    )
