"""Real clusters of qemu VMs: the example document unchanged, Slurm inside, the service
killed under them, and the console of a boot that failed.

Slow: each VM boots the image's own kernel, emulated (TCG) on a machine where KVM does
not work. Needs root, qemu and the baked image (conftest.py's `baked`).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from served import ServedCorral, corral, processes_running

from corral.backends import network
from corral.backends.qemu import VIRTIOFSD, QemuBackend

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "base-cluster.yaml"
ONE_NODE = """\
name: one-node
image: debian-12-slurm
policy: {mode: all-or-nothing, boot_timeout: 3m}
nodes:
  - {group: head, count: 1, cores: 1, memory: 512MiB, login: true}
"""


def served_qemu(data_dir: Path, baked, *options: str) -> ServedCorral:
    """`corral serve --backend qemu` on `data_dir`, with the baked image registered."""
    cache, _digest = baked
    data_dir.mkdir(parents=True)
    (data_dir / "images").symlink_to(cache)
    extra = [arg for option in options for arg in ("--backend-option", option)]
    served = ServedCorral(data_dir, "--backend", "qemu", *extra, broker_host="0.0.0.0").start()
    baked_now = corral("image", "bake", "debian-12-slurm", env=served.env(), timeout=600)
    assert baked_now.returncode == 0, baked_now.stderr
    return served


def stop_and_end_vms(served: ServedCorral) -> None:
    """Stop the service and end every VM it left, also when a test failed half-way."""
    served.stop()
    backend = QemuBackend(served.data_dir / "qemu", stop_seconds=0)
    for machine in backend.list_machines():
        backend.terminate(machine.node_id)


def run(served: ServedCorral, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    done = corral(*args, env=served.env(), timeout=timeout)
    assert done.returncode == 0, f"corral {' '.join(args)}: {done.stderr}"
    return done


def status(served: ServedCorral, cluster: str) -> dict:
    return json.loads(run(served, "status", cluster, "--json").stdout)


def leftovers(served: ServedCorral, cluster: dict) -> list[str]:
    """What of the cluster is still on this machine: qemu and virtiofsd processes, taps,
    its bridge, the VMs' files (overlays, QMP and virtiofs sockets, pidfiles), its
    consoles and its /home."""
    marker = os.fsencode(served.data_dir)
    found = [
        f"process {pid}: {program.decode()}"
        for program in (b"qemu-system-x86_64", os.fsencode(VIRTIOFSD))
        for pid in processes_running(program, marker)
    ]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    if network.bridge_name(cluster["id"]) in links:
        found.append(f"bridge {network.bridge_name(cluster['id'])}")
    for node in cluster["nodes"]:
        if network.tap_name(node["id"]) in links:
            found.append(f"tap {network.tap_name(node['id'])}")
        directory = served.data_dir / "qemu" / node["id"]
        if directory.exists():
            found += [f"file {path}" for path in directory.iterdir()] or [f"dir {directory}"]
    for kept in ("consoles", "homes"):
        if (served.data_dir / "qemu" / kept / cluster["id"]).exists():
            found.append(f"{kept} {served.data_dir / 'qemu' / kept / cluster['id']}")
    return found


@pytest.fixture(scope="module")
def example_cluster(baked, tmp_path_factory) -> Iterator[tuple[ServedCorral, dict]]:
    """The example document as it is, launched on a qemu pool and ready."""
    home = tmp_path_factory.mktemp("qemu-user")
    os.environ["CORRAL_HOME"] = str(home)
    served = served_qemu(tmp_path_factory.mktemp("qemu") / "svc", baked)
    try:
        launched = run(
            served, "run", "--cluster", str(EXAMPLE), "--hours", "1", "--json", timeout=900
        )
        cluster = json.loads(launched.stdout)
        assert cluster["state"] == "ready", cluster
        yield served, cluster
    finally:
        stop_and_end_vms(served)
        os.environ.pop("CORRAL_HOME", None)


def test_the_example_runs_a_slurm_job_on_both_workers_with_strict_ssh(example_cluster):
    served, cluster = example_cluster
    jobs = run(served, "ssh", cluster["id"], "head-0", "--", "srun", "-N2", "hostname")
    assert sorted(jobs.stdout.split()) == ["worker-0", "worker-1"]
    hop = run(
        served,
        "ssh", cluster["id"], "head-0", "--",
        "ssh", "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "worker-0", "hostname",
    )  # fmt: skip
    assert hop.stdout.strip() == "worker-0"
    # KVM or TCG, as the probe found, said once
    said = [line for line in served.log_path.read_text().splitlines() if "VMs run under" in line]
    assert len(said) == 1 and ("TCG" in said[0] or "KVM" in said[0]), said
    kernel = run(served, "ssh", cluster["id"], "worker-1", "--", "uname", "-r").stdout
    assert kernel.strip() != os.uname().release  # a kernel of its own: the image's
    assert kernel.strip().endswith("-cloud-amd64")


def test_home_is_one_file_system_for_every_vm(example_cluster):
    """A file written on one VM is read on another at once, both ways, and is the user's."""
    served, cluster = example_cluster
    for writer, reader in (("worker-1", "head-0"), ("head-0", "worker-1")):
        marker = f"written on {writer}"
        path = f"shared-{writer}.txt"
        run(served, "ssh", cluster["id"], writer, "--", "echo", shlex.quote(marker), ">", path)
        seen = run(served, "ssh", cluster["id"], reader, "--", "cat", path).stdout
        assert seen.strip() == marker
    owner = run(served, "ssh", cluster["id"], "worker-0", "--", "stat", "-c", "%U", path)
    assert owner.stdout.strip() == cluster["users"][0]
    home = served.data_dir / "qemu" / "homes" / cluster["id"] / cluster["users"][0]
    assert (home / "shared-head-0.txt").read_text().strip() == "written on head-0"


