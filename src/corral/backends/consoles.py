"""Where a backend keeps what its machines' consoles print, and how it reads them back.

A node's console (a VM's serial console, a container's output) is what a user reads when
a node did not come up, so it outlives the machine: it is kept as
`<backend root>/consoles/<cluster id>/<node id>.log` until the cluster's `clean_up`.
Consoles carry boot output a user of another cluster must not read: directories are
0700 and files 0600, from their first byte on.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

TAIL_BYTES = 4096  # read for the last lines of a machine that exited


class Consoles:
    """The consoles of one backend's machines, under `root`/consoles."""

    def __init__(self, root: Path) -> None:
        self.directory = root / "consoles"

    def path(self, cluster_id: str, node_id: str) -> Path:
        """Where the node's console is (or would be) kept; raises ValueError for an id
        that would lead elsewhere."""
        for name in (cluster_id, node_id):
            if not name or name.startswith(".") or "/" in name:
                raise ValueError(f"not an id a console is kept under: {name!r}")
        return self.directory / cluster_id / f"{node_id}.log"

    def open(self, cluster_id: str, node_id: str) -> int:
        """A file descriptor appending to the node's console (made 0600, its directories
        0700); the caller closes it."""
        path = self.path(cluster_id, node_id)
        for directory in (self.directory, path.parent):
            directory.mkdir(mode=0o700, exist_ok=True)
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def find(self, node_id: str) -> Path | None:
        """The node's console, whichever cluster it is kept under; None if none is."""
        if not self.directory.is_dir():
            return None
        for cluster in self.directory.iterdir():
            path = self.path(cluster.name, node_id)
            if path.is_file():
                return path
        return None

    def remove_cluster(self, cluster_id: str) -> None:
        """Remove every console of the cluster; a cluster with none is not an error."""
        remove_cluster(self.directory.parent, cluster_id)


def remove_cluster(root: Path, cluster_id: str) -> None:
    """Remove the consoles of `cluster_id` kept under the backend root `root`."""
    shutil.rmtree(root / "consoles" / cluster_id, ignore_errors=True)


def read_tail(path: Path, max_bytes: int) -> bytes | None:
    """The last `max_bytes` of the file at `path`, read from there on (a console may be
    large); None when there is no such file."""
    try:
        with open(path, "rb") as console:
            size = console.seek(0, os.SEEK_END)
            console.seek(max(0, size - max_bytes))
            return console.read(max_bytes)
    except FileNotFoundError:
        return None


def last_lines(path: Path, lines: int = 3) -> str:
    """The last few lines of a console (or log), on one line: why a machine exited."""
    try:
        data = read_tail(path, TAIL_BYTES)
    except OSError:
        return ""
    text = (data or b"").decode(errors="replace")
    return " | ".join(line.strip() for line in text.splitlines()[-lines:] if line.strip())
