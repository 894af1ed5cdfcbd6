"""An image as a virtual machine boots it: a disk, a kernel and an initramfs.

A baked image whose recipe installs a kernel (linux-image-cloud-amd64) holds it in its
rootfs's /boot. The first VM to boot the image makes, beside the rootfs in the store,

    <root>/<hex>/vm/disk.qcow2    the rootfs as an ext4 file system (`mkfs.ext4 -d`)
    <root>/<hex>/vm/vmlinuz       the kernel, booted directly (no boot loader)
    <root>/<hex>/vm/initrd.img    its initramfs, which loads the virtio and fw_cfg drivers

named by the image's digest like the rootfs, made once (in a temporary directory,
renamed into place) and read-only from then on: each VM boots a copy-on-write overlay
of the disk.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from corral.errors import ImageError

VM_DIR = "vm"
DISK = "disk.qcow2"
KERNEL = "vmlinuz"
INITRD = "initrd.img"
# the file system's size as a node sees it; the qcow2 file holds only what is written
DISK_BYTES = 8 << 30


@dataclass(frozen=True)
class VmImage:
    disk: Path
    kernel: Path
    initrd: Path


def vm_image(rootfs: Path) -> VmImage:
    """The VM form of the image whose rootfs is `rootfs`, made on first use.

    Raises ImageError when the image has no kernel or a tool fails.
    """
    directory = rootfs.parent / VM_DIR
    made = VmImage(directory / DISK, directory / KERNEL, directory / INITRD)
    if made.disk.is_file():
        return made
    with open(rootfs.parent / ".vm.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another boot, here or in another process
        if not made.disk.is_file():
            _make(rootfs, directory)
    return made


def _make(rootfs: Path, directory: Path) -> None:
    kernels = sorted((rootfs / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise ImageError(
            f"image {rootfs.parent.name[:12]} has no kernel in /boot: a VM needs an image "
            "baked from a recipe with one (linux-image-cloud-amd64)"
        )
    kernel = kernels[-1]
    initrd = kernel.with_name("initrd.img-" + kernel.name.removeprefix("vmlinuz-"))
    if not initrd.is_file():
        raise ImageError(f"image {rootfs.parent.name[:12]} has {kernel.name} but no {initrd.name}")
    building = rootfs.parent / f".vm-tmp-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(mode=0o755)
    try:
        raw = building / "disk.raw"
        with open(raw, "wb") as sparse:
            sparse.truncate(DISK_BYTES)
        _run("mkfs.ext4", "-q", "-F", "-L", "corral-root", "-d", str(rootfs), str(raw))
        _run("qemu-img", "convert", "-q", "-O", "qcow2", str(raw), str(building / DISK))
        raw.unlink()
        shutil.copyfile(kernel, building / KERNEL)
        shutil.copyfile(initrd, building / INITRD)
        for made in building.iterdir():
            made.chmod(0o444)  # the VMs' overlays build on it: it must never change
        building.rename(directory)
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(building)


def _run(*command: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise ImageError(
            f"{command[0]} failed making a VM disk: {(result.stderr or result.stdout).strip()}",
            tool=command[0],
        )
