"""The user's credentials for a cluster on disk, and `corral ssh` built on them.

`ssh` trusts only corral's known_hosts for the cluster (one @cert-authority line) with
strict checking on, and logs in as root with a certificate of the cluster's SSH CA.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from corral.cli.client import Client
from corral.cli.render import when
from corral.errors import ConflictError, NotFoundError
from corral.service.config import default_data_dir
from corral.service.schemas import ClusterDetail, CredentialsView, NodeView


def _files(issued: CredentialsView) -> dict[str, tuple[str, int]]:
    """File name: (content, mode)."""
    return {
        "ca.crt": (issued.ca_cert_pem, 0o644),
        "user.crt": (issued.user_cert_pem, 0o644),
        "user.key": (issued.user_key_pem, 0o600),
        "known_hosts": (issued.ssh_known_hosts, 0o644),
        "id_ed25519": (issued.ssh_user_key, 0o600),
        "id_ed25519.pub": (issued.ssh_user_public, 0o644),
        "id_ed25519-cert.pub": (issued.ssh_user_cert, 0o644),
        # when the certificates end: the lease's end
        "valid_until": (when(issued.valid_until), 0o644),
    }


def write_credentials(issued: CredentialsView, directory: Path) -> list[Path]:
    """Write what the service issued into `directory` (0700), keys 0600."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    written = []
    for name, (content, mode) in _files(issued).items():
        path = directory / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as out:
            out.write(content.rstrip("\n") + "\n")
        os.chmod(path, mode)  # also when the file was there with another mode
        written.append(path)
    return written


def cached_credentials(client: Client, cluster: ClusterDetail) -> Path:
    """The cluster's credentials in the user's data directory, fetched again when they end
    before the cluster's lease does (it was extended) or have ended, or when their
    known_hosts does not name every node (a resize or autoscaling added some)."""
    directory = default_data_dir() / "credentials" / cluster.id
    if not _last_the_lease(directory / "valid_until", cluster.lease_end) or not _names_every_node(
        directory / "known_hosts", cluster
    ):
        write_credentials(client.credentials(cluster.id).model, directory)
    return directory


def _names_every_node(known_hosts: Path, cluster: ClusterDetail) -> bool:
    """Whether the @cert-authority line's host patterns hold every live node's address."""
    try:
        first = known_hosts.read_text().split("\n", 1)[0].split()
    except OSError:
        return False
    patterns = set(first[1].split(",")) if len(first) > 2 else set()
    live = {n.address for n in cluster.nodes if n.address and n.state != "terminated"}
    return live <= patterns


def _last_the_lease(valid_until: Path, lease_end: datetime) -> bool:
    try:
        until = datetime.fromisoformat(valid_until.read_text().strip())
    except (OSError, ValueError):
        return False
    # certificates hold whole seconds
    lease = lease_end.replace(microsecond=0)
    return until.replace(microsecond=0) >= lease and until > datetime.now(UTC)


def check_reachable(cluster: ClusterDetail) -> None:
    """Raises ConflictError when `cluster` has no nodes to reach: it ended or is ending."""
    if cluster.state not in ("ready", "degraded", "failed", "launching"):
        raise ConflictError(f"cluster {cluster.id} is {cluster.state}")


def node_of(cluster: ClusterDetail, node: str | None) -> NodeView:
    """Node `node` of `cluster` (default: its login node).

    Raises NotFoundError naming the nodes there are when `node` is not one of them.
    """
    nodes = cluster.nodes
    if node is None:
        return next((n for n in nodes if n.login), nodes[0])
    # an autoscaled group's names come back: the live node of a name first
    named = sorted((n for n in nodes if n.name == node), key=lambda n: n.state == "terminated")
    target = named[0] if named else None
    if target is None:
        names = ", ".join(n.name for n in nodes)
        raise NotFoundError(f"cluster {cluster.id} has no node {node} (nodes: {names})")
    return target


def ssh_options(client: Client, cluster: ClusterDetail) -> list[str]:
    """ssh's options for any node of `cluster`: the user's certificate and the cluster's
    known_hosts (host keys checked strictly against the cluster's CA, nothing else)."""
    directory = cached_credentials(client, cluster)
    return [
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
    ]


def ssh_command(
    client: Client,
    cluster: ClusterDetail,
    node: str | None,
    command: tuple[str, ...],
    user: str | None = None,
) -> list[str]:
    """The ssh command line reaching `node` (default: the login node) of `cluster` as
    `user` (default: the cluster's login user, see ClusterDetail.login_user).

    Raises NotFoundError naming the nodes there are when `node` is not one of them.
    """
    target = node_of(cluster, node)
    account = user or cluster.login_user
    return ["ssh", *ssh_options(client, cluster), f"{account}@{target.address}", *command]
