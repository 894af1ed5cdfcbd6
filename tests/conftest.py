"""Shared fixtures: in-process services on a real SQLite store with the fake backend."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.service.app import Service
from corral.service.config import ServiceConfig
from corral.store.models import utcnow


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
