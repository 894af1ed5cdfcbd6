"""The Slurm roles' configuration, built from a node's view (no Slurm needed)."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from corral.images.recipe import ROLES


@pytest.fixture(scope="module")
def roles():
    spec = importlib.util.spec_from_file_location(
        "corral_roles", ROLES / "_lib" / "corral_roles.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules.pop("corral_roles", None)
    return module


def member(name: str, address: str, cores: int = 1, memory_mib: int = 1024) -> dict:
    group = name.rsplit("-", 1)[0]
    return {"name": name, "group": group, "address": address, "cores": cores,
            "memory_mib": memory_mib}  # fmt: skip


def view_with(*workers: dict) -> dict:
    head = member("head-0", "10.9.0.2")
    return {
        "cluster": "c-1a2b3c4d",
        "node": "head-0",
        "members": [head, *workers],
        "roles": {"slurm-worker": list(workers)},
    }


def test_each_worker_is_listed_with_its_cores_and_memory_for_jobs(roles):
    conf = roles.slurm_conf(
        view_with(member("worker-1", "10.9.0.4", 4, 8192), member("worker-0", "10.9.0.3")),
        confined=True,
    )
    lines = conf.splitlines()
    assert "NodeName=worker-0 NodeAddr=10.9.0.3 CPUs=1 RealMemory=896 State=UNKNOWN" in lines
    assert "NodeName=worker-1 NodeAddr=10.9.0.4 CPUs=4 RealMemory=8064 State=UNKNOWN" in lines
    partition = next(line for line in lines if line.startswith("PartitionName="))
    assert partition.endswith("DefMemPerCPU=896")  # the smaller share: worker-0's
    assert "SelectTypeParameters=CR_Core_Memory" in lines
    assert "TaskPlugin=task/cgroup" in lines and "ProctrackType=proctrack/cgroup" in lines
    assert "SlurmdParameters=config_overrides" in lines


def test_without_cgroups_jobs_run_unconfined(roles):
    lines = roles.slurm_conf(view_with(member("worker-0", "10.9.0.3")), confined=False)
    assert "TaskPlugin=task/none" in lines.splitlines()
    assert "ProctrackType=proctrack/linuxproc" in lines.splitlines()


@pytest.mark.parametrize("memory, for_jobs", [(1024, 896), (512, 384), (256, 192), (64, 48)])
def test_the_system_keeps_128_mib_or_a_quarter_of_a_small_node(roles, memory, for_jobs):
    assert roles.job_memory_mib(memory) == for_jobs


def test_a_view_from_an_older_broker_without_sizes_still_makes_a_configuration(roles):
    old = {"name": "worker-0", "group": "worker", "address": "10.9.0.3"}
    conf = roles.slurm_conf(view_with(old), confined=False)
    assert "NodeName=worker-0 NodeAddr=10.9.0.3 CPUs=1 RealMemory=896 State=UNKNOWN" in conf


AUTOSCALE = {
    "group": "worker",
    "provides": ["slurm-worker"],
    "min": 0,
    "max": 3,
    "idle_seconds": 600,
    "cores": 2,
    "memory_mib": 2048,
}


def test_an_autoscaled_group_is_every_name_it_may_have_as_cloud_nodes(roles):
    view = view_with(member("worker-1", "10.9.0.4", 2, 2048), member("gpu-0", "10.9.0.5"))
    view["autoscale"] = AUTOSCALE
    lines = roles.slurm_conf(view, confined=True).splitlines()
    # a worker of the group that is there now is listed as the others are: by name only,
    # so that the file does not change as they come and go
    cloud = [line for line in lines if line.endswith("State=CLOUD")]
    assert cloud == [f"NodeName=worker-{i} CPUs=2 RealMemory=1920 State=CLOUD" for i in range(3)]
    assert "NodeName=gpu-0 NodeAddr=10.9.0.5 CPUs=1 RealMemory=896 State=UNKNOWN" in lines
    assert not any(line.startswith("NodeName=worker-1 NodeAddr") for line in lines)
    partition = next(line for line in lines if line.startswith("PartitionName="))
    assert "Nodes=gpu-0,worker-0,worker-1,worker-2 " in partition
    assert f"ResumeProgram={roles.ROLES}/slurm-controller/resume" in lines
    assert f"SuspendProgram={roles.ROLES}/slurm-controller/suspend" in lines
    assert "SuspendTime=600" in lines
    assert "SlurmUser=root" in lines  # the programs ask as the node, with root's credential
    assert "SlurmctldParameters=enable_configless,cloud_reg_addrs,idle_on_node_suspend" in lines
    without = view_with(member("gpu-0", "10.9.0.5"))  # worker-1 left: nothing to reconfigure
    without["autoscale"] = AUTOSCALE
    assert roles.slurm_conf(view, confined=True) == roles.slurm_conf(without, confined=True)


def test_without_autoscale_nothing_powers_down(roles):
    lines = roles.slurm_conf(view_with(member("worker-0", "10.9.0.3")), confined=True)
    assert "ResumeProgram" not in lines and "State=CLOUD" not in lines
    assert "SlurmUser=slurm" in lines.splitlines()
