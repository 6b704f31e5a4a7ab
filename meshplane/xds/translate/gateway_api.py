"""The `gateway` role: an Envoy serving one Kubernetes Gateway (the Gateway API).

Owns what such a proxy gets for the Gateway its node names (`ProxyGroup.gateway`,
`namespace/name`), all on the group's `listen_address` (default 0.0.0.0):
- One listener `gateway_<port>` per port of the Gateway's listeners, each on that port plus the
  group's `port_offset`. HTTP: one HTTP connection manager, WebSocket upgrades allowed (a backend
  port of appProtocol `kubernetes.io/ws` takes them; `kubernetes.io/h2c`: HTTP/2 upstream, as the
  Service port's protocol says for every role). HTTPS: one filter chain per Gateway
  listener, chosen by SNI (its hostname; none: the chain for every other name), terminating TLS
  with the listener's certificates over SDS. Every connection manager asks over RDS for the
  port's one route configuration. The Host header reaches backends as the client sent it, port
  included.
- The route configuration `gateway_<port>`: a virtual host per hostname (the intersection of
  listener and route hostnames, already resolved; `*` any), matched ignoring any port in the Host
  header (a client of an offset port still names the host), its rules in the Gateway API's
  precedence order. Listeners are isolated: a hostname serves only the rules of the most specific
  listeners matching it (`bar.example.com` gets those of a `*.example.com` listener, never those of
  a listener without a hostname), and a listener's own hostname gets a virtual host, empty if
  need be, whenever a less specific listener on the port would otherwise answer its requests.
  A rule's PathPrefix matches whole path segments (`path_separated_prefix`).
  HTTPS listeners sharing a port detect misdirected requests: each filter chain names its listener
  in the connection's filter state (`LISTENER_STATE`), and every hostname's virtual host (`*` too)
  answers 421 a request taken by another listener than the most specific one matching that hostname.
  A CORS rule answers every preflight itself, refused origins' too (sidecars forward those).
  A rule without a resolved backend answers its failure status (500; 503 for gRPC); the share of a
  rule's traffic whose backends did not resolve goes to a cluster that does not exist, answered so too.
- Every service's clusters and EDS, as a sidecar has them (the same names, the endpoint fast path
  applies), and the secrets the listeners and clusters name; a port the Gateway's `backend_tls`
  names (a BackendTLSPolicy) gets its cluster with that TLS instead. These are the same for every
  Gateway's proxy of a locality, and are built once for all of them (`_ClusterMemo`).
A node naming a Gateway the mesh lacks gets no listeners, with a warning. Must stay pure; names
come from `meshplane.xds.names`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.common.set_filter_state.v3 import value_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.set_filter_state.v3 import set_filter_state_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2
from envoy.type.matcher.v3 import filter_state_pb2, regex_pb2, string_pb2

from meshplane.model import (
    BackendTls,
    Gateway,
    GatewayListener,
    GatewayRule,
    ListenerProtocol,
    Mesh,
    PathMatchKind,
    ProxyGroup,
    ProxyRole,
    Service,
    TlsCertificate,
    TrustBundle,
)
from meshplane.xds import names
from meshplane.xds.references import sds_secret_names
from meshplane.xds.translate import core
from meshplane.xds.translate.clusters import build_clusters, with_backend_tls
from meshplane.xds.translate.endpoints import same_services
from meshplane.xds.translate.listeners import HTTP_CONNECTION_MANAGER, http_connection_manager
from meshplane.xds.translate.routes import CORS_FILTER, rule_http_filters, rule_match, rule_route
from meshplane.xds.translate.secrets import build_secrets, certificate_secret

ANY_ADDRESS = "0.0.0.0"
TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"
DOWNSTREAM_TLS = "envoy.transport_sockets.tls"
SET_FILTER_STATE = "envoy.filters.network.set_filter_state"
# The connection's filter state key naming the Gateway listener whose filter chain (chosen by SNI)
# took the connection: routes read it; neither clients nor backends see it.
LISTENER_STATE = "meshplane.gateway_listener"
STRING_STATE = "envoy.string"  # Envoy's factory of plain string filter state objects
MISDIRECTED = 421
WEBSOCKET_UPGRADE = "websocket"  # the HTTP/1.1 Upgrade token of RFC 6455

_rc = route_components_pb2


@dataclass(frozen=True, slots=True)
class _Shared:
    """What every gateway proxy of one sidecar group gets alike from the mesh: each service's
    clusters (sorted by name) and their warnings (in mesh order), the clusters among them that
    name SDS secrets, and the Secrets those name (sorted by name), with the services,
    certificates and trust bundles they were built from."""

    services: tuple[Service, ...]
    clusters: tuple[Any, ...]
    warnings: tuple[str, ...]
    tls_clusters: tuple[Any, ...]
    certificates: tuple[TlsCertificate, ...]
    trust_bundles: tuple[TrustBundle, ...]
    secrets: tuple[Any, ...]


# One service's entry in the memo: the Service, its clusters, their warnings, those naming secrets.
_ServiceClusters = tuple[Service, tuple[Any, ...], tuple[str, ...], tuple[Any, ...]]


class _ClusterMemo:
    """The clusters and their secrets that every Gateway's proxy gets, built once for all of them.

    Every Gateway's proxy gets the same sidecar clusters of every service, and a change of the
    Gateway API (a route moved) leaves the services alone: without this, each such change built
    every service's clusters again for every Gateway, and the secrets by a scan of all of them
    (at 5,000 services and 10 Gateways, most of the time from an HTTPRoute write to the Envoys).
    While the mesh's services are the very objects of the last build (`same_services`), the
    result is the very `_Shared` of that build, so every gateway group of the sidecar group is
    handed the same tuples of the same messages, and `Snapshot.of` takes their serialised set whole;
    when some services changed, each unchanged one keeps its clusters (by object identity). The
    secrets are built again only when the clusters or the certificates and trust bundles change,
    from the clusters that name some. The result is what `build_clusters` and `build_secrets`
    give (sorted): the memo is an optimisation inside this module, never a promise to callers.
    Bounded: the services of the last mesh seen, for at most `_MEMO_GROUPS` groups. The messages
    are shared, so callers must not change them (no translator does).
    """

    def __init__(self) -> None:
        # sidecar group → (id of the Service → its entry, the last result); by id, as
        # `Service.ref` builds a new value on every call; an entry holds its Service, so the id
        # stays its own while the entry lives.
        self._by_group: dict[ProxyGroup, tuple[dict[int, _ServiceClusters], _Shared]] = {}

    def build(self, mesh: Mesh, group: ProxyGroup) -> _Shared:
        known, last = self._by_group.pop(group, ({}, None))
        if last is not None and same_services(last.services, mesh.services):
            shared = last
        else:
            known = self._per_service(mesh, group, known)
            ordered = [known[id(service)] for service in mesh.services]
            shared = _Shared(
                services=mesh.services,
                clusters=tuple(sorted((c for entry in ordered for c in entry[1]), key=_name)),
                warnings=tuple(w for entry in ordered for w in entry[2]),
                tls_clusters=tuple(c for entry in ordered for c in entry[3]),
                certificates=(),
                trust_bundles=(),
                secrets=(),
            )
        if shared is not last or not (
            same_services(shared.certificates, mesh.certificates)
            and same_services(shared.trust_bundles, mesh.trust_bundles)
        ):
            secrets = tuple(sorted(build_secrets(mesh, shared.tls_clusters), key=_name))
            shared = dataclasses.replace(
                shared, certificates=mesh.certificates, trust_bundles=mesh.trust_bundles, secrets=secrets
            )
        self._by_group[group] = (known, shared)  # the most recent group last: evicted last
        while len(self._by_group) > _MEMO_GROUPS:
            del self._by_group[next(iter(self._by_group))]
        return shared

    @staticmethod
    def _per_service(mesh: Mesh, group: ProxyGroup, known: dict[int, _ServiceClusters]) -> dict[int, _ServiceClusters]:
        """Every service's entry: `known`'s while its Service is the same object, else built."""
        current: dict[int, _ServiceClusters] = {}
        for service in mesh.services:
            found = known.get(id(service))
            if found is None:
                built, built_warnings = build_clusters(Mesh(services=(service,)), group)
                naming = tuple(cluster for cluster in built if sds_secret_names((cluster,)))
                found = (service, tuple(built), tuple(built_warnings), naming)
            current[id(service)] = found
        return current


_MEMO_GROUPS = 4  # distinct sidecar groups (the gateway groups differ only in what is reset)
_CLUSTERS = _ClusterMemo()


def _name(message: Any) -> str:
    name: str = message.name
    return name


def build_gateway_api(mesh: Mesh, group: ProxyGroup) -> tuple[dict[str, tuple[Any, ...]], list[str]]:
    """Clusters, listeners, routes and secrets of a gateway proxy (by kind: cds, lds, rds, sds),
    each sorted by name. While the services are the same objects, the clusters, and the secrets
    when the Gateway adds none of its own (no certificates, no backend TLS), are the very tuples
    handed to every Gateway's proxy of the same locality (`_ClusterMemo`)."""
    warnings: list[str] = []
    sidecar = dataclasses.replace(group, role=ProxyRole.SIDECAR, listen_address="", gateway="", port_offset=0)
    shared = _CLUSTERS.build(mesh, sidecar)
    warnings += shared.warnings
    clusters, secrets = shared.clusters, shared.secrets
    gateway = mesh.gateway(group.gateway) if group.gateway else None
    if gateway is None:
        named = repr(group.gateway) if group.gateway else "no Gateway"
        warnings.append(f"gateway proxy for {named}: no such Gateway is served; no listeners")
        listeners: list[Any] = []
        routes: list[Any] = []
        certificates: set[str] = set()
    else:
        listeners, routes, certificates = _gateway(mesh, gateway, group, warnings)
        replaced = _backend_tls_clusters(mesh, gateway, warnings)
        if replaced:
            # The TLS copies keep their names, so the order holds; the secrets follow the clusters.
            clusters = tuple(with_backend_tls(c, *replaced[c.name]) if c.name in replaced else c for c in clusters)
            naming = [c for c in shared.tls_clusters if c.name not in replaced]
            naming += [c for c in clusters if c.name in replaced]
            secrets = tuple(build_secrets(mesh, naming))
    held = {certificate.name: certificate for certificate in mesh.certificates}
    own = []
    for name in sorted(certificates):
        if name in held:
            own.append(certificate_secret(held[name]))
        else:  # a validated mesh never names a certificate it lacks; the listener then warms forever
            warnings.append(f"gateway {group.gateway}: certificate {name!r} is not in the mesh")
    if own or secrets is not shared.secrets:
        secrets = tuple(sorted([*secrets, *own], key=_name))
    built = {
        "cds": clusters,
        "lds": tuple(sorted(listeners, key=_name)),
        "rds": tuple(sorted(routes, key=_name)),
        "sds": secrets,
    }
    return built, warnings


