"""The image store: content-addressed root file systems on this machine.

    <root>/<hex>/rootfs/          the image's tree, the read-only lower layer of each
                                  node's overlayfs (backends/nspawn.py)
    <root>/<hex>/manifest.json    name, digest, recipe (baked images), created, size_bytes
    <root>/.tmp-<pid>-<random>/   an image being written; renamed to <hex> when complete

`<root>` is the service's data directory + "images". Every write builds in a temporary
directory and renames it into place, so an image is either whole or absent: a failed
bake or import leaves nothing behind, and one killed outright leaves a temporary
directory that the next write removes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from corral.errors import ConflictError, ImageError, NotFoundError

log = logging.getLogger(__name__)

DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")
MANIFEST = "manifest.json"
ROOTFS = "rootfs"
_TMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class StoredImage:
    """One image in the store, as its manifest describes it."""

    digest: str
    name: str  # the name it was first baked or imported under
    created: datetime
    size_bytes: int
    recipe: dict[str, object] | None  # what a bake was made from; None for an import
    path: Path  # its rootfs


def digest_hex(digest: str) -> str:
    """The hex part of `sha256:<hex>`; raises ValueError for anything else."""
    match = DIGEST.match(digest)
    if not match:
        raise ValueError(f"not an image digest: {digest!r} (expected sha256:<64 hex digits>)")
    return match.group(1)


def file_digest(path: Path) -> str:
    """`sha256:<hex>` of a file's bytes, read in chunks."""
    sha = hashlib.sha256()
    with open(path, "rb") as data:
        while chunk := data.read(1 << 20):
            sha.update(chunk)
    return "sha256:" + sha.hexdigest()


