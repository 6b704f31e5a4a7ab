"""The registry's JSON port bounds what a slow or greedy client can hold, through raw sockets to a
real server on 127.0.0.1 with small bounds set by the same settings the `serve` flags fill:

- headers that trickle in, a body that trickles in (a byte at a time, never quiet for the
  timeout), headers or a body that stop, and an idle kept-alive connection are all closed by the
  server within `--registry-http-read-timeout` (each test waits for the close itself: a blocking
  recv returning b"", under pytest's timeout, never a timed assertion);
- one client address holds at most `--registry-http-max-connections-per-client` connections:
  the next is answered 429 with the reason, while another address (127.0.0.2, also loopback) is
  still served, and a freed slot is usable again.
"""

from __future__ import annotations

import contextlib
import select
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

import meshplane.registry_api.http
import meshplane.registry_api.options
import meshplane.registry_api.server
from tests.edge_http_server import BIKE_TOKEN, RunningRegistry, read_answer, registry_in_thread, wait_closed_by_server

TIMEOUT = 0.5  # the read timeout the server runs with here: the waits below end on the close itself
LIMIT = 3


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RunningRegistry]:
    with registry_in_thread(tmp_path, http_read_timeout=TIMEOUT, http_max_connections_per_client=LIMIT) as running:
        yield running


def connect(port: int, host: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(host, 0))
    sock.settimeout(None)
    return sock


def served(port: int, host: str = "127.0.0.1") -> int:
    """The status of a GET for an unregistered device: 404 means the connection was served."""
    with contextlib.closing(connect(port, host)) as sock:
        sock.sendall(
            f"GET /v1/devices/bike-1 HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer {BIKE_TOKEN}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        return read_answer(sock).status


@pytest.mark.timeout(60)
def test_a_body_announced_but_never_sent_is_cut(registry: RunningRegistry) -> None:
    with contextlib.closing(connect(registry.http_port)) as sock:
        sock.sendall(
            f"POST /v1/register HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer {BIKE_TOKEN}\r\n"
            "Content-Type: application/json\r\nContent-Length: 60000\r\n\r\n{".encode()
        )
        received = wait_closed_by_server(sock)
    assert received.startswith(b"HTTP/1.1 408"), received
    assert b"DEADLINE_EXCEEDED" in received
    assert b"did not arrive within 0.5 s" in received


@pytest.mark.timeout(60)
def test_a_huge_announced_body_is_refused_at_once(registry: RunningRegistry) -> None:
    """The tester's case: Content-Length 50,000,000 and one byte. Refused from the headers alone."""
    with contextlib.closing(connect(registry.http_port)) as sock:
        sock.sendall(
            f"POST /v1/register HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer {BIKE_TOKEN}\r\n"
            "Content-Length: 50000000\r\n\r\n{".encode()
        )
        answer = read_answer(sock)
        assert answer.status == 413
        assert answer.json()["code"] == "RESOURCE_EXHAUSTED"
        wait_closed_by_server(sock)


@pytest.mark.timeout(60)
def test_headers_that_never_end_are_cut(registry: RunningRegistry) -> None:
    with contextlib.closing(connect(registry.http_port)) as sock:
        sock.sendall(b"POST /v1/register HTTP/1.1\r\nHost: r\r\nX-Slow: a")
        assert wait_closed_by_server(sock) == b""


def trickle(sock: socket.socket, head: bytes, then: bytes) -> bytes:
    """Sends `head`, then `then` one byte at a time, a tenth of the timeout apart (never quiet as
    long as the timeout), until the server closes the connection; returns what it answered.
    The pause paces the trickle; the test waits on the close."""
    sock.sendall(head)
    for index in range(len(then)):
        try:
            sock.sendall(then[index : index + 1])
        except (BrokenPipeError, ConnectionResetError):
            break
        ready, _, _ = select.select([sock], [], [], TIMEOUT / 10)
        if ready:
            break
    return wait_closed_by_server(sock)


@pytest.mark.timeout(60)
def test_headers_that_trickle_in_are_cut(registry: RunningRegistry) -> None:
    """Each byte comes well within the timeout: the bound is on the headers as a whole."""
    with contextlib.closing(connect(registry.http_port)) as sock:
        received = trickle(sock, b"POST /v1/register HTTP/1.1\r\nHost: r\r\nX-Slow: ", b"a" * 8000)
    assert received == b"", received


@pytest.mark.timeout(60)
def test_a_body_that_trickles_in_is_cut(registry: RunningRegistry) -> None:
    """Each byte comes well within the timeout: the bound is on the body as a whole."""
    head = (
        f"POST /v1/register HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer {BIKE_TOKEN}\r\n"
        "Content-Type: application/json\r\nContent-Length: 60000\r\n\r\n"
    ).encode()
    with contextlib.closing(connect(registry.http_port)) as sock:
        received = trickle(sock, head, b"{" + b" " * 59_998 + b"}")
    assert received.startswith(b"HTTP/1.1 408"), received
    assert b"did not arrive within 0.5 s" in received


@pytest.mark.timeout(60)
def test_a_connection_that_sends_nothing_is_cut(registry: RunningRegistry) -> None:
    with contextlib.closing(connect(registry.http_port)) as sock:
        assert wait_closed_by_server(sock) == b""


@pytest.mark.timeout(60)
def test_an_idle_kept_alive_connection_is_cut(registry: RunningRegistry) -> None:
    with contextlib.closing(connect(registry.http_port)) as sock:
        sock.sendall(
            f"GET /v1/devices/bike-1 HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer {BIKE_TOKEN}\r\n\r\n".encode()
        )
        assert read_answer(sock).status == 404
        assert wait_closed_by_server(sock) == b""


@pytest.mark.timeout(60)
def test_connections_per_client_address_are_bounded(tmp_path: Path) -> None:
    # A read timeout far beyond the test, so only the connection limit can end these connections.
    with registry_in_thread(tmp_path, http_read_timeout=3600, http_max_connections_per_client=LIMIT) as registry:
        held = [connect(registry.http_port) for _ in range(LIMIT)]
        try:
            # Each held connection is accepted and served (a request answered, kept alive), so the
            # server has counted it before the next one arrives.
            for sock in held:
                sock.sendall(
                    f"GET /v1/devices/bike-1 HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer {BIKE_TOKEN}\r\n\r\n".encode()
                )
                assert read_answer(sock).status == 404
            with contextlib.closing(connect(registry.http_port)) as extra:
                refused = read_answer(extra)
                assert refused.status == 429
                assert refused.json()["code"] == "RESOURCE_EXHAUSTED"
                assert f"too many connections from 127.0.0.1: at most {LIMIT}" in refused.json()["message"]
                wait_closed_by_server(extra)
            assert served(registry.http_port, host="127.0.0.2") == 404, "another address is still served"
        finally:
            for sock in held:
                sock.close()
        # A freed slot is usable again: wait for the server to have released one by retrying on
        # the condition (a 429 means not yet), not on time.
        while (status := served(registry.http_port)) == 429:
            pass
        assert status == 404


def test_the_cli_defaults_equal_the_servers() -> None:
    assert meshplane.registry_api.options.DEFAULT_HTTP_READ_TIMEOUT == meshplane.registry_api.http.DEFAULT_READ_TIMEOUT
    assert (
        meshplane.registry_api.options.DEFAULT_HTTP_MAX_CONNECTIONS_PER_CLIENT
        == meshplane.registry_api.server.DEFAULT_MAX_CONNECTIONS_PER_CLIENT
    )
