"""Baking: a recipe becomes a root file system in the image store.

mmdebstrap installs the recipe's packages from the Debian mirror (the only network a
bake needs) into a directory (the recipe's `before_packages` files are put in place once
the essential packages are in, so that the kernel's initramfs is built with corral's module
list), then `customize` makes the tree a corral appliance:

1. remove per-node state the packages made at install time (the recipe's `remove`:
   SSH host keys, munge's key; the image holds no secret);
2. copy the recipe's files (the agent, the role scripts, the units, an sshd setting,
   an empty machine-id and a resolv.conf naming no server), replacing what was there;
3. enable, disable and mask units with `systemctl --root`, which reads their
   [Install] sections as systemd itself would, and mask generators (an empty file of
   the same name in /etc/systemd/system-generators);
4. byte-compile the Python files of step 2 with the image's own interpreter, so that a
   node does not compile the agent (50 ms of CPU) at every boot;
5. record the image's name and digest in /etc/corral/image.json, for whoever logs in.

A recipe whose digest the store already has is a cache hit and takes no time.
"""

from __future__ import annotations

import collections
import glob
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from corral.errors import ImageError
from corral.images.recipe import Content, Recipe, contents, describe, recipe_digest
from corral.images.store import ImageStore, remove_tree

log = logging.getLogger(__name__)

IMAGE_INFO = "/etc/corral/image.json"
GENERATORS = "/etc/systemd/system-generators"
_OUTPUT_TAIL = 30
_PLAIN_PATH = re.compile(r"/[A-Za-z0-9/._-]+")


def _quiet(_line: str) -> None:
    pass


def bake(recipe: Recipe, store: ImageStore, progress: Callable[[str], None] = _quiet) -> str:
    """Build `recipe` into `store` unless it is there already; returns its digest.

    `progress` gets one line at a time: mmdebstrap's output, then each step. Needs root
    and mmdebstrap. Raises ImageError when a tool is missing or a step fails; the store
    is then left as it was.
    """
    files = contents(recipe)
    digest = recipe_digest(recipe, files)
    if store.has(digest):
        progress(f"cache hit: {recipe.name} is already baked as {digest}")
        return digest
    _check_tools()
    progress(f"baking {recipe.name} ({digest}) from {recipe.mirror} {recipe.suite}")

    early = _before_packages(recipe, files)

    def build(rootfs: Path) -> None:
        _debootstrap(recipe, rootfs, progress, early)
        progress("customizing: agent, role scripts, units, no host keys")
        customize(rootfs, recipe, files, digest)

    image = store.create(digest, recipe.name, build, recipe=describe(recipe, files))
    progress(f"baked {recipe.name} as {digest} ({image.size_bytes / 2**20:.0f} MiB)")
    log.info("baked %s as %s", recipe.name, digest)
    return digest


def customize(rootfs: Path, recipe: Recipe, files: list[Content], digest: str) -> None:
    """Make a freshly installed Debian tree a corral appliance (steps in the docstring)."""
    for pattern in recipe.remove:
        for found in glob.glob(glob.escape(str(rootfs)) + pattern):
            path = Path(found)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    for content in files:
        _install(rootfs, content.path, content.data, content.mode)
    for verb, units in (
        ("enable", recipe.enable),
        ("disable", recipe.disable),
        ("mask", recipe.mask),
    ):
        if units:
            _systemctl(rootfs, verb, *units)
    for generator in recipe.mask_generators:
        _install(rootfs, f"{GENERATORS}/{generator}", b"", 0o644)
    _byte_compile(rootfs, [c.path for c in files if c.path.endswith(".py")])
    info = {"name": recipe.name, "digest": digest}
    _install(rootfs, IMAGE_INFO, (json.dumps(info, indent=2) + "\n").encode(), 0o644)


def _check_tools() -> None:
    if os.geteuid() != 0:
        raise ImageError("baking an image needs root (mmdebstrap installs packages as root)")
    for tool, package in (("mmdebstrap", "mmdebstrap"), ("systemctl", "systemd")):
        if shutil.which(tool) is None:
            raise ImageError(f"baking an image needs {tool} (apt install {package})", tool=tool)


