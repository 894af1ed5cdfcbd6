"""Finding the service to talk to, and starting a local one when none is configured.

$CORRAL_URL and $CORRAL_TOKEN name a service and a user. Without them the CLI uses the
local service of the user's data directory: the one recorded in its service.json if it
still answers, otherwise a new `corral serve` started in the background, with the admin
token it wrote.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click

from corral.cli.client import Client
from corral.errors import ServiceUnavailableError
from corral.service.config import (
    DEFAULT_BROKER_PORT,
    DEFAULT_METADATA_PORT,
    DEFAULT_PORT,
    ServiceConfig,
    default_backend,
    default_data_dir,
)

STATE_FILE = "service.json"
START_TIMEOUT = 30.0


@dataclass(frozen=True)
class Target:
    url: str
    token: str | None


def connect() -> Client:
    target = configured_target() or local_target(default_data_dir())
    return Client(target.url, target.token)


def configured_target() -> Target | None:
    url = os.environ.get("CORRAL_URL")
    return Target(url, os.environ.get("CORRAL_TOKEN")) if url else None


def local_target(data_dir: Path) -> Target:
    """The local service of `data_dir`, started now if it is not running."""
    url = running_local_url(data_dir)
    if url is None:
        url = start_local(data_dir)
    token_file = data_dir / "admin.token"
    token = os.environ.get("CORRAL_TOKEN") or (
        token_file.read_text().strip() if token_file.exists() else None
    )
    return Target(url, token)


def running_local_url(data_dir: Path) -> str | None:
    state = data_dir / STATE_FILE
    if not state.exists():
        return None
    try:
        recorded = json.loads(state.read_text())
        url, instance = recorded["url"], recorded["instance"]
    except (ValueError, KeyError):
        return None
    # a service that died leaves its file behind; another may answer on its port since
    return url if _instance_at(url) == instance else None


def start_local(data_dir: Path) -> str:
    """Start `corral serve` for `data_dir` in the background; return its URL once it answers.

    Raises ServiceUnavailableError (naming the log file) if it does not come up.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    port = DEFAULT_PORT if _port_free(DEFAULT_PORT) else _free_port()
    broker_port = DEFAULT_BROKER_PORT if _port_free(DEFAULT_BROKER_PORT) else _free_port()
    metadata_port = DEFAULT_METADATA_PORT if _port_free(DEFAULT_METADATA_PORT) else _free_port()
    # containers reach the broker at their bridge; other backends need only loopback
    at_gateways = ServiceConfig(backend=default_backend()).nodes_reach_service_at_gateways()
    cluster_side = "0.0.0.0" if at_gateways else "127.0.0.1"
    log_path = data_dir / "service.log"
    command = [
        sys.executable,
        "-m",
        "corral",
        "serve",
        "--data-dir",
        str(data_dir),
        "--listen",
        f"127.0.0.1:{port}",
        "--broker-listen",
        f"{cluster_side}:{broker_port}",
        "--metadata-listen",
        f"{cluster_side}:{metadata_port}",
    ]
    with open(log_path, "ab") as log:
        subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives this command, like a daemon
        )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        # another command may have started one at the same moment: whichever holds the
        # store answers, and the other exits
        running = running_local_url(data_dir)
        if running is not None:
            click.echo(
                f"corral: no service configured; started a local one at {running} "
                f"(data {data_dir}, log {log_path})",
                err=True,
            )
            return running
        time.sleep(0.2)
    raise ServiceUnavailableError(
        f"started a local corral service but it did not answer within {START_TIMEOUT:.0f}s; "
        f"see {log_path}",
        log=str(log_path),
    )


def write_state(data_dir: Path, url: str, instance: str) -> None:
    """Record where this data directory's service listens (called by `corral serve`)."""
    path = data_dir / STATE_FILE
    path.write_text(json.dumps({"url": url, "pid": os.getpid(), "instance": instance}))


def clear_state(data_dir: Path) -> None:
    path = data_dir / STATE_FILE
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def _instance_at(url: str) -> str | None:
    """The instance id of the service answering at `url`, or None if none answers."""
    client = Client(url, None, timeout=2.0)
    try:
        return client.health().model.instance
    except ServiceUnavailableError:
        return None
    finally:
        client.close()


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
