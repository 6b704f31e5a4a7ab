"""The Registry mirrored as JSON over HTTP, for tools that cannot speak gRPC.

Bodies and answers are the proto messages in protobuf's JSON mapping (camelCase or proto field
names accepted); credentials are the same `Authorization: Bearer <token>` header. Errors answer
`{"code": "<gRPC status name>", "message": "<reason>"}` with the matching HTTP status, whatever
refused the request (a handler, the router, a body too large or too slow): never a traceback, never
a 5xx for what a client sent. A body is UTF-8 JSON holding one object (RFC 8259 JSON is UTF-8;
a `charset` in Content-Type is not consulted), at most `MAX_BODY` bytes, read within
`read_timeout` seconds.

    POST /v1/register        RegisterRequest   → RegisterResponse
    POST /v1/heartbeat       HeartbeatRequest  → HeartbeatResponse
    POST /v1/deregister      DeregisterRequest → {}
    GET  /v1/devices/{id}                      → Device
    GET  /v1/devices?site=&device_class=&label=key=value   → ListResponse
    GET  /v1/watch?site=&device_class=&label=key=value     → WatchEvent per line (NDJSON), endless
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from google.protobuf import json_format
from google.protobuf.message import Message

from meshplane.api.edge.v1 import registry_pb2 as pb
from meshplane.discovery.registry.auth import Principal
from meshplane.discovery.registry.registry import ErrorCode, RegistryError
from meshplane.registry_api.service import Authenticate, RegistryCalls

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
# Seconds a client has to send a request's body once its headers are in (`--registry-http-read-timeout`).
DEFAULT_READ_TIMEOUT = 10.0

HTTP_STATUS = {
    ErrorCode.INVALID_ARGUMENT: 400,
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.PERMISSION_DENIED: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.RESOURCE_EXHAUSTED: 429,
    ErrorCode.UNAVAILABLE: 503,
    # A csr sent to a registry without a CA: what the client sent cannot be served (gRPC-gateway's mapping too).
    ErrorCode.FAILED_PRECONDITION: 400,
}
# What aiohttp itself refuses with (no route, wrong method, unparsable HTTP), as gRPC status names.
_HTTP_CODES = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 405: "UNIMPLEMENTED", 408: "DEADLINE_EXCEEDED"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(message: Message) -> str:
    return json_format.MessageToJson(message, preserving_proto_field_name=True, indent=None)


def _error(code: ErrorCode, message: str) -> web.Response:
    return web.json_response({"code": code.value, "message": message}, status=HTTP_STATUS[code])


def error_body(status: int, code: str, message: str) -> web.Response:
    """An error answer of any HTTP status, in the one shape every error has."""
    return web.json_response({"code": code, "message": message}, status=status)


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object hook refusing a key given twice (which one would win is not obvious to a reader)."""
    value: dict[str, Any] = {}
    for key, item in pairs:
        if key in value:
            raise _DuplicateKey(f"key {key[:64]!r} appears twice")
        value[key] = item
    return value


def parse_body(body: bytes, message: Message) -> None:
    """Fills `message` from a JSON body; raises RegistryError(INVALID_ARGUMENT) naming what is wrong.

    An empty body is `{}`. Anything but UTF-8 text holding one JSON object is refused with a
    reason: bytes that are not UTF-8, JSON that does not parse or nests too deep, a bare string,
    number, array or null, a key given twice, a field the message has not or of the wrong type.
    """
    if not body.strip():
        return
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RegistryError(
            ErrorCode.INVALID_ARGUMENT, f"the body is not UTF-8 text (byte {error.start}: {error.reason})"
        ) from None
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as error:
        raise RegistryError(ErrorCode.INVALID_ARGUMENT, f"malformed JSON body: {error}") from None
    except ValueError as error:
        raise RegistryError(ErrorCode.INVALID_ARGUMENT, f"malformed JSON body: {error}") from None
    except RecursionError:
        raise RegistryError(ErrorCode.INVALID_ARGUMENT, "malformed JSON body: nested too deeply") from None
    if not isinstance(value, dict):
        raise RegistryError(ErrorCode.INVALID_ARGUMENT, f"the body must be a JSON object, not {_json_kind(value)}")
    try:
        json_format.ParseDict(value, message)
    except json_format.ParseError as error:
        raise RegistryError(ErrorCode.INVALID_ARGUMENT, f"malformed JSON body: {_bounded(str(error))}") from None
    except RecursionError:
        raise RegistryError(ErrorCode.INVALID_ARGUMENT, "malformed JSON body: nested too deeply") from None


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "a number"


