"""The CLI's client over a fake transport: typed answers, and the body kept for --json."""

from __future__ import annotations

import httpx
import pytest

from corral.cli.client import Client
from corral.errors import NotFoundError, ServiceUnavailableError

HOST = {
    "name": "local",
    "pool": "local",
    "enabled": True,
    "cores": 4,
    "memory_mib": 4096,
    "free_cores": 3,
    "free_memory_mib": 2048,
}


def client_answering(status: int, body: object) -> Client:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body)

    return Client("http://corral.test", "token", transport=httpx.MockTransport(handle))


def test_an_answer_is_read_as_its_model_and_kept_as_sent() -> None:
    # a newer service may add fields: --json prints them, the models ignore them
    sent = [{**HOST, "rack": "r12"}]

    answer = client_answering(200, sent).hosts()

    assert answer.body == sent
    (host,) = answer.model
    assert (host.name, host.free_cores, host.free_memory_mib) == ("local", 3, 2048)


def test_an_answer_the_models_cannot_read_is_an_unavailable_service() -> None:
    with pytest.raises(ServiceUnavailableError, match=r"0\.cores"):
        client_answering(200, [{**HOST, "cores": "many"}]).hosts()


def test_an_error_comes_back_as_the_error_the_service_raised() -> None:
    body = {"error": "not-found", "message": "no cluster c-1", "details": {}}

    with pytest.raises(NotFoundError, match="no cluster c-1"):
        client_answering(404, body).cluster("c-1")
