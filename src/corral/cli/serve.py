"""`corral serve`: the service's API and broker in the foreground, until a signal."""

from __future__ import annotations

from corral.cli.connection import clear_state, write_state
from corral.service.config import ServiceConfig, split_listen
from corral.service.process import Service
from corral.service.servers import run_in_foreground


def run_service(config: ServiceConfig) -> None:
    """Serve until SIGINT/SIGTERM; raises ValueError for a bad listen address or backend."""
    host, port = split_listen(config.listen)
    split_listen(config.broker_listen)
    if config.metadata_listen:
        split_listen(config.metadata_listen)
    service = Service(config)
    try:
        run_in_foreground(
            service,
            # service.json is written once both sockets listen, so no client reads a dead URL
            lambda: write_state(config.data_dir, f"http://{host}:{port}", service.instance),
        )
    finally:
        clear_state(config.data_dir)