def _bounded(text: str, limit: int = 512) -> str:
    """protobuf's parse errors quote the offending value: a 64 KiB value must not come back whole."""
    return text if len(text) <= limit else text[:limit] + "…"


async def read_body(request: web.Request, within: float) -> bytes:
    """The request's body, at most MAX_BODY bytes, all of it within `within` seconds.

    Refuses a Content-Length over the limit before reading a byte; a body that has not arrived in
    time is refused (408) and its connection closed, so a client trickling bytes cannot hold it.
    """
    if not request.can_read_body:
        return b""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise web.HTTPRequestEntityTooLarge(MAX_BODY, request.content_length)
    try:
        async with asyncio.timeout(within):
            return await request.read()
    except TimeoutError:
        raise web.HTTPRequestTimeout(
            reason=f"the body did not arrive within {within:g} s", headers={"Connection": "close"}
        ) from None


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answers what aiohttp refuses (404, 405, 413, 408, …) in the JSON error shape; an unexpected
    exception is logged and answered 500 without its traceback."""
    try:
        return await handler(request)
    except web.HTTPException as refused:
        if refused.status < 400:
            raise
        if isinstance(refused, web.HTTPRequestEntityTooLarge):
            answer = error_body(413, "RESOURCE_EXHAUSTED", f"the body is over the limit of {MAX_BODY} bytes")
        else:
            code = _HTTP_CODES.get(refused.status, "INVALID_ARGUMENT" if refused.status < 500 else "INTERNAL")
            answer = error_body(refused.status, code, refused.reason)
        if refused.headers.get("Connection") == "close" or isinstance(refused, web.HTTPRequestEntityTooLarge):
            answer.force_close()
        return answer
    except Exception:
        log.exception("registry JSON API: %s %s failed", request.method, request.path[:128])
        return error_body(500, "INTERNAL", "internal error (logged by the control plane)")


def registry_http_app(
    calls: RegistryCalls, authenticate: Authenticate, *, read_timeout: float = DEFAULT_READ_TIMEOUT
) -> web.Application:
    """The JSON mirror's routes; `read_timeout` bounds the time a request's body may take to arrive."""

    def principal_of(request: web.Request) -> Principal:
        principal = authenticate(request.headers.get("Authorization"), [], [], None)
        if principal is None:
            raise RegistryError(ErrorCode.UNAUTHENTICATED, "missing or unknown credentials (Authorization: Bearer …)")
        return principal

    def unary(message_type: type[Message], call: Callable[[Any, Principal], Awaitable[Message]]) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                principal = principal_of(request)
                message = message_type()
                parse_body(await read_body(request, read_timeout), message)
                answer = await call(message, principal)
            except RegistryError as error:
                return _error(error.code, error.reason)
            return web.Response(text=_json(answer), content_type="application/json")

        return handle

    async def get(request: web.Request) -> web.StreamResponse:
        try:
            answer = await calls.get(pb.GetRequest(device_id=request.match_info["device_id"]), principal_of(request))
        except RegistryError as error:
            return _error(error.code, error.reason)
        return web.Response(text=_json(answer), content_type="application/json")

    def selector(request: web.Request, message: Any) -> Any:
        message.site = request.query.get("site", "")
        message.device_class = request.query.get("device_class", "")
        for label in request.query.getall("label", []):
            key, sep, value = label.partition("=")
            if not sep:
                raise RegistryError(ErrorCode.INVALID_ARGUMENT, f"label {label[:128]!r} must be key=value")
            message.labels[key] = value
        return message

    async def list_devices(request: web.Request) -> web.StreamResponse:
        try:
            answer = await calls.list(selector(request, pb.ListRequest()), principal_of(request))
        except RegistryError as error:
            return _error(error.code, error.reason)
        return web.Response(text=_json(answer), content_type="application/json")

    async def watch(request: web.Request) -> web.StreamResponse:
        try:
            events = calls.watch(selector(request, pb.WatchRequest()), principal_of(request))
        except RegistryError as error:
            return _error(error.code, error.reason)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        try:
            async for event in events:
                await response.write((_json(event) + "\n").encode())
        except RegistryError as error:
            await response.write((json.dumps({"code": error.code.value, "message": error.reason}) + "\n").encode())
        return response

    app = web.Application(client_max_size=MAX_BODY, middlewares=[json_errors])
    app.router.add_post("/v1/register", unary(pb.RegisterRequest, calls.register))
    app.router.add_post("/v1/heartbeat", unary(pb.HeartbeatRequest, calls.heartbeat))
    app.router.add_post("/v1/deregister", unary(pb.DeregisterRequest, calls.deregister))
    app.router.add_get("/v1/devices/{device_id}", get)
    app.router.add_get("/v1/devices", list_devices)
    app.router.add_get("/v1/watch", watch)
    return app


class _ConnectionCounts:
    """Open connections per client address, shared by every connection of one listener."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: dict[str, int] = {}

    def admit(self, address: str) -> bool:
        held = self.open.get(address, 0)
        if self.limit and held >= self.limit:
            return False
        self.open[address] = held + 1
        return True

    def release(self, address: str) -> None:
        held = self.open.get(address, 0) - 1
        if held > 0:
            self.open[address] = held
        else:
            self.open.pop(address, None)


