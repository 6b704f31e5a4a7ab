"""gRPC server statistics: calls started and finished (by status code), messages in and out.

The counts of go-grpc-prometheus (`grpc_server_started_total`, `…_handled_total`,
`…_msg_received_total`, `…_msg_sent_total`), taken by wrapping the xDS services' method
handlers, so the server itself stays unaware of them. Counting only: the wrapped handler sees
every request and response unchanged.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from meshplane.xds.cache import SnapshotCache
from meshplane.xds.server.service import XdsServices
from meshplane.xds.server.tracking import StreamRegistry

Method = tuple[str, str]  # (service, method)


class GrpcStats:
    """Counters by (service, method), and handled calls by (service, method, status code name)."""

    def __init__(self) -> None:
        self.started: Counter[Method] = Counter()
        self.handled: Counter[tuple[str, str, str]] = Counter()
        self.received: Counter[Method] = Counter()
        self.sent: Counter[Method] = Counter()

    def instrument(self, handler: grpc.GenericRpcHandler[Any, Any]) -> grpc.GenericRpcHandler[Any, Any]:
        return _CountingHandler(handler, self)


def _split(full_method: str) -> Method:
    service, _, method = full_method.lstrip("/").partition("/")
    return service, method


def _code_name(context: Any) -> str:
    code = context.code() if hasattr(context, "code") else None
    if isinstance(code, grpc.StatusCode):
        return code.name
    return "UNKNOWN"


class _CountingHandler(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    def __init__(self, inner: grpc.GenericRpcHandler[Any, Any], stats: GrpcStats) -> None:
        self._inner = inner
        self._stats = stats

    def service_name(self) -> str | None:
        name: Callable[[], str] | None = getattr(self._inner, "service_name", None)
        return name() if name is not None else None

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = self._inner.service(handler_call_details)
        if handler is None or handler.stream_stream is None:
            return handler
        method = _split(handler_call_details.method)
        behaviour: Any = handler.stream_stream  # typed for the sync server; on grpc.aio it is an async generator
        stats = self._stats

        async def counted_requests(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
            async for request in requests:
                stats.received[method] += 1
                yield request

        async def counted(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
            stats.started[method] += 1
            code = "OK"
            try:
                async for response in behaviour(counted_requests(requests), context):
                    stats.sent[method] += 1
                    yield response
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except BaseException:
                code = _code_name(context)
                raise
            finally:
                stats.handled[(*method, code)] += 1

        return grpc.stream_stream_rpc_method_handler(
            counted,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class InstrumentedXdsServices(XdsServices):
    """The xDS services with every handler counted into `stats`."""

    def __init__(self, stats: GrpcStats, cache: SnapshotCache, registry: StreamRegistry, **options: Any) -> None:
        super().__init__(cache, registry, **options)
        self.stats = stats

    def generic_handlers(self) -> list[grpc.GenericRpcHandler[Any, bytes]]:
        return [self.stats.instrument(handler) for handler in super().generic_handlers()]
