"""Helpers for tests that reach an in-process service through its HTTP API."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from corral.service.app import Service

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
