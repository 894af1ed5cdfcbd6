"""Serving a Service: its API over HTTP and its broker over HTTPS, in one event loop.

`run_in_foreground` is `corral serve`; `ServersThread` runs the same in a thread for tests
that need real sockets (agents, the CLI). Both run on uvloop: its event loop and TLS
transport cost a quarter less CPU per agent connection than asyncio's (bench/http_floor.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator

import uvicorn
import uvloop

from corral.service.config import split_listen
from corral.service.process import Service

RENEWAL_CHECK_SECONDS = 3600.0


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # signals are handled once for both servers (see run_in_foreground)
        yield


def _server(app: object, listen: str, **options: object) -> _Server:
    """A server of `app` on `listen` (HOST:PORT), quiet, with `options` for uvicorn."""
    host, port = split_listen(listen)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        lifespan="off",
        timeout_graceful_shutdown=5,
        **options,
    )
    return _Server(config)


class Servers:
    """The API, broker and (if configured) metadata servers of one service.

    Only the API believes proxy headers, and only from the proxies a site configured: the
    broker and the metadata service face the clusters, and the metadata service answers
    by the real address a request comes from.
    """

    def __init__(self, service: Service, renewal_check_seconds: float = RENEWAL_CHECK_SECONDS):
        self.service = service
        self.renewal_check_seconds = renewal_check_seconds
        config = service.config
        self.api = _server(
            service.app,
            config.listen,
            proxy_headers=bool(config.trusted_proxies),
            forwarded_allow_ips=",".join(config.trusted_proxies) or None,
        )
        self.broker = _server(
            service.broker_app,
            config.broker_listen,
            ssl_certfile=str(service.broker_identity.cert_path),
            ssl_keyfile=str(service.broker_identity.key_path),
            http="httptools",  # parses in C: a third less CPU per agent than h11 here
            timeout_keep_alive=75,  # longer than an agent's long-poll
            proxy_headers=False,  # agents reach the broker directly, never via a proxy
        )
        self.all = [self.api, self.broker]
        if config.metadata_listen:
            # the peer's own address is the node's identity: no proxy header is believed
            metadata = _server(service.metadata_app, config.metadata_listen, proxy_headers=False)
            self.all.append(metadata)

    @property
    def started(self) -> bool:
        return all(server.started for server in self.all)

    def stop(self) -> None:
        self.service.notifier.close()  # held long-polls answer now instead of being cancelled
        for server in self.all:
            server.should_exit = True

    async def serve(self) -> None:
        self.service.notifier.bind(asyncio.get_running_loop())
        renewing = asyncio.get_running_loop().create_task(self._renew_broker_certificate())
        try:
            await asyncio.gather(*(server.serve() for server in self.all))
        finally:
            renewing.cancel()
        if not self.started:
            config = self.service.config
            where = f"{config.listen} (API), {config.broker_listen} (broker)"
            if config.metadata_listen:
                where += f", {config.metadata_listen} (metadata)"
            raise OSError(f"could not listen on {where}; see the log above")

    async def _renew_broker_certificate(self) -> None:
        """Renew the broker's certificate while it runs, and serve the new one at once:
        new connections get it, and agents accept it by its unchanged key."""
        while True:
            await asyncio.sleep(self.renewal_check_seconds)
            before = self.service.broker_identity.fingerprint
            identity = await asyncio.to_thread(self.service.renew_broker_identity)
            tls = self.broker.config.ssl
            if identity.fingerprint != before and tls is not None:
                tls.load_cert_chain(identity.cert_path, identity.key_path)


def run_in_foreground(service: Service, on_listening: Callable[[], None]) -> None:
    """Serve until SIGINT or SIGTERM, with the service's engine running meanwhile.

    Raises StoreHeldError once it has stopped if another service took its store over.
    """
    servers = Servers(service)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, servers.stop)
        # a service whose store another service took over must not go on as if it held it
        service.on_store_lost = lambda: loop.call_soon_threadsafe(servers.stop)
        if service.hold.lost is not None:
            servers.stop()
        announce = loop.create_task(_when_started(servers, on_listening))
        try:
            await servers.serve()
        finally:
            service.on_store_lost = None
            announce.cancel()

    service.start()
    try:
        uvloop.run(main())
    finally:
        service.stop()
        if service.hold.lost is not None:
            raise service.hold.lost  # the cause, whatever else stopping the servers raised


async def _when_started(servers: Servers, callback: Callable[[], None]) -> None:
    while not servers.started:
        await asyncio.sleep(0.05)
    callback()


class ServersThread:
    """The servers of a started service, run on a thread until `stop()`."""

    def __init__(self, service: Service, **options: float) -> None:
        self.servers = Servers(service, **options)
        self._thread = threading.Thread(
            target=lambda: uvloop.run(self.servers.serve()), name="corral-servers", daemon=True
        )

    def start(self, timeout: float = 15.0) -> ServersThread:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.servers.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise OSError("the service's servers did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.servers.stop()
        self._thread.join(timeout=15)
