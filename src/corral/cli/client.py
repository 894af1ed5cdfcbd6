"""A small typed client for the service's REST API.

Errors the service sends come back as the same CorralError subclasses it raised; a
service that cannot be reached is a ServiceUnavailableError.
"""

from __future__ import annotations

from typing import Any

import httpx

from corral.errors import ServiceUnavailableError
from corral.http_status import error_from_body


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

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
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

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/health")

    def whoami(self) -> dict[str, Any]:
        return self._call("GET", "/whoami")

    def launch(
        self,
        document: str,
        source: str,
        name: str | None = None,
        lease_seconds: float | None = None,
        keep_on_failure: bool = False,
    ) -> dict[str, Any]:
        body = {
            "document": document,
            "source": source,
            "name": name,
            "lease_seconds": lease_seconds,
            "keep_on_failure": keep_on_failure,
        }
        return self._call("POST", "/clusters", json=body)

    def clusters(self, everyone: bool = False) -> list[dict[str, Any]]:
        return self._call("GET", "/clusters", params={"all": everyone})

    def cluster(self, ref: str) -> dict[str, Any]:
        return self._call("GET", f"/clusters/{ref}")

    def events(self, ref: str, since: int = 0) -> list[dict[str, Any]]:
        return self._call("GET", f"/clusters/{ref}/events", params={"since": since})

    def logs(self, ref: str, node: str) -> list[dict[str, Any]]:
        return self._call("GET", f"/clusters/{ref}/nodes/{node}/logs")

    def credentials(self, ref: str) -> dict[str, Any]:
        return self._call("POST", f"/clusters/{ref}/credentials")

    def extend(self, ref: str, seconds: float) -> dict[str, Any]:
        return self._call("POST", f"/clusters/{ref}/extend", json={"seconds": seconds})

    def destroy(self, ref: str) -> dict[str, Any]:
        return self._call("DELETE", f"/clusters/{ref}")

    def users(self) -> list[dict[str, Any]]:
        return self._call("GET", "/users")

    def add_user(
        self,
        name: str,
        admin: bool = False,
        max_nodes: int | None = None,
        max_node_hours: float | None = None,
    ) -> dict[str, Any]:
        body = {
            "name": name,
            "admin": admin,
            "max_nodes": max_nodes,
            "max_node_hours": max_node_hours,
        }
        return self._call("POST", "/users", json=body)

    def remove_user(self, name: str) -> None:
        self._call("DELETE", f"/users/{name}")

    def hosts(self) -> list[dict[str, Any]]:
        return self._call("GET", "/hosts")

    def add_host(self, name: str, pool: str, cores: int, memory_mib: int) -> dict[str, Any]:
        body = {"name": name, "pool": pool, "cores": cores, "memory_mib": memory_mib}
        return self._call("POST", "/hosts", json=body)

    def remove_host(self, name: str) -> None:
        self._call("DELETE", f"/hosts/{name}")

    def images(self) -> list[dict[str, Any]]:
        return self._call("GET", "/images")

    def register_image(
        self, name: str, digest: str, size_bytes: int | None = None, replace: bool = False
    ) -> dict[str, Any]:
        body = {"name": name, "digest": digest, "size_bytes": size_bytes, "replace": replace}
        return self._call("POST", "/images", json=body)

    def remove_image(self, name: str) -> dict[str, Any]:
        return self._call("DELETE", f"/images/{name}")
