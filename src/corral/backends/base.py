"""The one interface every backend implements: boot, terminate, describe, list.

Where the cut is. The service decides *what* a node is (its image, resolved through the
image store; its cores, memory and name; its bootstrap document) and, for a backend that
takes what it is given, *where* it runs (pool, host, address and subnet, as a Placement).
A backend that places machines itself (a cloud) says so with Capability.PLACES_ITSELF,
gets a Placement with no address or subnet, and reports the address it got in its
Machine, which the service then records for the node. The backend decides how its
machines are made and removed, how its nodes reach the service (`service_address`), and
how often it can afford to be observed (`observe_every`). Backend states are mapped onto
MachineState so the service never sees a vendor's vocabulary.

A backend declares what it can do as a set of capabilities, which the service consults
instead of its name, rather than raising NotImplementedError at run time.
"""

from __future__ import annotations

import abc
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import ClassVar

from corral.errors import BackendError


class MachineState(StrEnum):
    STARTING = "starting"  # asked to boot, not yet up
    RUNNING = "running"  # up, as far as the backend can tell
    STOPPED = "stopped"  # exists but is not running (exited, shut down)
    ERROR = "error"  # the backend gave up on it; `detail` says why


class Capability(StrEnum):
    ANY_IMAGE = "any-image"  # boots any image name without an image in the store
    GATEWAY_SERVICES = "gateway-services"  # nodes reach the service at their subnet's gateway
    RUNS_AGENT = "runs-agent"  # machines run the context agent, which registers with the broker
    PLACES_ITSELF = "places-itself"  # gives its machines their addresses and reports them
    # every node of a cluster mounts one /home, which goes with the cluster's last node
    SHARED_HOME = "shared-home"
    LIMITS_RESOURCES = "limits-resources"  # a node cannot use more cores or memory than its own
    # boots a group's nodes in one call (`boot_group`), all with one user-data: the
    # group's bootstrap document, from which each node finds its own by its launch
    # index; and ends many machines in one call (`terminate_many`)
    LAUNCHES_GROUPS = "launches-groups"
    # keeps what each machine's console printed (`console`), also after the machine is
    # gone, until its cluster's clean_up
    KEEPS_CONSOLES = "keeps-consoles"


@dataclass(frozen=True)
class ImageRef:
    """An image as the image store resolved it for a boot."""

    name: str
    digest: str = ""  # pinned at launch; empty where any name will do
    rootfs: Path | None = None  # the store's directory of it; None where it holds none


@dataclass(frozen=True)
class NodeSpec:
    """What a node is, whatever runs it."""

    node_id: str
    cluster_id: str
    name: str  # <group>-<index>, also its hostname
    image: ImageRef
    cores: int
    memory_mib: int
    user_data: bytes = field(default=b"", repr=False)  # sensitive: carries the bootstrap token
    # a way out: NAT to the networks beyond the node's host, and its DNS resolvers, where
    # the backend's machines have none otherwise (`network: {outbound: true}`)
    outbound: bool = False
    # where a cloud sells spare capacity cheaper ("spot"), its nodes may be taken back;
    # backends without such a market run every node "on-demand"
    market: str = "on-demand"
    max_price: float | None = None  # per hour, for a spot node; None: up to the on-demand price


@dataclass(frozen=True)
class Placement:
    """Where a node runs, as the service chose it; address and subnet are empty for a
    backend that places machines itself (the host is then its pool's account)."""

    pool: str
    host: str = ""
    address: str = ""
    subnet: str = ""


@dataclass(frozen=True)
class Machine:
    """What a backend knows of one machine."""

    node_id: str
    state: MachineState
    host: str
    address: str = ""
    detail: str = ""
    machine_id: str = ""  # the backend's own name for it (an EC2 instance id), where it has one


