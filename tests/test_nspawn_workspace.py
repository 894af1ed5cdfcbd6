"""A cluster a scientist can work in, on real nspawn containers: their own account on
every node, one shared /home, and Slurm that knows (and confines jobs to) each node's
cores and memory, which the host enforces too.

Slow: boots real clusters from the baked appliance (conftest.py's `baked`); needs root.
"""

from __future__ import annotations

import shlex
import subprocess
import time

import pytest
import test_nspawn_cluster as real
from inprocess import admin_token, api, document, wait_for
from test_nspawn_cluster import launch_ready, on_node

from corral.backends import cgroups, network

pytestmark = pytest.mark.slow
nspawn_service = real.nspawn_service  # the fixture: a service with the nspawn backend

OWNER = "admin"  # the user the test service's admin token belongs to
JOB = """#!/bin/bash
#SBATCH -N2
#SBATCH -o {home}/out-%j
srun hostname
"""


def test_the_users_account_home_and_jobs_are_theirs_on_every_node(nspawn_service):
    service = nspawn_service
    cluster = launch_ready(service, document())
    assert cluster["login_user"] == OWNER and cluster["users"] == [OWNER]
    for node in cluster["nodes"]:
        who = on_node(
            service, cluster, node["name"], "id", "-un", "&&", "id", "-u", "&&", "id", "-g"
        )
        assert who.returncode == 0, who.stderr
        assert who.stdout.split() == [OWNER, "2000", "2000"], node["name"]

    home = f"/home/{OWNER}"
    script = shlex.quote(JOB.format(home=home))
    submitted = on_node(
        service, cluster, "head-0", "printf", "%s", script, ">", "job.sh", "&&", "sbatch", "job.sh"
    )
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.split()[-1]
    output = f"{home}/out-{job}"

    def job_output() -> str:
        shown = on_node(service, cluster, "head-0", "cat", output)
        return shown.stdout if shown.returncode == 0 and len(shown.stdout.split()) == 2 else ""

    assert sorted(wait_for(job_output, timeout=60, interval=0.5).split()) == [
        "worker-0",
        "worker-1",
    ]
    owner = on_node(service, cluster, "head-0", "stat", "-c", "%U", output)
    assert owner.stdout.strip() == OWNER  # the job ran as the user

    # inside the cluster the user reaches any node, host keys checked strictly
    hop = on_node(
        service, cluster, "worker-1", "ssh", "-o", "StrictHostKeyChecking=yes", "-o",
        "BatchMode=yes", "worker-0", "whoami",
    )  # fmt: skip
    assert hop.returncode == 0, hop.stderr
    assert hop.stdout.strip() == OWNER


def test_home_is_one_file_system_for_every_node(nspawn_service):
    """A file written on one node is read on another at once, both ways; it is gone when
    the cluster is."""
    service = nspawn_service
    cluster = launch_ready(service, document())
    for writer, reader in (("worker-1", "head-0"), ("head-0", "worker-1")):
        marker = f"written on {writer} at {time.time_ns()}"
        path = f"shared-{writer}.txt"
        wrote = on_node(service, cluster, writer, "echo", shlex.quote(marker), ">", path)
        assert wrote.returncode == 0, wrote.stderr
        started = time.monotonic()
        seen = on_node(service, cluster, reader, "cat", path)
        assert time.monotonic() - started < 1.0 + 0.5  # one ssh round trip; no sync to wait for
        assert seen.stdout.strip() == marker

    home = service.config.data_dir / "nspawn" / "homes" / cluster["id"]
    assert (home / OWNER / "shared-head-0.txt").exists()
    client = api(service, admin_token(service))
    client.delete(f"/v1/clusters/{cluster['id']}")
    wait_for(
        lambda: client.get(f"/v1/clusters/{cluster['id']}").json()["state"] == "terminated",
        timeout=120,
        interval=1,
    )
    assert not home.exists()


