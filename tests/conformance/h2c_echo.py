"""HTTP/2 in clear text with prior knowledge (h2c): echo-basic's h2c port, and a client for it.

Owns two things, both on the `h2` package's protocol state machine over asyncio streams:

- `serve_h2c`: a stand-in's h2c port (echo-basic's 3001), answering every request with the JSON
  echo-basic answers (tests/conformance/echo.py's `echo_document` shape, `proto` "HTTP/2.0",
  `host` the `:authority`), honouring `X-Echo-Set-Header`. It speaks HTTP/2 only: a client (a
  Gateway's Envoy) that sends HTTP/1.1 there gets its connection closed, so an answer proves the
  Gateway spoke h2c upstream. Requests are counted and kept in the backend's `received`, as on its
  HTTP port.
- `h2c_request`: one request with prior knowledge (upstream's H2CPriorKnowledgeProtocol round
  tripper), on its own connection, returning the status, headers and body.

Bounds: a request's body is read and dropped (at most `MAX_BODY` bytes, then the stream is reset);
header lists are bounded by h2's own limits. Must not: serve `?delay=`, `/status/NNN` or WebSocket
(echo-basic's HTTP port does, echo.py), or bind anything but the stand-in's own loopback address.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from tests.conformance.echo import EchoBackend, EchoFleet, Received, canonical_header, echo_set_headers

H2C_PORT = 3001  # echo-basic's h2c port: the targetPort a Service names for a stand-in's h2c
MAX_BODY = 1 << 20  # bytes of one request body read (and dropped) before the stream is reset
READ_SIZE = 65536


def h2c_echo_document(backend: EchoBackend, headers: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """The JSON echo-basic answers on its h2c port for a request of `headers` (pseudo-headers
    included): Go's net/http shows `:authority` as the host and leaves pseudo-headers out of the map."""
    pseudo = {name: value for name, value in headers if name.startswith(":")}
    regular: dict[str, list[str]] = {}
    for name, value in headers:
        if not name.startswith(":"):
            regular.setdefault(canonical_header(name), []).append(value)
    identity = backend.identity
    return {
        "path": pseudo.get(":path", ""),
        "host": pseudo.get(":authority", ""),
        "method": pseudo.get(":method", ""),
        "proto": "HTTP/2.0",
        "headers": regular,
        "namespace": identity.namespace,
        "ingress": "",
        "service": identity.service,
        "pod": identity.pod,
        "sni": "",
    }


@dataclass
class _Request:
    headers: list[tuple[str, str]]
    body_bytes: int = 0


