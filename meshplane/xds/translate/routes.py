"""Routes (RDS): the sidecar's outbound RouteConfiguration, and one per gRPC port for proxyless gRPC.

Owns virtual hosts (which domains reach which service port), default routes, and how route tables'
rules become Envoy routes: matches, weighted clusters, redirects, rewrites, header modifiers,
mirrors, faults, rate limits and CORS, the HTTP filters those need (`http_filters`), and a named
rule's telemetry override (`telemetry.apply_route_telemetry`).
Proxyless gRPC gets only what it honours (gRFCs A28, A31, A33, A42, A44): timeouts as
`max_stream_duration`, retries on gRPC status codes only, header and channel-id hashes, faults; no
rewrites, header modifiers, mirrors, rate limits or CORS (left out with a warning), and no rule it could
never take or would fail every call of (redirects, query parameter matches, methods but POST),
which is left out with a warning.
Must stay pure; names come from `meshplane.xds.names`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from envoy.type.v3 import percent_pb2, token_bucket_pb2
from google.protobuf import wrappers_pb2

from meshplane.model import (
    CorsPolicy,
    FaultInjection,
    HeaderMatch,
    HeaderMatchKind,
    HeaderModifier,
    LoadBalancing,
    Mesh,
    Mirror,
    PathMatchKind,
    Protocol,
    ProxyGroup,
    ProxyRole,
    QueryMatch,
    QueryMatchKind,
    RateLimit,
    Redirect,
    RouteRule,
    RouteTable,
    Service,
    ServicePort,
    ServiceRef,
    wildcard_origin_regex,
)
from meshplane.xds import names
from meshplane.xds.translate import core
from meshplane.xds.translate.hostnames import HostClaim, HostNames, grant
from meshplane.xds.translate.telemetry import apply_route_telemetry

_rc = route_components_pb2

# The retry conditions gRPC understands (RetryPolicyParse in src/core/xds/grpc/xds_route_config_parser.cc);
# it ignores the others.
_GRPC_RETRY_CONDITIONS = frozenset({"cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable"})
# gRPC hashes a filter-state key of this name on the channel: every RPC of one client channel
# lands on one endpoint, its nearest equivalent of Envoy's source-IP hash (gRFC A42).
_GRPC_CHANNEL_ID = "io.grpc.channel_id"
# The HTTP filter that answers browsers' CORS preflights and marks answers by a rule's CORS policy.
CORS_FILTER = "envoy.filters.http.cors"
# The HTTP filter that injects a rule's faults; its name keys the route's per-filter config.
FAULT_FILTER = "envoy.filters.http.fault"
# The HTTP filter that keeps rules' rate limits (token buckets); gRPC has no such filter.
LOCAL_RATE_LIMIT_FILTER = "envoy.filters.http.local_ratelimit"
_RATE_LIMIT_STATS = "local_rate_limit"
# A rate limit per client keys each bucket by this descriptor entry, whose value is the client's header.
_CLIENT_KEY = "client"
# How many clients' buckets a proxy keeps per rule, least recently used evicted first: an evicted
# client starts again with a full bucket, so this is well above the clients one proxy serves.
_MAX_CLIENT_BUCKETS = 10_000
# Every gRPC call is a POST.
_GRPC_METHOD = "POST"
_REDIRECT_CODES = {
    301: _rc.RedirectAction.MOVED_PERMANENTLY,
    302: _rc.RedirectAction.FOUND,
    303: _rc.RedirectAction.SEE_OTHER,
    307: _rc.RedirectAction.TEMPORARY_REDIRECT,
    308: _rc.RedirectAction.PERMANENT_REDIRECT,
}
# Replacing the whole path is a regex rewrite of everything: the query string is not part of what
# Envoy rewrites, so it is kept, as the Gateway API's ReplaceFullPath keeps it.
_WHOLE_PATH = "^/.*$"


def build_routes(mesh: Mesh, group: ProxyGroup) -> tuple[list[Any], list[str]]:
    """Every RouteConfiguration `group` needs, and warnings for what was left out."""
    if group.role is ProxyRole.GRPC:
        return _grpc_route_configs(mesh, group.namespace)
    return _outbound_route_config(mesh, group.outbound_port, group.namespace)


def http_filters(mesh: Mesh, *, grpc: bool) -> list[Any]:
    """The HTTP filters the routes of `mesh` need in an HTTP connection manager, before the router.

    Each filter is there only when some rule uses it, configured to do nothing: a route turns it on
    through its `typed_per_filter_config`. So a mesh using no such feature keeps the listener it had.
    A proxyless gRPC client (`grpc`) gets only the filters it knows: it refuses a listener naming
    any other.
    """
    return rule_http_filters([rule for table in mesh.routes for rule in table.rules], grpc=grpc)


def rule_http_filters(rules: Sequence[RouteRule], *, grpc: bool) -> list[Any]:
    """`http_filters` for the routes built from `rules`."""
    filters = []
    # First, so that a preflight is answered before faults or rate limits could touch it.
    if not grpc and any(rule.cors is not None for rule in rules):
        filters.append(
            http_connection_manager_pb2.HttpFilter(name=CORS_FILTER, typed_config=core.pack(cors_pb2.Cors()))
        )
    if any(rule.fault is not None for rule in rules):
        filters.append(
            http_connection_manager_pb2.HttpFilter(name=FAULT_FILTER, typed_config=core.pack(fault_pb2.HTTPFault()))
        )
    if not grpc and any(rule.rate_limit is not None for rule in rules):
        idle = local_rate_limit_pb2.LocalRateLimit(stat_prefix=_RATE_LIMIT_STATS)  # no bucket: limits nothing
        filters.append(
            http_connection_manager_pb2.HttpFilter(name=LOCAL_RATE_LIMIT_FILTER, typed_config=core.pack(idle))
        )
    return filters


@dataclass(frozen=True, slots=True)
class _Target:
    """One resolved backend: a port of a service, its share of the traffic and the request header
    changes for it alone."""

    service: Service
    port: ServicePort
    weight: int
    request_headers: HeaderModifier | None = None


_Attachment = tuple[ServiceRef, int | None, str]


def _attached_tables(mesh: Mesh, namespace: str) -> dict[_Attachment, RouteTable]:
    """The route tables that apply to clients of `namespace` ("": not said), by what they attach to
    (service, port or None for every port, consumer namespace or ""): a validated mesh attaches at
    most one to each. Another namespace's consumer tables are not theirs."""
    return {
        table.attachment: table
        for table in mesh.routes
        if table.attachment is not None and table.consumer in ("", namespace)
    }


def _table_of(
    tables: dict[_Attachment, RouteTable], service: Service, port: ServicePort, namespace: str
) -> RouteTable | None:
    """The table for one port of `service` as clients of `namespace` see it: their own consumer
    table before the Service's producer one (GAMMA: a consumer route takes precedence), and within
    each the port's table before the Service-wide one."""
    for consumer in (namespace, "") if namespace else ("",):
        for number in (port.port, None):
            if (table := tables.get((service.ref, number, consumer))) is not None:
                return table
    return None


def _outbound_route_config(mesh: Mesh, outbound_port: int, namespace: str) -> tuple[list[Any], list[str]]:
    warnings: list[str] = []
    tables = _attached_tables(mesh, namespace)
    attached_to: dict[ServiceRef, list[tuple[int | None, RouteTable]]] = {}
    for (ref, number, _), table in tables.items():
        attached_to.setdefault(ref, []).append((number, table))
    requests: list[tuple[str, list[HostClaim]]] = []
    routes_of: dict[str, list[Any]] = {}  # by virtual host name, in the order of `requests`
    host_names = HostNames(mesh)
    for service in mesh.services:
        derived = host_names.derived(service)
        hosts = host_names.of(service)
        http_ports = [port for port in service.ports if port.protocol.is_http]
        for number, attached in attached_to.get(service.ref, ()):
            if not any(number in (None, port.port) for port in http_ports):
                on = "no HTTP port" if number is None else f"no HTTP port {number}"
                warnings.append(f"route {attached.name}: service {service.ref} has {on} to attach to")
        built: dict[str, list[Any]] = {}  # a table's routes, built once for all the ports it serves
        for index, port in enumerate(http_ports):
            claims = [HostClaim(f"{host}:{port.port}", host in derived) for host in hosts]
            if index == 0:  # a Host header without a port means the service's first HTTP port
                claims += [HostClaim(host, host in derived) for host in hosts]
            name = names.virtual_host_name(service.ref, port)
            requests.append((name, claims))
            if (chosen := _table_of(tables, service, port, namespace)) is None:
                routes_of[name] = [_default_route(service, port, grpc=False)]
                continue
            if chosen.name not in built:
                built[chosen.name] = _table_routes(mesh, chosen, grpc=False, warnings=warnings)
            routes_of[name] = built[chosen.name]
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


def _grpc_route_configs(mesh: Mesh, namespace: str) -> tuple[list[Any], list[str]]:
    """One RouteConfiguration per gRPC port, shared by every listener name of that port.

    A gRPC client looks up the listener named after its target, so the virtual host needs no
    domains of its own: `*` is the only one. Route tables that name only `hosts` have no port and
    so no target a gRPC client could dial; they apply to sidecars only.
    """
    warnings: list[str] = []
    tables = _attached_tables(mesh, namespace)
    configs = []
    for service in mesh.services:
        for port in service.ports:
            if port.protocol is not Protocol.GRPC:
                continue
            table = _table_of(tables, service, port, namespace)
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
        route = rule_route(mesh, rule, grpc=grpc, where=f"route {table.name} rule {index + 1}", warnings=warnings)
        if route is None:
            continue
        if not grpc:
            # gRPC takes no telemetry; Envoy's roles read the rule's own sampling or log switch.
            apply_route_telemetry(route, mesh.telemetry.route_override(table.name, rule.name))
        routes.append(route)
    return routes


def rule_route(mesh: Mesh, rule: RouteRule, *, grpc: bool, where: str, warnings: list[str]) -> Any | None:
    """One rule as an Envoy route (telemetry overrides aside), or None with a warning naming
    `where` when it cannot be one: a backend naming no service port of `mesh`, a rule gRPC cannot
    take, an empty path regex, neither backends nor a redirect."""
    targets = _resolve(mesh, rule)
    mirrors = _resolve_mirrors(mesh, rule.mirrors)
    if targets is None or mirrors is None:
        warnings.append(f"{where}: a backend names no known service port; rule left out")
        return None
    if grpc and (reason := _grpc_cannot_take(rule)) is not None:
        warnings.append(f"{where}: {reason}; rule left out for proxyless gRPC")
        return None
    match = _match(rule, grpc=grpc)
    if match is None:
        warnings.append(f"{where}: an empty path regex matches no path; rule left out")
        return None
    route = _rc.Route(match=match, name=rule.name or "")
    if rule.redirect is not None:
        route.redirect.CopyFrom(_redirect(rule.redirect))
    elif targets:
        _set_action(route, targets, timeout=_forward_timeout(rule), grpc=grpc)
        if rule.retry is not None:
            _set_retry(route, rule, grpc=grpc)
        if not grpc:
            _set_rewrites(route, rule)
            route.route.request_mirror_policies.extend(mirrors)
        if rule.fault is not None:  # gRPC injects faults too (gRFC A33)
            route.typed_per_filter_config[FAULT_FILTER].CopyFrom(core.pack(_fault(rule.fault)))
    else:  # an invalid mesh's rule with neither backends nor a redirect: nowhere to send requests
        warnings.append(f"{where}: has no backends; rule left out")
        return None
    if rule.rate_limit is not None and not grpc:
        route.typed_per_filter_config[LOCAL_RATE_LIMIT_FILTER].CopyFrom(core.pack(_rate_limit(rule.rate_limit)))
    if rule.cors is not None and not grpc:
        route.typed_per_filter_config[CORS_FILTER].CopyFrom(core.pack(_cors(rule.cors)))
    if grpc:
        if _grpc_ignores(rule):
            warnings.append(
                f"{where}: proxyless gRPC applies no rewrites, header modifiers, mirrors, rate limits "
                "or CORS; they are left out"
            )
    else:
        _set_header_modifiers(route, rule)
    return route


def rule_match(rule: RouteRule) -> Any | None:
    """The Envoy route match of `rule` for an Envoy proxy (None: an empty path regex, which matches nothing)."""
    return _match(rule, grpc=False)


def _grpc_cannot_take(rule: RouteRule) -> str | None:
    """Why a gRPC client could never take `rule` (or would fail every call that matched it), or None.

    gRPC fails the calls a redirect route matches (a route whose action is not `route`); it has no
    query string to match; and every call it makes is a POST.
    """
    if rule.redirect is not None:
        return "a redirect is no answer to a gRPC call"
    if rule.match.query:
        return "gRPC calls have no query parameters to match"
    if rule.match.method is not None and rule.match.method != _GRPC_METHOD:
        return f"gRPC calls are POSTs, never {rule.match.method}"
    return None


def _grpc_ignores(rule: RouteRule) -> bool:
    """Whether `rule` asks for what gRPC's xDS client does not do (and so is left out of its routes)."""
    rewrites = rule.path_rewrite is not None or rule.host_rewrite is not None
    modifiers = rule.request_headers is not None or rule.response_headers is not None
    return rewrites or modifiers or bool(rule.mirrors) or rule.rate_limit is not None or rule.cors is not None


def _redirect(redirect: Redirect) -> Any:
    action = _rc.RedirectAction(response_code=_REDIRECT_CODES[redirect.status])
    if redirect.scheme is not None:
        action.scheme_redirect = redirect.scheme
    if redirect.hostname is not None:
        action.host_redirect = redirect.hostname
    if redirect.port is not None:
        action.port_redirect = redirect.port
    if redirect.path is not None:
        action.path_redirect = redirect.path
    elif redirect.prefix is not None:
        action.prefix_rewrite = redirect.prefix
    return action


def _set_rewrites(route: Any, rule: RouteRule) -> None:
    action = route.route
    if rule.prefix_rewrite is not None:
        action.prefix_rewrite = rule.prefix_rewrite
    elif rule.path_rewrite is not None:
        # RE2's rewrite string reads `\1` as a group: a backslash of the path is doubled to stay one.
        action.regex_rewrite.pattern.regex = _WHOLE_PATH
        action.regex_rewrite.substitution = rule.path_rewrite.replace("\\", "\\\\")
    if rule.host_rewrite is not None:
        action.host_rewrite_literal = rule.host_rewrite


def _set_header_modifiers(route: Any, rule: RouteRule) -> None:
    if (request := rule.request_headers) is not None:
        route.request_headers_to_add.extend(_header_options(request))
        route.request_headers_to_remove.extend(name.lower() for name in request.remove)
    if (response := rule.response_headers) is not None:
        route.response_headers_to_add.extend(_header_options(response))
        route.response_headers_to_remove.extend(name.lower() for name in response.remove)


def _header_options(modifier: HeaderModifier) -> list[Any]:
    """`set` then `add` as Envoy's header options; Envoy removes before it sets and adds, as the model says."""
    options = []
    for headers, append in (
        (modifier.set, base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD),
        (modifier.add, base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD),
    ):
        for header in headers:
            # Envoy reads `%` as the start of a substitution (`%REQ(...)%`); values are literal text.
            value = header.value.replace("%", "%%")
            options.append(
                base_pb2.HeaderValueOption(
                    header=base_pb2.HeaderValue(key=header.name.lower(), value=value), append_action=append
                )
            )
    return options


def _resolve(mesh: Mesh, rule: RouteRule) -> list[_Target] | None:
    """The rule's backends as service ports, or None if one does not resolve (a validated mesh never does that)."""
    targets = []
    for backend in rule.backends:
        service = mesh.service(backend.service)
        port = service.port(backend.port) if service is not None else None
        if service is None or port is None:
            return None
        targets.append(_Target(service, port, backend.weight, backend.request_headers))
    return targets


def _fault(fault: FaultInjection) -> Any:
    config = fault_pb2.HTTPFault()
    if (delay := fault.delay) is not None:
        config.delay.fixed_delay.CopyFrom(core.duration(delay.duration))
        config.delay.percentage.CopyFrom(_per_million(delay.percent))
    if (abort := fault.abort) is not None:
        config.abort.http_status = abort.status
        config.abort.percentage.CopyFrom(_per_million(abort.percent))
    return config


def _cors(cors: CorsPolicy) -> Any:
    policy = cors_pb2.CorsPolicy(
        allow_methods=", ".join(cors.allow_methods),
        allow_headers=", ".join(cors.allow_headers),
        expose_headers=", ".join(cors.expose_headers),
        allow_credentials=wrappers_pb2.BoolValue(value=cors.allow_credentials),
    )
    if cors.max_age is not None:
        policy.max_age = str(cors.max_age)
    for origin in cors.allow_origins:
        if origin == "*":
            matcher = string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=".*"))
        elif "*" in origin:
            matcher = string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=wildcard_origin_regex(origin)))
        else:
            matcher = string_pb2.StringMatcher(exact=origin)
        policy.allow_origin_string_match.append(matcher)
    return policy


def rate_limit_bucket(limit: RateLimit) -> Any:
    """The token bucket of `limit` (its `per_header` aside): also each device's at edge gateways."""
    return token_bucket_pb2.TokenBucket(
        max_tokens=limit.requests if limit.burst is None else limit.burst,
        tokens_per_fill=core.uint32(limit.requests),
        fill_interval=core.duration(limit.interval),
    )


