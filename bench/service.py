"""A real corral service for benchmarks: its own process, data directory and ports.

The service runs in a child process so that its CPU time and peak memory can be read
from /proc apart from the load generator's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import httpx

from corral.service.config import ServiceConfig

SETTINGS = {
    # room for 4094 nodes in one cluster, and quotas that do not get in the way
    "address_range": "10.64.0.0/12",
    "subnet_prefix": 20,
    "default_max_nodes": 100_000,
    "default_max_node_hours": 1e9,
    "backend": "fake",
}


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time process `pid` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServiceProcess:
    """`corral serve` with the fake backend in a child process, until `stop()`."""

    def __init__(
        self, backend_options: dict[str, str], with_agents: bool = False, **settings: object
    ) -> None:
        """With `with_agents`, nodes wait for agents run elsewhere (see `bootstrap_dir`)."""
        self._tmp = tempfile.TemporaryDirectory(prefix="corral-bench-")
        self.data_dir = Path(self._tmp.name)
        self.bootstrap_dir = self.data_dir / "bootstraps"
        if with_agents:
            backend_options = {**backend_options, "bootstrap_dir": str(self.bootstrap_dir)}
        self.settings = {
            **SETTINGS,
            "listen": f"127.0.0.1:{_free_port()}",
            "broker_listen": f"127.0.0.1:{_free_port()}",
            "backend_options": backend_options,
            **settings,
        }
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.settings['listen']}"

    @property
    def token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    @property
    def broker_cert(self) -> Path:
        return next(self.data_dir.glob("**/broker.crt"))

    def start(self, timeout: float = 30) -> ServiceProcess:
        argument = json.dumps({"data_dir": str(self.data_dir), **self.settings})
        log = open(self.data_dir / "service.log", "ab")  # noqa: SIM115 - the child keeps it
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.service", argument],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not (self.data_dir / "service.json").exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the service did not start; see {self.data_dir}/service.log")
            time.sleep(0.05)
        return self

    def client(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120)

    def cpu_seconds(self) -> float:
        """User plus system CPU time the service process has used so far."""
        return cpu_seconds(self.process.pid)

    def peak_memory_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def log_tail(self, lines: int = 20) -> str:
        text = (self.data_dir / "service.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._tmp.cleanup()

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, exc_type, *exc_info: object) -> None:
        if exc_type is not None:
            print(f"the service's log ends:\n{self.log_tail()}", file=sys.stderr)
        self.stop()


def add_capacity(client: httpx.Client, nodes: int, name: str = "bench-host") -> None:
    """One host with room for `nodes` nodes of 1 core and 64 MiB."""
    body = {"name": name, "pool": "local", "cores": nodes, "memory_mib": nodes * 64}
    response = client.post("/v1/hosts", json=body)
    response.raise_for_status()


def slurm_like_document(workers: int, name: str = "bench") -> str:
    """base-cluster's shape, but workers wait until the controller is ready (the example
    waits only for it to register): every worker's view changes twice, the harder case."""
    return f"""
name: {name}
image: debian-12-slurm
nodes:
  - group: head
    count: 1
    cores: 1
    memory: 64MiB
    login: true
    provides: [slurm-controller]
    requires: [slurm-worker]
  - group: worker
    count: {workers}
    cores: 1
    memory: 64MiB
    provides: [slurm-worker]
    requires: [{{role: slurm-controller, wait: ready}}]
"""


def _serve(argument: str) -> None:
    from corral.cli.serve import run_service

    settings = json.loads(argument)
    settings["data_dir"] = Path(settings["data_dir"])
    known = set(asdict(ServiceConfig(data_dir=settings["data_dir"])))
    run_service(ServiceConfig(**{k: v for k, v in settings.items() if k in known}))


if __name__ == "__main__":
    _serve(sys.argv[1])
