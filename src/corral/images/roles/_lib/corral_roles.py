"""Shared by the base-cluster role scripts: the node's view, idempotent files, services.

Role scripts run as root inside the node with the node's context view on stdin. Running
one again with the same view changes nothing: files are rewritten only when their bytes
differ, and services are restarted only when what they read changed.
"""

from __future__ import annotations

import json
import os
import pwd
import socket
import subprocess
import sys
import time


def read_view() -> dict:
    return json.load(sys.stdin)


def root_path(path: str) -> str:
    """`path` under $CORRAL_ROOT (the node's root; `/` on a real node)."""
    return os.path.join(os.environ.get("CORRAL_ROOT", "/"), path.lstrip("/"))


def write_if_changed(path: str, text: str, mode: int = 0o644, owner: str = "root") -> bool:
    """Write `text` to `path` unless it already holds exactly that; True if it wrote."""
    target = root_path(path)
    data = text.encode()
    try:
        with open(target, "rb") as current:
            if current.read() == data:
                return False
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = f"{target}.corral-tmp"
    with open(tmp, "wb") as out:
        out.write(data)
    os.chmod(tmp, mode)
    chown_to(tmp, owner)
    os.replace(tmp, target)
    return True


def run(*command: str) -> str:
    """Run a command; on failure exit 1 with its output, which the agent reports."""
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        print(f"{' '.join(command)} failed ({result.returncode}):", file=sys.stderr)
        print(result.stdout + result.stderr, file=sys.stderr)
        if command[0] == "systemctl":  # systemctl only points at the journal: show it
            journal = ["journalctl", "--no-pager", "-o", "cat", "-n", "15", "-u", command[-1]]
            print(subprocess.run(journal, capture_output=True, text=True).stdout, file=sys.stderr)
        sys.exit(1)
    return result.stdout


def wait_until(check, what: str, seconds: float = 60.0, longest_pause: float = 0.5) -> None:
    """Check often at first, since services mostly answer within a fraction of a second."""
    deadline = time.monotonic() + seconds
    pause = min(0.02, longest_pause)
    while not check():
        if time.monotonic() > deadline:
            print(f"gave up waiting {seconds:.0f}s for {what}", file=sys.stderr)
            sys.exit(1)
        time.sleep(pause)
        pause = min(pause * 1.5, longest_pause)


def accepts(address: str, port: int) -> bool:
    """Whether something listens on `address`:`port`."""
    try:
        socket.create_connection((address, port), timeout=1).close()
    except OSError:
        return False
    return True


def chown_to(path: str, owner: str) -> None:
    """Give `path` to `owner` and its primary group."""
    account = pwd.getpwnam(owner)
    os.chown(path, account.pw_uid, account.pw_gid)


def enable_service(unit: str) -> None:
    """Start `unit` at every boot from now on.

    `--no-reload`: the unit is loaded already, and the reload `systemctl enable` does by
    default re-runs every generator and re-reads every unit, 0.2 s of CPU in PID 1.
    """
    run("systemctl", "enable", "--no-reload", "--quiet", unit)


def succeeds(*command: str) -> bool:
    return subprocess.run(command, capture_output=True).returncode == 0


def prepare_node() -> None:
    """What every node of the cluster needs: sshd using the broker's files, munge running.

    The broker delivers the munge key root-owned; munged insists on owning it.
    """
    run("systemctl", "reload-or-restart", "ssh")
    key = "/etc/munge/munge.key"
    munge = pwd.getpwnam("munge")
    stat = os.stat(key)
    changed = (stat.st_uid, stat.st_gid) != (munge.pw_uid, munge.pw_gid)
    if changed:
        os.chown(key, munge.pw_uid, munge.pw_gid)
    if changed or not succeeds("systemctl", "is-active", "--quiet", "munge"):
        run("systemctl", "restart", "munge")
    wait_until(lambda: succeeds("munge", "-n"), "munge to answer", 30)


# Slurm's cgroup controllers; nspawn mounts the v1 ones read-only in a container
V1_CONTROLLERS = ("memory", "cpuset", "freezer")
CGROUP_ROOT = "/sys/fs/cgroup"


def cgroup_version() -> int | None:
    """The cgroup version Slurm can confine jobs with on this node: 2 when the unified
    hierarchy is the only one and has the memory controller, 1 when the v1 controllers
    are mounted, None when neither (jobs then run unconfined, within the node's limits)."""
    unified = root_path(f"{CGROUP_ROOT}/cgroup.controllers")
    if os.path.exists(unified):
        with open(unified) as controllers:
            return 2 if "memory" in controllers.read().split() else None
    if all(os.path.isdir(root_path(f"{CGROUP_ROOT}/{c}")) for c in V1_CONTROLLERS):
        return 1
    return None


def make_cgroups_writable() -> None:
    """Mount Slurm's v1 controllers writable over nspawn's read-only ones.

    In the container's cgroup namespace they show its own group, which the host holds to
    the node's cores and memory: the jobs' groups Slurm makes go inside it. (A controller
    cannot be mounted straight over its own read-only mount: it is mounted aside, in
    /run, and bound over.)
    """
    with open("/proc/self/mountinfo") as mountinfo:
        mounts = mountinfo.read().splitlines()
    for controller in V1_CONTROLLERS:
        target = f"{CGROUP_ROOT}/{controller}"
        options = [line.split()[5] for line in mounts if line.split()[4] == target]
        if options and options[-1].split(",")[0] == "rw":
            continue
        aside = f"/run/corral/cgroup/{controller}"
        os.makedirs(aside, exist_ok=True)
        if not os.path.ismount(aside):
            options = f"rw,nosuid,nodev,noexec,{controller}"
            run("mount", "-t", "cgroup", "-o", options, "cgroup", aside)
        run("mount", "--bind", aside, target)


