"""Device policy enforced at an edge gateway's device listener: authorisation, per-device rate
limits, verified canary headers and JWTs for mobile apps.

Owns the HTTP filters device policy adds to `edge_from_devices_*` (after the identity check of
`edge_gateway.device_http_filters`) and their per-filter configs in that listener's
RouteConfiguration. What the policy means is decided in `model/device_policy.py`; this module only
turns it into Envoy config. Must stay pure (no I/O, clock or randomness; the same input gives the
same messages) and must not know where policies come from.

Where things go, so that a registration or an expiry never changes the listener (LDS, whose
change drains every connection) but only the RouteConfiguration (RDS, applied to new requests):
- LDS: which filters a site's device listener has, each configured to do nothing by itself. They
  depend on the site's policies alone (governed or not, JWT providers), never on devices.
- RDS: everything naming devices: the RBAC allow-lists and the rate-limit descriptors. An
  allow-list is set per virtual host (or per route, where a host's routes reach different
  services) whose routes reach only services some policy restricts; every other route takes the
  RouteConfiguration's. Which JWT a route needs is there too (`jwt_authn` per-route configs).

The caller's identity: with device TLS, the certificate's URI SAN (the SPIFFE id the registry's CA
issued; `authenticated.principal_name`); without, the device's registered addresses compared with
the connection's own peer address (`direct_remote_ip`, never `x-forwarded-for`). The second is
weaker: any host on the site network that takes a device's address is that device.

Filters, in order:
1. `CALLER_FILTER` (header mutation) writes `CALLER_HEADER`: the certificate's URI SAN or the peer
   address, replacing whatever the device sent; the rate limit keys on it. It is removed from the
   request before it leaves the gateway.
2. `AUTHORIZATION_FILTER` (RBAC): who may reach which service, path and method; at a governed site
   a request whose `x-device-class` is not the caller's registered class is refused (403).
3. `RATE_LIMIT_FILTER` (local rate limit): a token bucket per device, by descriptor
   (`device`, caller key); a caller matching no descriptor is not limited by it (429 otherwise).
4. `JWT_FILTER` (jwt_authn), only where a policy requires tokens: providers and requirements in
   LDS, which route needs which in RDS (per virtual host or route, by the services it reaches).
   Bad, expired, wrong-issuer or missing tokens are answered 401 by Envoy.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

from envoy.config.common.mutation_rules.v3 import mutation_rules_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, http_uri_pb2
from envoy.config.rbac.v3 import rbac_pb2 as rbac_config_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as _hcm
from envoy.type.matcher.v3 import path_pb2, string_pb2
from envoy.type.v3 import percent_pb2, token_bucket_pb2

from meshplane.model import Device, Mesh, RateLimit
from meshplane.model.device_policy import (
    CLASS_HEADER,
    ClassAccess,
    DevicePolicy,
    DeviceRateLimit,
    JwksUri,
    PathKind,
    ServiceAccess,
    SiteDevicePolicy,
    site_device_policy,
)
from meshplane.model.services import ServiceRef
from meshplane.model.sites import device_spiffe_id
from meshplane.xds import names
from meshplane.xds.translate import core
from meshplane.xds.translate.routes import rate_limit_bucket

CALLER_FILTER = "meshplane.edge.device_caller"
AUTHORIZATION_FILTER = "meshplane.edge.device_authorization"
RATE_LIMIT_FILTER = "meshplane.edge.device_rate_limit"
JWT_FILTER = "meshplane.edge.jwt"
# Who called, as the gateway saw it (certificate URI SAN, or peer address): the rate limit's key.
CALLER_HEADER = "x-meshplane-device-caller"
_DEVICE_KEY = "device"
# Callers whose principal and bucket stay built; above a large site's device count.
_DEVICE_MEMO = 1 << 17
_RATE_LIMIT_STATS = "device_rate_limit"
_JWKS_TIMEOUT = 5.0
_JWKS_CACHE = 300.0
# Envoy requires a per-route local rate limit to have a bucket of its own, which requests matching
# no descriptor take from: so large that it never runs out (a billion a second).
_UNLIMITED = token_bucket_pb2.TokenBucket(
    max_tokens=1_000_000_000, tokens_per_fill=core.uint32(1_000_000_000), fill_interval=core.duration(1.0)
)
_SAN = "%DOWNSTREAM_PEER_URI_SAN%"
_PEER_ADDRESS = "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%"


@dataclasses.dataclass(frozen=True, slots=True)
class Enforcement:
    """What device policy adds to a gateway: `filters` for the device listener (after the identity
    check), and `warnings` about what could not be enforced as written."""

    filters: tuple[Any, ...] = ()
    warnings: tuple[str, ...] = ()


def enforce_device_policy(
    mesh: Mesh, site: str, devices: Sequence[Device], outbound: Any, *, trust_domain: str | None
) -> Enforcement:
    """The device listener's policy filters at `site`, and its per-filter configs set on
    `outbound` (the device listener's RouteConfiguration, changed in place). `trust_domain` is the
    device trust's when the listener verifies device certificates (identity by URI SAN), None when
    it does not (identity by peer address). A site no policy selects gets nothing.

    Enforcement follows where each route sends traffic, never the Host it was addressed by: every
    route of every virtual host (a service's, a route table's own `hosts`, any other) is checked
    for the services its clusters and mirrors belong to (`_guard_of`), so a route table cannot
    carry a device, or a tokenless app, to a service the policy keeps from it."""
    policy = site_device_policy(mesh.device_policies, site, {device.device_class for device in devices})
    if policy is None:
        return Enforcement()
    warnings = [warning for entry in policy.jwt_policies for warning in entry.unenforced()]
    keys = {device.id: _caller_keys(device, site, trust_domain) for device in devices}
    filters = [_caller_filter(trust_domain is not None), _idle_rbac(), _idle_rate_limit()]
    callers = _Callers.of(devices, keys, trust_domain is not None)
    restricted = frozenset(
        entry.service for _, access in policy.classes if access.services is not None for entry in access.services
    )
    tokens = _Tokens.of(mesh, policy.jwt_policies, warnings)
    clusters = _services_of_clusters(mesh)
    guards = [
        (vhost, [_guard_of(route, clusters, restricted, tokens.needing) for route in vhost.routes])
        for vhost in outbound.virtual_hosts
    ]
    configs = _GuardConfigs(policy, callers, tokens.accepting, {guard.tokens for _, found in guards for guard in found})
    outbound.typed_per_filter_config[AUTHORIZATION_FILTER].CopyFrom(configs.rbac(_OPEN))
    for vhost, found in guards:
        if len(set(found)) == 1:  # one guard for the whole host: said once, on the host
            configs.apply(vhost, found[0])
        else:
            for route, guard in zip(vhost.routes, found, strict=True):
                configs.apply(route, guard)
    limits = _rate_limit(policy, devices, keys)
    if limits is not None:
        outbound.typed_per_filter_config[RATE_LIMIT_FILTER].CopyFrom(core.pack(limits))
    outbound.request_headers_to_remove.append(CALLER_HEADER)
    if (jwt_filter := configs.jwt_filter(tokens.providers)) is not None:
        filters.append(jwt_filter)
    return Enforcement(tuple(filters), tuple(warnings))


# --- where a route goes, and what it must check ---


@dataclasses.dataclass(frozen=True, slots=True)
class _Guard:
    """What one route must check, from the services its traffic reaches.

    `services`: the restricted services it reaches, or None when it also reaches a service no
    policy restricts, or none at all (a redirect): then the RouteConfiguration's allow-list holds,
    which lets through exactly the classes that may reach unrestricted services. `rewrites`: the
    route changes the path, so an allow entry limited to paths cannot vouch for the path the service
    receives and grants nothing there. `tokens`: per reached service that needs a JWT, the names of
    the policies requiring it (each set's providers accepted; every set must be satisfied).
    `closed`: nobody may use the route (where it goes is not known, or no provider can check a
    token it needs)."""

    services: frozenset[ServiceRef] | None
    rewrites: bool = False
    tokens: frozenset[frozenset[str]] = frozenset()
    closed: bool = False


_OPEN = _Guard(None)


def _services_of_clusters(mesh: Mesh) -> dict[str, ServiceRef]:
    """The service each cloud cluster of the gateway belongs to, by cluster name."""
    return {names.cluster_name(service.ref, port): service.ref for service in mesh.services for port in service.ports}


def _guard_of(
    route: Any,
    clusters: dict[str, ServiceRef],
    restricted: frozenset[ServiceRef],
    needing: dict[ServiceRef, frozenset[str]],
) -> _Guard:
    """The check `route` needs: its cluster, each of its weighted clusters and its mirrors are where
    its requests (or copies of them) go, whatever Host they were addressed by."""
    if not route.HasField("route"):
        return _OPEN  # a redirect or a direct answer reaches no service
    action = route.route
    specifier = action.WhichOneof("cluster_specifier")
    if specifier == "cluster":
        targets = [action.cluster]
    elif specifier == "weighted_clusters":
        targets = [cluster.name for cluster in action.weighted_clusters.clusters]
    else:
        return _Guard(None, closed=True)  # a cluster chosen at request time: not checkable, so closed
    targets += [mirror.cluster for mirror in action.request_mirror_policies]
    if any(not target for target in targets):
        return _Guard(None, closed=True)
    reached = {clusters.get(target) for target in targets}
    tokens = frozenset(needing[service] for service in reached if service is not None and service in needing)
    closed = any(not required for required in tokens)  # a service whose tokens nobody can check
    if None in reached or not reached <= restricted:
        return _Guard(None, tokens=tokens, closed=closed)
    rewrites = bool(action.prefix_rewrite) or action.HasField("regex_rewrite")
    services = frozenset(service for service in reached if service is not None)
    return _Guard(services, rewrites, tokens, closed)


class _GuardConfigs:
    """The per-filter configs of each distinct guard, packed once and copied where they apply."""

    def __init__(
        self,
        policy: SiteDevicePolicy,
        callers: _Callers,
        accepting: dict[frozenset[str], tuple[str, ...]],
        used: set[frozenset[frozenset[str]]],
    ) -> None:
        self._policy = policy
        self._callers = callers
        self._accepting = accepting
        self._packed: dict[_Guard, Any] = {}
        # A requirement per set of requiring policies (from the policies alone, so the listener does
        # not change with routes), and per combination some route needs (rare: weighted backends
        # whose services different policies require tokens for).
        combinations = {frozenset({required}) for required in accepting} | used
        self.requirements = {
            _requirement_name(combination): combination
            for combination in combinations
            if combination and all(accepting.get(required) for required in combination)
        }

    def rbac(self, guard: _Guard) -> Any:
        key = dataclasses.replace(guard, tokens=frozenset())
        if key not in self._packed:
            if guard.closed:
                config = rbac_pb2.RBACPerRoute(rbac=rbac_pb2.RBAC(rules=rbac_config_pb2.RBAC()))  # allows nobody
            else:
                config = _rbac_for(self._policy, self._callers, guard.services, rewrites=guard.rewrites)
            self._packed[key] = core.pack(config)
        return self._packed[key]

    def apply(self, target: Any, guard: _Guard) -> None:
        """Sets `guard`'s configs on a virtual host or a route (`target`); the open guard needs none
        (the RouteConfiguration's allow-list holds)."""
        if guard.closed or guard.services is not None:
            target.typed_per_filter_config[AUTHORIZATION_FILTER].CopyFrom(self.rbac(guard))
        if guard.tokens and not guard.closed:
            per_route = jwt_pb2.PerRouteConfig(requirement_name=_requirement_name(guard.tokens))
            target.typed_per_filter_config[JWT_FILTER].CopyFrom(core.pack(per_route))

    def jwt_filter(self, providers: dict[str, Any]) -> Any | None:
        """The jwt_authn filter with every requirement the routes name, or None when none has a provider."""
        if not self.requirements:
            return None
        requirement_map = {}
        for name, combination in sorted(self.requirements.items()):
            each = [_any_provider(self._accepting[required]) for required in sorted(combination, key=sorted)]
            requirement_map[name] = (
                each[0]
                if len(each) == 1
                else jwt_pb2.JwtRequirement(requires_all=jwt_pb2.JwtRequirementAndList(requirements=each))
            )
        config = jwt_pb2.JwtAuthentication(providers=providers, requirement_map=requirement_map)
        return _hcm.HttpFilter(name=JWT_FILTER, typed_config=core.pack(config))


def _requirement_name(combination: frozenset[frozenset[str]]) -> str:
    """`mobile` for one policy's tokens, `a+b` for a token of either policy, `a&b` for both."""
    return "&".join(sorted("+".join(sorted(required)) for required in combination))


def _any_provider(accepted: tuple[str, ...]) -> Any:
    if len(accepted) == 1:
        return jwt_pb2.JwtRequirement(provider_name=accepted[0])
    return jwt_pb2.JwtRequirement(
        requires_any=jwt_pb2.JwtRequirementOrList(
            requirements=[jwt_pb2.JwtRequirement(provider_name=provider) for provider in accepted]
        )
    )


def _caller_keys(device: Device, site: str, trust_domain: str | None) -> tuple[str, ...]:
    """The values `CALLER_HEADER` takes for this device's requests: its SPIFFE id, or its addresses."""
    if trust_domain is not None:
        return (device_spiffe_id(trust_domain, site, device.id),)
    return tuple(sorted({endpoint.address for endpoint in device.endpoints}))


def _caller_filter(mtls: bool) -> Any:
    """Writes `CALLER_HEADER` from the connection (the device's own value overwritten)."""
    value = _SAN if mtls else _PEER_ADDRESS
    mutation = header_mutation_pb2.HeaderMutation(
        mutations=header_mutation_pb2.Mutations(
            request_mutations=[
                mutation_rules_pb2.HeaderMutation(
                    append=base_pb2.HeaderValueOption(
                        header=base_pb2.HeaderValue(key=CALLER_HEADER, value=value),
                        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
                    )
                )
            ]
        )
    )
    return _hcm.HttpFilter(name=CALLER_FILTER, typed_config=core.pack(mutation))


def _idle_rbac() -> Any:
    # No rules: enforces nothing by itself; the route configuration's per-filter configs decide.
    return _hcm.HttpFilter(name=AUTHORIZATION_FILTER, typed_config=core.pack(rbac_pb2.RBAC()))


def _idle_rate_limit() -> Any:
    idle = local_rate_limit_pb2.LocalRateLimit(stat_prefix=_RATE_LIMIT_STATS)  # no bucket: limits nothing
    return _hcm.HttpFilter(name=RATE_LIMIT_FILTER, typed_config=core.pack(idle))


# --- authorisation ---


@dataclasses.dataclass(frozen=True, slots=True)
class _Callers:
    """The principals of one gateway's callers, built once per translation and copied into each
    allow-list: per class, its live devices whose `x-device-class` is absent or that class; and
    a caller that is no live device and claims no class."""

    by_class: dict[str, Any]
    unidentified: Any

    @staticmethod
    def of(devices: Sequence[Device], keys: dict[str, tuple[str, ...]], mtls: bool) -> _Callers:
        by_class: dict[str, list[Any]] = {}
        for device in devices:
            by_class.setdefault(device.device_class, []).append(_identity(keys[device.id], mtls))
        principals = {
            device_class: rbac_config_pb2.Principal(
                and_ids=rbac_config_pb2.Principal.Set(ids=[_any_of(identities), _class_header_is(device_class)])
            )
            for device_class, identities in sorted(by_class.items())
        }
        unknown = [_no_class_header()]
        if devices:
            known = _any_of([_identity(keys[device.id], mtls) for device in devices])
            unknown.insert(0, rbac_config_pb2.Principal(not_id=known))
        return _Callers(principals, rbac_config_pb2.Principal(and_ids=rbac_config_pb2.Principal.Set(ids=unknown)))


def _rbac_for(
    policy: SiteDevicePolicy, callers: _Callers, services: frozenset[ServiceRef] | None, *, rewrites: bool = False
) -> Any:
    """The allow-list of routes reaching exactly the restricted `services` (each class must be
    allowed every one of them; `rewrites`: see `_Guard`), or, None, of every other route: only
    classes no policy restricts get through, and unidentified callers where allowed."""
    policies: dict[str, Any] = {}
    for device_class, principal in callers.by_class.items():
        permission = _permission(policy.access(device_class), services, rewrites)
        if permission is not None:
            policies[f"class/{device_class}"] = rbac_config_pb2.Policy(permissions=[permission], principals=[principal])
    if policy.unidentified_allowed:  # they get the default access, which is then every service
        policies["unidentified"] = rbac_config_pb2.Policy(
            permissions=[rbac_config_pb2.Permission(any=True)], principals=[callers.unidentified]
        )
    rules = rbac_config_pb2.RBAC(action=rbac_config_pb2.RBAC.ALLOW, policies=policies)
    return rbac_pb2.RBACPerRoute(rbac=rbac_pb2.RBAC(rules=rules))


def _permission(access: ClassAccess, services: frozenset[ServiceRef] | None, rewrites: bool) -> Any | None:
    """What a class may do on a route reaching all of `services` (None: reaching services no policy
    restricts), or None: nothing. An entry limited to paths grants nothing on a route that
    `rewrites` the path (the path checked would not be the path the service gets)."""
    if access.services is None:
        return rbac_config_pb2.Permission(any=True)
    if services is None:
        return None
    each = []
    for service in sorted(services, key=str):
        entries = [entry for entry in access.services if entry.service == service and not (rewrites and entry.paths)]
        if not entries:
            return None
        if any(not entry.paths and not entry.methods for entry in entries):
            continue  # anything on this service
        each.append(
            rbac_config_pb2.Permission(
                or_rules=rbac_config_pb2.Permission.Set(rules=[_entry_permission(entry) for entry in entries])
            )
        )
    if not each:
        return rbac_config_pb2.Permission(any=True)
    if len(each) == 1:
        return each[0]
    return rbac_config_pb2.Permission(and_rules=rbac_config_pb2.Permission.Set(rules=each))


def _entry_permission(entry: ServiceAccess) -> Any:
    parts = []
    if entry.paths:
        paths = [matcher for path in entry.paths for matcher in _path_matchers(path.kind, path.value)]
        parts.append(rbac_config_pb2.Permission(or_rules=rbac_config_pb2.Permission.Set(rules=paths)))
    if entry.methods:
        methods = [
            rbac_config_pb2.Permission(
                header=route_components_pb2.HeaderMatcher(
                    name=":method", string_match=string_pb2.StringMatcher(exact=method)
                )
            )
            for method in entry.methods
        ]
        parts.append(rbac_config_pb2.Permission(or_rules=rbac_config_pb2.Permission.Set(rules=methods)))
    return rbac_config_pb2.Permission(and_rules=rbac_config_pb2.Permission.Set(rules=parts))


def _path_matchers(kind: PathKind, value: str) -> list[Any]:
    """A path (query string excluded) exactly, or a prefix matched whole segments at a time."""

    def url_path(matcher: Any) -> Any:
        return rbac_config_pb2.Permission(url_path=path_pb2.PathMatcher(path=matcher))

    if kind is PathKind.EXACT:
        return [url_path(string_pb2.StringMatcher(exact=value))]
    base = value.rstrip("/")
    if not base:
        return [url_path(string_pb2.StringMatcher(prefix="/"))]
    return [url_path(string_pb2.StringMatcher(exact=base)), url_path(string_pb2.StringMatcher(prefix=base + "/"))]


@functools.lru_cache(maxsize=_DEVICE_MEMO)
def _identity(keys: tuple[str, ...], mtls: bool) -> Any:
    """A request of the device of caller `keys`: its certificate's URI SAN (`mtls`), or a connection
    from one of its addresses. Memoised (a registration rebuilds one device's, not the site's):
    the message is shared, and nothing may change it."""
    if mtls:
        [uri] = keys
        return rbac_config_pb2.Principal(
            authenticated=rbac_config_pb2.Principal.Authenticated(principal_name=string_pb2.StringMatcher(exact=uri))
        )
    return _any_of(
        [
            rbac_config_pb2.Principal(
                direct_remote_ip=address_pb2.CidrRange(
                    address_prefix=address, prefix_len=core.uint32(128 if ":" in address else 32)
                )
            )
            for address in keys
        ]
    )


def _any_of(principals: list[Any]) -> Any:
    if len(principals) == 1:
        return principals[0]
    return rbac_config_pb2.Principal(or_ids=rbac_config_pb2.Principal.Set(ids=principals))


def _no_class_header() -> Any:
    return rbac_config_pb2.Principal(
        not_id=rbac_config_pb2.Principal(
            header=route_components_pb2.HeaderMatcher(name=CLASS_HEADER, present_match=True)
        )
    )


def _class_header_is(device_class: str) -> Any:
    """No `x-device-class`, or exactly the caller's registered class: a forged canary header fails."""
    return rbac_config_pb2.Principal(
        or_ids=rbac_config_pb2.Principal.Set(
            ids=[
                _no_class_header(),
                rbac_config_pb2.Principal(
                    header=route_components_pb2.HeaderMatcher(
                        name=CLASS_HEADER, string_match=string_pb2.StringMatcher(exact=device_class)
                    )
                ),
            ]
        )
    )


# --- rate limits ---


def _rate_limit(policy: SiteDevicePolicy, devices: Sequence[Device], keys: dict[str, tuple[str, ...]]) -> Any | None:
    """A bucket per device of a limited class: a descriptor (`device`, key) per caller key of it,
    each with its own token bucket (`routes.rate_limit_bucket`, the route rules' builder). A caller
    matching no descriptor (another class, an unidentified one) takes from `_UNLIMITED`."""
    descriptors = []
    for device in devices:
        limit = policy.access(device.device_class).rate_limit
        if limit is not None:
            descriptors += [_descriptor(key, limit) for key in keys[device.id]]
    if not descriptors:
        return None
    everything = _all_requests()
    config = local_rate_limit_pb2.LocalRateLimit(
        stat_prefix=_RATE_LIMIT_STATS,
        token_bucket=_UNLIMITED,
        filter_enabled=everything,
        filter_enforced=everything,
        descriptors=descriptors,
        rate_limits=[
            route_components_pb2.RateLimit(
                actions=[
                    route_components_pb2.RateLimit.Action(
                        request_headers=route_components_pb2.RateLimit.Action.RequestHeaders(
                            header_name=CALLER_HEADER, descriptor_key=_DEVICE_KEY
                        )
                    )
                ]
            )
        ],
    )
    config.always_consume_default_token_bucket.value = False
    return config


@functools.lru_cache(maxsize=_DEVICE_MEMO)
def _descriptor(key: str, limit: DeviceRateLimit) -> Any:
    """The bucket of one caller key (shared message: nothing may change it)."""
    bucket = rate_limit_bucket(RateLimit(limit.requests, limit.interval, limit.burst))
    return ratelimit_pb2.LocalRateLimitDescriptor(
        entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key=_DEVICE_KEY, value=key)], token_bucket=bucket
    )


def _all_requests() -> Any:
    return base_pb2.RuntimeFractionalPercent(
        default_value=percent_pb2.FractionalPercent(numerator=100, denominator=percent_pb2.FractionalPercent.HUNDRED)
    )


# --- JWT ---


def _provider_name(policy: DevicePolicy, provider: str) -> str:
    return f"{policy.name}/{provider}"


@dataclasses.dataclass(frozen=True, slots=True)
class _Tokens:
    """The JWT side of a site's policies: the providers built (by `policy/provider`); per service
    needing a token, the names of the policies requiring it (`needing`: a token of any of their
    providers is accepted); per such set of policies, the providers it accepts (`accepting`; empty
    when none could be built: nobody passes, so the caller closes what needs them)."""

    providers: dict[str, Any]
    needing: dict[ServiceRef, frozenset[str]]
    accepting: dict[frozenset[str], tuple[str, ...]]

    @staticmethod
    def of(mesh: Mesh, policies: tuple[DevicePolicy, ...], warnings: list[str]) -> _Tokens:
        providers: dict[str, Any] = {}
        requiring: dict[ServiceRef, set[str]] = {}
        for policy in policies:
            for provider in policy.jwt_providers:
                built = _provider(mesh, policy, provider.name, warnings)
                if built is not None:
                    providers[_provider_name(policy, provider.name)] = built
            for entry in policy.require_jwt:
                requiring.setdefault(entry.service, set()).add(policy.name)
        needing = {service: frozenset(policy_names) for service, policy_names in requiring.items()}
        by_name = {policy.name: policy for policy in policies}
        accepting = {
            required: tuple(
                sorted(
                    {
                        _provider_name(by_name[name], provider.name)
                        for name in required
                        for provider in by_name[name].jwt_providers
                        if _provider_name(by_name[name], provider.name) in providers
                    }
                )
            )
            for required in set(needing.values())
        }
        return _Tokens(providers, needing, accepting)


def _provider(mesh: Mesh, policy: DevicePolicy, name: str, warnings: list[str]) -> Any | None:
    [provider] = [provider for provider in policy.jwt_providers if provider.name == name]
    built = jwt_pb2.JwtProvider(issuer=provider.issuer, audiences=list(provider.audiences), forward=True)
    if provider.jwks:
        built.local_jwks.inline_string = provider.jwks
        return built
    if provider.jwks_uri is None:  # a jwks_file not read: the model refuses it; never served
        warnings.append(f"device policy {policy.name}: jwt provider {name}: no keys; its tokens are refused")
        return None
    cluster = _jwks_cluster(mesh, provider.jwks_uri)
    if cluster is None:
        warnings.append(
            f"device policy {policy.name}: jwt provider {name}: jwks_uri {provider.jwks_uri} names no HTTP port "
            "of a mesh service; its tokens are refused"
        )
        return None
    built.remote_jwks.http_uri.CopyFrom(
        http_uri_pb2.HttpUri(uri=str(provider.jwks_uri), cluster=cluster, timeout=core.duration(_JWKS_TIMEOUT))
    )
    built.remote_jwks.cache_duration.CopyFrom(core.duration(_JWKS_CACHE))
    return built


def _jwks_cluster(mesh: Mesh, uri: JwksUri) -> str | None:
    """The cluster of the mesh service port `uri` names (by one of the service's host names)."""
    for service in mesh.services:
        if uri.host in mesh.host_names(service):
            port = next((port for port in service.ports if port.port == uri.port and port.protocol.is_http), None)
            return None if port is None else names.cluster_name(service.ref, port)
    return None
