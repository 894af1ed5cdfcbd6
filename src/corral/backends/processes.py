"""Whether a machine's process (a container's nspawn, a VM's qemu) still runs.

Backends record a pid per machine, and pids are recycled: a pid is taken as the machine's
only while its command line names the machine's own directory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def alive(pid: int, directory: str) -> bool:
    """True while `pid` runs and is the process of the machine in `directory`."""
    try:
        # our own child keeps its pid until we reap it; its command line is no test, since
        # it is Python's until it execs, and empty for a moment while it does
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        pass  # started by an earlier run of the service, or reaped: ask /proc
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return directory.encode() in command and "\nState:\tZ" not in status


def kill(pid: int, directory: str, wait: float = 5.0) -> None:
    """SIGKILL the machine's process group, if `pid` is still its process, and wait up to
    `wait` seconds until it is gone (which reaps it when it is our child)."""
    if not alive(pid, directory):
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + wait
    while alive(pid, directory) and time.monotonic() < deadline:
        time.sleep(0.1)
