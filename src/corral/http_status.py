"""The one place where corral's errors become HTTP status codes, and back in the client.

The service's API, its metadata app and the broker answer an error with the status
mapped here and the error's JSON (errors.CorralError.to_dict); the CLI's client rebuilds
the error from that JSON, so it raises what the service raised.
"""

from __future__ import annotations

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
    """The status of the nearest mapped class of `error`; 500 for one mapped nowhere."""
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
