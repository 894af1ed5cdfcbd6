"""A control group of its own for each container, so that containers cannot race on one.

`systemd-nspawn --keep-unit --register=no` runs the container in the cgroup nspawn was
started in, and the systemd inside makes its units' groups (`system.slice/...`) under
it. Containers started from one service would all share that group, and one container's
systemd then removes a unit's group another container is about to enter: the unit fails
with status 219/CGROUP. Each container's nspawn therefore starts in a group of its own,
`corral/<name>`, in every hierarchy the systemd inside uses: the unified (v2) one and,
on a hybrid or legacy host, the named `systemd` one.

The same group holds the container to the cores and memory it was placed with: on a
unified host `cpu.max` and `memory.max` in the unified hierarchy; on a hybrid or legacy
host, where the memory and cpu controllers are still in hierarchies of their own (v1),
a group there with `memory.limit_in_bytes` and `cpu.cfs_quota_us`. A container that
allocates more than its memory is stopped by the kernel's OOM killer inside its group.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MOUNT = Path("/sys/fs/cgroup")
PARENT = "corral"
REMOVE_SECONDS = 5.0
CPU_PERIOD_US = 100_000
_parent = threading.Lock()  # the shared parent is made and removed by one thread at a time


def hierarchies(mount: Path = MOUNT) -> list[Path]:
    """The roots of the hierarchies systemd keeps its units' groups in, on this host."""
    if (mount / "cgroup.controllers").exists():  # unified only
        return [mount]
    return [root for root in (mount / "unified", mount / "systemd") if root.is_dir()]


@dataclass(frozen=True)
class Limits:
    """What a container may use: its cores (as CPU time) and its memory."""

    cores: int
    memory_mib: int


def limit_hierarchies(mount: Path = MOUNT) -> list[Path]:
    """The v1 hierarchies of the memory and cpu controllers, where they are not in the
    unified one (a hybrid or legacy host); none on a unified host."""
    if (mount / "cgroup.controllers").exists():
        return []
    return [root for root in (mount / "memory", mount / "cpu") if root.is_dir()]


def groups(name: str, mount: Path = MOUNT) -> list[Path]:
    """Container `name`'s group in each hierarchy (made by `entering`)."""
    return [root / PARENT / name for root in hierarchies(mount) + limit_hierarchies(mount)]


def entering(
    name: str, command: list[str], limits: Limits | None = None, mount: Path = MOUNT
) -> list[str]:
    """`command` started in container `name`'s own groups, which this makes now, held to
    `limits` where given.

    A shell moves itself into the groups and then becomes `command`, so that everything
    `command` starts is inside them from its first instruction.

    Raises OSError when a limit cannot be set: a container is not started unconfined.
    """
    moves = []
    for group in groups(name, mount):
        with _parent:
            group.mkdir(parents=True, exist_ok=True)
        if limits is not None:
            _limit(group, limits, mount)
        moves.append(f"echo $$ > {shlex.quote(str(group / 'cgroup.procs'))}")
    script = " && ".join([*moves, 'exec "$@"'])
    return ["sh", "-c", script, "sh", *command]


def _limit(group: Path, limits: Limits, mount: Path) -> None:
    memory = limits.memory_mib * 1024 * 1024
    quota = limits.cores * CPU_PERIOD_US
    if group.parent.parent == mount:  # the unified hierarchy of a unified host
        for parent in (mount, group.parent):
            (parent / "cgroup.subtree_control").write_text("+memory +cpu")
        (group / "memory.max").write_text(str(memory))
        (group / "cpu.max").write_text(f"{quota} {CPU_PERIOD_US}")
    elif (group / "memory.limit_in_bytes").exists():
        (group / "memory.limit_in_bytes").write_text(str(memory))
    elif (group / "cpu.cfs_quota_us").exists():
        (group / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
        (group / "cpu.cfs_quota_us").write_text(str(quota))


def limits_of(name: str, mount: Path = MOUNT) -> Limits | None:
    """The limits container `name`'s groups hold it to, read back; None if unlimited."""
    memory = quota = None
    for group in groups(name, mount):
        if (group / "memory.max").exists():
            memory = (group / "memory.max").read_text().strip()
            quota = (group / "cpu.max").read_text().split()[0]
        elif (group / "memory.limit_in_bytes").exists():
            memory = (group / "memory.limit_in_bytes").read_text().strip()
        elif (group / "cpu.cfs_quota_us").exists():
            quota = (group / "cpu.cfs_quota_us").read_text().strip()
    if not memory or not quota or not memory.isdigit() or not quota.isdigit():
        return None
    return Limits(int(quota) // CPU_PERIOD_US, int(memory) // (1024 * 1024))


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
