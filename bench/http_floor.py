"""The floor under the broker's CPU per node: its HTTPS stack with no broker behind it.

The same server the broker runs on (uvicorn, httptools, uvloop, TLS with an ECDSA P-256
certificate made as the broker makes its own) serves an ASGI app that reads each
request and answers `{}`. N simulated agents each open one TLS connection and send what
a broker agent sends: one registration, one context request and three reports. What the
server spends per agent is what no broker code can save.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.lean_http import Connection
from bench.service import _free_port, cpu_seconds
from corral.broker.pki import load_or_create_broker_identity

REQUESTS = (("POST", "/register"), ("GET", "/context"), *[("POST", "/report")] * 3)


async def empty_app(scope, receive, send) -> None:
    """Reads the request, answers `{}`."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    headers = [(b"content-type", b"application/json"), (b"content-length", b"2")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"{}"})


async def _agents(url: str, tls: ssl.SSLContext, nodes: int) -> None:
    async def agent() -> None:
        async with Connection(url, tls) as http:
            for method, path in REQUESTS:
                body = {"phase": "node", "state": "ready"} if method == "POST" else None
                await http.request(method, path, body)

    await asyncio.gather(*(agent() for _ in range(nodes)))


def measure(nodes: int) -> dict:
    """Server CPU per agent for `nodes` agents against the empty app."""
    with tempfile.TemporaryDirectory(prefix="corral-floor-") as tmp:
        identity = load_or_create_broker_identity(Path(tmp), ["localhost"], ["127.0.0.1"])
        port = _free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "bench.http_floor:empty_app", "--port", str(port)]
            + ["--ssl-certfile", str(identity.cert_path), "--ssl-keyfile", str(identity.key_path)]
            + ["--http", "httptools", "--loop", "uvloop"]
            + ["--log-level", "warning", "--no-access-log"],
            stdin=subprocess.DEVNULL,
        )
        try:
            tls = ssl.create_default_context(cafile=str(identity.cert_path))
            url = f"https://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    httpx.get(url, verify=tls).raise_for_status()
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise
                    time.sleep(0.1)
            before = cpu_seconds(server.pid)
            asyncio.run(_agents(url, tls, nodes))
            cpu = cpu_seconds(server.pid) - before
        finally:
            server.terminate()
            server.wait(30)
    return {
        "nodes": nodes,
        "requests_per_agent": len(REQUESTS),
        "cpu_ms_per_node": cpu * 1000 / nodes,
    }


if __name__ == "__main__":
    print(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 1000))