def _backend_tls_clusters(mesh: Mesh, gateway: Gateway, warnings: list[str]) -> dict[str, tuple[BackendTls, Any]]:
    """The clusters `gateway.backend_tls` gives TLS, by name, each with its `BackendTls` and port
    (for `with_backend_tls`, which copies the shared message, never changes it)."""
    replaced: dict[str, tuple[BackendTls, Any]] = {}
    services = mesh.services_by_ref() if gateway.backend_tls else {}
    for tls in gateway.backend_tls:
        service = services.get(tls.service)
        port = next((p for p in service.ports if p.name == tls.port), None) if service is not None else None
        if service is None or port is None:
            warnings.append(f"gateway {gateway.key}: backend TLS for {tls.service}:{tls.port}, which the mesh lacks")
            continue
        replaced[names.cluster_name(service.ref, port)] = (tls, port)
    return replaced


def _gateway(
    mesh: Mesh, gateway: Gateway, group: ProxyGroup, warnings: list[str]
) -> tuple[list[Any], list[Any], set[str]]:
    by_port: dict[int, list[GatewayListener]] = {}
    for listener in gateway.listeners:
        by_port.setdefault(listener.port, []).append(listener)
    address = group.listen_address or ANY_ADDRESS
    listeners, routes = [], []
    certificates: set[str] = set()
    for port, on_port in sorted(by_port.items()):
        bound = port + group.port_offset
        if bound > 65535:
            warnings.append(f"gateway {gateway.key} port {port}: plus offset {group.port_offset} is no port; left out")
            continue
        protocols = {listener.protocol for listener in on_port}
        if len(protocols) > 1:  # resolution refuses such listeners; a model built by hand may not
            warnings.append(f"gateway {gateway.key} port {port}: listeners of several protocols; left out")
            continue
        route_name = names.gateway_route_name(bound)
        https = ListenerProtocol.HTTPS in protocols
        # HTTPS listeners sharing a port: a request whose Host belongs to another listener than the
        # one its SNI chose (a reused connection, HTTP/2 coalescing) is answered 421 Misdirected.
        misdirect = https and len(on_port) > 1
        config, rules = _route_configuration(mesh, route_name, on_port, port, https, warnings, misdirect=misdirect)
        routes.append(config)
        filters = rule_http_filters([rule.rule for rule in rules], grpc=False)
        hcm = http_connection_manager(
            route_name, stat_prefix=names.gateway_listener_name(bound), group=group, filters=filters
        )
        # WebSocket upgrades pass through to whichever backend a rule picks (a Service port of
        # appProtocol `kubernetes.io/ws` expects them; any other backend declines with its own
        # answer): Envoy otherwise strips the Upgrade header and the handshake never reaches it.
        hcm.upgrade_configs.add(upgrade_type=WEBSOCKET_UPGRADE)
        network_filter = listener_components_pb2.Filter(name=HTTP_CONNECTION_MANAGER, typed_config=core.pack(hcm))
        listener = listener_pb2.Listener(
            name=names.gateway_listener_name(bound),
            address=address_pb2.Address(socket_address=address_pb2.SocketAddress(address=address, port_value=bound)),
            traffic_direction=base_pb2.INBOUND,
        )
        if https:
            listener.listener_filters.append(
                listener_components_pb2.ListenerFilter(
                    name=TLS_INSPECTOR, typed_config=core.pack(tls_inspector_pb2.TlsInspector())
                )
            )
            # SNI names first by their own order; the listener without a hostname takes the rest.
            for gateway_listener in sorted(on_port, key=lambda item: (item.hostname is None, item.hostname or "")):
                chain = listener_components_pb2.FilterChain(
                    name=names.gateway_filter_chain_name(gateway_listener.name),
                    filters=[_listener_state(gateway_listener.name), network_filter] if misdirect else [network_filter],
                )
                if gateway_listener.hostname is not None:
                    chain.filter_chain_match.server_names.append(gateway_listener.hostname)
                chain.transport_socket.name = DOWNSTREAM_TLS
                chain.transport_socket.typed_config.CopyFrom(core.pack(_downstream_tls(gateway_listener, group)))
                certificates.update(gateway_listener.certificates)
                listener.filter_chains.append(chain)
        else:
            listener.filter_chains.append(listener_components_pb2.FilterChain(filters=[network_filter]))
        listeners.append(listener)
    return listeners, routes, certificates


