"""The one interface every backend implements: boot, terminate, describe, list.

A backend declares what it can do as a set of capabilities rather than raising
NotImplementedError at run time. Backend states are mapped onto MachineState so the
service never sees a vendor's vocabulary.
"""

from __future__ import annotations

import abc
import ipaddress
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import ClassVar


class MachineState(StrEnum):
    STARTING = "starting"  # asked to boot, not yet up
    RUNNING = "running"  # up, as far as the backend can tell
    STOPPED = "stopped"  # exists but is not running (exited, shut down)
    ERROR = "error"  # the backend gave up on it; `detail` says why


class Capability(StrEnum):
    ANY_IMAGE = "any-image"  # boots any image name without an image in the store
    OUTLIVES_SERVICE = "outlives-service"  # machines keep running while the service is down
    REAL_MACHINES = "real-machines"  # machines are real containers or VMs
    GATEWAY_SERVICES = "gateway-services"  # nodes reach the service at their subnet's gateway
    RUNS_AGENT = "runs-agent"  # machines run the context agent, which registers with the broker


@dataclass(frozen=True)
class BootSpec:
    """Everything a backend needs to boot one workspace."""

    workspace_id: str
    cluster_id: str
    node: str
    host: str
    image: str
    cores: int
    memory_mib: int
    address: str
    subnet: str
    image_digest: str = ""  # the image as pinned at launch; empty where any name will do
    user_data: bytes = field(default=b"", repr=False)  # sensitive: carries the bootstrap token


@dataclass(frozen=True)
class Machine:
    """What a backend knows of one machine."""

    workspace_id: str
    state: MachineState
    host: str
    address: str = ""
    detail: str = ""


class Backend(abc.ABC):
    """A driver that boots and removes machines on the hosts of one pool.

    Methods are blocking; the service calls them from worker threads.
    """

    name: ClassVar[str]
    capabilities: frozenset[Capability] = frozenset()  # may differ per instance

    @classmethod
    def from_options(cls, options: dict[str, str], data_dir: Path) -> Backend:
        """Build the backend from `--backend-option KEY=VALUE` strings.

        `data_dir` is the service's own directory, where a backend may keep its files.
        Raises ValueError naming an option it does not know or cannot parse.
        """
        if options:
            raise ValueError(f"backend {cls.name} takes no options (got {', '.join(options)})")
        return cls()

    @abc.abstractmethod
    def boot(self, spec: BootSpec) -> Machine:
        """Start booting a machine and return at once; raises BackendError if it cannot."""

    @abc.abstractmethod
    def terminate(self, workspace_id: str) -> None:
        """Remove a machine and everything it holds; a machine that is gone is not an error."""

    @abc.abstractmethod
    def describe(self, workspace_id: str) -> Machine | None:
        """Return the machine's state, or None when the backend has no such machine."""

    @abc.abstractmethod
    def list_machines(self) -> list[Machine]:
        """Every machine this backend runs, also those the service has no record of."""

    def networks_in_use(self) -> list[ipaddress.IPv4Network]:
        """Networks the service must not give this backend's clusters, because something
        on their hosts routes them already (another corral service's clusters, a VPN).
        Empty where the backend's networks are its own (the default)."""
        return []

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release what the backend holds in this process (threads, files)."""
