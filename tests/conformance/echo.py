"""Echo backends standing in for the conformance suite's echo-basic Deployments.

Owns one HTTP/1.1 server per stood-in Deployment, each on its own loopback address (the whole
127.0.0.0/8 is local on Linux), answering as the upstream echo server (conformance/echo-basic)
does on its HTTP port: a JSON document of the request (`path` is the request URI with its query,
`host`, `method`, `proto`, `headers` by canonical name, and the `namespace`, `ingress`, `service`
and `pod` of the Deployment it stands in for), so a test can tell which backend answered.

The special requests the conformance tests make are honoured as echo-basic honours them:
`X-Echo-Set-Header: name:value,...` sets response headers; `?delay=<Go duration>` delays the
answer (bounded by `MAX_DELAY`); `/status/NNN` answers with that status; `/health` answers `OK`;
`/ws` echoes WebSocket messages. A bad delay answers 500 with `{"message": reason}`, as upstream.

Served beside this port by other modules, for the same backend: echo-basic's h2c port (3001,
h2c_echo.py) and its TLS port (8443, tls_echo.py). Not served (and so left out of the
EndpointSlices, tests/conformance/cluster.py): its TCP echo mode and its TLS client-certificate
check (its gRPC mode: grpc_echo.py). Every request a backend receives is kept (the last
`KEPT_REQUESTS`), so a runner can see where mirrored requests went.

Must not: bind anything but its own loopback address, or answer anything upstream's would not.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

HTTP_PORT = 3000  # echo-basic's HTTP port: the targetPort a Service must name for a stand-in to serve it
MAX_DELAY = 60.0  # seconds: `?delay=` above this is refused (500) rather than holding a connection for ever
KEPT_REQUESTS = 1000
_STATUS = re.compile(r"^/status/(\d\d\d)$")
# Go's time.ParseDuration units, in seconds.
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


@dataclass(frozen=True)
class Identity:
    """Who a stand-in is: the Deployment's namespace, the Service name and a pod name that starts
    with the Deployment's name (upstream checks `pod` by prefix)."""

    namespace: str
    deployment: str
    service: str = ""

    @property
    def pod(self) -> str:
        return f"{self.deployment}-meshplane-0"


@dataclass(frozen=True)
class Received:
    """One request as a backend saw it."""

    method: str
    path: str
    host: str
    headers: tuple[tuple[str, str], ...]
    number: int = 0  # the backend's count of requests, this one included: orders and windows them


@dataclass
class EchoBackend:
    """A running stand-in: where it listens and what it has received."""

    identity: Identity
    address: str
    port: int
    received: deque[Received] = field(default_factory=lambda: deque(maxlen=KEPT_REQUESTS))
    count: int = 0  # every request ever received, kept or not

    def received_since(self, number: int, path: str) -> int | None:
        """How many requests for `path` came after request `number`; None when some of those are
        no longer kept (the window is wider than `KEPT_REQUESTS`)."""
        if self.received and self.received[0].number > number + 1:
            return None
        return sum(1 for r in self.received if r.number > number and r.path == path)


def canonical_header(name: str) -> str:
    """Go's textproto.CanonicalMIMEHeaderKey for a valid token: `x-header-set` -> `X-Header-Set`."""
    if not name or any(c in name for c in " \t\r\n:"):
        return name
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def parse_go_duration(text: str) -> float:
    """Seconds in `text`, a Go duration ("1s", "500ms", "1m30s", "1.5h"); ValueError with a reason
    otherwise (time.ParseDuration's syntax: an optional sign, then number-unit pairs, or "0")."""
    body = text[1:] if text[:1] in ("+", "-") else text
    if body == "0":
        return 0.0
    if not body:
        raise ValueError(f"time: invalid duration {text!r}")
    position, seconds = 0, 0.0
    while position < len(body):
        match = _DURATION_PART.match(body, position)
        if match is None:
            raise ValueError(f"time: invalid duration {text!r}")
        seconds += float(match[1]) * _UNITS[match[2]]
        position = match.end()
    return -seconds if text.startswith("-") else seconds


