"""Wording problems for scientists: field paths, pydantic errors in plain words, order,
and warnings as a user reads them."""

from __future__ import annotations

import difflib
import re
from typing import Any, get_args

from pydantic import BaseModel

from corral.errors import Problem
from corral.units import shown as _show

Loc = tuple[str | int, ...]


def format_loc(loc: Loc) -> str:
    """Render a location as a field path: ("nodes", 1, "cores") -> `nodes[1].cores`."""
    text = ""
    for step in loc:
        text += f"[{step}]" if isinstance(step, int) else (f".{step}" if text else str(step))
    return text


def sort_problems(problems: list[Problem]) -> list[Problem]:
    """Problems in reading order; those without a line keep their place at the end."""
    return sorted(problems, key=lambda p: (p.line is None, p.line or 0))


def describe_error(error: Any, root: type[BaseModel]) -> tuple[Loc, str, bool]:
    """Turn one pydantic error into (location, message for a scientist, points-at-key)."""
    loc: Loc = tuple(error["loc"])
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    on_key = bool(loc) and loc[-1] == "[key]"
    if on_key:
        loc = loc[:-1]
    shown = _show(value)
    if kind == "extra_forbidden":
        known = _known_keys(root, loc[:-1])
        hint = difflib.get_close_matches(str(loc[-1]), known, n=1)
        suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
        if not hint and known:
            suggestion = f" (known fields: {', '.join(known)})"
        return loc, f"unknown field{suggestion}", True
    if kind == "missing":
        return loc, "required field is missing", False
    if kind == "value_error":
        return loc, str(ctx.get("error", error["msg"])), on_key
    if kind in ("int_type", "int_parsing", "int_from_float"):
        message = f"expected a whole number, got {shown}"
    elif kind == "string_type":
        message = f"expected text, got {shown}" + (
            " (put it in quotes)" if isinstance(value, int | float | bool) else ""
        )
    elif kind in ("bool_type", "bool_parsing"):
        message = f"expected true or false, got {shown}"
    elif kind == "greater_than_equal":
        message = f"must be at least {ctx['ge']}, got {shown}"
    elif kind == "less_than_equal":
        message = f"must be at most {ctx['le']}, got {shown}"
    elif kind == "literal_error":
        choices = [c.strip("'") for c in re.findall(r"'[^']*'", str(ctx.get("expected", "")))]
        hint = difflib.get_close_matches(str(value), choices, n=1)
        message = f"must be {ctx.get('expected')}, got {shown}" + (
            f" (did you mean {hint[0]!r}?)" if hint else ""
        )
    elif kind == "list_type":
        message = f"expected a list (like [a, b]), got {shown}"
    elif kind in ("dict_type", "model_type", "model_attributes_type"):
        message = f"expected a mapping (indented `key: value` lines), got {shown}"
    elif kind == "too_short" and loc == ("nodes",):
        message = "a cluster needs at least one group"
    else:
        message = error["msg"]
    return loc, message, on_key


def _known_keys(root: type[BaseModel], path: Loc) -> list[str]:
    """The field names a document may use at `path` (empty when not a model there)."""
    model: type[BaseModel] | None = root
    for step in path:
        if isinstance(step, int) or model is None:
            continue
        field = next(
            (f for name, f in model.model_fields.items() if (f.alias or name) == step), None
        )
        model = _model_in(field.annotation) if field else None
    if model is None:
        return []
    return [f.alias or name for name, f in model.model_fields.items()]


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def format_warning(source: str, warning: Problem) -> str:
    """A warning as a user reads it: `FILE: line N: warning: FIELD: MESSAGE`."""
    where = f" line {warning.line}:" if warning.line is not None else ""
    field = f" {warning.field}:" if warning.field else ""
    return f"{source}:{where} warning:{field} {warning.message}"