def _route_configuration(
    mesh: Mesh,
    name: str,
    listeners: list[GatewayListener],
    listener_port: int,
    https: bool,
    warnings: list[str],
    *,
    misdirect: bool = False,
) -> tuple[Any, list[GatewayRule]]:
    """The route configuration of one Gateway listener port (`listener_port`, before any offset),
    and every rule in it (for the HTTP filters they need). With `misdirect`, every hostname has a
    virtual host (`*` too) whose first route answers 421 when `LISTENER_STATE` names another
    listener than the one owning that hostname (the most specific one matching it; for none, any)."""
    rules_of: dict[str, list[GatewayRule]] = {}
    # Listeners with a hostname first: a hostname two listeners share gets the precise one's rules first.
    for listener in sorted(listeners, key=lambda item: (item.hostname is None, item.name)):
        for host in listener.hosts:
            rules = rules_of.setdefault(host.hostname, [])
            if _most_specific(listener.hostname, host.hostname, listeners):
                rules.extend(host.rules)
    for listener in listeners:
        hostname = listener.hostname
        if hostname is not None and any(_less_specific_cover(other.hostname, hostname) for other in listeners):
            rules_of.setdefault(hostname, [])
        if misdirect:
            rules_of.setdefault(hostname if hostname is not None else "*", [])
    if misdirect:
        rules_of.setdefault("*", [])
    # Envoy matches domains on the whole Host header by default; clients name the listener's port.
    config = route_pb2.RouteConfiguration(name=name, ignore_port_in_host_matching=True)
    every_rule: list[GatewayRule] = []
    for hostname, rules in sorted(rules_of.items()):
        routes = [_misdirected_route(_owner(hostname, listeners), listeners)] if misdirect else []
        for index, rule in enumerate(rules):
            route = _route(mesh, rule, f"{name} host {hostname} rule {index + 1}", warnings)
            if route is not None and route.HasField("redirect"):
                _redirect_port(route.redirect, rule, listener_port, https)
            if route is not None:
                routes.append(route)
                every_rule.append(rule)
        config.virtual_hosts.append(
            _rc.VirtualHost(name=names.gateway_virtual_host_name(hostname), domains=[hostname], routes=routes)
        )
    return config, every_rule


def _owner(hostname: str, listeners: list[GatewayListener]) -> GatewayListener | None:
    """The listener whose requests for `hostname` are: the most specific one matching it."""
    covering = [listener for listener in listeners if _covers(listener.hostname, hostname)]
    return max(covering, key=lambda listener: _specificity(listener.hostname), default=None)


def _misdirected_route(owner: GatewayListener | None, listeners: list[GatewayListener]) -> Any:
    """Answers 421 a request whose connection a filter chain of another listener than `owner` took."""
    others = sorted(re.escape(listener.name) for listener in listeners if listener is not owner)
    name_matcher = string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=f"^(?:{'|'.join(others)})$"))
    match = _rc.RouteMatch(prefix="/")
    match.filter_state.append(filter_state_pb2.FilterStateMatcher(key=LISTENER_STATE, string_match=name_matcher))
    return _rc.Route(match=match, direct_response=_rc.DirectResponseAction(status=MISDIRECTED))


def _listener_state(listener_name: str) -> Any:
    """A network filter naming, in the connection's filter state, the listener whose chain took it."""
    value = value_pb2.FilterStateValue(object_key=LISTENER_STATE, factory_key=STRING_STATE)
    value.format_string.text_format_source.inline_string = listener_name.replace("%", "%%")
    config = set_filter_state_pb2.Config(on_new_connection=[value])
    return listener_components_pb2.Filter(name=SET_FILTER_STATE, typed_config=core.pack(config))


