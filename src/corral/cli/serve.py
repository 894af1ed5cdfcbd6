"""`corral serve`: the service under uvicorn, in the foreground, until a signal."""

from __future__ import annotations

import signal
import threading
import time

import uvicorn

from corral.cli.connection import clear_state, write_state
from corral.service.app import Service
from corral.service.config import ServiceConfig


def run_service(config: ServiceConfig) -> None:
    """Serve until SIGINT/SIGTERM; raises ValueError for a bad listen address or backend."""
    host, sep, port = config.listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--listen must be HOST:PORT, not {config.listen!r}")
    service = Service(config)
    server = uvicorn.Server(
        uvicorn.Config(service.app, host=host, port=int(port), log_level="warning")
    )
    # uvicorn re-raises the signal that stopped it once it is done; handled by a no-op,
    # it lets the cleanup below run instead of killing the process first
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    service.start()
    announcer = threading.Thread(
        target=_announce_when_listening,
        args=(server, config, f"http://{host}:{port}", service.instance),
        daemon=True,
    )
    announcer.start()
    try:
        server.run()
    finally:
        clear_state(config.data_dir)
        service.stop()


def _announce_when_listening(
    server: uvicorn.Server, config: ServiceConfig, url: str, instance: str
) -> None:
    """Write service.json once the socket is bound, so no client reads a dead URL."""
    while not server.started:
        if server.should_exit:
            return
        time.sleep(0.05)
    write_state(config.data_dir, url, instance)
