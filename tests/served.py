"""Running the real `corral serve` and the real `corral` command for end-to-end tests.

`ServedCorral` starts a service on a free local port with its own data directory and
stops it again; `corral()` runs one CLI command against whatever the environment names.
Nothing here reaches into the package: the tests see corral as a user does.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def corral_command() -> str:
    """The `corral` console script installed with this interpreter (else the one on PATH)."""
    beside = Path(sys.executable).with_name("corral")
    if beside.exists():
        return str(beside)
    found = shutil.which("corral")
    if found is None:
        raise RuntimeError("no `corral` command installed; pip install -e . first")
    return found


def corral(
    *args: str,
    env: dict[str, str],
    input: str | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run `corral ARGS...` as a user would; stdin is empty unless `input` is given."""
    return subprocess.run(
        [corral_command(), *args],
        env=env,
        input=input,
        stdin=subprocess.DEVNULL if input is None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def answers(url: str) -> bool:
    """True when GET url/v1/health says ok."""
    try:
        with urllib.request.urlopen(url + "/v1/health", timeout=2) as response:
            return json.load(response).get("status") == "ok"
    except (OSError, ValueError):
        return False


def client_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a user whose corral talks to no configured service."""
    env = {k: v for k, v in os.environ.items() if k not in ("CORRAL_URL", "CORRAL_TOKEN")}
    env["CORRAL_HOME"] = str(data_dir)
    env["CORRAL_BACKEND"] = "fake"  # what these tests run on; nspawn has tests of its own
    env.update(extra)
    return env


def fake_machines(data_dir: Path) -> list[dict[str, Any]]:
    """The machines the fake backend of `data_dir` holds (none if it never booted one)."""
    path = Path(data_dir) / "fake-machines.json"
    return json.loads(path.read_text()) if path.exists() else []


def process_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting for its parent counts as ended)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "\nState:\tZ" not in status


def processes_running(*words: bytes) -> list[int]:
    """Pids of the live processes whose command line holds every one of `words`."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            command = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if all(word in command for word in words) and process_alive(int(proc.name)):
            found.append(int(proc.name))
    return found


def end_agents(data_dir: Path) -> None:
    """End every agent a fake machine of `data_dir`'s service runs (they outlive it)."""
    for pid in processes_running(os.fsencode(str(Path(data_dir) / "fake-roots"))):
        end_process(pid)


def end_process(pid: int, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM a process that is not our child, then SIGKILL it if it outlives `timeout`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not process_alive(pid):
                return
            time.sleep(0.1)


class ServedCorral:
    """`corral serve` on a free port of 127.0.0.1 for `data_dir`, until stopped.

    Use as a context manager (stops on exit, also when the body raises) or call
    `start()` and `stop()`/`kill()` yourself. Extra arguments go to `corral serve`.
    Raises RuntimeError, with the tail of its log, if the service does not answer.
    """

    def __init__(self, data_dir: Path, *extra_args: str, broker_host: str = "127.0.0.1") -> None:
        self.data_dir = Path(data_dir)
        self.extra_args = extra_args
        # nodes on a cluster's bridge reach the broker at its gateway: "0.0.0.0" for them
        self.broker_host = broker_host
        self.port = 0
        self.broker_port = 0
        self.metadata_port = 0
        self.url = ""
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "serve.out"

    @property
    def token(self) -> str:
        """The admin token the service wrote when it first ran on this data directory."""
        return (self.data_dir / "admin.token").read_text().strip()

    def env(self, token: str | None = None) -> dict[str, str]:
        """A client environment pointing at this service, as admin unless `token` is given."""
        return client_env(self.data_dir, CORRAL_URL=self.url, CORRAL_TOKEN=token or self.token)

    def start(self) -> ServedCorral:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # a restart keeps the ports: agents keep calling the broker where they were told
        self.port = self.port or free_port()
        self.broker_port = self.broker_port or free_port()
        self.metadata_port = self.metadata_port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [
            corral_command(),
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--listen",
            f"127.0.0.1:{self.port}",
            "--broker-listen",
            f"{self.broker_host}:{self.broker_port}",
            "--metadata-listen",
            f"{self.broker_host}:{self.metadata_port}",
            "--tick",
            "0.2",
            *self.extra_args,
        ]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=client_env(self.data_dir),
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if answers(self.url):
                return self
            time.sleep(0.1)
        code = self.process.poll()
        self.kill()
        how = f"exited with {code}" if code is not None else f"did not answer in {START_TIMEOUT}s"
        raise RuntimeError(f"corral serve at {self.url} {how}; log ends:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL the service, as a crash would, and reap it."""
        if self.process and self.process.poll() is None:
            self.process.kill()
        if self.process:
            self.process.wait()

    def stop(self) -> int | None:
        """SIGTERM the service and wait for it (SIGKILL after 15 s); return its exit code.

        The agents of its machines are ended too: a stopped test service leaves nothing.
        """
        if self.process is None:
            return None
        try:
            return self._stop_service()
        finally:
            end_agents(self.data_dir)

    def _stop_service(self) -> int | None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> ServedCorral:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