def test_slurm_knows_each_nodes_size_and_the_host_holds_nodes_to_it(nspawn_service):
    service = nspawn_service
    cluster = launch_ready(service, document())
    shown = on_node(service, cluster, "head-0", "scontrol", "show", "node", "worker-0")
    assert shown.returncode == 0, shown.stderr
    fields = dict(word.split("=", 1) for word in shown.stdout.split() if "=" in word)
    worker = next(n for n in cluster["nodes"] if n["name"] == "worker-0")
    assert fields["CPUTot"] == str(worker["cores"]) == "1"
    assert fields["RealMemory"] == str(worker["memory_mib"] - 128)  # less what the system needs

    fits = on_node(
        service, cluster, "head-0", "sbatch", "--wait", "--mem=500M", "-c", "1", "-o", "/dev/null",
        "--wrap", "hostname",
    )  # fmt: skip
    assert fits.returncode == 0, fits.stdout + fits.stderr
    too_big = on_node(service, cluster, "head-0", "srun", "--mem=2G", "hostname")
    assert too_big.returncode != 0
    assert "Memory specification can not be satisfied" in too_big.stderr

    # a job that takes more than it asked for is stopped by its cgroup
    greedy = "x = 'a' * (400 << 20); print('survived')"
    confined = on_node(
        service, cluster, "head-0", "srun", "--mem=100M", "python3", "-c", shlex.quote(greedy)
    )
    assert "survived" not in confined.stdout
    assert "Out Of Memory" in confined.stderr, confined.stderr

    # a process on the node that takes more than the node's memory is stopped by the host
    for node in cluster["nodes"]:
        machine = network.netns_name(node["id"])
        assert cgroups.limits_of(machine) == cgroups.Limits(node["cores"], node["memory_mib"])
    greedier = "x = 'a' * (1536 << 20); print('survived')"
    stopped = on_node(
        service, cluster, "worker-0", "python3", "-c", shlex.quote(greedier), "; echo exit=$?"
    )
    assert stopped.stdout.split() == ["exit=137"], stopped.stdout + stopped.stderr  # SIGKILL
    after = on_node(service, cluster, "worker-0", "hostname")  # the node itself lives on
    assert after.stdout.strip() == "worker-0"


def test_a_documents_users_log_in_with_their_own_keys(nspawn_service, tmp_path):
    """`users:` replaces the owner's account: each user logs in with the keys the document
    lists, and `corral ssh` takes the first of them, root on request."""
    service = nspawn_service
    key = tmp_path / "alice_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    public = (tmp_path / "alice_key.pub").read_text().strip()
    text = document().replace(
        "nodes:", f"users:\n  - name: alice\n    ssh_keys: [{public!r}]\n  - name: bob\nnodes:", 1
    )
    cluster = launch_ready(service, text)
    assert cluster["users"] == ["alice", "bob"] and cluster["login_user"] == "alice"
    ids = on_node(service, cluster, "worker-0", "id -u alice; id -u bob; id -u admin")
    assert ids.stdout.split() == ["2000", "2001"]  # the owner has no account of its own
    assert on_node(service, cluster, "head-0", "whoami", user="root").stdout.strip() == "root"

    # alice's own key, without corral's certificate; host keys checked against the CA
    known_hosts = next((service.config.data_dir.parent / "user").rglob("known_hosts"))
    head = next(n for n in cluster["nodes"] if n["name"] == "head-0")

    def with_own_key(user: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                "ssh", "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                "-o", f"UserKnownHostsFile={known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
                "-o", "StrictHostKeyChecking=yes", f"{user}@{head['address']}", "whoami",
            ],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    direct = with_own_key("alice")
    assert direct.returncode == 0, direct.stderr
    assert direct.stdout.strip() == "alice"
    refused = with_own_key("bob")  # bob's account does not take alice's key
    assert refused.returncode == 255 and "Permission denied" in refused.stderr
