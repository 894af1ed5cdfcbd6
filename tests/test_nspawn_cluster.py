"""Real clusters on this machine: nspawn containers from the baked appliance, Slurm inside.

Slow: the first run bakes the image (conftest.py's `baked`), and each test boots real
containers. Needs root, systemd-nspawn and mmdebstrap (scripts/install-system-packages).
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import re
import shlex
import signal
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from inprocess import admin_token, api, document, wait_for
from served import corral, process_alive
from test_cli_copy import tree

from corral.backends import cgroups, network
from corral.backends.base import ImageRef, NodeSpec, Placement
from corral.backends.nspawn import NspawnBackend
from corral.backends.processes import alive
from corral.cli.client import Client
from corral.cli.credentials import ssh_command
from corral.images.store import ImageStore
from corral.service.schemas import ClusterDetail
from corral.store.models import Image

pytestmark = pytest.mark.slow


@pytest.fixture
def nspawn_service(make_service, baked, tmp_path, monkeypatch):
    monkeypatch.setenv("CORRAL_HOME", str(tmp_path / "user"))  # where `ssh` keeps credentials
    return start_nspawn_service(make_service, baked, tmp_path)


def start_nspawn_service(make_service, baked, tmp_path, **settings):
    """A served service with the nspawn backend and the baked image, with `settings`."""
    cache, digest = baked
    data_dir = tmp_path / "svc"
    data_dir.mkdir()
    (data_dir / "images").symlink_to(cache)
    service = make_service(data_dir=data_dir, serve=True, backend_name="nspawn", **settings)
    with service.store.session() as session:
        session.add(Image(name="debian-12-slurm", digest=digest))
    return service


def launch_ready(service, text: str) -> dict:
    client = api(service, admin_token(service))
    created = client.post("/v1/clusters", json={"document": text, "lease_seconds": 3600})
    assert created.status_code == 201, created.text
    cluster_id = created.json()["id"]
    wait_for(
        lambda: client.get(f"/v1/clusters/{cluster_id}").json()["state"] != "launching",
        timeout=300,
        interval=1,
    )
    view = client.get(f"/v1/clusters/{cluster_id}").json()
    assert view["state"] == "ready", view
    return view


def on_node(
    service, cluster: dict, node: str, *command: str, user: str | None = None
) -> subprocess.CompletedProcess:
    """Run `command` on `node` over ssh as `user` (default: the cluster's login user)."""
    client = Client(f"http://{service.config.listen}", admin_token(service))
    try:
        argv = ssh_command(client, ClusterDetail.model_validate(cluster), node, command, user)
    finally:
        client.close()
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def leftovers(service, clusters: list[dict]) -> list[str]:
    """Everything of these clusters still on the machine: processes, mounts, links."""
    marker = str(service.config.data_dir)
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "systemd-nspawn" in command and marker in command:
                found.append(f"process {proc.name}: {command[:80]}")
    found += [
        f"mount {line.split()[1]}"
        for line in Path("/proc/mounts").read_text().splitlines()
        if marker in line
    ]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    namespaces = subprocess.run(["ip", "netns"], capture_output=True, text=True).stdout
    for cluster in clusters:
        if network.bridge_name(cluster["id"]) in links:
            found.append(f"bridge {network.bridge_name(cluster['id'])}")
        for node in cluster["nodes"]:
            host_side = network.veth_name(node["id"])
            if host_side in links:
                found.append(f"veth {host_side}")
            if network.netns_name(node["id"]) in namespaces:
                found.append(f"netns {network.netns_name(node['id'])}")
            groups = cgroups.groups(network.netns_name(node["id"]))
            found += [f"cgroup {group}" for group in groups if group.exists()]
    return found


def foreign_cgroups(cluster: dict) -> list[str]:
    """Processes of the cluster's containers that are not in their own container's group."""
    found = []
    for node in cluster["nodes"]:
        machine = network.netns_name(node["id"])
        own = f"/{cgroups.PARENT}/{machine}/"
        pids = network.processes_in(machine)
        assert pids, f"no processes in {machine}"
        for pid in pids:
            try:
                lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
            except OSError:  # it ended meanwhile
                continue
            for line in lines:
                _, controllers, path = line.split(":", 2)
                if controllers in ("", "name=systemd") and not path.startswith(own):
                    found.append(f"{node['name']} pid {pid}: {line}")
    return found


def test_a_slurm_job_runs_across_workers_and_ssh_is_strict(nspawn_service):
    service = nspawn_service
    cluster = launch_ready(service, document())
    for node in cluster["nodes"]:
        # ready means logins are open: pam_nologin's /run/nologin is gone
        assert (
            on_node(service, cluster, node["name"], "test", "!", "-e", "/run/nologin").returncode
            == 0
        )
    jobs = on_node(service, cluster, "head-0", "srun", "-N2", "hostname")
    assert jobs.returncode == 0, jobs.stderr
    assert sorted(jobs.stdout.split()) == ["worker-0", "worker-1"]
    hop = on_node(
        service,
        cluster,
        "head-0",
        "ssh",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "BatchMode=yes",
        "worker-0",
        "hostname",
    )
    assert hop.returncode == 0, hop.stderr
    assert hop.stdout.strip() == "worker-0"


def test_two_clusters_cannot_reach_each_other_and_destroy_leaves_nothing(nspawn_service):
    service = nspawn_service
    first = launch_ready(service, document())
    second = launch_ready(service, document().replace("count: 2", "count: 1"))
    target = second["nodes"][0]["address"]
    probe = (
        "import socket\n"
        "try:\n"
        f"    socket.create_connection(('{target}', 22), timeout=3)\n"
        "    print('reached')\n"
        "except OSError as exc:\n"
        "    print('unreachable', exc)\n"
    )
    crossed = on_node(service, first, "head-0", "python3", "-c", shlex.quote(probe))
    assert crossed.returncode == 0, crossed.stderr
    assert crossed.stdout.startswith("unreachable"), crossed.stdout
    inside = on_node(
        service,
        first,
        "head-0",
        "python3",
        "-c",
        shlex.quote(probe.replace(target, first["nodes"][1]["address"])),
    )
    assert inside.stdout.startswith("reached")  # the probe itself works
    # each container's systemd makes its units' groups in a group of its own, not in one
    # all containers share (where their units' groups would race: status 219/CGROUP).
    # A process of a unit still starting (a cluster can be ready before the tail of its
    # nodes' boot) is at the named hierarchy's root for a moment; none stays there.
    wait_for(lambda: foreign_cgroups(first) + foreign_cgroups(second) == [], timeout=10)

    client = api(service, admin_token(service))
    for cluster in (first, second):
        client.delete(f"/v1/clusters/{cluster['id']}")
    for cluster in (first, second):
        wait_for(
            lambda c=cluster: client.get(f"/v1/clusters/{c['id']}").json()["state"] == "terminated",
            timeout=120,
            interval=1,
        )
    assert leftovers(service, [first, second]) == []
    kept = service.config.data_dir / "nspawn"
    assert set(os.listdir(kept)) <= {"machines.json", "homes", "consoles"}
    assert os.listdir(kept / "homes") == []
    assert os.listdir(kept / "consoles") == []  # each cluster's went with it


HEAD_ALONE = """\
name: head-alone
image: debian-12-slurm
nodes:
  - {group: head, count: 1, cores: 1, memory: 1GiB, login: true}
"""


def cli_env(service) -> dict[str, str]:
    """The environment of a `corral` command that talks to `service` as its admin."""
    url = f"http://{service.config.listen}"
    return {**os.environ, "CORRAL_URL": url, "CORRAL_TOKEN": admin_token(service)}


def test_corral_cp_takes_a_directory_to_the_head_and_back_byte_identical(nspawn_service, tmp_path):
    service = nspawn_service
    cluster = launch_ready(service, HEAD_ALONE)
    source = tmp_path / "results"
    (source / "nested" / "deeper").mkdir(parents=True)
    (source / "nested" / "deeper" / "with space.txt").write_text("spaced out\n")
    (source / "-starts with a dash").write_text("dash\n")
    (source / "random.bin").write_bytes(os.urandom(5 * 1024 * 1024 + 7))
    (source / "empty").write_bytes(b"")
    (source / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (source / "run.sh").chmod(0o750)
    (source / "link").symlink_to("nested/deeper/with space.txt")
    (source / "nested").chmod(0o705)
    env = cli_env(service)

    sent = corral("cp", "--json", str(source), f"{cluster['name']}:", env=env, timeout=120)
    assert sent.returncode == 0, sent.stderr
    summary = json.loads(sent.stdout)
    assert summary["cluster"] == cluster["id"]
    assert summary["node"] == "head-0"
    assert summary["user"] == cluster["login_user"]
    assert (summary["direction"], summary["sources"]) == ("to", [str(source)])
    assert summary["bytes"] > 5 * 1024 * 1024
    # the files landed in the home of the account that copied, owned by it
    owner = on_node(
        service,
        cluster,
        "head-0",
        "stat",
        "-c",
        "%U",
        "results/run.sh",
    )
    assert owner.stdout.strip() == cluster["login_user"], owner.stderr

    back = tmp_path / "back"
    back.mkdir()
    fetched = corral(
        "cp", "--json", f"{cluster['id']}:head-0:results", str(back), env=env, timeout=120
    )
    assert fetched.returncode == 0, fetched.stderr
    assert json.loads(fetched.stdout)["direction"] == "from"
    assert tree(back / "results") == tree(source)  # every entry's mode and bytes or target
    assert (back / "results").stat().st_mode == source.stat().st_mode

    missing = corral("cp", f"{cluster['id']}:nowhere", str(back), env=env, timeout=120)
    assert missing.returncode == 4, missing.stderr
    assert "head-0: no such file or directory: nowhere" in missing.stderr


def nspawn_pid(service, node_id: str) -> int:
    machine = f"--machine={network.netns_name(node_id)}"
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                argv = (proc / "cmdline").read_bytes().decode().split("\0")
            except OSError:
                continue
            if argv[0].endswith("systemd-nspawn") and machine in argv:
                return int(proc.name)
    raise AssertionError(f"no systemd-nspawn process for {node_id}")


def slurm_nodes(service, cluster: dict) -> list[str]:
    listed = on_node(service, cluster, "head-0", "sinfo", "--noheader", "--Node", "--format=%N")
    return sorted(listed.stdout.split()) if listed.returncode == 0 else [listed.stderr]


def test_a_worker_lost_from_a_ready_cluster_leaves_slurm_and_every_hosts_file(nspawn_service):
    """All-or-nothing is the launch's policy: a ready cluster whose worker's container is
    killed outside corral goes on degraded, and the lost worker leaves Slurm, every
    node's /etc/hosts and the cluster's trust."""
    service = nspawn_service
    cluster = launch_ready(service, document())
    assert slurm_nodes(service, cluster) == ["worker-0", "worker-1"]

    def hosts_of(node: str) -> str:
        return on_node(service, cluster, node, "cat", "/etc/hosts").stdout

    assert "worker-1" in hosts_of("head-0")
    lost = next(n for n in cluster["nodes"] if n["name"] == "worker-1")
    nspawn = nspawn_pid(service, lost["id"])
    (container_init,) = Path(f"/proc/{nspawn}/task/{nspawn}/children").read_text().split()
    os.kill(nspawn, signal.SIGKILL)  # the container's systemd lives on, orphaned

    client = api(service, admin_token(service))

    def state_of(node: str) -> str:
        nodes = client.get(f"/v1/clusters/{cluster['id']}").json()["nodes"]
        return next(n["state"] for n in nodes if n["name"] == node)

    wait_for(lambda: state_of("worker-1") == "terminated", timeout=120, interval=1)
    wait_for(lambda: not process_alive(int(container_init)), timeout=10)  # killed, not orphaned
    detail = client.get(f"/v1/clusters/{cluster['id']}").json()
    assert detail["state"] == "degraded"
    assert "going on without node worker-1 lost" in detail["failure"]
    # the membership change reaches the head's agent, whose `leave` rewrites slurm.conf
    wait_for(lambda: slurm_nodes(service, cluster) == ["worker-0"], timeout=60, interval=1)
    jobs = on_node(service, cluster, "head-0", "srun", "-N1", "hostname")
    assert jobs.stdout.split() == ["worker-0"], jobs.stderr

    for node in ("head-0", "worker-0"):
        wait_for(lambda n=node: "worker-1" not in hosts_of(n), timeout=30, interval=0.5)
        assert "worker-0" in hosts_of(node) and "head-0" in hosts_of(node)


def agent_pid(node_id: str) -> int:
    """The host's pid of the context agent in the node's container."""
    for pid in network.processes_in(network.netns_name(node_id)):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:  # it ended meanwhile
            continue
        if argv[1:3] == [b"-m", b"agent"]:
            return pid
    raise AssertionError(f"no corral agent runs in {node_id}'s container")


def test_a_worker_whose_agent_is_frozen_is_lost_and_leaves_slurm_and_the_hosts_files(
    make_service, baked, tmp_path, monkeypatch
):
    """The container runs on, but its agent is stopped (SIGSTOP): silent past the
    heartbeat, the worker is lost with that cause and leaves every other node's view."""
    monkeypatch.setenv("CORRAL_HOME", str(tmp_path / "user"))
    service = start_nspawn_service(make_service, baked, tmp_path, heartbeat=timedelta(seconds=10))
    cluster = launch_ready(service, document())
    assert slurm_nodes(service, cluster) == ["worker-0", "worker-1"]
    frozen = next(n for n in cluster["nodes"] if n["name"] == "worker-1")
    os.kill(agent_pid(frozen["id"]), signal.SIGSTOP)  # killed with its container later

    client = api(service, admin_token(service))

    def node(name: str) -> dict:
        nodes = client.get(f"/v1/clusters/{cluster['id']}").json()["nodes"]
        return next(n for n in nodes if n["name"] == name)

    wait_for(lambda: node("worker-1")["state"] == "terminated", timeout=120, interval=1)
    lost = node("worker-1")
    assert lost["failure_phase"] == "run"
    assert re.fullmatch(r"its agent was silent for \w+ \(heartbeat 10s\)", lost["failure"])
    detail = client.get(f"/v1/clusters/{cluster['id']}").json()
    assert detail["state"] == "degraded"
    assert "going on without node worker-1 lost in phase run: its agent" in detail["failure"]
    assert node("head-0")["state"] == node("worker-0")["state"] == "ready"  # heard all along
    wait_for(lambda: slurm_nodes(service, cluster) == ["worker-0"], timeout=60, interval=1)

    def hosts_of(name: str) -> str:
        return on_node(service, cluster, name, "cat", "/etc/hosts").stdout

    for name in ("head-0", "worker-0"):
        wait_for(lambda n=name: "worker-1" not in hosts_of(n), timeout=30, interval=0.5)
        assert "head-0" in hosts_of(name) and "worker-0" in hosts_of(name)
    assert network.processes_in(network.netns_name(frozen["id"])) == []


def test_a_lost_worker_of_a_group_with_replace_has_a_successor_that_joins_slurm(
    nspawn_service,
):
    service = nspawn_service
    replaced = "replace: true\n    provides: [slurm-worker]"
    cluster = launch_ready(service, document().replace("provides: [slurm-worker]", replaced))
    lost = next(n for n in cluster["nodes"] if n["name"] == "worker-1")
    os.kill(nspawn_pid(service, lost["id"]), signal.SIGKILL)

    client = api(service, admin_token(service))

    def detail() -> dict:
        return client.get(f"/v1/clusters/{cluster['id']}").json()

    def happened() -> str:  # for a failure's message
        events = client.get(f"/v1/clusters/{cluster['id']}/events").json()
        return "\n".join(f"{e['subject']} {e['to_state']}: {e['reason'][:100]}" for e in events)

    wait_for(lambda: detail()["state"] == "degraded", timeout=60, interval=0.5)
    try:
        wait_for(lambda: detail()["state"] == "ready", timeout=120, interval=1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{happened()}") from None
    states = {n["name"]: n["state"] for n in detail()["nodes"]}
    assert states == {
        "head-0": "ready",
        "worker-0": "ready",
        "worker-1": "terminated",
        "worker-2": "ready",
    }
    cluster = detail()
    wait_for(lambda: slurm_nodes(service, cluster) == ["worker-0", "worker-2"], timeout=60)
    jobs = on_node(service, cluster, "head-0", "srun", "-N2", "hostname")
    assert jobs.returncode == 0, jobs.stderr
    assert sorted(jobs.stdout.split()) == ["worker-0", "worker-2"]
    hosts = on_node(service, cluster, "worker-0", "cat", "/etc/hosts").stdout
    assert "worker-2" in hosts and "worker-1" not in hosts


def test_a_resized_cluster_runs_jobs_on_its_new_workers(nspawn_service):
    service = nspawn_service
    cluster = launch_ready(service, document())
    assert on_node(service, cluster, "worker-0", "true").returncode == 0  # credentials cached
    resized = corral(
        "resize", cluster["id"], "worker=+2", "--json", env=cli_env(service), timeout=300
    )
    assert resized.returncode == 0, resized.stderr
    grown = json.loads(resized.stdout)
    assert {n["name"]: n["state"] for n in grown["nodes"]} == {
        "head-0": "ready", "worker-0": "ready", "worker-1": "ready",
        "worker-2": "ready", "worker-3": "ready",
    }  # fmt: skip
    assert grown["state"] == "ready"
    # the new node's address was not in the cached known_hosts: fetched again, still strict
    reached = on_node(service, grown, "worker-3", "hostname")
    assert reached.stdout.strip() == "worker-3", reached.stderr
    wanted = ["worker-0", "worker-1", "worker-2", "worker-3"]
    wait_for(lambda: slurm_nodes(service, grown) == wanted, timeout=60, interval=0.5)
    jobs = on_node(service, grown, "head-0", "srun", "-N4", "hostname")
    assert jobs.returncode == 0, jobs.stderr
    assert sorted(jobs.stdout.split()) == wanted

    # back to 2: worker-3 runs a job, which its drain lets finish before it goes
    job = submit(service, grown, "worker-3", "sleep 8")
    wait_for(lambda: job_state(service, grown, job) == "RUNNING", timeout=30, interval=0.3)
    shrunk = corral(
        "resize", cluster["id"], "worker=2", "--json", env=cli_env(service), timeout=300
    )
    assert shrunk.returncode == 0, shrunk.stderr
    states = {n["name"]: n["state"] for n in json.loads(shrunk.stdout)["nodes"]}
    assert states["worker-2"] == states["worker-3"] == "terminated"
    assert job_state(service, grown, job) == "COMPLETED"  # it ended in its time, not killed
    wait_for(
        lambda: slurm_nodes(service, grown) == ["worker-0", "worker-1"], timeout=60, interval=0.5
    )
    reasons = [
        e["reason"] for e in corral_events(service, cluster["id"]) if "worker-3" in e["subject"]
    ]
    assert any("draining it first" in r for r in reasons), reasons

    # a drain whose job outlasts its timeout keeps the node, drained, and says why
    long_job = submit(service, grown, "worker-1", "sleep 300")
    wait_for(lambda: job_state(service, grown, long_job) == "RUNNING", timeout=30, interval=0.3)
    kept = corral(
        "destroy", cluster["id"], "worker-1", "--drain-timeout", "2s", env=cli_env(service),
        timeout=300,
    )  # fmt: skip
    assert kept.returncode == 10, (kept.stdout, kept.stderr)
    assert f"job(s) {long_job} still running on worker-1" in kept.stderr
    assert "worker-1 stays drained in Slurm" in kept.stderr
    shown = on_node(service, grown, "head-0", "sinfo", "-h", "-n", "worker-1", "-o", "%T")
    assert shown.stdout.strip() == "draining", shown  # drained, its job still running
    assert job_state(service, grown, long_job) == "RUNNING"
    on_node(service, grown, "head-0", "scancel", long_job)


def test_an_autoscaled_cluster_grows_with_its_queue_and_gives_idle_workers_back(nspawn_service):
    """No worker until a job waits: Slurm's ResumeProgram asks corral (as the head) for
    the two workers a `-N2` job needs, the job runs on them, and once they have idled for
    `idle` the SuspendProgram gives them back."""
    service = nspawn_service
    text = document().replace("count: 2\n    min: 1", "count: 0")
    text += "autoscale: {group: worker, min: 0, max: 2, idle: 15s}\n"
    cluster = launch_ready(service, text)
    assert [n["name"] for n in cluster["nodes"]] == ["head-0"]
    workers = ["worker-0", "worker-1"]
    assert slurm_nodes(service, cluster) == workers  # known to Slurm, powered down

    argv = ["sbatch", "--parsable", "-N2", "-o", "out-%j", "--wrap='srun hostname'"]
    submitted = on_node(service, cluster, "head-0", *argv)
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip()
    wait_for(lambda: job_state(service, cluster, job) == "COMPLETED", timeout=240, interval=1)
    ran = on_node(service, cluster, "head-0", "cat", f"out-{job}")  # in the shared /home
    assert sorted(ran.stdout.split()) == workers, ran
    reasons = [e["reason"] for e in corral_events(service, cluster["id"])]
    assert any("autoscale: resume asked by head-0" in r for r in reasons), reasons

    client = api(service, admin_token(service))

    def live_workers() -> list[str]:
        nodes = client.get(f"/v1/clusters/{cluster['id']}").json()["nodes"]
        return [n["name"] for n in nodes if n["group"] == "worker" and n["state"] != "terminated"]

    wait_for(lambda: live_workers() == [], timeout=180, interval=1)
    reasons = [e["reason"] for e in corral_events(service, cluster["id"])]
    assert any("autoscale: suspend asked by head-0" in r for r in reasons), reasons
    states = on_node(service, cluster, "head-0", "sinfo", "-h", "--Node", "-o", "'%N %T'")
    # powering down (%), then powered down (~): Slurm may ask for them again
    assert [line.split()[1][-1] in "%~" for line in states.stdout.splitlines()] == [True, True]
    assert client.get(f"/v1/clusters/{cluster['id']}").json()["state"] == "ready"


def submit(service, cluster: dict, node: str, command: str) -> str:
    """Submit `command` as a batch job on `node`; its job id."""
    # ssh joins the arguments into one command line for the node's shell: quoted once
    argv = ["sbatch", "--parsable", "-w", node, "-o", "/dev/null", f"--wrap='{command}'"]
    submitted = on_node(service, cluster, "head-0", *argv)
    assert submitted.returncode == 0, submitted.stderr
    return submitted.stdout.strip()


def job_state(service, cluster: dict, job: str) -> str:
    shown = on_node(service, cluster, "head-0", "scontrol", "show", "job", job, "--oneliner")
    return next((w[9:] for w in shown.stdout.split() if w.startswith("JobState=")), shown.stderr)


def corral_events(service, cluster_id: str) -> list[dict]:
    client = api(service, admin_token(service))
    return client.get(f"/v1/clusters/{cluster_id}/events").json()


def test_a_started_container_is_alive_before_its_shell_has_become_nspawn(tmp_path):
    # the backend's pid is a shell that moves into the container's cgroups and then execs
    # nspawn: until then its command line names no container directory, and an engine
    # tick in that moment once took the node for exited
    shell = subprocess.Popen(["sh", "-c", "sleep 30"])
    try:
        assert alive(shell.pid, str(tmp_path))
    finally:
        shell.kill()
        shell.wait()
    assert not alive(shell.pid, str(tmp_path))


def test_a_cluster_whose_service_is_gone_powers_itself_off_at_its_lease_end(
    nspawn_service, make_service
):
    service = nspawn_service
    client = api(service, admin_token(service))
    text = document().replace("count: 2", "count: 1")
    created = client.post("/v1/clusters", json={"document": text, "lease_seconds": 40})
    assert created.status_code == 201, created.text
    cluster_id = created.json()["id"]
    wait_for(
        lambda: client.get(f"/v1/clusters/{cluster_id}").json()["state"] == "ready",
        timeout=120,
        interval=0.5,
    )
    cluster = client.get(f"/v1/clusters/{cluster_id}").json()
    lease_end = datetime.fromisoformat(cluster["lease_end"])
    backend = service.backend
    make_service.stop(service)  # the service is gone; its containers run on
    assert all(backend.describe(n["id"]).state == "running" for n in cluster["nodes"])

    def powered_off() -> bool:
        return all(backend.describe(n["id"]).state == "stopped" for n in cluster["nodes"])

    left = (lease_end - datetime.now(UTC)).total_seconds()
    wait_for(powered_off, timeout=left + 60, interval=1)
    assert datetime.now(UTC) >= lease_end
    # a service that comes back removes what is left of them
    again = make_service(data_dir=service.config.data_dir, serve=True, backend_name="nspawn")
    back = api(again, admin_token(again))
    wait_for(
        lambda: back.get(f"/v1/clusters/{cluster_id}").json()["state"] == "terminated",
        timeout=120,
        interval=1,
    )
    assert leftovers(again, [cluster]) == []


def test_a_boot_cut_short_before_it_was_recorded_is_started_afresh(baked, tmp_path):
    cache, digest = baked
    taken = [n for n, _ in network.routes()]
    subnet = next(
        s
        for s in (
            ipaddress.ip_network(f"10.{random.randrange(232, 240)}.{i}.0/24") for i in range(256)
        )
        if not any(s.overlaps(n) for n in taken)
    )
    spec = NodeSpec(
        node_id=f"w-crash{os.getpid()}",
        cluster_id=f"c-crash{os.getpid()}",
        name="worker-0",
        image=ImageRef("debian-12-slurm", digest, ImageStore(cache).path(digest)),
        cores=1,
        memory_mib=1024,
    )
    placement = Placement("local", "local", str(next(subnet.hosts()) + 1), str(subnet))
    machine = f"--machine={network.netns_name(spec.node_id)}"

    def containers() -> list[int]:
        found = []
        for proc in Path("/proc").iterdir():
            try:
                argv = (proc / "cmdline").read_bytes().decode().split("\0")
            except (OSError, ValueError):
                continue
            if argv[0].endswith("systemd-nspawn") and machine in argv:
                found.append(int(proc.name))
        return found

    first = NspawnBackend(tmp_path / "nspawn")
    try:
        first.boot(spec, placement)
        wait_for(lambda: len(containers()) == 1, timeout=30)  # once its shell execs nspawn
        (tmp_path / "nspawn" / "machines.json").unlink()  # killed before it was recorded
        again = NspawnBackend(tmp_path / "nspawn")
        again.boot(spec, placement)
        # the container running is the one recorded, and the only one
        recorded = json.loads((tmp_path / "nspawn" / "machines.json").read_text())[0]["pid"]
        wait_for(lambda: containers() == [recorded], timeout=30)
        assert again.describe(spec.node_id).state == "running"
    finally:
        NspawnBackend(tmp_path / "nspawn").terminate(spec.node_id)
        network.remove_bridge(spec.cluster_id)
    assert containers() == []
    assert not network.netns_exists(network.netns_name(spec.node_id))
    assert not network.link_exists(network.bridge_name(spec.cluster_id))
