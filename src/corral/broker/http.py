"""The little of HTTP the broker's endpoints use, read from and written to ASGI directly.

Every node of every cluster calls the broker a few times; a framework's request and
response objects (header and query multidicts, background tasks, cookie handling) cost
more per call than what the broker reads and writes: one header, two query numbers, a
JSON body and a JSON reply.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from urllib.parse import parse_qsl

from starlette.types import Receive, Scope, Send

from corral.errors import PayloadTooLargeError


class Call:
    """One HTTP request to the broker."""

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.scope = scope
        self._receive = receive

    def header(self, name: bytes) -> str:
        """The first value of header `name` (lower case), or "" if the request has none."""
        for key, value in self.scope["headers"]:
            if key == name:  # ASGI servers give header names in lower case
                return value.decode("latin-1")
        return ""

    def query(self, name: str) -> str | None:
        """The first value of query parameter `name`, or None if absent."""
        return self._query.get(name)

    @cached_property
    def _query(self) -> dict[str, str]:
        pairs = parse_qsl(self.scope["query_string"].decode("latin-1"))
        return dict(reversed(pairs))  # the first value of a repeated name wins

    async def body(self, limit: int) -> bytes:
        """The request's body; raises PayloadTooLargeError as read_body says."""
        return await read_body(self.scope, self._receive, limit, "the broker")


async def read_body(scope: Scope, receive: Receive, limit: int, what: str) -> bytes:
    """An ASGI request's body, read whole; raises PayloadTooLargeError as soon as it is
    known to be longer than `limit` bytes, by its Content-Length or while it streams in,
    so a long body is never read whole. `what` names the receiver in the message."""
    declared = next((v for k, v in scope["headers"] if k == b"content-length"), b"")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit, what, int(declared))
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit, what)
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    return b"".join(chunks)


def _too_large(limit: int, what: str, declared: int | None = None) -> PayloadTooLargeError:
    said = f" ({declared} bytes)" if declared is not None else ""
    return PayloadTooLargeError(
        f"the request body{said} is larger than {limit} bytes, the limit for a request to {what}",
        limit_bytes=limit,
    )


@dataclass(frozen=True)
class Reply:
    """An answer (JSON unless it says otherwise): its body already serialized."""

    body: bytes
    status: int = 200
    headers: tuple[tuple[bytes, bytes], ...] = ()
    content_type: bytes = b"application/json"

    async def send(self, send: Send) -> None:
        headers = [
            (b"content-type", self.content_type),
            (b"content-length", str(len(self.body)).encode()),
            *self.headers,
        ]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


def json_reply(data: object, status: int = 200, **headers: str) -> Reply:
    """`data` as a compact JSON answer, with extra `headers` (name=value)."""
    body = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
    extra = tuple((name.lower().encode(), value.encode()) for name, value in headers.items())
    return Reply(body, status, extra)
