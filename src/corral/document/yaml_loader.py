"""Read a YAML cluster document, pointing every problem at its line.

The text is composed once into PyYAML's node tree: the nodes give the Python data to
validate and, through their start marks, the line of each field a problem names.
"""

from __future__ import annotations

import yaml

from corral.errors import DocumentError, Problem
from corral.units import shown

from .model import ClusterDocument, check_document
from .problems import Loc, format_loc, sort_problems
from .yaml_bounds import BoundedLoader, DocumentTooLarge


def parse_yaml(text: str, source: str = "<document>") -> ClusterDocument:
    """Parse and validate a YAML cluster document.

    Raises DocumentError(source, problems) on a YAML syntax error (with the line of the
    fault), a document past the bounds of yaml_bounds.py (aliases written out), or when
    the document is invalid (every problem, each with its line).
    """
    loader = None
    try:
        loader = BoundedLoader(text)  # the reader refuses control characters here
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except DocumentTooLarge as exc:
        raise DocumentError(source, [Problem("", exc.message, exc.line)]) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        message = f"not valid YAML: character {exc.character!r} is not allowed"
        raise DocumentError(source, [Problem("", message, line)]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise DocumentError(source, [Problem("", _syntax_message(exc), line)]) from exc
    except yaml.YAMLError as exc:
        raise DocumentError(source, [Problem("", f"not valid YAML: {exc}")]) from exc
    except (ValueError, OverflowError) as exc:  # a value PyYAML recognised but cannot build
        message = f"a value cannot be read: {shown(str(exc))}"
        raise DocumentError(source, [Problem("", message)]) from None
    finally:
        if loader is not None:
            loader.dispose()

    if root is None:
        problems = [Problem("", "the document is empty", 1)]
        raise DocumentError(source, problems)

    def line_of(loc: Loc, key: bool) -> int | None:
        return _line_of(root, loc, key)

    document, problems = check_document(data, line_of)
    problems = _duplicate_keys(root) + problems
    if problems or document is None:
        raise DocumentError(source, sort_problems(problems))
    return document


def _syntax_message(exc: yaml.MarkedYAMLError) -> str:
    """PyYAML's complaint in one phrase, with a hint for the commonest slip (tabs)."""
    problem = exc.problem or exc.context or "cannot be read"
    if exc.context and problem.startswith("but "):
        problem = f"{exc.context} {problem}"
    if "\\t" in problem:
        problem += " (indent with spaces, not tabs)"
    return f"not valid YAML: {problem}"


def _child(node: yaml.Node, step: str | int) -> tuple[yaml.Node | None, yaml.Node] | None:
    """The (key node, value node) that `step` selects in `node`, or None if absent."""
    if isinstance(node, yaml.MappingNode):
        found = None
        for key, value in node.value:  # the last of duplicate keys wins, as when loading
            if isinstance(key, yaml.ScalarNode) and key.value == str(step):
                found = (key, value)
        return found
    if isinstance(node, yaml.SequenceNode) and isinstance(step, int) and step < len(node.value):
        return None, node.value[step]
    return None


def _line_of(root: yaml.Node, loc: Loc, key: bool) -> int:
    """The 1-based line of `loc`: its key's line if `key`, else its value's.

    A location that does not exist (a missing field) gives the line of the deepest
    enclosing node that does.
    """
    node, key_node = root, None
    for step in loc:
        child = _child(node, step)
        if child is None:
            return node.start_mark.line + 1
        key_node, node = child
    target = key_node if key and key_node is not None else node
    return target.start_mark.line + 1


def _duplicate_keys(root: yaml.Node) -> list[Problem]:
    """Keys given twice in one mapping, which YAML would silently resolve to the last.

    Each node is looked at once, however many aliases point to it (at the place it is
    first reached), and iteratively.
    """
    problems: list[Problem] = []
    seen_nodes: set[int] = set()
    work: list[tuple[yaml.Node, Loc]] = [(root, ())]
    while work:
        node, loc = work.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    if key.value in seen:
                        problems.append(
                            Problem(
                                format_loc((*loc, key.value)),
                                f"given twice (first on line {seen[key.value]}); remove one",
                                key.start_mark.line + 1,
                            )
                        )
                    seen.setdefault(key.value, key.start_mark.line + 1)
                    work.append((value, (*loc, key.value)))
        elif isinstance(node, yaml.SequenceNode):
            work += [(item, (*loc, i)) for i, item in enumerate(node.value)]
    return problems
