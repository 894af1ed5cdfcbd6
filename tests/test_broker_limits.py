"""The broker reads no request body past its limit: the unauthenticated `/register` is
refused as soon as a body is known to be too long, by its Content-Length or as it streams.
"""

from __future__ import annotations

import socket
import ssl

import pytest
from test_contextualization import broker_client

from corral.limits import MAX_BROKER_BODY_BYTES

HUGE = 300 * 1024 * 1024


@pytest.fixture
def broker(make_service):
    service = make_service(serve=True)
    host, port = service.config.broker_listen.rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(service.broker_identity.cert_path))
    context.check_hostname = False

    def connect() -> ssl.SSLSocket:
        raw = socket.create_connection((host, int(port)), timeout=10)
        return context.wrap_socket(raw)

    return service, connect


def head(path: str, **headers: str) -> bytes:
    lines = [f"POST /broker/v1{path} HTTP/1.1", "Host: broker"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def answer_of(sock: ssl.SSLSocket, data: bytes = b"") -> bytes:
    """The whole response (head and body) the broker sends on `sock`."""
    while True:
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            length = [
                int(line.split(b":")[1])
                for line in head.lower().splitlines()
                if line.startswith(b"content-length:")
            ]
            if length and len(body) >= length[0]:
                return data
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def test_a_declared_300_mib_body_is_refused_before_a_byte_of_it_is_sent(broker):
    _, connect = broker
    with connect() as sock:
        sock.sendall(head("/register", Content_Type="application/json", Content_Length=HUGE))
        answer = answer_of(sock)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"payload-too-large" in answer


def test_a_streamed_body_is_refused_once_it_passes_the_limit(broker):
    _, connect = broker
    chunk = b"x" * 65536
    sent = 0
    with connect() as sock:
        chunked = head("/register", Content_Type="application/json", Transfer_Encoding="chunked")
        sock.sendall(chunked)
        sock.settimeout(0.05)
        answer = b""
        while sent < HUGE and not answer:
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
                answer = sock.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                break
        sock.settimeout(10)
        answer = answer_of(sock, answer)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    # refused near the limit, not after the whole body
    assert sent < MAX_BROKER_BODY_BYTES + 16 * len(chunk)


def test_reports_with_numbers_the_store_cannot_hold_are_refused_naming_the_field(broker):
    service, _ = broker
    with broker_client(service) as client:
        for field, value in (("version", 10**30), ("exit_code", -(10**20)), ("role", "r" * 65)):
            body = {"phase": "node", "state": "ready", field: value}
            answer = client.post("/report", json=body, headers={"Authorization": "Bearer nc_x"})
            assert answer.status_code == 422, answer.text
            assert answer.json()["message"].startswith(field)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"action": "explode", "nodes": ["worker-0"]}, "action"),
        ({"action": "resume", "nodes": []}, "nodes"),
        ({"action": "resume", "nodes": ["w" * 65]}, "nodes.0"),
        ({"action": "resume", "nodes": ["worker-0"] * 10_001}, "nodes"),
        ({"action": "resume", "nodes": ["worker-0"], "as": "admin"}, "as"),
        ({"action": "resume", "nodes": [7]}, "nodes.0"),
    ],
)
def test_scale_requests_out_of_shape_are_refused_naming_the_field(broker, body, field):
    service, _ = broker
    with broker_client(service) as client:
        answer = client.post("/scale", json=body, headers={"Authorization": "Bearer nc_x"})
    assert answer.status_code == 422, answer.text
    assert answer.json()["details"]["problems"][0]["field"] == field


def test_scale_without_a_node_credential_is_refused(broker):
    service, _ = broker
    body = {"action": "resume", "nodes": ["worker-0"]}
    with broker_client(service) as client:
        for headers in ({}, {"Authorization": "Bearer nc_forged"}, {"Authorization": "x"}):
            answer = client.post("/scale", json=body, headers=headers)
            assert answer.status_code == 401, answer.text
