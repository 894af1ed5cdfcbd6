"""A bound on request bodies, as ASGI middleware in front of the REST API.

A body larger than the bound is refused with 413 and the API's error body before it is
read whole: at once when its Content-Length says so, else as soon as the bytes streamed
in pass the bound. A body within it is read here (at most the bound, once) and handed on
as one message, so nothing behind this middleware ever sees more.
"""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.broker.http import read_body
from corral.errors import PayloadTooLargeError
from corral.http_status import status_for


class BodyLimit:
    """Refuses HTTP request bodies over `max_bytes` (413) for the app it wraps."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            body = await read_body(scope, receive, self.max_bytes, "the API")
        except PayloadTooLargeError as error:
            # the rest of the body stays unread: the connection cannot carry another request
            response = JSONResponse(
                error.to_dict(), status_code=status_for(error), headers={"connection": "close"}
            )
            await response(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)


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
