"""The one place where corral's errors become HTTP status codes (and back, in the client),
and where the web framework's own request errors become corral's."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from corral import errors

STATUS_BY_ERROR: dict[type[errors.CorralError], int] = {
    errors.DocumentError: 422,
    errors.PayloadTooLargeError: 413,
    errors.BadRequestError: 422,
    errors.NotFoundError: 404,
    errors.ForbiddenError: 403,
    errors.AuthError: 401,
    errors.QuotaExceededError: 403,
    errors.CapacityError: 409,
    errors.LeaseError: 422,
    errors.TooManyRequestsError: 429,
    errors.RefusedError: 409,
    errors.ConflictError: 409,
    errors.IllegalTransitionError: 409,
    errors.BackendError: 502,
    errors.ImageError: 422,
    errors.ServiceUnavailableError: 503,
}

ERROR_BY_CODE: dict[str, type[errors.CorralError]] = {
    cls.code: cls for cls in [errors.CorralError, *STATUS_BY_ERROR]
}


def status_for(error: errors.CorralError) -> int:
    for cls in type(error).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return 500


def error_from_body(body: dict[str, object]) -> errors.CorralError:
    """Rebuild the error a service sent, so the client raises what the service raised."""
    cls = ERROR_BY_CODE.get(str(body.get("error")), errors.CorralError)
    message = str(body.get("message", "the service reported an error"))
    details = body.get("details") or {}
    error = errors.CorralError.__new__(cls)
    errors.CorralError.__init__(error, message, **(details if isinstance(details, dict) else {}))
    return error


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
