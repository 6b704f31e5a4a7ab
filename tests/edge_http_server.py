"""A real edge registry (gRPC and JSON ports on 127.0.0.1) run on its own event loop in a thread, so
blocking clients (raw sockets, hypothesis tests, which cannot be coroutines) can talk to it; and a
raw HTTP/1.1 client that sends exactly the bytes it is given."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshplane.discovery.registry.auth import token_digest
from meshplane.model import GatewayAddress, Site
from meshplane.registry_api.server import EdgeRegistryServer, EdgeSettings

SITES = {
    "gym-berlin": Site(
        "gym-berlin", "eu-central", "a", (GatewayAddress("10.20.0.2", 15080),), ("10.20.0.0/16", "fd20::/48")
    ),
}
BIKE_TOKEN = "token-bike-1"
OPS_TOKEN = "token-ops"


def tokens_file(path: Path) -> Path:
    path.write_text(
        f"tokens:\n  - {{sha256: {token_digest(BIKE_TOKEN)}, device: bike-1}}\n"
        f"  - {{sha256: {token_digest(OPS_TOKEN)}, operator: ops}}\n"
    )
    return path


@dataclass(frozen=True, slots=True)
class RunningRegistry:
    port: int
    http_port: int


@contextlib.contextmanager
def registry_in_thread(tmp: Path, *, sites: Mapping[str, Site] = SITES, **settings: Any) -> Iterator[RunningRegistry]:
    """An `EdgeRegistryServer` (in-memory store, `sites`) with `settings` as further EdgeSettings fields."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    edge = EdgeRegistryServer(
        EdgeSettings(
            db=":memory:",
            address="127.0.0.1:0",
            http_address="127.0.0.1:0",
            tokens=tokens_file(tmp / "tokens.yaml"),
            **settings,
        ),
        lambda: sites,
        on_change=lambda: None,
    )
    asyncio.run_coroutine_threadsafe(edge.start(), loop).result(timeout=30)
    try:
        yield RunningRegistry(edge.port, edge.http_port)
    finally:
        asyncio.run_coroutine_threadsafe(edge.shutdown(0.1), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def read_answer(sock: socket.socket) -> Answer:
    """Reads one HTTP/1.1 answer with a Content-Length (what the JSON port sends for unary calls)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before an answer's headers: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed in an answer's body")
        body += chunk
    return Answer(int(status_line.split()[1]), headers, body[:length])


def post(port: int, path: str, body: bytes, *, token: str = BIKE_TOKEN, host: str = "127.0.0.1") -> Answer:
    """POSTs `body`, byte for byte, on a fresh connection."""
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: registry\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        return read_answer(sock)


def wait_closed_by_server(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection: a blocking recv (no socket
    timeout: the test's own timeout is the only clock) returning b"", or a reset."""
    sock.settimeout(None)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received
