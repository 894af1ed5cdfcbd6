"""A small typed client for the service's REST API.

Each call returns an Answer: the API's payload parsed into its model (service/schemas.py)
for the CLI to read, and the JSON body as the service sent it, which is what `--json`
prints. The service may add fields (schemas.py: "add fields, never rename them"); printing
the body passes them on even to a CLI whose models do not know them yet.

Errors the service sends come back as the same CorralError subclasses it raised; a
service that cannot be reached, or answers what the client cannot read, is a
ServiceUnavailableError.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeAlias, TypeVar

import httpx
from pydantic import TypeAdapter, ValidationError

from corral.errors import ServiceUnavailableError
from corral.http_status import error_from_body
from corral.service.schemas import (
    ClusterDetail,
    ClusterSummary,
    ConsoleView,
    CredentialsView,
    EventView,
    HealthView,
    HostView,
    ImageRemovedView,
    ImageView,
    LaunchedCluster,
    NewUserView,
    ReportView,
    UserView,
)

JSON: TypeAlias = "dict[str, JSON] | list[JSON] | str | int | float | bool | None"
T = TypeVar("T")

_HEALTH = TypeAdapter(HealthView)
_CLUSTER = TypeAdapter(ClusterDetail)
_LAUNCHED = TypeAdapter(LaunchedCluster)
_CLUSTERS = TypeAdapter(list[ClusterSummary])
_EVENTS = TypeAdapter(list[EventView])
_REPORTS = TypeAdapter(list[ReportView])
_CONSOLE = TypeAdapter(ConsoleView)
_CREDENTIALS = TypeAdapter(CredentialsView)
_USERS = TypeAdapter(list[UserView])
_NEW_USER = TypeAdapter(NewUserView)
_HOST = TypeAdapter(HostView)
_HOSTS = TypeAdapter(list[HostView])
_IMAGE = TypeAdapter(ImageView)
_IMAGES = TypeAdapter(list[ImageView])
_IMAGE_REMOVED = TypeAdapter(ImageRemovedView)


@dataclass(frozen=True)
class Answer(Generic[T]):
    """What the service answered: `model` to read, `body` (its JSON as sent) to print."""

    model: T
    body: JSON


class Client:
    """Talks to one service as one user."""

    def __init__(
        self,
        url: str,
        token: str | None,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 30.0,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url
        self._http = httpx.Client(
            base_url=url.rstrip("/") + "/v1", headers=headers, transport=transport, timeout=timeout
        )

    def close(self) -> None:
        self._http.close()

    def _call(
        self, method: str, path: str, json: object = None, params: dict[str, object] | None = None
    ) -> JSON:
        """The JSON body of a successful answer (None for 204); raises what the service
        raised, or ServiceUnavailableError."""
        try:
            response = self._http.request(method, path, json=json, params=params)
        except httpx.TransportError as exc:
            raise ServiceUnavailableError(
                f"cannot reach the corral service at {self.url}: {exc}", url=self.url
            ) from exc
        if response.status_code == 204:
            return None
        try:
            body = response.json()
        except ValueError:
            body = {"message": response.text}
        if response.is_error:
            if isinstance(body, dict) and "error" in body:
                raise error_from_body(body)
            raise ServiceUnavailableError(
                f"the service answered {response.status_code}: {body}", status=response.status_code
            )
        return body

    def _ask(
        self,
        shape: TypeAdapter[T],
        method: str,
        path: str,
        json: object = None,
        params: dict[str, object] | None = None,
    ) -> Answer[T]:
        body = self._call(method, path, json=json, params=params)
        try:
            return Answer(shape.validate_python(body), body)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(part) for part in first["loc"]) or "body"
            raise ServiceUnavailableError(
                f"the service at {self.url} answered {method} {path} with what this corral "
                f"cannot read ({where}: {first['msg']}); is it another release?",
                url=self.url,
            ) from exc

    def health(self) -> Answer[HealthView]:
        return self._ask(_HEALTH, "GET", "/health")

    def launch(
        self,
        document: str,
        source: str,
        name: str | None = None,
        pool: str | None = None,
        lease_seconds: float | None = None,
        keep_on_failure: bool = False,
    ) -> Answer[LaunchedCluster]:
        body: dict[str, object] = {
            "document": document,
            "source": source,
            "name": name,
            "lease_seconds": lease_seconds,
            "keep_on_failure": keep_on_failure,
        }
        if pool is not None:
            body["pool"] = pool
        return self._ask(_LAUNCHED, "POST", "/clusters", json=body)

    def clusters(self, everyone: bool = False) -> Answer[list[ClusterSummary]]:
        return self._ask(_CLUSTERS, "GET", "/clusters", params={"all": everyone})

    def cluster(self, ref: str) -> Answer[ClusterDetail]:
        return self._ask(_CLUSTER, "GET", f"/clusters/{ref}")

    def events(self, ref: str, since: int = 0) -> Answer[list[EventView]]:
        return self._ask(_EVENTS, "GET", f"/clusters/{ref}/events", params={"since": since})

    def logs(self, ref: str, node: str) -> Answer[list[ReportView]]:
        return self._ask(_REPORTS, "GET", f"/clusters/{ref}/nodes/{node}/logs")

    def console(self, ref: str, node: str, max_bytes: int) -> Answer[ConsoleView]:
        path = f"/clusters/{ref}/nodes/{node}/console"
        return self._ask(_CONSOLE, "GET", path, params={"bytes": max_bytes})

    def credentials(self, ref: str) -> Answer[CredentialsView]:
        return self._ask(_CREDENTIALS, "POST", f"/clusters/{ref}/credentials")

    def extend(self, ref: str, seconds: float) -> Answer[ClusterDetail]:
        return self._ask(_CLUSTER, "POST", f"/clusters/{ref}/extend", json={"seconds": seconds})

    def resize(
        self,
        ref: str,
        group: str,
        count: int | None = None,
        by: int | None = None,
        drain_seconds: float | None = None,
    ) -> Answer[ClusterDetail]:
        """Give `group` `count` nodes, or `by` more (negative: fewer)."""
        body = {"group": group, "count": count, "by": by, "drain_seconds": drain_seconds}
        body = {k: v for k, v in body.items() if v is not None}
        return self._ask(_CLUSTER, "POST", f"/clusters/{ref}/resize", json=body)

    def remove_nodes(
        self, ref: str, nodes: list[str], drain_seconds: float | None = None
    ) -> Answer[ClusterDetail]:
        body: dict = {"nodes": nodes}
        if drain_seconds is not None:
            body["drain_seconds"] = drain_seconds
        return self._ask(_CLUSTER, "POST", f"/clusters/{ref}/nodes/remove", json=body)

    def destroy(self, ref: str) -> Answer[ClusterDetail]:
        return self._ask(_CLUSTER, "DELETE", f"/clusters/{ref}")

    def users(self) -> Answer[list[UserView]]:
        return self._ask(_USERS, "GET", "/users")

    def add_user(
        self,
        name: str,
        admin: bool = False,
        max_nodes: int | None = None,
        max_node_hours: float | None = None,
    ) -> Answer[NewUserView]:
        body = {
            "name": name,
            "admin": admin,
            "max_nodes": max_nodes,
            "max_node_hours": max_node_hours,
        }
        return self._ask(_NEW_USER, "POST", "/users", json=body)

    def remove_user(self, name: str) -> None:
        self._call("DELETE", f"/users/{name}")

    def hosts(self) -> Answer[list[HostView]]:
        return self._ask(_HOSTS, "GET", "/hosts")

    def add_host(self, name: str, pool: str, cores: int, memory_mib: int) -> Answer[HostView]:
        body = {"name": name, "pool": pool, "cores": cores, "memory_mib": memory_mib}
        return self._ask(_HOST, "POST", "/hosts", json=body)

    def remove_host(self, name: str) -> None:
        self._call("DELETE", f"/hosts/{name}")

    def images(self) -> Answer[list[ImageView]]:
        return self._ask(_IMAGES, "GET", "/images")

    def register_image(
        self, name: str, digest: str, size_bytes: int | None = None, replace: bool = False
    ) -> Answer[ImageView]:
        body = {"name": name, "digest": digest, "size_bytes": size_bytes, "replace": replace}
        return self._ask(_IMAGE, "POST", "/images", json=body)

    def remove_image(self, name: str) -> Answer[ImageRemovedView]:
        return self._ask(_IMAGE_REMOVED, "DELETE", f"/images/{name}")
