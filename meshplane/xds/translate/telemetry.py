"""Access logs and tracing: the model's `Telemetry` as Envoy's access loggers, tracer and route overrides.

Owns how one role's telemetry becomes the `access_log` and `tracing` of its HTTP connection
managers (and the `access_log` of its TCP proxies), and how a rule's override becomes its route's
`tracing` and metadata. With no telemetry for a role nothing is set, so the listeners and routes of
a mesh without telemetry stay byte for byte what they were.

- stdout / stderr / file: Envoy's stream and file loggers, the format as a text line (newline
  added) or JSON fields.
- collector: Envoy's OpenTelemetry access logger, sending OTLP over gRPC to the collector's
  cluster (`names.cluster_name` of its service port, a cluster every role taking telemetry has);
  the text line is the log record's body, JSON fields its attributes.
- tracing: Envoy's OpenTelemetry tracer on that cluster, `random_sampling` from the policy. What
  Envoy 1.40 does with it (tests/test_telemetry_envoy.py shows each): the decision to trace is
  made once, by the first Envoy a request meets, and travels in the `x-request-id` it forwards;
  a later Envoy that gets a traced `x-request-id` traces the request whatever its own sampling,
  so a trace a proxy started crosses every later proxy (when applications forward
  `x-request-id` with `traceparent`). Sampling decides only for requests arriving without such
  a decision, and a `traceparent` alone is no decision: its `-01` does not make Envoy trace,
  and under a `-00` parent Envoy makes no span at all.
- A rule's access log off: its route carries `filter_metadata.meshplane.access_log: false`, and
  every HTTP access log then has a CEL filter that skips requests routed by such a route.
- Collectors' own traffic on an edge gateway (`QUIET_COLLECTOR_ROLES`): devices export their
  OTLP through the gateway, so without this the gateway would log and trace every export it
  forwards (telemetry about telemetry, a load growing with the devices). The routes to a
  collector's service are marked as a rule with its access log off, and never traced.

Collectors that cannot be reached (their service or port gone from the merged mesh, or the port
not gRPC) are left out with a warning: logs and spans to them are not configured, traffic is
unaffected. Envoy sends both off the request path, so a collector that is down costs dropped
telemetry only. Proxyless gRPC and Envoy Mobile take neither (`TELEMETRY_ROLES`). Must stay pure;
cluster names come from `meshplane.xds.names`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2, grpc_service_pb2, substitution_format_string_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.config.trace.v3 import http_tracer_pb2, opentelemetry_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2
from envoy.extensions.access_loggers.grpc.v3 import als_pb2
from envoy.extensions.access_loggers.open_telemetry.v3 import logs_service_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import struct_pb2
from opentelemetry.proto.common.v1 import common_pb2

from meshplane.model import (
    TELEMETRY_ROLES,
    AccessLog,
    LogSink,
    Mesh,
    Protocol,
    ProxyRole,
    RouteTelemetry,
)
from meshplane.xds import names
from meshplane.xds.translate import core

STDOUT_LOGGER = "envoy.access_loggers.stdout"
STDERR_LOGGER = "envoy.access_loggers.stderr"
FILE_LOGGER = "envoy.access_loggers.file"
OPEN_TELEMETRY_LOGGER = "envoy.access_loggers.open_telemetry"
OPEN_TELEMETRY_TRACER = "envoy.tracers.opentelemetry"
CEL_FILTER = "envoy.access_loggers.extension_filters.cel"
# The OTLP log name (Envoy sends it as the `log_name` resource attribute).
LOG_NAME = "meshplane"
# The route metadata namespace of a rule's telemetry override, and the CEL filter reading it. CEL's
# `||` is true as soon as one side is, so the guards keep a request no route took (a 404: it has
# no route metadata at all) and a route without the mark from evaluating to an error, which
# the filter would take as "do not log".
ROUTE_METADATA = "meshplane"
_MARKS = f"xds.route_metadata.filter_metadata.{ROUTE_METADATA}"
_LOGGED_ROUTES = (
    f"!has(xds.route_metadata) || !has({_MARKS}) || !has({_MARKS}.access_log) || {_MARKS}.access_log != false"
)
_LOGGER_NAMES = {LogSink.STDOUT: STDOUT_LOGGER, LogSink.STDERR: STDERR_LOGGER, LogSink.FILE: FILE_LOGGER}
# The roles that forward other proxies' telemetry to collectors, and so neither log nor trace the
# traffic to a collector's service (see `quiet_collector_routes`).
QUIET_COLLECTOR_ROLES = (ProxyRole.EDGE_GATEWAY,)
_NEVER = percent_pb2.FractionalPercent(numerator=0, denominator=percent_pb2.FractionalPercent.HUNDRED)
# A route that is never traced: not by sampling, not by a client's x-client-trace-id, not by a
# decision that came with the request (the overall sampling is applied last, over every reason).
_UNTRACED = route_components_pb2.Tracing(client_sampling=_NEVER, random_sampling=_NEVER, overall_sampling=_NEVER)

_hcm = http_connection_manager_pb2


@dataclass(frozen=True, slots=True)
class ProxyTelemetry:
    """What one role's listeners carry: access logs for HTTP connection managers and for TCP proxies
    (the same logs, without the route filter, which has no route to read), the HCM tracing (None:
    none), and warnings for what was left out."""

    http_access_logs: tuple[Any, ...] = ()
    tcp_access_logs: tuple[Any, ...] = ()
    tracing: Any | None = None
    warnings: tuple[str, ...] = ()


NO_PROXY_TELEMETRY = ProxyTelemetry()


def proxy_telemetry(mesh: Mesh, role: ProxyRole) -> ProxyTelemetry:
    """The access logs and tracing of `role`'s listeners in `mesh`."""
    telemetry = mesh.telemetry
    if role not in TELEMETRY_ROLES or (not telemetry.access_logs and not telemetry.tracing):
        return NO_PROXY_TELEMETRY
    warnings: list[str] = []
    http_logs: list[Any] = []
    tcp_logs: list[Any] = []
    route_filter = telemetry.logs_off_anywhere or (role in QUIET_COLLECTOR_ROLES and bool(telemetry.collectors))
    for index, log in enumerate(telemetry.access_logs_of(role)):
        cluster = ""
        if log.sink is LogSink.COLLECTOR:
            found = collector_cluster(mesh, log.collector)
            if isinstance(found, _Unreachable):
                warnings.append(f"{role}: access log {index + 1} ({log.origin}): {found.reason}; left out")
                continue
            cluster = found
        http_logs.append(_access_log(log, cluster, route_filter=route_filter))
        tcp_logs.append(_access_log(log, cluster, route_filter=False))
    tracing = None
    if (settings := telemetry.tracing_of(role)) is not None:
        found = collector_cluster(mesh, settings.collector)
        if isinstance(found, _Unreachable):
            warnings.append(f"{role}: tracing ({settings.origin}): {found.reason}; no tracing")
        else:
            tracer = opentelemetry_pb2.OpenTelemetryConfig(
                grpc_service=_grpc_service(found), service_name=settings.service_name or str(role)
            )
            tracing = _hcm.HttpConnectionManager.Tracing(
                random_sampling=percent_pb2.Percent(value=settings.sampling),
                provider=http_tracer_pb2.Tracing.Http(name=OPEN_TELEMETRY_TRACER, typed_config=core.pack(tracer)),
            )
    return ProxyTelemetry(tuple(http_logs), tuple(tcp_logs), tracing, tuple(warnings))


