"""What an appliance image is made of, and the digest that names it in the store.

A Recipe is data: a Debian suite and mirror, the packages, the files baked in from this
machine (the agent, the role scripts, the units and configuration under images/files/),
the units to enable, disable and mask, the generators to mask, and the paths to remove
(per-node state that packages create at install time, such as SSH host keys). Its digest
covers every byte that goes into the image, so changing the agent or a role script names
a new image.
"""

from __future__ import annotations

import hashlib
import json
import stat
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_MIRROR = "http://deb.debian.org/debian"

# Bump when bake.py changes what it does to every image, so old bakes stop matching.
LAYOUT_VERSION = 2

_PACKAGE_DIR = Path(__file__).resolve().parent
AGENT = _PACKAGE_DIR.parent / "agent.py"
ROLES = _PACKAGE_DIR / "roles"
FILES = _PACKAGE_DIR / "files"

# never baked in: byte-code caches of role helpers that tests or tools imported
_SKIPPED_NAMES = {"__pycache__"}
_SKIPPED_SUFFIXES = (".pyc", ".pyo")


@dataclass(frozen=True)
class BakedFile:
    """A file, or a directory tree of files, of this machine copied into the image.

    `mode` None keeps the executable bit of each source (0755 if any x bit, else 0644),
    so a checkout's umask does not change the digest. A missing `optional` source is
    skipped; a missing required one raises FileNotFoundError.
    """

    source: Path
    target: str  # absolute path in the image; a directory's files go under it
    mode: int | None = None
    optional: bool = False


@dataclass(frozen=True)
class Content:
    """One regular file as it will be in the image: path, mode and bytes."""

    path: str
    mode: int
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class Recipe:
    """How to build one appliance image from Debian packages (see bake.py)."""

    name: str
    packages: tuple[str, ...]
    files: tuple[BakedFile, ...] = ()
    suite: str = "bookworm"
    mirror: str = DEFAULT_MIRROR
    enable: tuple[str, ...] = ()  # units started at boot
    disable: tuple[str, ...] = ()  # units the packages enabled that must not start at boot
    mask: tuple[str, ...] = ()  # units that cannot work in a node
    # generators for what a node never has (encrypted disks, SysV scripts, ...): systemd
    # runs every generator at boot and at every reload, each costing ~7 ms of CPU
    mask_generators: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()  # glob patterns of absolute paths, removed before `files`
    # paths among `files` put in place before the packages install, for what a package's
    # own scripts read (the initramfs's module list, which the kernel's postinst builds)
    before_packages: tuple[str, ...] = ()


def contents(recipe: Recipe) -> list[Content]:
    """Every file the recipe bakes in, read now, sorted by path.

    Raises FileNotFoundError for a missing required source and ValueError for anything
    but regular files and directories (a symlink, say) or a relative target.
    """
    found: dict[str, Content] = {}
    for baked in recipe.files:
        if not baked.target.startswith("/"):
            raise ValueError(f"recipe {recipe.name}: target {baked.target!r} is not absolute")
        if not baked.source.exists() and not baked.source.is_symlink():
            if baked.optional:
                continue
            raise FileNotFoundError(f"recipe {recipe.name}: {baked.source} does not exist")
        for source, target in _expand(baked.source, baked.target.rstrip("/") or "/"):
            mode = baked.mode if baked.mode is not None else _normal_mode(source)
            found[target] = Content(target, mode, source.read_bytes())  # later files win
    return [found[path] for path in sorted(found)]


def describe(recipe: Recipe, files: list[Content] | None = None) -> dict[str, object]:
    """The recipe as canonical data: what the digest covers and manifests record.

    Source paths are left out (they differ between checkouts); each file appears as its
    path in the image, its mode and the SHA-256 of its bytes. The name is left out too,
    so two recipes that make the same image share it in the store.
    """
    files = contents(recipe) if files is None else files
    return {
        "layout": LAYOUT_VERSION,
        "suite": recipe.suite,
        "mirror": recipe.mirror,
        "packages": sorted(set(recipe.packages)),
        "files": [
            {"path": c.path, "mode": f"{c.mode:04o}", "sha256": hashlib.sha256(c.data).hexdigest()}
            for c in files
        ],
        "enable": list(recipe.enable),
        "disable": list(recipe.disable),
        "mask": list(recipe.mask),
        "mask_generators": list(recipe.mask_generators),
        "remove": list(recipe.remove),
        "before_packages": list(recipe.before_packages),
    }


