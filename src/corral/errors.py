"""Every error corral raises on purpose, rooted in one class.

    CorralError                      base; `message` is what a user reads
    ├── DocumentError                a malformed cluster document (field and line)
    ├── NotFoundError                no such cluster, node, user, host or image (or not yours)
    ├── BadRequestError              a request whose body or parameters do not fit the API
    │   └── PayloadTooLargeError     a request body over its limit, refused before read whole
    ├── AuthError                    no token, or a token that matches no user
    │   └── ForbiddenError           a known user asked for something only an admin may do
    ├── ConflictError                clashes with what exists (duplicate name, busy host)
    │   └── StoreHeldError           another service holds the store (who, where, since when)
    ├── RefusedError                 a request the service will not take; nothing was created
    │   ├── QuotaExceededError       the user's quota would be exceeded (needed vs allowed)
    │   ├── CapacityError            no placement fits on the hosts (needed vs available)
    │   ├── LeaseError               a lease outside policy (too long, already ended)
    │   └── TooManyRequestsError     asked again more often than the service allows
    ├── IllegalTransitionError       a state machine was asked for a transition its table forbids
    ├── BackendError                 a backend failed to boot, terminate or describe a machine
    ├── ImageError                   an image cannot be baked, imported or removed
    ├── StoreError                   a database cannot be brought to this release's schema
    └── ServiceUnavailableError      the CLI cannot reach or start a service

The HTTP layer maps each class to one status code (http_status.py); the CLI maps them
back from the JSON body, so a user sees the same message either side of the wire.
"""

from __future__ import annotations

from dataclasses import dataclass


class CorralError(Exception):
    """Base of every deliberate corral error; `message` is meant for the user."""

    code = "error"

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, object]:
        return {"error": self.code, "message": self.message, "details": self.details}


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a document: where (`field` as a dotted path, `line`) and what."""

    field: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        field = f"{self.field}: " if self.field else ""
        return f"{where}{field}{self.message}"


class DocumentError(CorralError):
    """Raised by the document parsers when a cluster document is malformed."""

    code = "invalid-document"
    MAX_SHOWN = 20  # problems kept; a hostile document may have thousands

    def __init__(self, source: str, problems: list[Problem]) -> None:
        total = len(problems)
        if total > self.MAX_SHOWN:
            more = total - self.MAX_SHOWN + 1
            problems = [*problems[: self.MAX_SHOWN - 1], Problem("", f"... and {more} more")]
        lines = "\n".join(f"  {source}: {p}" for p in problems)
        super().__init__(
            f"{source}: {total} problem(s)\n{lines}",
            problems=[p.__dict__ for p in problems],
        )
        self.source = source
        self.problems = problems


class NotFoundError(CorralError):
    """Raised when a named object does not exist or belongs to another user."""

    code = "not-found"


class BadRequestError(CorralError):
    """Raised when a request's body or parameters do not fit the API (`problems` says where)."""

    code = "bad-request"


class PayloadTooLargeError(BadRequestError):
    """Raised while reading a request body that is longer than its limit, before it is
    read whole (`limit_bytes` says the limit)."""

    code = "payload-too-large"


class AuthError(CorralError):
    """Raised when a request carries no token or an unknown one."""

    code = "unauthenticated"


class ForbiddenError(AuthError):
    """Raised when a user asks for an admin-only action."""

    code = "forbidden"


class ConflictError(CorralError):
    """Raised when a request clashes with existing records (a duplicate name, say)."""

    code = "conflict"


class StoreHeldError(ConflictError):
    """Raised by the store's hold (store/hold.py) when a service opens a store that another
    live service holds, or finds that another took it over; `details` name that service:
    instance, hostname, pid, api_url, since."""

    code = "store-held"


class RefusedError(CorralError):
    """Raised before anything is created when the service will not take a request."""

    code = "refused"


class QuotaExceededError(RefusedError):
    """Raised when a launch would take a user over one of their quotas."""

    code = "quota-exceeded"


class CapacityError(RefusedError):
    """Raised when the scheduler cannot place every node of a request, or when a pool's
    limit would be passed."""

    code = "no-capacity"


class LeaseError(RefusedError):
    """Raised when a lease or an extension falls outside the service's policy."""

    code = "lease-refused"


class TooManyRequestsError(RefusedError):
    """Raised when a caller asks for something again more often than allowed (the metadata
    service's bootstrap documents for one node, say)."""

    code = "too-many-requests"


class IllegalTransitionError(CorralError):
    """Raised by a state machine when asked for a transition its table does not allow."""

    code = "illegal-transition"


class BackendError(CorralError):
    """Raised by a backend when a machine cannot be booted, terminated or described."""

    code = "backend-error"


class ImageError(CorralError):
    """Raised by the image store and by `bake` when an image cannot be made or removed."""

    code = "image-error"


class StoreError(CorralError):
    """Raised by Store when its database cannot be brought to this release's schema: it was
    written by a newer corral, or it holds some of corral's tables but not all of them."""

    code = "store-error"


class ServiceUnavailableError(CorralError):
    """Raised by the client when no service answers and none could be started."""

    code = "service-unavailable"
