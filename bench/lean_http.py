"""A lean HTTPS client for load generators: one kept connection, just enough HTTP/1.1.

A thousand simulated agents on httpx cost the load generator as much CPU as the broker
spends answering them, and on a 2-core machine the generator then sets the pace. This
client sends each request as one write and reads the reply by its Content-Length, which
is all the broker's JSON API needs, and parses it with orjson: a thousand real agents
would each parse their own view on their own machine, not all of them on one core.
"""

from __future__ import annotations

import asyncio
import ssl
from urllib.parse import urlencode, urlsplit

import orjson


class HTTPStatusError(RuntimeError):
    pass


class Connection:
    """One TLS connection to `url`'s host, kept open; requests go one at a time."""

    def __init__(self, url: str, tls: ssl.SSLContext) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or ""
        self.port = parts.port or 443
        self.prefix = parts.path.rstrip("/")
        self.tls = tls
        self.headers: dict[str, str] = {}
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> Connection:
        self._reader, self._writer = await asyncio.open_connection(
            self.host, self.port, ssl=self.tls, server_hostname=self.host
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._writer is not None:
            self._writer.close()

    async def request(
        self, method: str, path: str, body: dict | None = None, params: dict | None = None
    ) -> dict:
        """The reply's JSON; raises HTTPStatusError for any status but 200."""
        target = self.prefix + path + ("?" + urlencode(params) if params else "")
        payload = orjson.dumps(body) if body is not None else b""
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host}"]
        lines += [f"{name}: {value}" for name, value in self.headers.items()]
        if body is not None:
            lines += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
        self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)
        status, reply = await self._response()
        if status != 200:
            raise HTTPStatusError(f"{method} {target}: {status} {reply.decode(errors='replace')}")
        return orjson.loads(reply)

    async def _response(self) -> tuple[int, bytes]:
        status_line = await self._reader.readline()
        if not status_line:
            raise ConnectionError(f"{self.host}:{self.port} closed the connection")
        status = int(status_line.split()[1])
        length = None
        while (line := await self._reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length is None:
            raise HTTPStatusError(f"reply with status {status} has no Content-Length")
        return status, await self._reader.readexactly(length)