def test_each_node_has_the_documents_cores_and_memory(example_cluster):
    served, cluster = example_cluster
    for node in ("head-0", "worker-0"):
        cores = run(served, "ssh", cluster["id"], node, "--", "nproc").stdout
        memory = run(served, "ssh", cluster["id"], node, "--", "free", "-m").stdout
        total = int(
            next(line for line in memory.splitlines() if line.startswith("Mem:")).split()[1]
        )
        assert int(cores) == 1
        # 1 GiB, less what the guest's kernel keeps for itself (its code, its page tables)
        assert 900 <= total <= 1024, memory


def test_the_cluster_outlives_a_killed_service_and_is_destroyed_leaving_nothing(
    example_cluster,
):
    served, cluster = example_cluster
    assert len(processes_running(b"qemu-system-x86_64", os.fsencode(served.data_dir))) == 3
    served.kill()  # SIGKILL
    served.start()
    view = status(served, cluster["id"])
    assert view["state"] == "ready"
    assert all(node["state"] == "ready" for node in view["nodes"])
    jobs = run(served, "ssh", cluster["id"], "head-0", "--", "srun", "-N2", "hostname")
    assert sorted(jobs.stdout.split()) == ["worker-0", "worker-1"]
    run(served, "destroy", cluster["id"], "--yes", timeout=300)
    assert status(served, cluster["id"])["state"] == "terminated"
    assert leftovers(served, cluster) == []
    # every VM took its power button (ACPI) and powered off; none had to be killed
    assert "killing it" not in served.log_path.read_text()


def test_the_console_of_a_boot_that_failed_shows_why(baked, tmp_path, monkeypatch):
    monkeypatch.setenv("CORRAL_HOME", str(tmp_path / "user"))
    document = tmp_path / "one-node.yaml"
    document.write_text(ONE_NODE)
    served = served_qemu(tmp_path / "svc", baked, "append=root=/dev/nowhere rootdelay=2")
    try:
        failed = corral("run", "--cluster", str(document), "--hours", "1", "--json",
                        env=served.env(), timeout=600)  # fmt: skip
        assert failed.returncode != 0
        cluster = json.loads(failed.stdout)
        assert cluster["state"] == "failed", cluster
        console = run(served, "console", cluster["id"], "head-0").stdout
        assert "/dev/nowhere does not exist" in console
        assert "Linux version" in console  # the whole boot, from the kernel's first line
        run(served, "destroy", cluster["id"], "--yes", timeout=300)
        assert leftovers(served, cluster) == []
    finally:
        stop_and_end_vms(served)