def apply_route_telemetry(route: Any, override: RouteTelemetry | None) -> None:
    """A rule's override on its Envoy route: its own trace sampling, or the mark that turns its
    access log off. Nothing when there is no override."""
    if override is None:
        return
    if override.sampling is not None:
        route.tracing.CopyFrom(
            route_components_pb2.Tracing(
                random_sampling=percent_pb2.FractionalPercent(
                    numerator=round(override.sampling * 10_000), denominator=percent_pb2.FractionalPercent.MILLION
                )
            )
        )
    if override.access_log is False:
        _log_off(route)


def quiet_collector_routes(mesh: Mesh, config: Any) -> None:
    """Marks every route of `config` (a RouteConfiguration built for this translation, not a
    shared message) that leads to a collector's service: no access log (the mark the route filter
    of `proxy_telemetry` reads for `QUIET_COLLECTOR_ROLES`), never traced. Every virtual host of
    the service, not only the collector's port: OTLP over HTTP to it is telemetry too."""
    quiet = {
        names.virtual_host_name(service.ref, port)
        for collector in mesh.telemetry.collectors
        if (service := mesh.service(collector.service)) is not None
        for port in service.ports
    }
    for vhost in config.virtual_hosts:
        if vhost.name in quiet:
            for route in vhost.routes:
                route.tracing.CopyFrom(_UNTRACED)
                _log_off(route)


