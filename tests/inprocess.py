"""Helpers for tests that reach an in-process service through its HTTP API."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from corral.service.process import Service

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def wait_for(check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll `check` until it returns something truthy; fail the test with its last value."""
    deadline = time.monotonic() + timeout
    value = check()
    while not value:
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value: {value!r})")
        time.sleep(interval)
        value = check()
    return value


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def admin_token(service: Service) -> str:
    return service.config.admin_token_file.read_text().strip()


def api(service: Service, token: str | None = None) -> TestClient:
    """An HTTP client that reaches the service's app in-process, as `token`'s user."""
    client = TestClient(service.app, raise_server_exceptions=True)
    if token:
        client.headers["Authorization"] = f"Bearer {token}"
    return client


def document(name: str = "base-cluster.yaml") -> str:
    return (EXAMPLES / name).read_text()


def post_streamed(
    app: Any, token: str, total: int, chunk: int = 64 * 1024
) -> tuple[int, int, list[tuple[bytes, bytes]], dict[str, Any]]:
    """POST `total` bytes to /v1/clusters through the bare ASGI interface, chunk by chunk
    as a client streams them, with no Content-Length (the test client would read a
    streamed body whole first). Returns the bytes the app took, and the status, headers
    and JSON body it answered."""
    taken = 0
    piece = b" " * chunk
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal taken
        if taken >= total:
            return {"type": "http.disconnect"}
        taken += chunk
        return {"type": "http.request", "body": piece, "more_body": taken < total}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/clusters",
        "raw_path": b"/v1/clusters",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"content-type", b"application/json"),
            (b"transfer-encoding", b"chunked"),
            (b"authorization", f"Bearer {token}".encode()),
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("testserver", 80),
    }
    asyncio.run(app(scope, receive, send))
    start, *rest = sent
    body = b"".join(m.get("body", b"") for m in rest)
    return taken, start["status"], start["headers"], json.loads(body)