class ImageStore:
    """The images under `root`; see the module docstring for the layout."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @classmethod
    def of_data_dir(cls, data_dir: Path) -> ImageStore:
        """The store of the service whose data directory is `data_dir`."""
        return cls(Path(data_dir) / "images")

    def _dir(self, digest: str) -> Path:
        return self.root / digest_hex(digest)

    def has(self, digest: str) -> bool:
        directory = self._dir(digest)
        return (directory / MANIFEST).is_file() and (directory / ROOTFS).is_dir()

    def path(self, digest: str) -> Path:
        """The image's rootfs directory; raises NotFoundError if the store lacks it."""
        if not self.has(digest):
            raise NotFoundError(f"no image {digest} in the image store {self.root}", digest=digest)
        return self._dir(digest) / ROOTFS

    def get(self, digest: str) -> StoredImage:
        """The image's manifest; raises NotFoundError if the store lacks it."""
        rootfs = self.path(digest)
        manifest = json.loads((rootfs.parent / MANIFEST).read_text())
        return StoredImage(
            digest=manifest["digest"],
            name=manifest["name"],
            created=datetime.fromisoformat(manifest["created"]),
            size_bytes=manifest["size_bytes"],
            recipe=manifest.get("recipe"),
            path=rootfs,
        )

    def list(self) -> list[StoredImage]:
        """Every complete image, oldest first (images being written are not listed)."""
        if not self.root.is_dir():
            return []
        found = []
        for entry in self.root.iterdir():
            digest = f"sha256:{entry.name}"
            if DIGEST.match(digest) and self.has(digest):
                found.append(self.get(digest))
        return sorted(found, key=lambda image: (image.created, image.digest))

    def create(
        self,
        digest: str,
        name: str,
        fill: Callable[[Path], None],
        recipe: dict[str, object] | None = None,
    ) -> StoredImage:
        """Add an image by calling `fill(rootfs)`, which must create and fill `rootfs`.

        Atomic: `fill` works in a temporary directory that is renamed into place only
        when it returned; if it raises (or the process is interrupted), the directory is
        removed and the exception propagates. If the image appears meanwhile (another
        bake of the same recipe), that one is kept and this one discarded.
        """
        digest_hex(digest)
        self.root.mkdir(parents=True, exist_ok=True)
        self._sweep()
        work = self.root / f"{_TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        work.mkdir(mode=0o755)
        try:
            fill(work / ROOTFS)
            if not (work / ROOTFS).is_dir():
                raise ImageError(f"image {name}: nothing was written to its rootfs")
            manifest = {
                "name": name,
                "digest": digest,
                "recipe": recipe,
                "created": datetime.now(UTC).isoformat(),
                "size_bytes": tree_size(work / ROOTFS),
            }
            (work / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            try:
                work.rename(self._dir(digest))
            except OSError:
                if not self.has(digest):
                    raise
                log.info("image %s appeared while it was written; keeping that one", digest)
                remove_tree(work)
        except BaseException:
            try:
                remove_tree(work)
            except ImageError as exc:
                log.error("image store: %s", exc.message)
            raise
        log.info("image store: added %s (%s)", name, digest)
        return self.get(digest)

    def import_tarball(self, name: str, tar_path: Path) -> str:
        """Add the root file system in a tarball (any compression tar reads); its digest.

        The digest is the SHA-256 of the tarball's bytes, so importing the same file
        again changes nothing. Extraction keeps numeric owners, modes and extended
        attributes (file capabilities), which needs root. Raises ImageError if tar fails.
        """
        tar_path = Path(tar_path)
        digest = file_digest(tar_path)
        if self.has(digest):
            return digest

        def extract(rootfs: Path) -> None:
            rootfs.mkdir()
            command = [
                "tar",
                "--numeric-owner",
                "--xattrs",
                "--xattrs-include=*",
                "-xpf",
                str(tar_path.resolve()),
                "-C",
                str(rootfs),
            ]
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                raise ImageError(
                    f"cannot import {tar_path}: tar failed: {result.stderr.strip()[-2000:]}",
                    tarball=str(tar_path),
                )

        self.create(digest, name, extract)
        return digest

    def delete(self, digest: str) -> None:
        """Remove an image's files.

        Raises NotFoundError if the store lacks it, and ConflictError while a mount
        (a running node's overlayfs) still uses it.
        """
        rootfs = self.path(digest).resolve()
        users = [point for point, lower in _overlays() if rootfs in lower]
        if users:
            raise ConflictError(
                f"image {digest} is the lower layer of {len(users)} mounted overlay(s), "
                f"such as {users[0]}; its nodes are still running",
                digest=digest,
            )
        # rename first, so the digest is gone at once even if removal takes a while
        doomed = self.root / f"{_TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        self._dir(digest).rename(doomed)
        remove_tree(doomed)
        log.info("image store: deleted %s", digest)

    def _sweep(self) -> None:
        """Remove temporary directories whose writer process is gone."""
        for entry in self.root.glob(f"{_TMP_PREFIX}*"):
            pid = entry.name[len(_TMP_PREFIX) :].split("-", 1)[0]
            if not pid.isdigit() or _process_exists(int(pid)):
                continue
            prefix = str(entry.resolve()) + "/"
            if any(point.startswith(prefix) for point, _ in _mounts()):
                # an orphaned mmdebstrap may still be working in it; leave it be
                log.warning("image store: %s is dead but has mounts; not removing it", entry)
                continue
            log.info("image store: removing %s, left by a bake or import that died", entry)
            remove_tree(entry)


def tree_size(root: Path) -> int:
    """Bytes of the regular files under `root` (hard links counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for directory, _dirs, files in os.walk(root):
        for name in files:
            info = os.lstat(os.path.join(directory, name))
            if stat.S_ISREG(info.st_mode) and (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_size
    return total


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _mounts() -> list[tuple[str, str]]:
    """(mount point, options) of every mount this process can see."""
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 4:
            found.append((_unescape(fields[1]), _unescape(fields[3])))
    return found


def _overlays() -> list[tuple[str, set[Path]]]:
    """(mount point, resolved lower directories) of every overlayfs mount."""
    found = []
    for point, options in _mounts():
        for option in options.split(","):
            if option.startswith("lowerdir="):
                lower = {Path(p).resolve() for p in option[len("lowerdir=") :].split(":") if p}
                found.append((point, lower))
    return found


def _unescape(text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def remove_tree(path: Path) -> None:
    """Remove `path`, first unmounting whatever is mounted below it.

    A killed mmdebstrap can leave /proc and /sys mounted in its target; removing files
    through those mounts must never happen. Raises ImageError if a mount stays.
    """
    if not path.exists() and not path.is_symlink():
        return
    prefix = str(path.resolve()) + "/"
    below = sorted((m for m, _ in _mounts() if m.startswith(prefix)), key=len, reverse=True)
    for mount_point in below:
        subprocess.run(["umount", "--lazy", mount_point], capture_output=True)
    still = [m for m, _ in _mounts() if m.startswith(prefix)]
    if still:
        raise ImageError(f"cannot remove {path}: {still[0]} is still mounted", path=str(path))
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)
