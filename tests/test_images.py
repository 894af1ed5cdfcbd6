"""Appliance images: recipe digests, the image store, the image API and `corral image`.

The one slow test bakes debian-12-slurm for real with mmdebstrap (about a minute, needs
root and the Debian mirror) and looks inside the result.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import time
from dataclasses import replace
from pathlib import Path

import pytest
from inprocess import admin_token, api, document, wait_for
from served import ServedCorral, corral

from corral.errors import ConflictError, ImageError, NotFoundError
from corral.images.bake import _before_packages, bake
from corral.images.disk import vm_image
from corral.images.recipe import (
    AGENT,
    DEBIAN_12_SLURM,
    FILES,
    RECIPES,
    ROLES,
    BakedFile,
    Recipe,
    contents,
    recipe_digest,
)
from corral.images.store import ImageStore, digest_hex

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


# -- recipes and digests -----------------------------------------------------------------


def copied_recipe(tmp_path: Path):
    """debian-12-slurm baking temp copies of the agent, the role scripts and the files."""
    shutil.copy2(AGENT, tmp_path / "agent.py")
    shutil.copytree(ROLES, tmp_path / "roles", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(FILES, tmp_path / "files")
    return replace(
        DEBIAN_12_SLURM,
        files=(
            BakedFile(tmp_path / "agent.py", "/usr/local/lib/corral/agent.py", mode=0o755),
            BakedFile(tmp_path / "roles", "/etc/corral/roles", optional=True),
            BakedFile(tmp_path / "files", "/"),
        ),
    )


def test_the_digest_is_stable_and_independent_of_where_the_sources_live(tmp_path: Path) -> None:
    digest = recipe_digest(RECIPES["debian-12-slurm"])
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest)
    assert recipe_digest(RECIPES["debian-12-slurm"]) == digest
    assert recipe_digest(copied_recipe(tmp_path)) == digest


def test_changing_a_role_script_or_the_agent_changes_the_digest(tmp_path: Path) -> None:
    recipe = copied_recipe(tmp_path)
    before = recipe_digest(recipe)
    script = tmp_path / "roles" / "slurm-worker" / "configure"
    script.write_text(script.read_text() + "# changed\n")
    after_role = recipe_digest(recipe)
    assert after_role != before
    (tmp_path / "agent.py").write_text((tmp_path / "agent.py").read_text() + "# changed\n")
    assert recipe_digest(recipe) not in (before, after_role)


def test_modes_new_files_and_packages_change_the_digest_but_byte_code_does_not(
    tmp_path: Path,
) -> None:
    recipe = copied_recipe(tmp_path)
    before = recipe_digest(recipe)
    cache = tmp_path / "roles" / "_lib" / "__pycache__"
    cache.mkdir()
    (cache / "corral_roles.cpython-311.pyc").write_bytes(b"\0junk")
    assert recipe_digest(recipe) == before
    assert recipe_digest(replace(recipe, packages=(*recipe.packages, "less"))) != before
    os.chmod(tmp_path / "roles" / "slurm-worker" / "configure", 0o644)
    unexecutable = recipe_digest(recipe)
    assert unexecutable != before
    (tmp_path / "roles" / "new-role").mkdir()
    (tmp_path / "roles" / "new-role" / "configure").write_text("#!/bin/sh\n")
    assert recipe_digest(recipe) != unexecutable


def test_contents_lay_out_the_agent_roles_and_units_with_their_modes(tmp_path: Path) -> None:
    files = {c.path: c for c in contents(copied_recipe(tmp_path))}
    assert files["/usr/local/lib/corral/agent.py"].mode == 0o755
    assert files["/usr/local/lib/corral/agent.py"].data == AGENT.read_bytes()
    assert files["/etc/corral/roles/slurm-worker/configure"].mode == 0o755
    assert files["/etc/corral/roles/_lib/corral_roles.py"].mode == 0o644
    unit = files["/etc/systemd/system/corral-agent.service"].data.decode()
    # the agent runs as a module from its directory, so Python uses the baked byte code
    assert "WorkingDirectory=/usr/local/lib/corral\n" in unit
    assert "ExecStart=/usr/bin/python3 -m agent --root /" in unit
    assert files["/etc/machine-id"].data == b""


def test_a_missing_roles_directory_is_skipped_but_a_missing_agent_is_an_error(
    tmp_path: Path,
) -> None:
    recipe = copied_recipe(tmp_path)
    shutil.rmtree(tmp_path / "roles")
    assert not any(c.path.startswith("/etc/corral/roles/") for c in contents(recipe))
    (tmp_path / "agent.py").unlink()
    with pytest.raises(FileNotFoundError, match="agent.py"):
        recipe_digest(recipe)


# -- the store ---------------------------------------------------------------------------


def make_tarball(path: Path, marker: str = "one") -> Path:
    """A tiny root file system: a directory, a file owned by uid 1234, a symlink."""
    with tarfile.open(path, "w") as tar:
        for name, kind, mode, uid, data in [
            ("etc", tarfile.DIRTYPE, 0o755, 0, b""),
            ("etc/os-release", tarfile.REGTYPE, 0o644, 0, f"ID={marker}\n".encode()),
            ("etc/secretish", tarfile.REGTYPE, 0o640, 1234, b"x"),
        ]:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.uid, info.gid, info.size = kind, mode, uid, uid, len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
        link = tarfile.TarInfo("os-release")
        link.type, link.linkname = tarfile.SYMTYPE, "etc/os-release"
        tar.addfile(link)
    return path


def test_a_file_needed_before_the_packages_must_be_a_plain_path_the_recipe_bakes(
    tmp_path: Path,
) -> None:
    (tmp_path / "modules").write_text("virtio_blk\n")
    baked = BakedFile(tmp_path / "modules", "/etc/initramfs-tools/modules")
    for before, named in (
        (("/etc/elsewhere",), "names no file"),
        (("/etc/initramfs-tools/modules",), None),
    ):
        recipe = Recipe("r", ("systemd",), files=(baked,), before_packages=before)
        if named is None:
            assert [c.path for c in _before_packages(recipe, contents(recipe))] == list(before)
        else:
            with pytest.raises(ImageError, match=named):
                _before_packages(recipe, contents(recipe))
    odd = BakedFile(tmp_path / "modules", "/etc/with space")
    recipe = Recipe("r", ("systemd",), files=(odd,), before_packages=("/etc/with space",))
    with pytest.raises(ImageError, match="must be plain"):
        _before_packages(recipe, contents(recipe))


def test_an_image_without_a_kernel_cannot_be_a_vm(tmp_path: Path) -> None:
    rootfs = tmp_path / "abc123" / "rootfs"
    (rootfs / "boot").mkdir(parents=True)
    with pytest.raises(ImageError, match="has no kernel in /boot"):
        vm_image(rootfs)
    assert not (rootfs.parent / "vm").exists()


def test_import_list_path_and_delete(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    tarball = make_tarball(tmp_path / "root.tar")
    digest = store.import_tarball("tiny", tarball)
    assert digest == "sha256:" + hashlib.sha256(tarball.read_bytes()).hexdigest()
    assert store.has(digest)
    rootfs = store.path(digest)
    assert rootfs == tmp_path / "images" / digest_hex(digest) / "rootfs"
    assert (rootfs / "etc" / "os-release").read_text() == "ID=one\n"
    assert os.readlink(rootfs / "os-release") == "etc/os-release"
    manifest = json.loads((rootfs.parent / "manifest.json").read_text())
    assert manifest["name"] == "tiny" and manifest["digest"] == digest
    (listed,) = store.list()
    assert (listed.name, listed.digest, listed.size_bytes) == ("tiny", digest, 8)
    assert store.import_tarball("again", tarball) == digest  # same bytes, same image
    assert len(store.list()) == 1
    store.delete(digest)
    assert not store.has(digest)
    assert os.listdir(tmp_path / "images") == []
    with pytest.raises(NotFoundError):
        store.path(digest)
    with pytest.raises(NotFoundError):
        store.delete(digest)


@needs_root
def test_import_keeps_numeric_owners_and_modes(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    rootfs = store.path(store.import_tarball("tiny", make_tarball(tmp_path / "root.tar")))
    info = os.stat(rootfs / "etc" / "secretish")
    assert (info.st_uid, info.st_gid, info.st_mode & 0o7777) == (1234, 1234, 0o640)


def test_a_failed_import_leaves_nothing_behind(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"this is not a tarball\n" * 100)
    with pytest.raises(ImageError, match="tar failed"):
        store.import_tarball("bad", bad)
    assert os.listdir(tmp_path / "images") == []
    assert store.list() == []


def test_an_interrupted_write_leaves_nothing_and_a_dead_writers_leftovers_are_swept(
    tmp_path: Path,
) -> None:
    store = ImageStore(tmp_path / "images")
    digest = "sha256:" + "ab" * 32

    def interrupted(rootfs: Path) -> None:
        (rootfs / "etc").mkdir(parents=True)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.create(digest, "half", interrupted)
    assert os.listdir(tmp_path / "images") == []
    dead = subprocess.Popen(["true"])
    dead.wait()
    leftover = tmp_path / "images" / f".tmp-{dead.pid}-feed"
    (leftover / "rootfs").mkdir(parents=True)
    store.import_tarball("tiny", make_tarball(tmp_path / "root.tar"))
    assert not leftover.exists()


def test_digests_are_checked_before_they_become_paths(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    for bad in ("sha256:../../etc", "md5:" + "0" * 32, "sha256:" + "G" * 64):
        with pytest.raises(ValueError, match="not an image digest"):
            store.has(bad)


@needs_root
def test_an_image_under_a_mounted_overlay_is_not_deleted(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    digest = store.import_tarball("tiny", make_tarball(tmp_path / "root.tar"))
    upper, work, merged = (tmp_path / n for n in ("upper", "work", "merged"))
    for d in (upper, work, merged):
        d.mkdir()
    options = f"lowerdir={store.path(digest)},upperdir={upper},workdir={work}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(merged)], check=True)
    try:
        with pytest.raises(ConflictError, match="overlay"):
            store.delete(digest)
        assert store.has(digest)
    finally:
        subprocess.run(["umount", str(merged)], check=True)
    store.delete(digest)
    assert not store.has(digest)


# -- the API -----------------------------------------------------------------------------


@pytest.fixture
def service_with_image(make_service, tmp_path: Path):
    """A service whose image store holds one small imported image."""
    service = make_service()
    store = ImageStore.of_data_dir(service.config.data_dir)
    digest = store.import_tarball("tiny", make_tarball(tmp_path / "root.tar"))
    return service, store, digest


def test_admins_register_images_and_everyone_lists_them(service_with_image, tmp_path) -> None:
    service, store, digest = service_with_image
    admin = api(service, admin_token(service))
    created = admin.post("/v1/images", json={"name": "debian-12-slurm", "digest": digest})
    assert created.status_code == 201, created.text
    assert created.json()["size_bytes"] == store.get(digest).size_bytes
    again = admin.post("/v1/images", json={"name": "debian-12-slurm", "digest": digest})
    assert again.status_code == 200
    user = admin.post("/v1/users", json={"name": "alice"}).json()
    alice = api(service, user["token"])
    (listed,) = alice.get("/v1/images").json()
    assert listed["name"] == "debian-12-slurm" and listed["digest"] == digest
    assert set(listed) >= {"name", "digest", "size_bytes", "created_at"}
    refused = alice.post("/v1/images", json={"name": "mine", "digest": digest})
    assert refused.status_code == 403
    assert alice.delete("/v1/images/debian-12-slurm").status_code == 403


def test_a_name_moves_to_another_digest_only_when_replaced(service_with_image, tmp_path) -> None:
    service, store, digest = service_with_image
    other = store.import_tarball("tiny-2", make_tarball(tmp_path / "two.tar", marker="two"))
    admin = api(service, admin_token(service))
    admin.post("/v1/images", json={"name": "base", "digest": digest})
    clash = admin.post("/v1/images", json={"name": "base", "digest": other})
    assert clash.status_code == 409 and clash.json()["error"] == "conflict"
    assert digest in clash.json()["message"]
    moved = admin.post("/v1/images", json={"name": "base", "digest": other, "replace": True})
    assert moved.status_code == 201 and moved.json()["digest"] == other
    assert [i["digest"] for i in admin.get("/v1/images").json()] == [other]


def test_registering_needs_a_digest_the_store_has(service_with_image) -> None:
    service, _store, _digest = service_with_image
    admin = api(service, admin_token(service))
    missing = admin.post("/v1/images", json={"name": "base", "digest": "sha256:" + "0" * 64})
    assert missing.status_code == 404 and "image store" in missing.json()["message"]
    for body in (
        {"name": "base", "digest": "sha256:../../etc"},
        {"name": "../x", "digest": "sha256:" + "0" * 64},
    ):
        assert admin.post("/v1/images", json=body).status_code == 422


def test_an_image_in_use_cannot_be_deleted_until_its_cluster_ends(service_with_image) -> None:
    service, _store, digest = service_with_image
    admin = api(service, admin_token(service))
    admin.post("/v1/images", json={"name": "debian-12-slurm", "digest": digest})
    admin.post("/v1/images", json={"name": "alias", "digest": digest})
    cluster = admin.post("/v1/clusters", json={"document": document()}).json()
    busy = admin.delete("/v1/images/debian-12-slurm")
    assert busy.status_code == 409 and cluster["id"] in busy.json()["message"]
    admin.delete(f"/v1/clusters/{cluster['id']}")
    wait_for(lambda: admin.get(f"/v1/clusters/{cluster['id']}").json()["state"] == "terminated")
    removed = admin.delete("/v1/images/debian-12-slurm")
    assert removed.status_code == 200, removed.text
    assert removed.json()["digest"] == digest and removed.json()["other_names"] == ["alias"]
    last = admin.delete("/v1/images/alias").json()
    assert last["other_names"] == []
    assert admin.get("/v1/images").json() == []
    assert admin.delete("/v1/images/alias").status_code == 404


# -- the CLI -----------------------------------------------------------------------------


def test_an_unknown_recipe_names_the_known_ones(tmp_path: Path) -> None:
    env = {**os.environ, "CORRAL_HOME": str(tmp_path)}
    result = corral("image", "bake", "debian-13-nothing", env=env)
    assert result.returncode == 4
    assert "no recipe 'debian-13-nothing'" in result.stderr
    assert "debian-12-slurm" in result.stderr
    as_json = corral("image", "bake", "debian-13-nothing", "--json", env=env)
    assert as_json.returncode == 4
    assert json.loads(as_json.stdout)["details"]["known"] == sorted(RECIPES)


def test_image_commands_check_their_arguments(tmp_path: Path) -> None:
    env = {**os.environ, "CORRAL_HOME": str(tmp_path)}
    assert corral("image", "bake", env=env).returncode == 2
    missing = corral("image", "import", "base", str(tmp_path / "nothing.tar"), env=env)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert corral("image", "delete", env=env).returncode == 2


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare")
def test_baking_or_importing_as_another_user_than_root_says_so(tmp_path: Path) -> None:
    tarball = make_tarball(tmp_path / "root.tar")
    # a user namespace where we are uid 1000: geteuid() is not 0, as for a real user
    as_user = ["unshare", "--user", "--map-user=1000", "--map-group=1000"]
    probe = subprocess.run([*as_user, "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("user namespaces are not available here")
    env = {**os.environ, "CORRAL_HOME": str(tmp_path / "home")}
    for args in (["bake", "debian-12-slurm"], ["import", "base", str(tarball)]):
        result = subprocess.run(
            [*as_user, shutil.which("corral") or "corral", "image", *args],
            env=env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=60,
        )
        assert result.returncode == 5, result.stderr
        assert "needs root" in result.stderr
    assert not (tmp_path / "home").exists()  # refused before anything was started


@needs_root
def test_import_list_and_delete_through_the_cli(tmp_path: Path) -> None:
    with ServedCorral(tmp_path / "svc") as served:
        env = served.env()
        store = ImageStore.of_data_dir(served.data_dir)
        imported = corral("image", "import", "base", str(make_tarball(tmp_path / "a.tar")), env=env)
        assert imported.returncode == 0, imported.stderr
        digest = imported.stdout.strip()
        assert store.has(digest)
        listed = json.loads(corral("image", "list", "--json", env=env).stdout)
        assert [(i["name"], i["digest"]) for i in listed] == [("base", digest)]
        assert "base" in corral("image", "list", env=env).stdout

        other = make_tarball(tmp_path / "b.tar", marker="b")
        clash = corral("image", "import", "base", str(other), env=env)
        assert clash.returncode == 1 and "already names" in clash.stderr
        assert [i.digest for i in store.list()] == [digest]  # the refused import is gone

        deleted = corral("image", "delete", "base", "--json", env=env)
        assert deleted.returncode == 0, deleted.stderr
        assert json.loads(deleted.stdout)["files"] == "removed"
        assert store.list() == []
        assert corral("image", "delete", "base", env=env).returncode == 4


# -- a real bake -------------------------------------------------------------------------


def inside(rootfs: Path, path: str) -> Path:
    """`path` of the image with its symlinks (absolute ones too) followed inside `rootfs`."""
    found = rootfs / path.lstrip("/")
    for _ in range(10):
        if not found.is_symlink():
            break
        link = os.readlink(found)
        found = rootfs / link.lstrip("/") if link.startswith("/") else found.parent / link
    return found


def enabled(rootfs: Path, unit: str, target: str = "multi-user.target") -> bool:
    return (rootfs / "etc/systemd/system" / f"{target}.wants" / unit).is_symlink()


@pytest.mark.slow
@needs_root
@pytest.mark.skipif(shutil.which("mmdebstrap") is None, reason="needs mmdebstrap")
def test_baking_debian_12_slurm_makes_an_appliance_and_a_second_bake_is_a_cache_hit(
    tmp_path: Path,
) -> None:
    store = ImageStore(tmp_path / "images")
    lines: list[str] = []
    recipe = RECIPES["debian-12-slurm"]
    try:
        digest = bake(recipe, store, progress=lines.append)
        assert digest == recipe_digest(recipe)
        assert any("I: success" in line for line in lines)  # mmdebstrap's own output
        rootfs = store.path(digest)

        agent = rootfs / "usr/local/lib/corral/agent.py"
        assert agent.read_bytes() == AGENT.read_bytes()
        assert os.stat(agent).st_mode & 0o777 == 0o755
        # byte code from the image's own python3; the agent's unit runs it as a module
        for compiled in ("usr/local/lib/corral/agent", "etc/corral/roles/_lib/corral_roles"):
            cache = rootfs / compiled
            assert list(cache.parent.glob(f"__pycache__/{cache.name}.cpython-3*.pyc")), compiled
        assert os.access(rootfs / "etc/corral/roles/slurm-worker/configure", os.X_OK)
        for unit in ("corral-agent.service", "corral-host-keys.service", "ssh.service"):
            assert enabled(rootfs, unit), unit
        for unit in ("slurmd.service", "slurmctld.service", "munge.service"):
            assert not enabled(rootfs, unit), unit
            assert (rootfs / "lib/systemd/system" / unit).exists(), unit
        for generator in recipe.mask_generators:
            assert (rootfs / "etc/systemd/system-generators" / generator).read_bytes() == b""
        started_at_boot = rootfs / "usr/lib/systemd/system/multi-user.target.wants"
        assert not (started_at_boot / "systemd-logind.service").is_symlink()
        assert (started_at_boot / "systemd-user-sessions.service").is_symlink()
        assert list((rootfs / "etc/ssh").glob("ssh_host_*")) == []
        assert not (rootfs / "etc/munge/munge.key").exists()
        assert (rootfs / "etc/machine-id").read_bytes() == b""
        assert not (rootfs / "etc/hostname").exists()
        sshd = (rootfs / "etc/ssh/sshd_config.d/10-corral-image.conf").read_text()
        assert "PermitRootLogin prohibit-password" in sshd
        for binary in ("usr/bin/python3", "usr/sbin/slurmd", "usr/sbin/slurmctld", "usr/bin/srun"):
            assert os.access(inside(rootfs, binary), os.X_OK), binary
        assert not (rootfs / "root/.ssh/authorized_keys").exists()
        info = json.loads((rootfs / "etc/corral/image.json").read_text())
        assert info == {"name": "debian-12-slurm", "digest": digest}
        # a VM's kernel, whose initramfs loads what finds the disk and the credentials
        kernel = next((rootfs / "boot").glob("vmlinuz-*-cloud-amd64"))
        initrd = rootfs / "boot" / kernel.name.replace("vmlinuz-", "initrd.img-")
        listed = subprocess.run(
            ["chroot", str(rootfs), "lsinitramfs", f"/boot/{initrd.name}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for module in ("virtio_blk.ko", "qemu_fw_cfg.ko"):
            assert module in listed, module
        vm = vm_image(rootfs)
        assert vm.disk.read_bytes()[:4] == b"QFI\xfb"  # qcow2
        assert vm.kernel.read_bytes() == kernel.read_bytes()
        assert vm.initrd.read_bytes() == initrd.read_bytes()
        assert vm_image(rootfs) == vm  # made once
        assert store.get(digest).recipe["packages"] == sorted(recipe.packages)

        lines.clear()
        started = time.monotonic()
        assert bake(recipe, store, progress=lines.append) == digest
        assert time.monotonic() - started < 1.0
        assert any("cache hit" in line for line in lines)
    finally:
        for image in store.list():
            store.delete(image.digest)
