"""A bound on request bodies, as ASGI middleware in front of the REST API.

A body larger than the bound is refused with 413 and the API's error body before it is
read whole: at once when its Content-Length says so, else as soon as the bytes streamed
in pass the bound. A body within it is read here (at most the bound, once) and handed on
as one message, so nothing behind this middleware ever sees more.
"""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.errors import PayloadTooLargeError
from corral.service.http_errors import status_for


class BodyLimit:
    """Refuses HTTP request bodies over `max_bytes` (413) for the app it wraps."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(scope, receive, send, declared)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before its body was complete: nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send, None)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, size: int | None) -> None:
        said = f" ({size} bytes)" if size is not None else ""
        error = PayloadTooLargeError(
            f"the request body{said} is larger than {self.max_bytes} bytes, "
            "the limit for a request to the API",
            limit_bytes=self.max_bytes,
        )
        # the rest of the body stays unread: the connection cannot carry another request
        response = JSONResponse(
            error.to_dict(), status_code=status_for(error), headers={"connection": "close"}
        )
        await response(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            if not value.isdigit():
                return None  # the server refuses such a request before it gets here
            return int(value) if len(value) <= 18 else 10**18
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the whole body once, then whatever the client sends next."""
    given = False

    async def replayed() -> Message:
        nonlocal given
        if given:
            return await receive()
        given = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed
