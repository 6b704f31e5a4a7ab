"""Routes (RDS): the sidecar's outbound RouteConfiguration, and one per gRPC port for proxyless gRPC.

Owns virtual hosts (which domains reach which service port), default routes, and how route tables'
rules become Envoy routes. Proxyless gRPC gets only what it honours (gRFCs A28, A31, A42, A44):
timeouts as `max_stream_duration`, retries on gRPC status codes only, header and channel-id hashes,
no prefix rewrite. Must stay pure; names come from `meshplane.xds.names`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2

from meshplane.model import (
    HeaderMatch,
    HeaderMatchKind,
    LoadBalancing,
    Mesh,
    PathMatchKind,
    Protocol,
    ProxyGroup,
    ProxyRole,
    RouteRule,
    RouteTable,
    Service,
    ServicePort,
    ServiceRef,
)
from meshplane.xds import names
from meshplane.xds.translate import core
from meshplane.xds.translate.hostnames import HostClaim, HostNames, grant

_rc = route_components_pb2

# The retry conditions gRPC understands (RetryPolicyParse in src/core/xds/grpc/xds_route_config_parser.cc);
# it ignores the others.
_GRPC_RETRY_CONDITIONS = frozenset({"cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable"})
# gRPC hashes a filter-state key of this name on the channel: every RPC of one client channel
# lands on one endpoint, its nearest equivalent of Envoy's source-IP hash (gRFC A42).
_GRPC_CHANNEL_ID = "io.grpc.channel_id"


def build_routes(mesh: Mesh, group: ProxyGroup) -> tuple[list[Any], list[str]]:
    """Every RouteConfiguration `group` needs, and warnings for what was left out."""
    if group.role is ProxyRole.GRPC:
        return _grpc_route_configs(mesh)
    return _outbound_route_config(mesh, group.outbound_port)


@dataclass(frozen=True, slots=True)
class _Target:
    """One resolved backend: a port of a service and its share of the traffic."""

    service: Service
    port: ServicePort
    weight: int


def _attached_tables(mesh: Mesh) -> dict[ServiceRef, RouteTable]:
    """Route tables by the service they attach to (a validated mesh attaches at most one per service)."""
    return {table.service: table for table in mesh.routes if table.service is not None}


def _outbound_route_config(mesh: Mesh, outbound_port: int) -> tuple[list[Any], list[str]]:
    warnings: list[str] = []
    tables = _attached_tables(mesh)
    requests: list[tuple[str, list[HostClaim]]] = []
    routes_of: dict[str, list[Any]] = {}  # by virtual host name, in the order of `requests`
    host_names = HostNames(mesh)
    for service in mesh.services:
        derived = host_names.derived(service)
        hosts = host_names.of(service)
        http_ports = [port for port in service.ports if port.protocol.is_http]
        table = tables.get(service.ref)
        if table is not None and not http_ports:
            warnings.append(f"route {table.name}: service {service.ref} has no HTTP port to attach to")
        table_routes = _table_routes(mesh, table, grpc=False, warnings=warnings) if table and http_ports else None
        for index, port in enumerate(http_ports):
            claims = [HostClaim(f"{host}:{port.port}", host in derived) for host in hosts]
            if index == 0:  # a Host header without a port means the service's first HTTP port
                claims += [HostClaim(host, host in derived) for host in hosts]
            name = names.virtual_host_name(service.ref, port)
            requests.append((name, claims))
            routes_of[name] = table_routes if table_routes is not None else [_default_route(service, port, grpc=False)]
    for table in mesh.routes:
        if table.hosts:
            name = names.route_table_virtual_host_name(table.name)
            requests.append((name, [HostClaim(host, False) for host in table.hosts]))
            routes_of[name] = _table_routes(mesh, table, grpc=False, warnings=warnings)
    grants = grant(requests, what="domain", fold_case=True)
    warnings += grants.warnings

    config = route_pb2.RouteConfiguration(name=names.outbound_route_name(outbound_port))
    for name, routes in routes_of.items():
        if not (domains := grants.names[name]):
            warnings.append(f"virtual host {name}: every domain is taken by others; left out")
            continue
        config.virtual_hosts.append(route_components_pb2.VirtualHost(name=name, domains=domains, routes=routes))
    return [config], warnings


def _grpc_route_configs(mesh: Mesh) -> tuple[list[Any], list[str]]:
    """One RouteConfiguration per gRPC port, shared by every listener name of that port.

    A gRPC client looks up the listener named after its target, so the virtual host needs no
    domains of its own: `*` is the only one. Route tables that name only `hosts` have no port and
    so no target a gRPC client could dial; they apply to sidecars only.
    """
    warnings: list[str] = []
    tables = _attached_tables(mesh)
    configs = []
    for service in mesh.services:
        for port in service.ports:
            if port.protocol is not Protocol.GRPC:
                continue
            table = tables.get(service.ref)
            if table is not None:
                routes = _table_routes(mesh, table, grpc=True, warnings=warnings)
            else:
                routes = [_default_route(service, port, grpc=True)]
            vhost = route_components_pb2.VirtualHost(
                name=names.virtual_host_name(service.ref, port), domains=["*"], routes=routes
            )
            configs.append(
                route_pb2.RouteConfiguration(name=names.grpc_route_name(service.ref, port), virtual_hosts=[vhost])
            )
    return configs, warnings


def _default_route(service: Service, port: ServicePort, *, grpc: bool) -> Any:
    route = _rc.Route(match=_rc.RouteMatch(prefix="/"))
    _set_action(route, [_Target(service, port, 1)], timeout=None, grpc=grpc)
    return route


def _table_routes(mesh: Mesh, table: RouteTable, *, grpc: bool, warnings: list[str]) -> list[Any]:
    routes = []
    for index, rule in enumerate(table.rules):
        where = f"route {table.name} rule {index + 1}"
        targets = _resolve(mesh, rule)
        if targets is None:
            warnings.append(f"{where}: a backend names no known service port; rule left out")
            continue
        match = _match(rule)
        if match is None:
            warnings.append(f"{where}: an empty path regex matches no path; rule left out")
            continue
        route = _rc.Route(match=match)
        _set_action(route, targets, timeout=rule.timeout, grpc=grpc)
        if rule.retry is not None:
            _set_retry(route, rule, grpc=grpc)
        if rule.prefix_rewrite is not None and not grpc:
            route.route.prefix_rewrite = rule.prefix_rewrite
        routes.append(route)
    return routes


def _resolve(mesh: Mesh, rule: RouteRule) -> list[_Target] | None:
    """The rule's backends as service ports, or None if one does not resolve (a validated mesh never does that)."""
    targets = []
    for backend in rule.backends:
        service = mesh.service(backend.service)
        port = service.port(backend.port) if service is not None else None
        if service is None or port is None:
            return None
        targets.append(_Target(service, port, backend.weight))
    return targets


def _match(rule: RouteRule) -> Any | None:
    path = rule.match.path
    match = _rc.RouteMatch()
    if path.kind is PathMatchKind.PREFIX:
        match.prefix = path.value
    elif path.kind is PathMatchKind.EXACT:
        match.path = path.value
    else:
        # Envoy full-matches and rejects an empty regex; the empty regex full-matches no path.
        if not path.value:
            return None
        # RE2 is the default (and only) engine; `google_re2` is deprecated, so it is left unset.
        match.safe_regex.CopyFrom(regex_pb2.RegexMatcher(regex=path.value))
    match.headers.extend(_header_matcher(header) for header in rule.match.headers)
    return match


def _header_matcher(header: HeaderMatch) -> Any:
    matcher = _rc.HeaderMatcher(name=header.name, invert_match=header.invert)
    # Envoy rejects an empty prefix or regex. An empty prefix matches any value (so: present), and
    # an empty regex, full-matched, only the empty value (so: exactly "").
    if header.kind is HeaderMatchKind.PRESENT or (header.kind is HeaderMatchKind.PREFIX and not header.value):
        matcher.present_match = True
    elif header.kind is HeaderMatchKind.PREFIX:
        matcher.string_match.CopyFrom(string_pb2.StringMatcher(prefix=header.value))
    elif header.kind is HeaderMatchKind.REGEX and header.value:
        matcher.string_match.CopyFrom(string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=header.value)))
    else:
        matcher.string_match.CopyFrom(string_pb2.StringMatcher(exact=header.value))
    return matcher


def _set_action(route: Any, targets: Sequence[_Target], *, timeout: float | None, grpc: bool) -> None:
    action = route.route
    weights: dict[str, int] = {}
    for target in targets:  # two backends naming one port share one cluster entry
        cluster = names.cluster_name(target.service.ref, target.port)
        weights[cluster] = weights.get(cluster, 0) + target.weight
    if len(weights) == 1:
        action.cluster = next(iter(weights))
    else:
        for cluster, weight in zip(weights, _fit_uint32(list(weights.values())), strict=True):
            entry = _rc.WeightedCluster.ClusterWeight(name=cluster, weight=core.uint32(weight))
            action.weighted_clusters.clusters.append(entry)

    first = targets[0]
    if grpc:
        # gRPC ignores `timeout`; it caps a call's deadline by max_stream_duration (gRFC A31).
        # A zero timeout means none.
        if timeout:
            action.max_stream_duration.max_stream_duration.CopyFrom(core.duration(timeout))
    elif timeout is not None:
        action.timeout.CopyFrom(core.duration(timeout))
    elif first.port.protocol is Protocol.GRPC:
        # Envoy cuts every request at 15 s by default, streams included; gRPC callers set deadlines.
        action.timeout.CopyFrom(core.duration(0))

    policy = first.service.policy
    key = policy.hash_key
    if key is None or policy.load_balancing not in (LoadBalancing.RING_HASH, LoadBalancing.MAGLEV):
        return
    hashing = _rc.RouteAction.HashPolicy()
    if key.header:
        hashing.header.header_name = key.header
    elif key.cookie:
        if grpc:  # gRPC has no cookies to hash
            return
        hashing.cookie.name = key.cookie
    elif key.source_ip:
        if grpc:
            hashing.filter_state.key = _GRPC_CHANNEL_ID
        else:
            hashing.connection_properties.source_ip = True
    else:
        return
    action.hash_policy.append(hashing)


def _set_retry(route: Any, rule: RouteRule, *, grpc: bool) -> None:
    retry = rule.retry
    assert retry is not None
    conditions = [c for c in retry.on if c in _GRPC_RETRY_CONDITIONS] if grpc else list(retry.on)
    if grpc and (not conditions or retry.attempts == 0):
        # gRPC NACKs num_retries 0 and cannot retry on HTTP conditions: no retry is the faithful config.
        return
    policy = route.route.retry_policy
    policy.retry_on = ",".join(conditions)
    policy.num_retries.CopyFrom(core.uint32(retry.attempts))
    if retry.per_try_timeout is not None and not grpc:  # gRPC has no per-try timeout
        policy.per_try_timeout.CopyFrom(core.duration(retry.per_try_timeout))


def _fit_uint32(weights: list[int]) -> list[int]:
    """`weights`, scaled down in proportion when their sum would overflow the uint32 both Envoy and
    gRPC add them up in; unchanged otherwise (the usual case)."""
    total = sum(weights)
    budget = core.UINT32_MAX - len(weights)
    if total <= budget:
        return weights
    return [max(1, weight * budget // total) if weight else 0 for weight in weights]