def _before_packages(recipe: Recipe, files: list[Content]) -> list[Content]:
    by_path = {c.path: c for c in files}
    missing = [path for path in recipe.before_packages if path not in by_path]
    if missing:
        raise ImageError(f"recipe {recipe.name}: before_packages names no file: {missing}")
    unsafe = [path for path in recipe.before_packages if not _PLAIN_PATH.fullmatch(path)]
    if unsafe:  # they go into a shell command line
        raise ImageError(f"recipe {recipe.name}: before_packages paths must be plain: {unsafe}")
    return [by_path[path] for path in recipe.before_packages]


def _debootstrap(
    recipe: Recipe, rootfs: Path, progress: Callable[[str], None], early: list[Content]
) -> None:
    """Run mmdebstrap into `rootfs` (which must not exist), streaming its output; the
    `early` files are written once the essential packages are in, before the others."""
    hooks = [
        f'--essential-hook=mkdir -p "$1{os.path.dirname(c.path)}" && '
        f'printf %s {shlex.quote(c.data.decode())} > "$1{c.path}"'
        for c in early
    ]
    command = [
        "mmdebstrap",
        "--mode=root",
        "--format=directory",
        "--variant=apt",
        '--aptopt=Acquire::Retries "3"',
        # the store is inside a root-only data directory, where apt's _apt user cannot go
        '--aptopt=APT::Sandbox::User "root"',
        "--include=" + ",".join(recipe.packages),
        *hooks,
        recipe.suite,
        str(rootfs),
        recipe.mirror,
    ]
    log.info("running %s", " ".join(command))
    tail: collections.deque[str] = collections.deque(maxlen=_OUTPUT_TAIL)
    env = {**os.environ, "LC_ALL": "C.UTF-8"}
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        env=env,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            progress(line)
        status = process.wait()
    finally:
        # interrupted: let mmdebstrap unmount what it mounted in the target first
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    if status != 0:
        raise ImageError(
            f"mmdebstrap failed (exit {status}) baking {recipe.name}:\n" + "\n".join(tail),
            recipe=recipe.name,
            exit_code=status,
        )


def _install(rootfs: Path, path: str, data: bytes, mode: int) -> None:
    """Write `data` at `path` inside `rootfs` (root-owned), replacing what was there.

    Refuses a parent directory that leads out of the tree (an absolute symlink in the
    image would otherwise make us write on this machine).
    """
    target = rootfs / path.lstrip("/")
    _make_dirs(rootfs, target.parent, path)
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.exists():
        remove_tree(target)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chown(target, 0, 0)
    os.chmod(target, mode)


def _make_dirs(rootfs: Path, directory: Path, path: str) -> None:
    """Create `directory` (0755, root-owned) and its parents, all inside `rootfs`."""
    top = rootfs.resolve()
    missing = []
    while not directory.exists() and not directory.is_symlink():
        missing.append(directory)
        directory = directory.parent
    real = directory.resolve()
    if real != top and top not in real.parents:
        raise ImageError(f"{path}: its directory leads out of the image (to {real})")
    for new in reversed(missing):
        new.mkdir()
        os.chmod(new, 0o755)


def _systemctl(rootfs: Path, verb: str, *units: str) -> None:
    result = subprocess.run(
        ["systemctl", f"--root={rootfs}", "--quiet", verb, *units],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise ImageError(
            f"systemctl {verb} {' '.join(units)} in the image failed: "
            f"{(result.stderr or result.stdout).strip()}",
        )


def _byte_compile(rootfs: Path, paths: list[str]) -> None:
    """Compile `paths` in the image, checked by hash: an edited source is still noticed."""
    if not paths or not (rootfs / "usr/bin/python3").exists():
        return
    command = ["/usr/bin/python3", "-m", "compileall", "-q", "--invalidation-mode=checked-hash"]
    result = subprocess.run(
        ["chroot", str(rootfs), *command, *paths], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise ImageError(
            "byte-compiling the agent and role helpers in the image failed: "
            f"{(result.stderr or result.stdout).strip()}"
        )