def recipe_digest(recipe: Recipe, files: list[Content] | None = None) -> str:
    """`sha256:<hex>` over the canonical JSON of `describe(recipe)`.

    Pass `files` (from `contents`) to digest exactly the bytes a bake will copy.
    """
    canonical = json.dumps(
        describe(recipe, files), sort_keys=True, separators=(",", ":"), ensure_ascii=True
    )
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def _expand(source: Path, target: str) -> list[tuple[Path, str]]:
    if source.is_symlink() or not (source.is_file() or source.is_dir()):
        raise ValueError(f"{source}: only regular files and directories can be baked in")
    if source.is_file():
        return [(source, target)]
    found = []
    for child in sorted(source.iterdir()):
        if child.name in _SKIPPED_NAMES or child.name.endswith(_SKIPPED_SUFFIXES):
            continue
        found += _expand(child, f"{target.rstrip('/')}/{child.name}")
    return found


def _normal_mode(path: Path) -> int:
    return 0o755 if path.stat().st_mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH) else 0o644


DEBIAN_12_SLURM = Recipe(
    name="debian-12-slurm",
    suite="bookworm",
    packages=(
        "systemd",
        "systemd-sysv",
        "dbus",
        "openssh-server",
        "python3",
        "munge",
        "slurmd",
        "slurmctld",
        "slurm-client",
        "iproute2",
        "iputils-ping",
        "ca-certificates",
        "procps",  # ps and pgrep, for whoever logs in to look around
        "netbase",  # /etc/services and /etc/protocols
        # the kernel a VM boots (backends/qemu.py): small, with virtio; containers ignore it
        "linux-image-cloud-amd64",
    ),
    files=(
        BakedFile(AGENT, "/usr/local/lib/corral/agent.py", mode=0o755),
        BakedFile(ROLES, "/etc/corral/roles", optional=True),
        BakedFile(FILES, "/"),
    ),
    enable=(
        "corral-host-keys.service",
        "corral-agent.service",
        "ssh.service",
        # in a VM only (each has ConditionVirtualization=vm): its address from the kernel
        # command line, its resolvers from a credential, its cluster's /home from the host,
        # and the host's ACPI power-off
        "systemd-networkd.service",
        "systemd-network-generator.service",
        "systemd-networkd-wait-online.service",
        "corral-vm-resolvers.service",
        "corral-vm-home.service",
        "corral-vm-power.service",
    ),
    before_packages=(
        "/etc/initramfs-tools/conf.d/corral-vm",
        "/usr/share/initramfs-tools/modules.d/corral-vm",
    ),
    # the role scripts start munge and Slurm once the broker has configured them; the
    # apt timers would only fail, since nodes have no route off the machine
    disable=(
        "munge.service",
        "slurmd.service",
        "slurmctld.service",
        "apt-daily.timer",
        "apt-daily-upgrade.timer",
    ),
    # kept: fstab, getty (serial consoles) and debug (systemd.mask= and the like on the
    # kernel command line), which a node in a VM may use; every init script in the image
    # has a native unit, so the SysV generator only costs time
    mask_generators=(
        "systemd-cryptsetup-generator",
        "systemd-gpt-auto-generator",
        "systemd-hibernate-resume-generator",
        "systemd-integritysetup-generator",
        "systemd-rc-local-generator",
        "systemd-run-generator",
        "systemd-system-update-generator",
        "systemd-sysv-generator",
        "systemd-veritysetup-generator",
    ),
    # logind and D-Bus start when first used (D-Bus and socket activation), not at every
    # boot: 0.07 s of CPU, and logins do not need them (the image has no pam_systemd);
    # every node makes its own host keys; the image holds no secret (munge's key too);
    # without /etc/hostname, systemd keeps the hostname the backend gave the node; Slurm's
    # SysV scripts only shadow its systemd units, and make each `systemctl enable` in a
    # role script run update-rc.d (0.4 s)
    remove=(
        "/etc/hostname",
        "/etc/ssh/ssh_host_*",
        "/etc/munge/munge.key",
        "/var/lib/dbus/machine-id",
        "/var/lib/systemd/random-seed",
        "/etc/init.d/slurm*",
        "/etc/rc?.d/*slurm*",
        "/usr/lib/systemd/system/multi-user.target.wants/systemd-logind.service",
        "/usr/lib/systemd/system/multi-user.target.wants/dbus.service",
    ),
)

RECIPES: dict[str, Recipe] = {r.name: r for r in (DEBIAN_12_SLURM,)}
