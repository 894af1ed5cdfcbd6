"""Exit codes scripts can rely on (documented in the README)."""

from __future__ import annotations

from corral import errors

OK = 0
ERROR = 1  # anything not listed below
USAGE = 2  # bad command line (click's own code)
INVALID_DOCUMENT = 3
NOT_FOUND = 4
UNAUTHORIZED = 5  # no token, unknown token, or not an admin
REFUSED = 6  # quota, capacity or lease policy; nothing was created
CLUSTER_FAILED = 7  # the cluster failed to become ready
TIMEOUT = 8  # gave up waiting; the cluster is still there
UNAVAILABLE = 9  # no service could be reached or started
REMOVAL_FAILED = 10  # a node's drain failed: it stays, drained, and the reason is shown

_BY_ERROR: list[tuple[type[errors.CorralError], int]] = [
    (errors.DocumentError, INVALID_DOCUMENT),
    (errors.NotFoundError, NOT_FOUND),
    (errors.AuthError, UNAUTHORIZED),
    (errors.RefusedError, REFUSED),
    (errors.ServiceUnavailableError, UNAVAILABLE),
]


def for_error(error: errors.CorralError) -> int:
    for cls, code in _BY_ERROR:
        if isinstance(error, cls):
            return code
    return ERROR
