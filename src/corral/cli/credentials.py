"""The user's credentials for a cluster on disk, and `corral ssh` built on them.

`ssh` trusts only corral's known_hosts for the cluster (one @cert-authority line) with
strict checking on, and logs in as root with a certificate of the cluster's SSH CA.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from corral.cli.client import Client
from corral.errors import NotFoundError
from corral.service.config import default_data_dir

FILES = {
    # file name: (field of the API's answer, mode)
    "ca.crt": ("ca_cert_pem", 0o644),
    "user.crt": ("user_cert_pem", 0o644),
    "user.key": ("user_key_pem", 0o600),
    "known_hosts": ("ssh_known_hosts", 0o644),
    "id_ed25519": ("ssh_user_key", 0o600),
    "id_ed25519.pub": ("ssh_user_public", 0o644),
    "id_ed25519-cert.pub": ("ssh_user_cert", 0o644),
}
# user SSH certificates last a day; fetch new ones well before
REFRESH_SECONDS = 12 * 3600


def write_credentials(issued: dict[str, Any], directory: Path) -> list[Path]:
    """Write what the service issued into `directory` (0700), keys 0600."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    written = []
    for name, (field, mode) in FILES.items():
        path = directory / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as out:
            out.write(issued[field].rstrip("\n") + "\n")
        os.chmod(path, mode)  # also when the file was there with another mode
        written.append(path)
    return written


def cached_credentials(client: Client, cluster_id: str) -> Path:
    """The cluster's credentials in the user's data directory, fetched when stale."""
    directory = default_data_dir() / "credentials" / cluster_id
    cert = directory / "id_ed25519-cert.pub"
    if not cert.exists() or time.time() - cert.stat().st_mtime > REFRESH_SECONDS:
        write_credentials(client.credentials(cluster_id), directory)
    return directory


def ssh_command(
    client: Client, cluster: dict[str, Any], node: str | None, command: tuple[str, ...]
) -> list[str]:
    """The ssh command line reaching `node` (default: the login node) of `cluster`.

    Raises NotFoundError naming the nodes there are when `node` is not one of them.
    """
    nodes = cluster["nodes"]
    if node is None:
        target = next((n for n in nodes if n["login"]), nodes[0])
    else:
        target = next((n for n in nodes if n["name"] == node), None)
        if target is None:
            names = ", ".join(n["name"] for n in nodes)
            raise NotFoundError(f"cluster {cluster['id']} has no node {node} (nodes: {names})")
    directory = cached_credentials(client, cluster["id"])
    return [
        "ssh",
        "-i",
        str(directory / "id_ed25519"),
        "-o",
        f"CertificateFile={directory / 'id_ed25519-cert.pub'}",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        f"UserKnownHostsFile={directory / 'known_hosts'}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "BatchMode=yes",
        f"root@{target['address']}",
        *command,
    ]
