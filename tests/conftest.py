"""Shared fixtures: in-process services on a real SQLite store with the fake backend."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from corral.service.app import Service
from corral.service.config import ServiceConfig
from corral.store.models import utcnow

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


@pytest.fixture
def make_service(tmp_path: Path) -> Iterator[Callable[..., Service]]:
    """Start services on `tmp_path`; each is stopped at teardown, also when a test fails."""
    started: list[Service] = []

    def make(
        backend_options: dict[str, str] | None = None,
        clock: Callable = utcnow,
        data_dir: Path | None = None,
        **settings: Any,
    ) -> Service:
        config = ServiceConfig(
            data_dir=data_dir or tmp_path / "service",
            tick_seconds=0.05,
            backend_options={"boot_delay": "0.05", **(backend_options or {})},
            **settings,
        )
        service = Service(config, clock=clock)
        service.start()
        started.append(service)
        return service

    yield make
    for service in started:
        service.stop()


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
