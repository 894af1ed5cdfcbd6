"""Where the web framework's own request errors become corral's.

corral's errors become status codes in corral/http_status.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from corral import errors


def bad_request(problems: Sequence[Mapping[str, Any]]) -> errors.BadRequestError:
    """FastAPI's request-validation errors as one BadRequestError: its message names the
    first field, and `details.problems` each field (at most DocumentError.MAX_SHOWN)."""
    named = [
        {"field": _field(p["loc"]), "message": _message(p)}
        for p in problems[: errors.DocumentError.MAX_SHOWN]
    ]
    if not named:
        named = [{"field": "body", "message": "the request does not fit the API"}]
    first = named[0]
    return errors.BadRequestError(f"{first['field']}: {first['message']}", problems=named)


def _field(loc: Sequence[str | int]) -> str:
    """`body.lease_seconds` as `lease_seconds`, `query.since` as `since`: the name the API's
    description gives it. A body that is not JSON at all is `body`."""
    parts = list(loc[1:]) if loc and loc[0] in ("body", "query", "path", "header") else list(loc)
    if loc and loc[0] == "body" and parts and isinstance(parts[0], int):
        parts = []  # where JSON decoding stopped, not a field
    return ".".join(str(part) for part in parts) or "body"


def _message(problem: Mapping[str, Any]) -> str:
    ctx = problem.get("ctx") or {}
    if problem["type"] == "value_error" and "error" in ctx:
        return str(ctx["error"])  # our own rules (names.py) say what they allow
    if problem["type"] == "json_invalid":
        return f"not valid JSON: {ctx.get('error', 'cannot be decoded')}"
    return str(problem["msg"])
