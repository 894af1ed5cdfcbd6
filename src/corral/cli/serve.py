"""`corral serve`: the service's API and broker in the foreground, until a signal.

The service's modules are imported only when it runs: the other commands start fast.
"""

from __future__ import annotations

from pathlib import Path

import click

from corral.cli.connection import clear_state, write_state
from corral.logs import configure_service_logging
from corral.service.config import (
    DEFAULT_BROKER_PORT,
    DEFAULT_METADATA_PORT,
    ServiceConfig,
    split_listen,
)
from corral.service.config_file import read_config_file
from corral.units import parse_duration


@click.command()
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    default=None,
    help="Configuration file with the service's pools (see docs/configuration.md).",
)
@click.option(
    "--backend",
    default=None,
    help="Backend for the local pool (default: $CORRAL_BACKEND, else nspawn if usable, else fake).",
)
@click.option("--backend-option", "backend_options", multiple=True, metavar="KEY=VALUE")
@click.option("--db", "db_url", default=None, help="Database URL (default: SQLite in data dir).")
@click.option("--listen", default=None, metavar="HOST:PORT", help="API address.")
@click.option("--broker-listen", default=None, metavar="HOST:PORT", help="Broker (HTTPS).")
@click.option("--broker-url", default=None, help="Broker URL nodes are given.")
@click.option(
    "--metadata-listen",
    default=None,
    metavar="HOST:PORT",
    help="Metadata service (HTTP; default: the broker's host, port 8472).",
)
@click.option(
    "--trusted-proxy",
    "trusted_proxies",
    multiple=True,
    metavar="ADDR",
    help="A proxy in front of the API whose X-Forwarded-For is believed (none by default).",
)
@click.option("--data-dir", type=click.Path(path_type=Path), default=None)
@click.option(
    "--broker-cert-lifetime",
    default=None,
    metavar="DURATION",
    help="Lifetime of the broker's TLS certificate (90d); renewed with the same key.",
)
@click.option("--default-lease", default=None, metavar="DURATION")
@click.option("--max-lease", default=None, metavar="DURATION")
@click.option("--tick", "tick_seconds", type=float, default=None, help="Engine interval (s).")
@click.option(
    "--heartbeat",
    default=None,
    metavar="DURATION",
    help="A ready node whose agent is silent this long is lost (90s).",
)
def serve(
    config_file: Path | None,
    backend: str | None,
    backend_options: tuple[str, ...],
    db_url: str | None,
    listen: str | None,
    broker_listen: str | None,
    broker_url: str | None,
    metadata_listen: str | None,
    trusted_proxies: tuple[str, ...],
    data_dir: Path | None,
    broker_cert_lifetime: str | None,
    default_lease: str | None,
    max_lease: str | None,
    tick_seconds: float | None,
    heartbeat: str | None,
) -> None:
    """Run the service (API, engine, leases) in the foreground."""
    config = ServiceConfig()
    if data_dir:
        config.data_dir = data_dir
    if config_file is not None:
        if backend or backend_options:
            raise click.UsageError(
                "--backend and --backend-option describe one pool; with --config, "
                "the file describes every pool"
            )
        try:
            read_config_file(config_file, config)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--config") from None
    if backend:
        config.backend = backend
    for item in backend_options:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--backend-option")
        config.backend_options[key] = value
    config.db_url = db_url
    if listen:
        config.listen = listen
    if broker_listen:
        config.broker_listen = broker_listen
    elif config.nodes_reach_service_at_gateways():
        # containers reach the broker at their bridge's address
        config.broker_listen = f"0.0.0.0:{DEFAULT_BROKER_PORT}"
    config.broker_url = broker_url
    # beside the broker, facing the clusters (a bad address is refused with the broker's)
    broker_host = config.broker_listen.rpartition(":")[0]
    config.metadata_listen = metadata_listen or f"{broker_host}:{DEFAULT_METADATA_PORT}"
    config.trusted_proxies = trusted_proxies
    try:
        if default_lease:
            config.default_lease = parse_duration(default_lease)
        if max_lease:
            config.max_lease = parse_duration(max_lease)
        if broker_cert_lifetime:
            config.broker_cert_lifetime = parse_duration(broker_cert_lifetime)
        if heartbeat:
            config.heartbeat = parse_duration(heartbeat)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if tick_seconds is not None:
        if tick_seconds <= 0:
            raise click.BadParameter("must be positive", param_hint="--tick")
        config.tick_seconds = tick_seconds
    configure_service_logging()
    try:
        run_service(config)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def run_service(config: ServiceConfig) -> None:
    """Serve until SIGINT/SIGTERM; raises ValueError for a bad listen address or backend."""
    from corral.service.process import Service
    from corral.service.servers import run_in_foreground

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
