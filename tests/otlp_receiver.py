"""An OpenTelemetry collector a test runs: an OTLP/gRPC receiver of logs and traces, on grpcio's aio server.

Built on the `opentelemetry-proto` package's generated services (`LogsServiceServicer`,
`TraceServiceServicer`), so what it accepts is exactly what a real collector accepts on its
gRPC port. Everything exported is kept, in arrival order, flattened to one entry per log record
or span with its resource's attributes; tests read those lists while polling a condition.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2

GRACE = 0.5


def attributes(values: Any) -> dict[str, Any]:
    """OTLP `KeyValue`s as a dict of plain values (strings, numbers, booleans; others as text)."""
    found: dict[str, Any] = {}
    for pair in values:
        found[pair.key] = plain(pair.value)
    return found


def plain(value: common_pb2.AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind in ("string_value", "bool_value", "int_value", "double_value"):
        return getattr(value, kind)
    return str(getattr(value, kind))


@dataclass(frozen=True)
class LogEntry:
    resource: dict[str, Any]
    body: Any
    attributes: dict[str, Any]


@dataclass(frozen=True)
class SpanEntry:
    resource: dict[str, Any]
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]


@dataclass
class OtlpReceiver:
    """The receiver's state: where it listens, and what it got so far."""

    port: int = 0
    logs: list[LogEntry] = field(default_factory=list)
    spans: list[SpanEntry] = field(default_factory=list)
    server: grpc.aio.Server | None = None

    async def start(self) -> None:
        """Listens on 127.0.0.1 (on `port`, or a port the kernel picks when it is 0)."""
        server = grpc.aio.server()
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(_Logs(self), server)
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Traces(self), server)
        self.port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        await server.start()
        self.server = server

    async def stop(self) -> None:
        """Stops listening; connections are closed after a short grace (a collector that went down)."""
        if self.server is not None:
            await self.server.stop(GRACE)
            self.server = None


# OTLP renamed these fields keeping their numbers, so both generations read the same bytes.
_OLDER_NAMES = {
    "scope_logs": "instrumentation_library_logs",
    "scope_spans": "instrumentation_library_spans",
    "log_records": "logs",
}


def scoped(message: Any, field: str) -> Any:
    """`message`'s field `field` (`scope_logs`, `scope_spans`, `log_records`), under either name
    it has had. Which generated modules are installed depends on pip's install order:
    `xds-protos` ships older `opentelemetry.proto` modules and `opentelemetry-proto` newer ones,
    into the same files."""
    if field in message.DESCRIPTOR.fields_by_name:
        return getattr(message, field)
    return getattr(message, _OLDER_NAMES[field])


class _Logs(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self.receiver = receiver

    async def Export(
        self, request: logs_service_pb2.ExportLogsServiceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> logs_service_pb2.ExportLogsServiceResponse:
        for resource_logs in request.resource_logs:
            resource = attributes(resource_logs.resource.attributes)
            for scope in scoped(resource_logs, "scope_logs"):
                for record in scoped(scope, "log_records"):
                    self.receiver.logs.append(LogEntry(resource, plain(record.body), attributes(record.attributes)))
        return logs_service_pb2.ExportLogsServiceResponse()


class _Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self.receiver = receiver

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            resource = attributes(resource_spans.resource.attributes)
            for scope in scoped(resource_spans, "scope_spans"):
                for span in scope.spans:
                    self.receiver.spans.append(
                        SpanEntry(
                            resource,
                            span.name,
                            span.trace_id.hex(),
                            span.span_id.hex(),
                            span.parent_span_id.hex(),
                            attributes(span.attributes),
                        )
                    )
        return trace_service_pb2.ExportTraceServiceResponse()


async def _serve_until_stdin_closes() -> None:
    """The receiver as a process of its own (benchmarks run it beside Envoy so that what it costs
    does not slow their client): prints its port, counts what it gets, stops when stdin closes
    and prints the counts (spans, log records) as its last line."""
    receiver = OtlpReceiver()
    await receiver.start()
    print(receiver.port, flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    await receiver.stop()
    print(len(receiver.spans), len(receiver.logs), flush=True)


if __name__ == "__main__":
    asyncio.run(_serve_until_stdin_closes())
