"""README command one, run as a user would: it must end with a Slurm job on two workers.

Slow: it installs (a no-op where CI already did), finds the image baked (conftest.py's
`baked`, so the bake itself is timed once), starts a local service, boots a real
cluster and runs `srun -N2 hostname` on it. Afterwards the cluster is destroyed and
the service it started is stopped, also when the run fails.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from served import corral, end_process

pytestmark = pytest.mark.slow

REPOSITORY = Path(__file__).resolve().parent.parent


@pytest.fixture
def fresh_home(tmp_path, baked):
    """A CORRAL_HOME with no service and no clusters, whose image store is the test cache."""
    cache, _ = baked
    home = tmp_path / "home"
    home.mkdir()
    (home / "images").symlink_to(cache)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env["CORRAL_HOME"] = str(home)
    yield env
    _tear_down(env, home)


def _tear_down(env: dict[str, str], home: Path) -> None:
    state = home / "service.json"
    if not state.exists():
        return
    listed = corral("list", "--json", env=env)
    if listed.returncode == 0:
        for cluster in json.loads(listed.stdout):
            if cluster["state"] != "terminated":
                corral("destroy", cluster["id"], "--yes", env=env, timeout=180)
    end_process(json.loads(state.read_text())["pid"])


def test_quickstart_ends_with_a_slurm_job_on_two_workers(fresh_home):
    run = subprocess.run(
        [str(REPOSITORY / "quickstart")],
        env=fresh_home,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    accounts = run.stdout.split("== your account on every node: whoami")[1].split("==")[0]
    assert accounts.split() == ["head-0:", "admin", "worker-0:", "admin", "worker-1:", "admin"]
    job = run.stdout.split("== running a Slurm job on two workers, as you")[1]
    lines = job.strip().splitlines()
    assert sorted(lines[1:3]) == ["worker-0", "worker-1"], job
    assert "not permitted to log in" not in run.stderr
