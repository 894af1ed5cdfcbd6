"""What signing a node's SSH certificates costs: CPU per certificate, best of a few rounds.

A registration signs the node's host key (every node) and, on a login node, its root key.
This times `sign_ssh_host_key` and `sign_ssh_user_key` on fresh Ed25519 keys with an
Ed25519 CA, as the broker does.

    PYTHONPATH=$PWD/src python3 -m bench.ssh_sign [--count 2000] [--rounds 5] [ssh.py ...]

Each named `ssh.py` (for example an older revision's, from `git show REV:src/...`) is
timed beside the current module, alternating round by round so that both see the same
minutes of this shared machine.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import time
from pathlib import Path
from types import ModuleType

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

import corral.broker.ssh
from corral.broker.issuance import create_cluster_authority


def load_module(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"ssh_under_test_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def key_lines(count: int) -> list[str]:
    return [
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
        for _ in range(count)
    ]


def cpu_per_cert(sign, lines: list[str]) -> float:
    """CPU seconds per certificate over `lines`."""
    start = time.process_time()
    for i, line in enumerate(lines):
        sign(line, i)
    return (time.process_time() - start) / len(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("modules", nargs="*", help="other ssh.py files to time beside ours")
    args = parser.parse_args()

    end = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=12)
    authority = create_cluster_authority("c-bench000", end)
    lines = key_lines(args.count)
    modules = {"current": corral.broker.ssh} | {path: load_module(path) for path in args.modules}
    best: dict[tuple[str, str], float] = {}
    for _ in range(args.rounds):
        for name, ssh in modules.items():

            def host(line, i, ssh=ssh):
                return ssh.sign_ssh_host_key(
                    authority, line, [f"worker-{i}", "10.180.0.3"], f"c-bench000/worker-{i}", end
                )

            def root(line, i, ssh=ssh):
                return ssh.sign_ssh_user_key(
                    authority, line, f"root@worker-{i}", f"c-bench000/worker-{i}/root", end, False
                )

            for kind, sign in (("host", host), ("root", root)):
                seconds = cpu_per_cert(sign, lines)
                best[name, kind] = min(best.get((name, kind), seconds), seconds)
    print(f"{args.count} certificates, best of {args.rounds} rounds, CPU per certificate:")
    for (name, kind), seconds in best.items():
        print(f"  {kind:4} {seconds * 1e6:7.1f} us  {name}")


if __name__ == "__main__":
    main()