def echo_document(request: web.Request, identity: Identity, sni: str = "") -> dict[str, Any]:
    """The JSON echo-basic answers with, for `request` (Go's field names and order); `sni`: the
    server name a TLS client sent (tls_echo.py)."""
    headers: dict[str, list[str]] = {}
    for name, value in request.headers.items():
        if name.lower() == "host":
            continue  # Go keeps Host apart from the header map
        headers.setdefault(canonical_header(name), []).append(value)
    return {
        "path": request.raw_path,
        "host": request.host,
        "method": request.method,
        "proto": f"HTTP/{request.version.major}.{request.version.minor}",
        "headers": headers,
        "namespace": identity.namespace,
        "ingress": "",
        "service": identity.service,
        "pod": identity.pod,
        "sni": sni,
    }


def echo_set_headers(values: list[str]) -> list[tuple[str, str]]:
    """The response headers `X-Echo-Set-Header` values ask for, as echo-basic sets them: each value
    a comma-separated list of `name:value`; a name asked for twice gets its values joined by ","."""
    found: dict[str, str] = {}
    for value in values:
        for pair in value.split(","):
            name, _, wanted = pair.strip().partition(":")
            if not name:
                continue  # an empty list (the suite always sends the header) sets nothing
            found[name] = wanted if name not in found else f"{found[name]},{wanted.strip()}"
    return list(found.items())


def _json(document: dict[str, Any], status: int = 200) -> web.Response:
    response = web.Response(status=status, text=json.dumps(document, indent=1), content_type="application/json")
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def make_app(backend: EchoBackend, sni_of: Callable[[web.Request], str] | None = None) -> web.Application:
    """The aiohttp application of one stand-in; `sni_of` tells a request's TLS server name."""

    async def answer(request: web.Request) -> web.StreamResponse:
        backend.count += 1
        backend.received.append(
            Received(request.method, request.raw_path, request.host, tuple(request.headers.items()), backend.count)
        )
        # echo-basic's mux sees the path with "//" folded to "/".
        path = request.path.replace("//", "/")
        if path == "/health":
            return web.Response(text="OK")
        if path.startswith("/status/"):
            match = _STATUS.match(request.raw_path)
            return web.Response(status=int(match[1]) if match else 400)
        if path == "/ws":
            return await _websocket(request)
        delay = request.query.get("delay", "")
        if delay:
            try:
                seconds = parse_go_duration(delay)
            except ValueError as error:
                return _json({"message": str(error)}, 500)
            if seconds > MAX_DELAY:
                return _json({"message": f"delay {delay} is above this echo server's limit of {MAX_DELAY:g}s"}, 500)
            await asyncio.sleep(max(seconds, 0.0))
        response = _json(echo_document(request, backend.identity, sni_of(request) if sni_of is not None else ""))
        for name, value in echo_set_headers(request.headers.getall("X-Echo-Set-Header", [])):
            response.headers[name] = value
        return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


async def _websocket(request: web.Request) -> web.StreamResponse:
    socket = web.WebSocketResponse()
    await socket.prepare(request)
    async for message in socket:
        if message.type == WSMsgType.TEXT:
            await socket.send_str(message.data)
        elif message.type == WSMsgType.BINARY:
            await socket.send_bytes(message.data)
    return socket


class EchoFleet:
    """Stand-ins started together and stopped together (`async with`)."""

    def __init__(self) -> None:
        self.backends: dict[tuple[str, str], EchoBackend] = {}
        self._runners: list[web.AppRunner] = []
        self._stops: list[Callable[[], Awaitable[None]]] = []

    async def start(self, identity: Identity, address: str, port: int) -> EchoBackend:
        """Serves `identity` on `address`:`port` (a free port: tests/ports.py)."""
        backend = EchoBackend(identity, address, port)
        runner = web.AppRunner(make_app(backend), access_log=None)
        await runner.setup()
        self._runners.append(runner)
        await web.TCPSite(runner, address, port).start()
        self.backends[(identity.namespace, identity.deployment)] = backend
        return backend

    def adopt(self, backend: EchoBackend, stop: Callable[[], Awaitable[None]]) -> None:
        """Keeps a stand-in served elsewhere (tests/conformance/grpc_echo.py); `stop` ends it."""
        self._stops.append(stop)
        self.backends[(backend.identity.namespace, backend.identity.deployment)] = backend

    async def stop(self) -> None:
        for stop in reversed(self._stops):
            await stop()
        self._stops.clear()
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()

    async def __aenter__(self) -> EchoFleet:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
