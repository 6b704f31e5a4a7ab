"""What one gRPC client may hold on a meshplane gRPC port: how long its connection may take to
start, sit without calls, or go unanswered to pings, how often it may ping, how many streams it
may multiplex on one connection, and (`CallLimits`) how many calls its address may hold open and
how long a call may wait for its request.

Owns the connection-level gRPC core arguments (`ConnectionLimits`), in one place so that every
gRPC port built with them is bounded alike, and the server interceptor that enforces the
per-client bounds gRPC core has no argument for (`CallLimits`). Must not know what the services do.

A slow or hostile client can otherwise hold a port's resources without end: a TCP connection that
never completes the HTTP/2 preface, a connection that carries no call, a peer that vanished
without a FIN, a call whose request message never arrives (gRPC core has no deadline of its own
for that: only the client's), and any number of such calls from one address.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import grpc

# A connection's handshake (TCP accepted → TLS done and HTTP/2 preface and SETTINGS received).
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
# A connection carrying no call for this long is sent GOAWAY and closed. A device heartbeating on
# a unary call every few seconds keeps its connection; one that went quiet reconnects on its next
# call (gRPC channels do so by themselves), so the bound costs nothing but a handshake.
DEFAULT_IDLE_TIMEOUT = 300.0
# The server pings a connection that sent nothing for this long, and closes it when the ping goes
# unanswered for `keepalive_timeout`: a peer gone without a FIN (power cut, NAT expiry) frees its
# connection and its endless streams within 80 s instead of TCP's hours.
DEFAULT_KEEPALIVE_INTERVAL = 60.0
DEFAULT_KEEPALIVE_TIMEOUT = 20.0
# Clients may ping this often without data (proxies and devices keeping a connection alive ping
# every 30 s or more);
# a client pinging faster gets strikes, and after `MAX_PING_STRIKES` a GOAWAY (ENHANCE_YOUR_CALM).
MIN_PING_INTERVAL = 10.0
MAX_PING_STRIKES = 2
# Concurrent streams on one HTTP/2 connection (SETTINGS_MAX_CONCURRENT_STREAMS). gRPC clients queue
# streams beyond it rather than fail, so it is generous: one connection may carry a fleet's calls.
DEFAULT_MAX_STREAMS_PER_CONNECTION = 1_000
# Calls one client address may hold open at once, all methods together (0: unlimited). Generous
# for the same reason as the per-connection bound: one gateway or NAT may front a whole site.
DEFAULT_MAX_CALLS_PER_CLIENT = 1_000
# Seconds a call has, from its headers, for its request message to arrive (unary-request methods).
DEFAULT_REQUEST_TIMEOUT = 10.0


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """The connection-level bounds, as gRPC core arguments (`grpc_options`), in seconds."""

    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    keepalive_interval: float = DEFAULT_KEEPALIVE_INTERVAL
    keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT
    max_streams_per_connection: int = DEFAULT_MAX_STREAMS_PER_CONNECTION

    def grpc_options(self) -> list[tuple[str, int]]:
        """The arguments for `grpc.aio.server(options=…)`; a server adds its own (message sizes)."""
        return [
            ("grpc.server_handshake_timeout_ms", _ms(self.handshake_timeout)),
            ("grpc.max_connection_idle_ms", _ms(self.idle_timeout)),
            ("grpc.keepalive_time_ms", _ms(self.keepalive_interval)),
            ("grpc.keepalive_timeout_ms", _ms(self.keepalive_timeout)),
            # Idle devices and proxies may keep their connection alive with pings of their own.
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", _ms(MIN_PING_INTERVAL)),
            ("grpc.http2.max_ping_strikes", MAX_PING_STRIKES),
            # How many pings the server itself sends without data: unlimited, so its keepalive
            # keeps checking a connection that carries only a quiet endless stream.
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.max_concurrent_streams", self.max_streams_per_connection),
        ]


def client_address(peer: str) -> str:
    """The IP address of a gRPC peer string, without its port (`ipv4:10.0.0.1:5555` → `10.0.0.1`,
    `ipv6:%5B::1%5D:5555` → `::1`); another kind of peer (a Unix socket) is its own client."""
    scheme, _, address = unquote(peer).partition(":")
    if scheme in ("ipv4", "ipv6"):
        return address.rpartition(":")[0].strip("[]") or address
    return peer


Behavior = Callable[..., Any]

if TYPE_CHECKING:
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]  # generic in grpc-stubs only
else:
    _Interceptor = grpc.aio.ServerInterceptor


class CallLimits(_Interceptor):
    """Bounds every call of a server: at most `max_per_client` open at once per client address (the
    next is refused RESOURCE_EXHAUSTED with the reason; 0: unlimited), and for methods taking one
    request message, that message must arrive within `request_timeout` seconds of the call's
    headers, else the call ends DEADLINE_EXCEEDED with the reason.

    gRPC runs a unary-request method only once its message is in, so neither bound could see a
    call still waiting for it. Such methods are therefore served as client-streaming ones (the
    same bytes on the wire: a stream of one message): the call is counted from its headers, and
    the wait for its message is ours to bound. Calls are counted until they end, however they end.
    """

    def __init__(self, max_per_client: int, request_timeout: float) -> None:
        self.max_per_client = max_per_client
        self.request_timeout = request_timeout
        self.open: Counter[str] = Counter()  # open calls per client address

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:  # an unknown method, which gRPC answers UNIMPLEMENTED (the stubs omit None)
            return handler
        method = str(handler_call_details.method)
        serializers = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.stream_unary_rpc_method_handler(self._unary_unary(method, handler.unary_unary), **serializers)
        if handler.unary_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._unary_stream(method, handler.unary_stream), **serializers
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(self._stream_unary(handler.stream_unary), **serializers)
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(self._stream_stream(handler.stream_stream), **serializers)
        return handler

    async def _admit(self, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        """Counts the call against its client, or ends it (RESOURCE_EXHAUSTED) when that is full."""
        client = client_address(context.peer())
        limit = self.max_per_client
        if limit and self.open[client] >= limit:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many calls open from {client}: at most {limit} at once; retry later",
            )
        self.open[client] += 1
        return client

    def _release(self, client: str) -> None:
        self.open[client] -= 1
        if self.open[client] <= 0:
            del self.open[client]

    async def _request(
        self, method: str, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        """The call's one request message, within `request_timeout`; else the call ends."""
        try:
            async with asyncio.timeout(self.request_timeout):
                return await anext(requests)
        except TimeoutError:
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"the request message did not arrive within {self.request_timeout:g} s",
            )
        except StopAsyncIteration:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{method} takes one request message; none was sent")

    def _unary_unary(self, method: str, behavior: Behavior) -> Behavior:
        async def serve(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            client = await self._admit(context)
            try:
                return await behavior(await self._request(method, requests, context), context)
            finally:
                self._release(client)

        return serve

    def _unary_stream(self, method: str, behavior: Behavior) -> Behavior:
        async def serve(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            client = await self._admit(context)
            try:
                async for response in behavior(await self._request(method, requests, context), context):
                    yield response
            finally:
                self._release(client)

        return serve

    def _stream_unary(self, behavior: Behavior) -> Behavior:
        async def serve(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            client = await self._admit(context)
            try:
                return await behavior(requests, context)
            finally:
                self._release(client)

        return serve

    def _stream_stream(self, behavior: Behavior) -> Behavior:
        async def serve(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            client = await self._admit(context)
            try:
                async for response in behavior(requests, context):
                    yield response
            finally:
                self._release(client)

        return serve