async def _serve_connection(backend: EchoBackend, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
    connection.initiate_connection()
    writer.write(connection.data_to_send())
    open_streams: dict[int, _Request] = {}
    try:
        while data := await reader.read(READ_SIZE):
            try:
                events = connection.receive_data(data)
            except h2.exceptions.ProtocolError:
                return  # not HTTP/2 with prior knowledge (e.g. HTTP/1.1): h2 has queued a GOAWAY
            for event in events:
                if isinstance(event, h2.events.RequestReceived) and event.stream_id is not None:
                    open_streams[event.stream_id] = _Request([(str(k), str(v)) for k, v in event.headers or ()])
                elif isinstance(event, h2.events.DataReceived) and event.stream_id is not None:
                    connection.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    request = open_streams.get(event.stream_id)
                    if request is not None:
                        request.body_bytes += len(event.data or b"")
                        if request.body_bytes > MAX_BODY:
                            del open_streams[event.stream_id]
                            connection.reset_stream(event.stream_id)
                if isinstance(event, h2.events.StreamEnded) and event.stream_id in open_streams:
                    _answer(backend, connection, event.stream_id, open_streams.pop(event.stream_id).headers)
            writer.write(connection.data_to_send())
            await writer.drain()
    except ConnectionError:
        return
    finally:
        with contextlib.suppress(ConnectionError):
            writer.write(connection.data_to_send())
        writer.close()


def _answer(
    backend: EchoBackend, connection: h2.connection.H2Connection, stream_id: int, headers: list[tuple[str, str]]
) -> None:
    pseudo = dict(item for item in headers if item[0].startswith(":"))
    backend.count += 1
    regular = tuple(item for item in headers if not item[0].startswith(":"))
    method, path, authority = (pseudo.get(name, "") for name in (":method", ":path", ":authority"))
    backend.received.append(Received(method, path, authority, regular, backend.count))
    body = json.dumps(h2c_echo_document(backend, headers), indent=1).encode()
    response = [
        (":status", "200"),
        ("content-type", "application/json"),
        ("content-length", str(len(body))),
        ("x-content-type-options", "nosniff"),
    ]
    asked = [value for name, value in regular if name.lower() == "x-echo-set-header"]
    response += [(name.lower(), value) for name, value in echo_set_headers(asked)]
    connection.send_headers(stream_id, response)
    connection.send_data(stream_id, body, end_stream=True)


async def serve_h2c(fleet: EchoFleet, backend: EchoBackend, port: int) -> None:
    """Serves `backend`'s h2c port on its address and `port` (a free port: tests/ports.py) until
    the fleet stops."""

    async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _serve_connection(backend, reader, writer)

    server = await asyncio.start_server(connected, backend.address, port)

    async def stop() -> None:
        server.close()
        await server.wait_closed()

    # The same backend: its requests on either port count as one pod's.
    fleet.adopt(backend, stop)


@dataclass(frozen=True)
class H2cAnswer:
    status: int
    headers: dict[str, list[str]]  # lower-case names, pseudo-headers left out
    body: bytes


async def h2c_request(
    address: str, port: int, method: str, authority: str, path: str, headers: Sequence[tuple[str, str]] = ()
) -> H2cAnswer:
    """One request over a new HTTP/2 connection with prior knowledge to `address`:`port`; the
    caller bounds its time. ConnectionError when the connection ends before the answer does, or
    the server breaks the protocol."""
    reader, writer = await asyncio.open_connection(address, port)
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    try:
        connection.initiate_connection()
        stream_id = connection.get_next_available_stream_id()
        request = [(":method", method), (":scheme", "http"), (":authority", authority), (":path", path)]
        request += [(name.lower(), value) for name, value in headers if name.lower() != "host"]
        connection.send_headers(stream_id, request, end_stream=True)
        writer.write(connection.data_to_send())
        await writer.drain()
        return await _read_answer(connection, stream_id, reader.read, writer)
    finally:
        writer.close()


async def _read_answer(
    connection: h2.connection.H2Connection,
    stream_id: int,
    read: Callable[[int], Awaitable[bytes]],
    writer: asyncio.StreamWriter,
) -> H2cAnswer:
    status, found, body = 0, dict[str, list[str]](), bytearray()
    while data := await read(READ_SIZE):
        try:
            events = connection.receive_data(data)
        except h2.exceptions.ProtocolError as error:
            raise ConnectionError(f"the server broke HTTP/2: {error}") from None
        for event in events:
            if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream_id:
                for name, value in event.headers or ():
                    if str(name) == ":status":
                        status = int(value)
                    elif not str(name).startswith(":"):
                        found.setdefault(str(name).lower(), []).append(str(value))
            elif isinstance(event, h2.events.DataReceived) and event.stream_id == stream_id:
                body += event.data or b""
                connection.acknowledge_received_data(event.flow_controlled_length, stream_id)
                if len(body) > MAX_BODY:
                    raise ConnectionError(f"the answer is larger than {MAX_BODY} bytes")
            elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream_id:
                return H2cAnswer(status, found, bytes(body))
            elif isinstance(event, h2.events.StreamReset) and event.stream_id == stream_id:
                raise ConnectionError(f"the stream was reset (error code {event.error_code})")
            elif isinstance(event, h2.events.ConnectionTerminated):
                raise ConnectionError(f"the connection was ended (GOAWAY, error code {event.error_code})")
        writer.write(connection.data_to_send())
        await writer.drain()
    raise ConnectionError("the connection closed before the answer ended")
