"""A control group of its own for each container, so that containers cannot race on one.

`systemd-nspawn --keep-unit --register=no` runs the container in the cgroup nspawn was
started in, and the systemd inside makes its units' groups (`system.slice/...`) under
it. Containers started from one service would all share that group, and one container's
systemd then removes a unit's group another container is about to enter: the unit fails
with status 219/CGROUP. Each container's nspawn therefore starts in a group of its own,
`corral/<name>`, in every hierarchy the systemd inside uses: the unified (v2) one and,
on a hybrid or legacy host, the named `systemd` one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

MOUNT = Path("/sys/fs/cgroup")
PARENT = "corral"
REMOVE_SECONDS = 5.0
_parent = threading.Lock()  # the shared parent is made and removed by one thread at a time


def hierarchies(mount: Path = MOUNT) -> list[Path]:
    """The roots of the hierarchies systemd keeps its units' groups in, on this host."""
    if (mount / "cgroup.controllers").exists():  # unified only
        return [mount]
    return [root for root in (mount / "unified", mount / "systemd") if root.is_dir()]


def groups(name: str, mount: Path = MOUNT) -> list[Path]:
    """Container `name`'s group in each hierarchy (made by `entering`)."""
    return [root / PARENT / name for root in hierarchies(mount)]


def entering(name: str, command: list[str], mount: Path = MOUNT) -> list[str]:
    """`command` started in container `name`'s own groups, which this makes now.

    A shell moves itself into the groups and then becomes `command`, so that everything
    `command` starts is inside them from its first instruction.
    """
    moves = []
    for group in groups(name, mount):
        with _parent:
            group.mkdir(parents=True, exist_ok=True)
        moves.append(f"echo $$ > {shlex.quote(str(group / 'cgroup.procs'))}")
    script = " && ".join([*moves, 'exec "$@"'])
    return ["sh", "-c", script, "sh", *command]


def remove(name: str, mount: Path = MOUNT) -> None:
    """Remove container `name`'s groups, waiting for processes being killed to leave them.

    Groups are removed innermost first (the container's systemd made some inside); a
    group that still has processes after REMOVE_SECONDS is left, with a warning.
    """
    deadline = time.monotonic() + REMOVE_SECONDS
    for group in groups(name, mount):
        if not group.is_dir():
            continue
        inner_first = sorted((p for p in group.rglob("*") if p.is_dir()), reverse=True)
        for directory in [*inner_first, group]:
            while True:
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if time.monotonic() > deadline:
                        log.warning("nspawn: could not remove cgroup %s: %s", directory, exc)
                        return
                    time.sleep(0.05)
        with _parent, contextlib.suppress(OSError):  # it goes with the last container
            os.rmdir(group.parent)