def _specificity(pattern: str | None) -> tuple[int, int]:
    """How precisely a listener hostname names hosts: none < wildcards (longer: more precise) < exact."""
    if pattern is None:
        return (0, 0)
    if pattern.startswith("*"):
        return (1, len(pattern))
    return (2, 0)


def _covers(pattern: str | None, hostname: str) -> bool:
    """Whether every host `hostname` matches (itself a wildcard or not) is matched by the listener
    hostname `pattern` (None: any host)."""
    if pattern is None or pattern == hostname:
        return True
    return pattern.startswith("*.") and hostname != "*" and hostname.endswith(pattern[1:])


def _most_specific(pattern: str | None, hostname: str, listeners: list[GatewayListener]) -> bool:
    """Whether the listener hostname `pattern` is the most specific of `listeners` matching the
    hosts of `hostname`: requests for them belong to that listener alone (listener isolation)."""
    return not any(
        _covers(other.hostname, hostname) and _specificity(other.hostname) > _specificity(pattern)
        for other in listeners
    )


def _less_specific_cover(pattern: str | None, hostname: str) -> bool:
    """Whether a listener hostname `pattern` matches every host of the listener hostname
    `hostname`, less precisely (its virtual host would otherwise take their requests)."""
    return pattern != hostname and _covers(pattern, hostname)


def _route(mesh: Mesh, rule: GatewayRule, where: str, warnings: list[str]) -> Any | None:
    model = rule.rule
    if rule.fails_all:
        match = rule_match(model)
        if match is None:
            warnings.append(f"{where}: an empty path regex matches no path; rule left out")
            return None
        route = _rc.Route(match=match, direct_response=_rc.DirectResponseAction(status=rule.failure_status))
    else:
        route = rule_route(mesh, model, grpc=False, where=where, warnings=warnings)
        if route is None:
            return None
        if rule.unresolved_weight > 0 and route.HasField("route"):
            resolved = sum(backend.weight for backend in model.backends)
            _add_unresolved_share(route.route, resolved, rule.unresolved_weight, rule.failure_status)
        _answer_every_preflight(route)
    path = model.match.path
    if path.kind is PathMatchKind.PREFIX and path.value != "/":
        # The Gateway API's PathPrefix matches whole segments: /foo takes /foo and /foo/bar, not /foobar.
        route.match.path_separated_prefix = path.value.rstrip("/")
        _rewrite_whole_segments(route, path.value.rstrip("/"))
    elif path.kind is PathMatchKind.PREFIX:
        _replace_root_prefix(route)
    return route


