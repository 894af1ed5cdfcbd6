"""Whether KVM runs guests on this machine, or qemu must emulate them (TCG).

/dev/kvm can be there and open, and a guest still hang: on a machine that is itself a
VM without working nested virtualization, a Linux guest under KVM stops before its first
line. So the probe boots the image's kernel under KVM, its console on a pipe, and waits a
few seconds for the kernel's banner. The verdict is a property of this machine, kept in
a file (in /run, which a reboot empties, and checked against the boot id) for every pool
and service here: a restarted service does not probe again.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

KVM_DEVICE = Path("/dev/kvm")
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
VERDICT_FILE = Path("/run/corral/qemu-accelerator.json")
PROBE_SECONDS = 5.0
BANNER = b"Linux version"


@dataclass(frozen=True)
class Accelerator:
    name: str  # "kvm" or "tcg", as qemu's -accel takes it
    reason: str  # why, in a few words, for the log


def choose(
    kernel: Path,
    verdict_file: Path = VERDICT_FILE,
    qemu: str = "qemu-system-x86_64",
    device: Path = KVM_DEVICE,
    seconds: float = PROBE_SECONDS,
) -> Accelerator:
    """KVM when `device` opens and a guest kernel under it prints its banner within
    `seconds`, else TCG; the verdict of an earlier probe since this machine booted when
    `verdict_file` holds one."""
    boot_id = _boot_id()
    try:
        kept = json.loads(verdict_file.read_text())
        if kept["boot_id"] == boot_id:
            return Accelerator(kept["name"], kept["reason"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    found = _probe(kernel, qemu, device, seconds)
    verdict_file.parent.mkdir(parents=True, exist_ok=True)
    verdict_file.write_text(json.dumps({"boot_id": boot_id, **found.__dict__}) + "\n")
    return found


def _probe(kernel: Path, qemu: str, device: Path, seconds: float) -> Accelerator:
    if not os.access(device, os.R_OK | os.W_OK):
        return Accelerator("tcg", f"{device} is missing or not ours to use")
    command = [
        qemu,
        "-accel", "kvm",
        "-cpu", "host",
        "-machine", "q35",
        "-m", "256",
        "-nodefaults",
        "-no-user-config",
        "-display", "none",
        "-no-reboot",
        "-kernel", str(kernel),
        "-append", "console=ttyS0 panic=-1",
        "-serial", "stdio",
    ]  # fmt: skip
    started = time.monotonic()
    try:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    except OSError as exc:
        return Accelerator("tcg", f"{qemu} could not start: {exc.strerror}")
    assert process.stdout is not None
    seen = b""
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            while BANNER not in seen and (left := started + seconds - time.monotonic()) > 0:
                if selector.select(left):
                    chunk = os.read(process.stdout.fileno(), 4096)
                    if not chunk:  # qemu is ending: let it say why
                        with contextlib.suppress(subprocess.TimeoutExpired):
                            process.wait(timeout=1)
                        break
                    seen = seen[-64:] + chunk
    finally:
        exited = process.poll()
        process.kill()
        _, errors = process.communicate()
    if BANNER in seen:
        return Accelerator("kvm", f"a guest kernel under KVM started in {_since(started)}")
    if exited and errors.strip():
        reason = errors.decode(errors="replace").strip().splitlines()[-1]
        return Accelerator("tcg", f"KVM refused a guest: {reason}")
    return Accelerator(
        "tcg", f"a guest kernel under KVM printed nothing in {seconds:g} s (nested KVM hangs)"
    )


def _since(started: float) -> str:
    return f"{time.monotonic() - started:.1f} s"


def _boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""
