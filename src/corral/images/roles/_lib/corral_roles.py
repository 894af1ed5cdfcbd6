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


def slurm_conf(view: dict) -> str:
    """slurm.conf for a cluster whose controller is this node; workers from the view."""
    workers = sorted(view["roles"].get("slurm-worker", []), key=lambda m: m["name"])
    me = next(m for m in view["members"] if m["name"] == view["node"])
    lines = [
        "# written by corral from the cluster's membership; do not edit",
        f"ClusterName={view['cluster'].replace('-', '')}",
        f"SlurmctldHost={me['name']}({me['address']})",
        "SlurmctldParameters=enable_configless",
        "AuthType=auth/munge",
        "SlurmUser=slurm",
        "StateSaveLocation=/var/lib/slurm/slurmctld",
        "SlurmdSpoolDir=/var/lib/slurm/slurmd",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "ReturnToService=2",
        "MpiDefault=none",
        "SlurmctldLogFile=/var/log/slurm/slurmctld.log",
        "SlurmdLogFile=/var/log/slurm/slurmd.log",
    ]
    lines += [f"NodeName={w['name']} NodeAddr={w['address']} State=UNKNOWN" for w in workers]
    if workers:
        names = ",".join(w["name"] for w in workers)
        lines.append(f"PartitionName=main Nodes={names} Default=YES MaxTime=INFINITE State=UP")
    return "\n".join(lines) + "\n"