def _answer_every_preflight(route: Any) -> None:
    """A CORS rule's proxy answers every preflight itself, those of origins it does not allow too
    (without CORS headers): the Gateway API's CORS filter owns preflights, and a backend answering
    one would grant what the filter refused. Sidecars keep Envoy's default (forwarding those)."""
    if CORS_FILTER not in route.typed_per_filter_config:
        return
    policy = cors_pb2.CorsPolicy()
    route.typed_per_filter_config[CORS_FILTER].Unpack(policy)
    policy.forward_not_matching_preflights.value = False
    route.typed_per_filter_config[CORS_FILTER].CopyFrom(core.pack(policy))


def _redirect_port(action: Any, rule: GatewayRule, port: int, https: bool) -> None:
    """The spec's redirect port when the filter names none: with no scheme given, the Gateway
    listener's port (the one clients believe they reach: never the proxy's offset port), left out
    of `Location` when it is the scheme's own (80 for HTTP, 443 for HTTPS); with a scheme given,
    that scheme's port, which Envoy leaves out."""
    redirect = rule.rule.redirect
    if redirect is None or redirect.port is not None or redirect.scheme is not None:
        return
    if port != (443 if https else 80):
        action.port_redirect = port


def _add_unresolved_share(action: Any, resolved_weight: int, weight: int, status: int) -> None:
    """Sends `weight` of the rule's traffic (against `resolved_weight` for its backends) to a
    cluster that does not exist, answered `status` (500 or 503)."""
    # The entries are copied whole: a backend's own request header changes ride on its entry.
    entries = []
    for entry in action.weighted_clusters.clusters:
        kept = _rc.WeightedCluster.ClusterWeight()
        kept.CopyFrom(entry)
        entries.append(kept)
    if action.cluster:
        entries = [_rc.WeightedCluster.ClusterWeight(name=action.cluster, weight=core.uint32(resolved_weight))]
    entries.append(_rc.WeightedCluster.ClusterWeight(name=names.GATEWAY_UNRESOLVED_CLUSTER, weight=core.uint32(weight)))
    action.ClearField("cluster")
    action.ClearField("weighted_clusters")
    action.weighted_clusters.clusters.extend(entries)
    action.cluster_not_found_response_code = (
        _rc.RouteAction.SERVICE_UNAVAILABLE if status == 503 else _rc.RouteAction.INTERNAL_SERVER_ERROR
    )


def _rewrite_whole_segments(route: Any, prefix: str) -> None:
    """ReplacePrefixMatch of a segment prefix with `/` (forwarded or redirected): Envoy swaps the
    matched characters, which would leave `//rest`, so it becomes a regex taking the prefix and
    its slashes."""
    action = route.route if route.HasField("route") else route.redirect if route.HasField("redirect") else None
    if action is None or action.prefix_rewrite != "/":
        return
    action.ClearField("prefix_rewrite")
    action.regex_rewrite.pattern.regex = f"^{re.escape(prefix)}/*"
    action.regex_rewrite.substitution = "/"


def _replace_root_prefix(route: Any) -> None:
    """ReplacePrefixMatch of the prefix `/`: the spec keeps a segment boundary (`/x` → `/new/x`)."""
    action = route.route if route.HasField("route") else route.redirect if route.HasField("redirect") else None
    if action is None or not action.prefix_rewrite or action.prefix_rewrite.endswith("/"):
        return
    replacement = action.prefix_rewrite
    action.ClearField("prefix_rewrite")
    action.regex_rewrite.pattern.regex = "^/"
    action.regex_rewrite.substitution = replacement.replace("\\", "\\\\") + "/"


def _downstream_tls(listener: GatewayListener, group: ProxyGroup) -> Any:
    source = core.config_source(group)
    common = tls_pb2.CommonTlsContext(
        tls_certificate_sds_secret_configs=[
            secret_pb2.SdsSecretConfig(name=name, sds_config=source) for name in listener.certificates
        ],
        alpn_protocols=["h2", "http/1.1"],
    )
    return tls_pb2.DownstreamTlsContext(common_tls_context=common)