class _LimitedConnection(asyncio.Protocol):
    """One accepted connection: handed to aiohttp's handler when its client address holds fewer
    than the limit, else answered 429 with the reason and closed before a byte is read.

    aiohttp has no per-client connection limit and decides nothing before the request, so the
    check sits in front of its protocol object and forwards every transport callback to it."""

    def __init__(self, inner: asyncio.Protocol, counts: _ConnectionCounts) -> None:
        self._inner = inner
        self._counts = counts
        self._address: str | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        if not self._counts.admit(address):
            self._refused = True
            assert isinstance(transport, asyncio.WriteTransport)
            reason = f"too many connections from {address}: at most {self._counts.limit} at once; retry later"
            body = json.dumps({"code": "RESOURCE_EXHAUSTED", "message": reason}).encode()
            transport.write(
                b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json; charset=utf-8\r\n"
                b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            transport.close()  # after the answer is flushed
            return
        self._address = address
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        if self._address is not None:
            self._counts.release(self._address)
            self._address = None
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._refused:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return None if self._refused else self._inner.eof_received()

    def pause_writing(self) -> None:
        if not self._refused:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if not self._refused:
            self._inner.resume_writing()


class _JsonRequestHandler(RequestHandler):
    """aiohttp's connection handler, answering what it refuses before any route or middleware sees
    the request (a request line or header that does not parse, a header over the size limit) in
    the JSON error shape like every other error, and logging such a refusal as one debug line:
    any client can send malformed HTTP, so a traceback at ERROR for each would let it flood the log."""

    __slots__ = ()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            log.error("registry JSON API: a request from %s failed", request.remote, exc_info=exc)
            reason, code = "internal error (logged by the control plane)", "INTERNAL"
        else:
            # The parser's message quotes the offending line: its first line names what is wrong.
            first = (message or "").strip().splitlines()[0:1]
            reason = _bounded("malformed HTTP request" + (f": {first[0]}" if first else ""), 256)
            code = _HTTP_CODES.get(status, "INVALID_ARGUMENT")
            log.debug("registry JSON API: refused a request from %s: %s", request.remote, reason)
        if request.writer.output_size > 0:
            raise ConnectionError("an answer was partly sent already; the connection is dropped")
        answer = error_body(status, code, reason)
        answer.force_close()
        return answer


async def serve_limited(runner: web.BaseRunner, host: str, port: int, per_client: int) -> asyncio.Server:
    """Listens on `host:port` for `runner` (set up), with at most `per_client` open connections per
    client address (0: no limit). The caller closes the returned server, then cleans up the runner."""
    server = runner.server
    assert server is not None, "the runner must be set up first"
    counts = _ConnectionCounts(per_client)
    loop = asyncio.get_running_loop()
    # What `web.Server.__call__` builds, with our handler class: the runner's keyword arguments
    # (timeouts, access log) are the server's `_kwargs`, which aiohttp has no public accessor for.
    options = server._kwargs

    def connection() -> _LimitedConnection:
        return _LimitedConnection(_JsonRequestHandler(server, loop=loop, **options), counts)

    return await loop.create_server(connection, host, port, reuse_address=True)