class Backend(abc.ABC):
    """A driver that boots and removes machines on the hosts of one pool.

    Methods are blocking; the service calls them from worker threads.
    """

    name: ClassVar[str]
    capabilities: frozenset[Capability] = frozenset()  # may differ per instance
    # options whose values are secrets: never logged, never shown (service/pools.py)
    secret_options: ClassVar[frozenset[str]] = frozenset()
    # how often list_machines() may be called, in seconds: free locally, paced on a cloud
    observe_every: float = 0.0

    @classmethod
    def detect(cls) -> str | None:
        """Why this backend cannot run on this machine, or None when it can; cheap, so it
        serves both the choice of a default backend and the checks before building one."""
        return None

    @classmethod
    def from_options(cls, options: dict[str, str], data_dir: Path) -> Backend:
        """Build the backend from its pool's options (`--backend-option KEY=VALUE`).

        `data_dir` is the pool's own directory, where a backend may keep its files.
        Raises ValueError naming an option it does not know or cannot parse.
        """
        if options:
            raise ValueError(f"backend {cls.name} takes no options (got {', '.join(options)})")
        return cls()

    @abc.abstractmethod
    def boot(self, spec: NodeSpec, placement: Placement) -> Machine:
        """Start booting a machine and return at once; raises BackendError if it cannot."""

    @abc.abstractmethod
    def terminate(self, node_id: str) -> None:
        """Remove a machine and everything it holds; a machine that is gone is not an error."""

    def terminate_many(self, node_ids: Sequence[str]) -> None:
        """Remove several machines (a cluster's, at its end); a backend whose calls take
        many at once (a cloud's) makes one call of them rather than one each."""
        for node_id in node_ids:
            self.terminate(node_id)

    @abc.abstractmethod
    def describe(self, node_id: str) -> Machine | None:
        """Return the machine's state, or None when the backend has no such machine."""

    @abc.abstractmethod
    def list_machines(self) -> list[Machine]:
        """Every machine this backend runs, also those the service has no record of."""

    def boot_group(
        self, specs: Sequence[NodeSpec], placement: Placement, min_count: int
    ) -> list[Machine | BackendError]:
        """Boot nodes of one group of one cluster together, each spec carrying the same
        user-data; at least `min_count` of them or none. Returns, in the order of `specs`
        (which is each node's launch index), each node's Machine or why it did not boot.

        Only called on a backend with Capability.LAUNCHES_GROUPS; raises BackendError when
        none booted.
        """
        raise NotImplementedError(f"backend {self.name} boots one node at a time")

    def clean_up(self, cluster_id: str) -> list[str]:
        """Remove what the backend made for a cluster besides its machines (a cloud's
        security group), once every machine of it is gone; what is still left of the
        cluster, each as one line (empty: nothing). Called again until nothing is left."""
        return []

    def console(self, node_id: str, max_bytes: int) -> bytes | None:
        """The last `max_bytes` of what the node's console printed (its serial console,
        its container's output), kept after the machine is gone until its cluster's
        `clean_up`; None where the backend keeps no console (the default: a backend that
        keeps them has Capability.KEEPS_CONSOLES) or has none for this node."""
        return None

    def missing_image(self, image: str) -> str | None:
        """Why a backend with Capability.ANY_IMAGE cannot boot `image` after all (its
        site named no machine image for it), in a few words; None when it can."""
        return None

    def hourly_price(self, spec: NodeSpec) -> float | None:
        """What an hour of a node of this size and market costs in this pool (its site's
        price table), or None where the pool has no prices (the default)."""
        return None

    def default_capacity(self) -> tuple[int, int] | None:
        """(cores, memory MiB) a pool of this backend offers when its site lists no hosts;
        None: this machine's (the default, for backends that run nodes here)."""
        return None

    def service_address(self, placement: Placement) -> str | None:
        """The address at which a node placed so reaches the service (its broker), or None
        where the service's own listen address will do (the default)."""
        return None

    def networks_in_use(self) -> list[ipaddress.IPv4Network]:
        """Networks the service must not give this backend's clusters, because something
        on their hosts routes them already (another corral service's clusters, a VPN).
        Empty where the backend's networks are its own (the default)."""
        return []

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release what the backend holds in this process (threads, files)."""