def _log_off(route: Any) -> None:
    mark = struct_pb2.Struct()
    mark.update({"access_log": False})
    route.metadata.filter_metadata[ROUTE_METADATA].CopyFrom(mark)


@dataclass(frozen=True, slots=True)
class _Unreachable:
    reason: str


def collector_cluster(mesh: Mesh, name: str) -> str | _Unreachable:
    """The cluster of collector `name`, or why there is none."""
    collector = mesh.telemetry.collector(name)
    if collector is None:
        return _Unreachable(f"no collector {name!r}")
    service = mesh.service(collector.service)
    if service is None:
        return _Unreachable(f"collector {name}: no service {collector.service}")
    # Unnamed, the port is the service's only one (a collector naming no port of a multi-port
    # service is refused by validation, but a Kubernetes service may have gained ports since).
    port = service.port(collector.port) if collector.port is not None or len(service.ports) == 1 else None
    if port is None:
        return _Unreachable(f"collector {name}: service {collector.service} has no port {collector.port!r}")
    if port.protocol is not Protocol.GRPC:
        return _Unreachable(f"collector {name}: port {port.name} of {collector.service} is not grpc")
    return names.cluster_name(service.ref, port)


def _grpc_service(cluster: str) -> Any:
    return grpc_service_pb2.GrpcService(envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=cluster))


def _access_log(log: AccessLog, cluster: str, *, route_filter: bool) -> Any:
    config: Any
    if log.sink is LogSink.COLLECTOR:
        # `common_config` is deprecated as of Envoy 1.40 (which warns once when it loads it) in
        # favour of fields the xds-protos wheel meshplane builds with does not have yet; it is
        # what every Envoy meshplane supports accepts.
        config = logs_service_pb2.OpenTelemetryAccessLogConfig(
            common_config=als_pb2.CommonGrpcAccessLogConfig(
                log_name=LOG_NAME,
                grpc_service=_grpc_service(cluster),
                transport_api_version=config_source_pb2.V3,
            ),
        )
        if log.json_fields:
            config.attributes.values.extend(
                common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(string_value=value))
                for key, value in log.json_fields
            )
        else:
            config.body.string_value = log.text
    elif log.sink is LogSink.FILE:
        config = file_pb2.FileAccessLog(path=log.path, log_format=_format(log))
    elif log.sink is LogSink.STDERR:
        config = stream_pb2.StderrAccessLog(log_format=_format(log))
    else:
        config = stream_pb2.StdoutAccessLog(log_format=_format(log))
    entry = accesslog_pb2.AccessLog(
        name=_LOGGER_NAMES.get(log.sink, OPEN_TELEMETRY_LOGGER), typed_config=core.pack(config)
    )
    if route_filter:
        expression = cel_pb2.ExpressionFilter(expression=_LOGGED_ROUTES)
        entry.filter.extension_filter.name = CEL_FILTER
        entry.filter.extension_filter.typed_config.CopyFrom(core.pack(expression))
    return entry


def _format(log: AccessLog) -> Any:
    """A text sink's format: one line per request, or one JSON object per request."""
    if log.json_fields:
        fields = struct_pb2.Struct()
        fields.update(dict(log.json_fields))
        return substitution_format_string_pb2.SubstitutionFormatString(json_format=fields)
    return substitution_format_string_pb2.SubstitutionFormatString(
        text_format_source=base_pb2.DataSource(inline_string=log.text + "\n")
    )