def _rate_limit(limit: RateLimit) -> Any:
    bucket = rate_limit_bucket(limit)
    everything = base_pb2.RuntimeFractionalPercent(default_value=_per_million(100))
    config = local_rate_limit_pb2.LocalRateLimit(
        stat_prefix=_RATE_LIMIT_STATS, token_bucket=bucket, filter_enabled=everything, filter_enforced=everything
    )
    if limit.per_header is not None:
        # A bucket per value of the header: the action makes the descriptor (client, value) of a
        # request that has the header; the descriptor's empty value matches any value, and each
        # value gets its bucket. A request without the header makes no descriptor: the rule's own
        # bucket, shared, takes it. A request with one takes only its client's bucket.
        config.rate_limits.append(
            _rc.RateLimit(
                actions=[
                    _rc.RateLimit.Action(
                        request_headers=_rc.RateLimit.Action.RequestHeaders(
                            header_name=limit.per_header, descriptor_key=_CLIENT_KEY
                        )
                    )
                ]
            )
        )
        config.descriptors.append(
            ratelimit_pb2.LocalRateLimitDescriptor(
                entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key=_CLIENT_KEY, value="")], token_bucket=bucket
            )
        )
        config.always_consume_default_token_bucket.CopyFrom(wrappers_pb2.BoolValue(value=False))
        config.max_dynamic_descriptors.CopyFrom(core.uint32(_MAX_CLIENT_BUCKETS))
    return config


def _per_million(percent: float) -> Any:
    """`percent` per million, Envoy's finest denominator: a percent with four decimals is exact."""
    return percent_pb2.FractionalPercent(
        numerator=round(percent * 10_000), denominator=percent_pb2.FractionalPercent.MILLION
    )


def _resolve_mirrors(mesh: Mesh, mirrors: Sequence[Mirror]) -> list[Any] | None:
    """Envoy's mirror policies for `mirrors`, or None if one names no service port (a validated mesh never does)."""
    policies = []
    for mirror in mirrors:
        service = mesh.service(mirror.service)
        port = service.port(mirror.port) if service is not None else None
        if service is None or port is None:
            return None
        policy = _rc.RouteAction.RequestMirrorPolicy(cluster=names.cluster_name(service.ref, port))
        if mirror.percent < 100:
            policy.runtime_fraction.default_value.CopyFrom(_per_million(mirror.percent))
        policies.append(policy)
    return policies


def _match(rule: RouteRule, *, grpc: bool) -> Any | None:
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
    # A gRPC client has no `:method` header to match, and every call it makes is a POST.
    if (method := rule.match.method) is not None and not grpc:
        match.headers.append(_rc.HeaderMatcher(name=":method", string_match=string_pb2.StringMatcher(exact=method)))
    match.headers.extend(_header_matcher(header) for header in rule.match.headers)
    match.query_parameters.extend(_query_matcher(query) for query in rule.match.query)
    return match


def _query_matcher(query: QueryMatch) -> Any:
    # Envoy rejects an empty regex; the model refuses one, and full-matched it takes only "".
    if query.kind is QueryMatchKind.REGEX and query.value:
        matcher = string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=query.value))
    else:
        matcher = string_pb2.StringMatcher(exact=query.value)
    return _rc.QueryParameterMatcher(name=query.name, string_match=matcher)


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
    if any(target.request_headers is not None for target in targets):
        _set_backend_headers(action, targets)
    elif len(weights) == 1:
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
    per_try = retry.per_try_timeout if retry.per_try_timeout is not None else rule.backend_timeout or None
    if per_try is not None and not grpc:  # gRPC has no per-try timeout
        policy.per_try_timeout.CopyFrom(core.duration(per_try))


def _forward_timeout(rule: RouteRule) -> float | None:
    """The route timeout of a forwarding rule: its `timeout`, or, without retries (one try to a
    backend), its `backend_timeout` when that is stricter (0 means none for either)."""
    backend = rule.backend_timeout
    if not backend or rule.retry is not None:
        return rule.timeout
    if not rule.timeout:
        return backend
    return min(rule.timeout, backend)


def _set_backend_headers(action: Any, targets: Sequence[_Target]) -> None:
    """One weighted cluster per target, each with its own request header changes (Envoy's
    per-cluster-entry headers): targets sharing a cluster stay apart, their changes may differ.
    One target is a weighted cluster of one, so its changes still apply."""
    for target, weight in zip(targets, _fit_uint32([target.weight for target in targets]), strict=True):
        entry = _rc.WeightedCluster.ClusterWeight(
            name=names.cluster_name(target.service.ref, target.port), weight=core.uint32(weight)
        )
        if (modifier := target.request_headers) is not None:
            entry.request_headers_to_add.extend(_header_options(modifier))
            entry.request_headers_to_remove.extend(name.lower() for name in modifier.remove)
        action.weighted_clusters.clusters.append(entry)


def _fit_uint32(weights: list[int]) -> list[int]:
    """`weights`, scaled down in proportion when their sum would overflow the uint32 both Envoy and
    gRPC add them up in; unchanged otherwise (the usual case)."""
    total = sum(weights)
    budget = core.UINT32_MAX - len(weights)
    if total <= budget:
        return weights
    return [max(1, weight * budget // total) if weight else 0 for weight in weights]