# the node's own processes (systemd, sshd, munge, slurmd) stay out of what jobs may take
SYSTEM_MEMORY_MIB = 128


def job_memory_mib(memory_mib: int) -> int:
    """What Slurm may give jobs of a node with `memory_mib`: all but SYSTEM_MEMORY_MIB,
    or all but a quarter of a node smaller than four times that."""
    return memory_mib - min(SYSTEM_MEMORY_MIB, memory_mib // 4)


def cgroup_conf() -> str:
    return (
        "\n".join(
            [
                "# written by corral; jobs are confined to the cores and memory they ask for",
                "CgroupPlugin=autodetect",
                "ConstrainCores=yes",
                "ConstrainRAMSpace=yes",
                "ConstrainSwapSpace=no",
                "ConstrainDevices=no",
            ]
        )
        + "\n"
    )


ROLES = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# how long a resumed node may take to boot, join and register its slurmd
RESUME_TIMEOUT_SECONDS = 300


def autoscaled(view: dict) -> dict | None:
    """The cluster's autoscaled group when it provides slurm-worker: Slurm powers its
    nodes up and down (its power saving), by names fixed in slurm.conf."""
    scaled = view.get("autoscale")
    return scaled if scaled and "slurm-worker" in scaled["provides"] else None


def scaled_names(scaled: dict) -> list[str]:
    """Every name a node of the autoscaled group may have: `<group>-0` to `<group>-<max-1>`."""
    return [f"{scaled['group']}-{i}" for i in range(scaled["max"])]


def slurm_conf(view: dict, confined: bool) -> str:
    """slurm.conf for a cluster whose controller is this node; workers from the view,
    each with the cores and memory it was placed with (less SYSTEM_MEMORY_MIB).

    An autoscaled worker group is listed whole, by every name its nodes may have, as
    CLOUD nodes: Slurm asks corral for them when jobs wait (ResumeProgram) and gives them
    back once idle (SuspendProgram); they come and go without changing this file."""
    scaled = autoscaled(view)
    workers = sorted(view["roles"].get("slurm-worker", []), key=lambda m: m["name"])
    scaled_nodes = scaled_names(scaled) if scaled else []
    if scaled:
        workers = [w for w in workers if w["group"] != scaled["group"]]
    me = next(m for m in view["members"] if m["name"] == view["node"])
    parameters = (
        "enable_configless,cloud_reg_addrs,idle_on_node_suspend"
        if scaled
        else ("enable_configless")
    )
    lines = [
        "# written by corral from the cluster's membership; do not edit",
        f"ClusterName={view['cluster'].replace('-', '')}",
        f"SlurmctldHost={me['name']}({me['address']})",
        f"SlurmctldParameters={parameters}",
        "AuthType=auth/munge",
        # the power-saving programs ask corral as this node, whose credential is root's
        "SlurmUser=root" if scaled else "SlurmUser=slurm",
        "StateSaveLocation=/var/lib/slurm/slurmctld",
        "SlurmdSpoolDir=/var/lib/slurm/slurmd",
        "ProctrackType=proctrack/cgroup" if confined else "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/cgroup" if confined else "TaskPlugin=task/none",
        # slurmd in a container sees the machine's CPUs and memory, not the node's
        "SlurmdParameters=config_overrides",
        "JobAcctGatherType=jobacct_gather/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "ReturnToService=2",
        "MpiDefault=none",
        "SlurmctldLogFile=/var/log/slurm/slurmctld.log",
        "SlurmdLogFile=/var/log/slurm/slurmd.log",
    ]
    lines += [
        f"NodeName={w['name']} NodeAddr={w['address']} CPUs={w.get('cores', 1)} "
        f"RealMemory={job_memory_mib(w.get('memory_mib', 1024))} State=UNKNOWN"
        for w in workers
    ]
    sizes = [(w.get("cores", 1), w.get("memory_mib", 1024)) for w in workers]
    names = [w["name"] for w in workers]
    if scaled:
        sizes.append((scaled["cores"], scaled["memory_mib"]))
        names += scaled_nodes
        lines += [
            f"SuspendProgram={ROLES}/slurm-controller/suspend",
            f"ResumeProgram={ROLES}/slurm-controller/resume",
            f"SuspendTime={max(scaled['idle_seconds'], 1)}",
            "SuspendTimeout=30",
            f"ResumeTimeout={RESUME_TIMEOUT_SECONDS}",
            # a cloud node may be powered down: nothing is forwarded through nodes
            "TreeWidth=65533",
            "PrivateData=cloud",
        ]
        lines += [
            f"NodeName={name} CPUs={scaled['cores']} "
            f"RealMemory={job_memory_mib(scaled['memory_mib'])} State=CLOUD"
            for name in scaled_nodes
        ]
    if names:
        # a job that does not say how much memory it wants gets its cores' share
        per_cpu = min(job_memory_mib(memory) // cores for cores, memory in sizes)
        names = ",".join(names)
        lines.append(
            f"PartitionName=main Nodes={names} Default=YES MaxTime=INFINITE State=UP "
            f"DefMemPerCPU={per_cpu}"
        )
    return "\n".join(lines) + "\n"
