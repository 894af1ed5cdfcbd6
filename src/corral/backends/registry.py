"""The table of backends, each imported only when a service asks for it.

Local use never imports a cloud SDK: a backend's module is loaded on first use.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from corral.backends.base import Backend

BACKENDS: dict[str, str] = {
    "ec2": "corral.backends.ec2:Ec2Backend",
    "fake": "corral.backends.fake:FakeBackend",
    "nspawn": "corral.backends.nspawn:NspawnBackend",
    "qemu": "corral.backends.qemu:QemuBackend",
}


def backend_names() -> list[str]:
    return sorted(BACKENDS)


def backend_class(name: str) -> type[Backend]:
    """Import the backend `name`; raises ValueError for an unknown name, or one whose
    library is not installed (ec2 without boto3)."""
    try:
        target = BACKENDS[name]
    except KeyError:
        raise ValueError(
            f"unknown backend {name!r} (known: {', '.join(backend_names())})"
        ) from None
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] == "corral":
            raise
        raise ValueError(f"backend {name} needs {exc.name}, which is not installed") from exc
    return getattr(module, class_name)


def load_backend(name: str, options: dict[str, str], data_dir: Path) -> Backend:
    """Import and build the backend `name`; raises ValueError for an unknown name or option."""
    return backend_class(name).from_options(dict(options), data_dir)
