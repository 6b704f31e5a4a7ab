"""Gateway API objects → the model's Gateways, and the status meshplane owes them: a pure function.

Owns the spec's rules of attachment and reference (gateway.networking.k8s.io v1.6, standard
channel), applied in `resolve()`:

- Gateways: only those whose GatewayClass names meshplane's controller and is accepted. Listeners
  of protocol HTTP and HTTPS (TLS mode Terminate) are served; others are not accepted
  (`UnsupportedProtocol`). Listeners sharing a port with different protocols conflict
  (`ProtocolConflict`) and are not served. An HTTPS listener's certificateRefs must be core
  Secrets served to proxies (the Secret `ns/name` is the certificate `ns/name` of the mesh: labelled
  for SDS, see docs/gateway-api.md), in the Gateway's namespace or allowed by a ReferenceGrant
  (`RefNotPermitted`), else `InvalidCertificateRef`. A Gateway asking for `spec.addresses` is not
  accepted (`UnsupportedAddress`): its addresses are those of the Envoys that serve it.
- Routes attach to a parentRef's Gateway, narrowed by `sectionName` and `port` (none left:
  `NoMatchingParent`), on listeners whose `allowedRoutes` admit the route's kind and namespace
  (`Same`, `All`, `Selector` on the Namespace's labels, read once a listener has a selector; none:
  `NotAllowedByListeners`) and whose
  hostname intersects the route's (none: `NoMatchingListenerHostname`). An attached route counts
  in each such listener's `attachedRoutes`.
- Backends: core Services of the mesh, on a port the Service has (else `BackendNotFound`), in the
  route's namespace or allowed by a ReferenceGrant (`RefNotPermitted`); any other kind is
  `InvalidKind`. A backend that does not resolve keeps its share of traffic, answered 500; weight
  0 gets none.
- Precedence, per hostname: one model rule per match, ordered by exact path, then the longest
  regex, then the longest prefix, then a method match, the most header matches, the most query
  matches; ties go to the oldest route, then namespace/name, then rule and match order.
- GRPCRoutes attach as HTTPRoutes do. A method match becomes a path match (`/service/method`
  exactly, `/service/` as a prefix, a regex otherwise); precedence per hostname: the longest
  service, then the longest method, then the most header matches; then as for HTTPRoutes. Their
  backends must speak HTTP/2 (a Service port of appProtocol `grpc`, `h2c`, `kubernetes.io/h2c`,
  or a name prefixed so), else `UnsupportedProtocol`; a rule without a resolved backend answers
  503, which gRPC clients see as UNAVAILABLE, as the spec asks. On one hostname, HTTPRoute rules
  come before GRPCRoute ones.

- BackendTLSPolicies (`resolve_backend_tls`, applied to `resolve`'s result): TLS from the served
  Gateways' proxies to the Service ports their rules reach (see that function).

Objects with problems (what the CRDs' validation would refuse) are never served: a Gateway is not
accepted (`Invalid`), a route's parents not accepted (`UnsupportedValue`). Must not do I/O: the
caller hands in the services, the certificates served and the Namespaces' labels.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from meshplane.discovery.gateway_api import conditions as c
from meshplane.discovery.gateway_api.backend_tls_policies import BackendTlsPolicy
from meshplane.discovery.gateway_api.class_status import accepted_condition
from meshplane.discovery.gateway_api.conditions import (
    MAX_POLICY_ANCESTORS,
    AncestorStatus,
    Condition,
    GatewayApiStatus,
    GatewayStatus,
    ListenerStatus,
    ParentStatus,
    PolicyStatus,
    RouteStatus,
)
from meshplane.discovery.gateway_api.fields import Parsed
from meshplane.discovery.gateway_api.filters import (
    CORS,
    EXTENSION_REF,
    REQUEST_HEADER_MODIFIER,
    REQUEST_MIRROR,
    REQUEST_REDIRECT,
    RESPONSE_HEADER_MODIFIER,
    URL_REWRITE,
    Filter,
)
from meshplane.discovery.gateway_api.filters import HeaderModifier as ApiHeaderModifier
from meshplane.discovery.gateway_api.gateways import HTTP, HTTPS, LabelSelector, Listener, RouteKind
from meshplane.discovery.gateway_api.gateways import Gateway as ApiGateway
from meshplane.discovery.gateway_api.grpc_routes import GrpcRoute, GrpcRule
from meshplane.discovery.gateway_api.http_routes import HttpRoute, HttpRule
from meshplane.discovery.gateway_api.matches import GrpcMatch, HttpMatch
from meshplane.discovery.gateway_api.objects import GRPC_ROUTE, HTTP_ROUTE, GatewayApiObjects, Key
from meshplane.discovery.gateway_api.reference_grants import ReferenceGrant
from meshplane.discovery.gateway_api.references import CORE_GROUP, GATEWAY_GROUP, BackendRef, ParentRef
from meshplane.model import (
    CorsPolicy,
    Gateway,
    GatewayHost,
    GatewayListener,
    GatewayRule,
    HeaderMatch,
    HeaderMatchKind,
    HeaderModifier,
    HeaderValue,
    ListenerProtocol,
    Mirror,
    PathMatch,
    PathMatchKind,
    QueryMatch,
    QueryMatchKind,
    Redirect,
    RouteMatch,
    RouteRule,
    RouteTable,
    Service,
    ServiceRef,
    WeightedBackend,
)
from meshplane.model.gateways import BackendTls, SanKind

# The route kinds a listener of each served protocol takes.
HTTP_ROUTE_KIND = RouteKind(GATEWAY_GROUP, HTTP_ROUTE)
GRPC_ROUTE_KIND = RouteKind(GATEWAY_GROUP, GRPC_ROUTE)
SERVED_KINDS = {HTTP: (HTTP_ROUTE_KIND, GRPC_ROUTE_KIND), HTTPS: (HTTP_ROUTE_KIND, GRPC_ROUTE_KIND)}
# What a rule whose backends did not resolve answers: HTTP 500; for gRPC 503, which gRPC clients
# read as UNAVAILABLE (the status the spec asks of a GRPCRoute).
GRPC_UNRESOLVED_STATUS = 503
# HTTPRoute rules sort before GRPCRoute rules on one hostname (the first element of a precedence key).
_HTTP_FIRST, _GRPC_SECOND = 0, 1
_PATH_KINDS = {
    "Exact": PathMatchKind.EXACT,
    "PathPrefix": PathMatchKind.PREFIX,
    "RegularExpression": PathMatchKind.REGEX,
}
_PATH_RANK = {"Exact": 0, "RegularExpression": 1, "PathPrefix": 2}


@dataclass(frozen=True, slots=True)
class Resolution:
    """What `resolve` found: the Gateways to serve (sorted by namespace/name) and every status."""

    gateways: tuple[Gateway, ...] = ()
    status: GatewayApiStatus = field(default_factory=GatewayApiStatus)


@dataclass(slots=True)
class _Served:
    """A Gateway being resolved: its status so far and, per listener, the rules attached by hostname."""

    gateway: ApiGateway
    problems: list[str]
    listeners: dict[str, ListenerStatus]
    certificates: dict[str, tuple[str, ...]]
    attached: dict[str, int]
    # listener name → hostname → (precedence key, rule)
    rules: dict[str, dict[str, list[tuple[tuple[object, ...], GatewayRule]]]]


def resolve(
    objects: GatewayApiObjects,
    controller_name: str,
    services: Mapping[ServiceRef, Service],
    certificates: frozenset[str],
    namespace_labels: Mapping[str, Mapping[str, str]] | None = None,
) -> Resolution:
    """The Gateways of `objects` meshplane serves (its `controller_name`'s accepted classes), their
    routes resolved against `services` and `certificates` (names of the mesh's certificates), and
    the status of each Gateway and of each route naming one. `namespace_labels` (None: those of
    `objects`, which are None while Namespaces are not read) are the labels of each Namespace, for
    `allowedRoutes` selectors."""
    if namespace_labels is None:
        namespace_labels = objects.namespace_labels
    grants = ReferenceGrants(tuple(parsed.value for parsed in objects.reference_grants.values() if not parsed.problems))
    owned = {
        name
        for (_, name), parsed in objects.gateway_classes.items()
        if parsed.value.controller_name == controller_name and accepted_condition(parsed).status == c.TRUE
    }
    served: dict[Key, _Served] = {}
    gateway_status: dict[Key, GatewayStatus] = {}
    for key, parsed_gateway in objects.gateways.items():
        gateway = parsed_gateway.value
        if gateway.gateway_class_name not in owned:
            continue
        entry = _gateway(gateway, [str(problem) for problem in parsed_gateway.problems], grants, certificates)
        served[key] = entry
    http_status = _attach_all(objects.http_routes, served, grants, services, namespace_labels)
    grpc_status = _attach_all(objects.grpc_routes, served, grants, services, namespace_labels)
    gateways = []
    for key, entry in sorted(served.items()):
        listeners = tuple(
            _with_attached(status, entry.attached.get(status.name, 0)) for status in entry.listeners.values()
        )
        served_status = GatewayStatus(entry.gateway.generation, _gateway_conditions(entry), listeners)
        gateway_status[key] = served_status
        if served_status.servable:
            gateways.append(_model_gateway(entry, served_status))
    return Resolution(
        tuple(gateways),
        GatewayApiStatus(
            MappingProxyType(gateway_status), MappingProxyType(http_status), MappingProxyType(grpc_status)
        ),
    )


class ReferenceGrants:
    """Which cross-namespace references the ReferenceGrants allow."""

    def __init__(self, grants: Iterable[ReferenceGrant], parents: frozenset[Key] = frozenset()) -> None:
        self._grants = tuple(grants)
        self._parents = parents

    def with_parents(self, parents: frozenset[Key]) -> ReferenceGrants:
        """These grants, and a mesh route's own parent Services (namespace, name) as backends: a
        consumer route sends its namespace's requests on to the Service they were addressed to,
        which crosses no boundary those requests had not crossed already (upstream's
        MeshConsumerRoute does so with no ReferenceGrant)."""
        return ReferenceGrants(self._grants, parents)

    def allow(self, from_kind: str, from_namespace: str, to_group: str, to_kind: str, to: Key) -> bool:
        """Whether a `from_kind` (of the Gateway API group, or core for none) of `from_namespace` may
        refer to the `to_group`/`to_kind` object `to` (namespace, name). Same namespace: always."""
        namespace, name = to
        if namespace == from_namespace:
            return True
        if to_group == CORE_GROUP and to_kind == "Service" and to in self._parents:
            return True
        for grant in self._grants:
            if grant.namespace != namespace:
                continue
            admitted = any(
                f.group == GATEWAY_GROUP and f.kind == from_kind and f.namespace == from_namespace for f in grant.from_
            )
            target = any(t.group == to_group and t.kind == to_kind and t.name in (None, name) for t in grant.to)
            if admitted and target:
                return True
        return False


# --- Gateways and listeners ---


def _gateway(
    gateway: ApiGateway, problems: list[str], grants: ReferenceGrants, certificates: frozenset[str]
) -> _Served:
    generation = gateway.generation
    protocols_of_port: dict[int, set[str]] = {}
    for listener in gateway.listeners:
        protocols_of_port.setdefault(listener.port, set()).add(listener.protocol)
    listeners: dict[str, ListenerStatus] = {}
    chosen: dict[str, tuple[str, ...]] = {}
    for listener in gateway.listeners:
        kinds, kinds_ok, kinds_message = _supported_kinds(listener)
        served_protocol = listener.protocol in SERVED_KINDS
        conflicted = len(protocols_of_port[listener.port]) > 1
        if served_protocol:
            accepted = c.condition(c.ACCEPTED, True, c.REASON_ACCEPTED, "", generation)
        else:
            accepted = c.condition(
                c.ACCEPTED,
                False,
                c.REASON_UNSUPPORTED_PROTOCOL,
                f"protocol {listener.protocol} is not served (meshplane serves HTTP and HTTPS)",
                generation,
            )
        if conflicted:
            others = ", ".join(sorted(protocols_of_port[listener.port]))
            conflict = c.condition(
                c.CONFLICTED,
                True,
                c.REASON_PROTOCOL_CONFLICT,
                f"port {listener.port} is asked for by listeners of protocols {others}",
                generation,
            )
        else:
            conflict = c.Condition(c.CONFLICTED, c.FALSE, c.REASON_NO_CONFLICTS, "", generation)
        names, certificate_problem = _certificates(gateway, listener, grants, certificates)
        if certificate_problem is not None:
            reason, message = certificate_problem
            resolved = c.condition(c.RESOLVED_REFS, False, reason, message, generation)
        elif not kinds_ok:
            resolved = c.condition(c.RESOLVED_REFS, False, c.REASON_INVALID_ROUTE_KINDS, kinds_message, generation)
        else:
            resolved = c.condition(c.RESOLVED_REFS, True, c.REASON_RESOLVED_REFS, "", generation)
        servable = served_protocol and not conflicted and certificate_problem is None and bool(kinds) and not problems
        listeners[listener.name] = ListenerStatus(listener.name, kinds, 0, (accepted, resolved, conflict), servable)
        chosen[listener.name] = names
    return _Served(gateway, problems, listeners, chosen, {}, {name: {} for name in listeners})


def _supported_kinds(listener: Listener) -> tuple[tuple[RouteKind, ...], bool, str]:
    """The route kinds `listener` takes, whether every kind it asked for is one, and why not."""
    served = SERVED_KINDS.get(listener.protocol, ())
    asked = listener.allowed_routes.kinds
    if not asked:
        return served, True, ""
    kinds = tuple(kind for kind in asked if kind in served)
    refused = [f"{kind.group}/{kind.kind}" for kind in asked if kind not in served]
    if refused:
        return kinds, False, f"route kinds not served on {listener.protocol}: {', '.join(refused)}"
    return kinds, True, ""


def _certificates(
    gateway: ApiGateway, listener: Listener, grants: ReferenceGrants, certificates: frozenset[str]
) -> tuple[tuple[str, ...], tuple[str, str] | None]:
    """The certificate names an HTTPS listener presents, or the (reason, message) why it cannot."""
    if listener.protocol != HTTPS or listener.tls is None:
        return (), None
    names = []
    for ref in listener.tls.certificate_refs:
        namespace = ref.namespace or gateway.namespace
        named = f"{ref.kind} {namespace}/{ref.name}"
        if ref.group != CORE_GROUP or ref.kind != "Secret":
            return (), (c.REASON_INVALID_CERTIFICATE_REF, f"{named}: only core Secrets are supported")
        if not grants.allow("Gateway", gateway.namespace, CORE_GROUP, "Secret", (namespace, ref.name)):
            return (), (
                c.REASON_REF_NOT_PERMITTED,
                f"{named} is in another namespace and no ReferenceGrant there allows this Gateway to use it",
            )
        name = f"{namespace}/{ref.name}"
        if name not in certificates:
            return (), (
                c.REASON_INVALID_CERTIFICATE_REF,
                f"{named} is not served: it must exist, be a kubernetes.io/tls Secret labelled for meshplane's"
                " SDS (meshplane.io/sds=true by default) and --kubernetes-secrets must be on",
            )
        names.append(name)
    if not names:
        return (), (c.REASON_INVALID_CERTIFICATE_REF, "no certificateRefs (TLS options alone are not supported)")
    return tuple(names), None


def _with_attached(status: ListenerStatus, attached: int) -> ListenerStatus:
    return ListenerStatus(status.name, status.supported_kinds, attached, status.conditions, status.servable)


def _gateway_conditions(entry: _Served) -> tuple[Condition, ...]:
    gateway = entry.gateway
    generation = gateway.generation
    if entry.problems:
        return (c.condition(c.ACCEPTED, False, c.REASON_INVALID, "; ".join(entry.problems), generation),)
    if (parameters := gateway.parameters_ref) is not None:
        # meshplane defines no parameters kind, so every parametersRef names something it cannot use.
        named = f"{parameters.kind} {parameters.name} ({parameters.group or 'core'})"
        message = f"meshplane takes no infrastructure parameters; parametersRef names {named}"
        return (c.condition(c.ACCEPTED, False, c.REASON_INVALID_PARAMETERS, message, generation),)
    if gateway.addresses:
        message = "meshplane assigns no requested addresses: the Gateway's addresses are its Envoys' listen addresses"
        return (c.condition(c.ACCEPTED, False, c.REASON_UNSUPPORTED_ADDRESS, message, generation),)
    valid = [status for status in entry.listeners.values() if status.servable]
    if not valid:
        message = "no listener can be served"
        return (c.condition(c.ACCEPTED, False, c.REASON_LISTENERS_NOT_VALID, message, generation),)
    if len(valid) < len(entry.listeners):
        message = "some listeners cannot be served; the others are"
        return (c.condition(c.ACCEPTED, True, c.REASON_LISTENERS_NOT_VALID, message, generation),)
    return (c.condition(c.ACCEPTED, True, c.REASON_ACCEPTED, "", generation),)


# --- routes ---


def _written(parent: ParentRef, namespace: str) -> ParentRef:
    """`parent` as the route status echoes it: its namespace filled in."""
    return ParentRef(
        parent.name, parent.group, parent.kind, parent.namespace or namespace, parent.section_name, parent.port
    )


def _parent_gateway(parent: ParentRef, route_namespace: str, served: Mapping[Key, _Served]) -> _Served | None:
    """The Gateway of meshplane's that `parent` names, or None (another kind, or not ours)."""
    if parent.group != GATEWAY_GROUP or parent.kind != "Gateway":
        return None
    return served.get((parent.namespace or route_namespace, parent.name))


def _attach_all(
    routes: Mapping[Key, Parsed[HttpRoute]] | Mapping[Key, Parsed[GrpcRoute]],
    served: Mapping[Key, _Served],
    grants: ReferenceGrants,
    services: Mapping[ServiceRef, Service],
    namespace_labels: Mapping[str, Mapping[str, str]] | None,
) -> dict[Key, RouteStatus]:
    """Attaches each of `routes` (see `_attach_any`); the statuses of those that name a Gateway of ours."""
    statuses: dict[Key, RouteStatus] = {}
    for key, parsed in routes.items():
        problems = [str(problem) for problem in parsed.problems]
        status = _attach_any(parsed.value, problems, served, grants, services, namespace_labels)
        if status.parents:
            statuses[key] = status
    return statuses


def _attach_any(
    route: HttpRoute | GrpcRoute,
    problems: list[str],
    served: Mapping[Key, _Served],
    grants: ReferenceGrants,
    services: Mapping[ServiceRef, Service],
    namespace_labels: Mapping[str, Mapping[str, str]] | None,
) -> RouteStatus:
    """Attaches `route` (an HTTPRoute or a GRPCRoute) to the listeners of its parents that take it,
    adding its rules to them; its status."""
    kind: RouteKind
    if isinstance(route, HttpRoute):
        kind, (rules, resolved) = HTTP_ROUTE_KIND, _http_rules(route, grants, services)
    else:
        kind, (rules, resolved) = GRPC_ROUTE_KIND, _grpc_rules(route, grants, services)
    return _attach_route(route, kind, rules, resolved, problems, served, namespace_labels)


def _attach_route(
    route: HttpRoute | GrpcRoute,
    kind: RouteKind,
    rules: list[tuple[tuple[object, ...], GatewayRule]],
    resolved: Condition,
    problems: list[str],
    served: Mapping[Key, _Served],
    namespace_labels: Mapping[str, Mapping[str, str]] | None,
) -> RouteStatus:
    generation = route.generation
    parents = []
    for parent in route.parent_refs:
        entry = _parent_gateway(parent, route.namespace, served)
        if entry is None:
            continue
        if problems:
            accepted = c.condition(c.ACCEPTED, False, c.REASON_UNSUPPORTED_VALUE, "; ".join(problems), generation)
        else:
            accepted = _attach(route, kind, rules, parent, entry, namespace_labels)
        parents.append(ParentStatus(_written(parent, route.namespace), (accepted, resolved)))
    return RouteStatus(generation, tuple(parents))


def _attach(
    route: HttpRoute | GrpcRoute,
    kind: RouteKind,
    rules: list[tuple[tuple[object, ...], GatewayRule]],
    parent: ParentRef,
    entry: _Served,
    namespace_labels: Mapping[str, Mapping[str, str]] | None,
) -> Condition:
    """Attaches `rules` to the listeners `parent` selects of `entry`; the route's Accepted for it."""
    generation = route.generation
    candidates = [
        listener
        for listener in entry.gateway.listeners
        if parent.section_name in (None, listener.name) and parent.port in (None, listener.port)
    ]
    if not candidates:
        wanted = " ".join(
            part
            for part in (
                f"sectionName {parent.section_name}" if parent.section_name else "",
                f"port {parent.port}" if parent.port else "",
            )
            if part
        )
        message = f"Gateway {entry.gateway.namespace}/{entry.gateway.name} has no listener of {wanted or 'any kind'}"
        return c.condition(c.ACCEPTED, False, c.REASON_NO_MATCHING_PARENT, message, generation)
    why_not: list[str] = []
    allowed = []
    for listener in candidates:
        reason = _refusal(route.namespace, kind, entry, listener, namespace_labels)
        if reason is None:
            allowed.append(listener)
        else:
            why_not.append(f"listener {listener.name}: {reason}")
    if not allowed:
        return c.condition(c.ACCEPTED, False, c.REASON_NOT_ALLOWED_BY_LISTENERS, "; ".join(why_not), generation)
    attached = False
    for listener in allowed:
        hostnames = intersect(listener.hostname, route.hostnames)
        if not hostnames:
            continue
        attached = True
        entry.attached[listener.name] = entry.attached.get(listener.name, 0) + 1
        by_host = entry.rules[listener.name]
        for hostname in hostnames:
            by_host.setdefault(hostname, []).extend(rules)
    if not attached:
        message = f"no listener's hostname intersects the route's hostnames {', '.join(route.hostnames)}"
        return c.condition(c.ACCEPTED, False, c.REASON_NO_MATCHING_LISTENER_HOSTNAME, message, generation)
    return c.condition(c.ACCEPTED, True, c.REASON_ACCEPTED, "", generation)


def _refusal(
    namespace: str,
    kind: RouteKind,
    entry: _Served,
    listener: Listener,
    namespace_labels: Mapping[str, Mapping[str, str]] | None,
) -> str | None:
    """Why `listener` refuses a route of `kind` of `namespace`, or None."""
    status = entry.listeners[listener.name]
    if kind not in status.supported_kinds:
        return f"takes no {kind.kind}s"
    allowed = listener.allowed_routes
    if allowed.namespaces == "Same" and namespace != entry.gateway.namespace:
        return f"takes routes of namespace {entry.gateway.namespace} only"
    if allowed.namespaces == "Selector":
        if namespace_labels is None:
            return "its namespace selector waits for the Namespaces to be read"
        labels = namespace_labels.get(namespace)
        if labels is None or allowed.selector is None or not selects(allowed.selector, labels):
            return f"its namespace selector does not select namespace {namespace}"
    return None


def selects(selector: LabelSelector, labels: Mapping[str, str]) -> bool:
    """Whether `selector` selects an object of `labels` (Kubernetes' label selector semantics)."""
    if any(labels.get(key) != value for key, value in selector.match_labels):
        return False
    for term in selector.match_expressions:
        present = term.key in labels
        if term.operator == "In" and not (present and labels[term.key] in term.values):
            return False
        if term.operator == "NotIn" and present and labels[term.key] in term.values:
            return False
        if term.operator == "Exists" and not present:
            return False
        if term.operator == "DoesNotExist" and present:
            return False
    return True


def intersect(listener: str | None, route: tuple[str, ...]) -> tuple[str, ...]:
    """The hostnames a route serves on a listener: the spec's intersection of the listener's
    hostname (None: any) and the route's (empty: any), `*` meaning any; sorted, unique."""
    if listener is None:
        return tuple(sorted(set(route))) if route else ("*",)
    if not route:
        return (listener,)
    found = set()
    for hostname in route:
        if hostname == listener or _covers(listener, hostname):
            found.add(hostname)
        elif _covers(hostname, listener):
            found.add(listener)
    return tuple(sorted(found))


def _covers(wildcard: str, hostname: str) -> bool:
    """Whether wildcard `*.x` covers `hostname`: a name of one or more labels more than `x`
    (`a.x`, `*.a.x`), never `x` itself."""
    if not wildcard.startswith("*."):
        return False
    suffix = wildcard[1:]  # ".x"
    return hostname.endswith(suffix) and len(hostname) > len(suffix) and hostname != wildcard


# --- rules ---


def _http_rules(
    route: HttpRoute, grants: ReferenceGrants, services: Mapping[ServiceRef, Service]
) -> tuple[list[tuple[tuple[object, ...], GatewayRule]], Condition]:
    """The model rules of `route` (one per match, each with its precedence key), and its ResolvedRefs."""
    found: list[tuple[tuple[object, ...], GatewayRule]] = []
    failures: list[tuple[str, str]] = []
    for rule_index, rule in enumerate(route.rules):
        backends, unresolved = _backends(route, rule, grants, services, failures)
        mirrors = _mirrors(route, rule.filters, grants, services, failures)
        unsupported = [f for f in rule.filters if f.type == EXTENSION_REF]
        # A backendRef's RequestHeaderModifier is served (on that backend's share); no other is.
        unsupported += [f for backend in rule.backends for f in backend.filters if f.type != REQUEST_HEADER_MODIFIER]
        if unsupported:
            kinds = ", ".join(sorted({f.type for f in unsupported}))
            failures.append((c.REASON_INVALID_KIND, f"rule {rule_index + 1}: {kinds} filters are not supported"))
            resolved_weight = sum(backend.weight for backend in backends)
            backends, unresolved = (), max(1, unresolved + resolved_weight)
        for match_index, match in enumerate(rule.matches):
            model = _model_rule(match, rule, backends, mirrors)
            if unsupported:
                model = RouteRule(model.match, ())  # a filter that cannot be applied: answered 500
            key = (
                _HTTP_FIRST,
                *_precedence(match),
                route.created,
                route.namespace,
                route.name,
                rule_index,
                match_index,
            )
            found.append((key, GatewayRule(model, unresolved)))
    if failures:
        reason = failures[0][0]
        message = "; ".join(message for _, message in failures)
        return found, c.condition(c.RESOLVED_REFS, False, reason, message, route.generation)
    return found, c.condition(c.RESOLVED_REFS, True, c.REASON_RESOLVED_REFS, "", route.generation)


def _precedence(match: HttpMatch) -> tuple[object, ...]:
    """Sorts first what the spec says wins: exact paths, then longer paths (regex, then prefix),
    then a method, more headers, more query parameters."""
    return (
        _PATH_RANK[match.path.type],
        -len(match.path.value),
        match.method is None,
        -len(match.headers),
        -len(match.query_params),
    )


def _resolve_backend(
    route: HttpRoute | GrpcRoute, ref: BackendRef, grants: ReferenceGrants, services: Mapping[ServiceRef, Service]
) -> tuple[WeightedBackend | None, tuple[str, str] | None]:
    """`ref` as a model backend, or why it does not resolve (reason, message)."""
    namespace = ref.namespace or route.namespace
    route_kind = GRPC_ROUTE if isinstance(route, GrpcRoute) else HTTP_ROUTE
    named = f"{ref.kind} {namespace}/{ref.name}"
    if not ref.is_service:
        return None, (c.REASON_INVALID_KIND, f"{named} ({ref.group or 'core'}): only core Services are supported")
    if not grants.allow(route_kind, route.namespace, CORE_GROUP, "Service", (namespace, ref.name)):
        return None, (
            c.REASON_REF_NOT_PERMITTED,
            f"{named} is in another namespace and no ReferenceGrant there allows this route to use it",
        )
    service = services.get(ServiceRef(namespace, ref.name))
    if service is None:
        return None, (c.REASON_BACKEND_NOT_FOUND, f"{named} is not found")
    port = service.port(ref.port) if ref.port is not None else None
    if port is None:
        return None, (c.REASON_BACKEND_NOT_FOUND, f"{named} has no port {ref.port}")
    if route_kind == GRPC_ROUTE and not port.protocol.needs_http2_upstream:
        return None, (
            c.REASON_UNSUPPORTED_PROTOCOL,
            f"{named} port {ref.port} speaks {port.protocol}, not HTTP/2 (appProtocol grpc or kubernetes.io/h2c)",
        )
    return WeightedBackend(service.ref, ref.port, ref.weight), None


def _backends(
    route: HttpRoute | GrpcRoute,
    rule: HttpRule | GrpcRule,
    grants: ReferenceGrants,
    services: Mapping[ServiceRef, Service],
    failures: list[tuple[str, str]],
) -> tuple[tuple[WeightedBackend, ...], int]:
    """The backends of `rule` that resolved (weight above 0) and the weight of those that did not."""
    found = []
    unresolved = 0
    for backend in rule.backends:
        resolved, failure = _resolve_backend(route, backend.ref, grants, services)
        if failure is not None:
            failures.append(failure)
            unresolved += backend.ref.weight
        elif resolved is not None and resolved.weight > 0:
            by_type = {f.type: f for f in backend.filters}
            headers = _modifier(by_type.get(REQUEST_HEADER_MODIFIER), response=False)
            found.append(dataclasses.replace(resolved, request_headers=headers) if headers else resolved)
    if rule.backends and not found and not unresolved:
        unresolved = 1  # every weight is 0: nowhere to send a request (the spec's 500)
    return tuple(found), unresolved


def _mirrors(
    route: HttpRoute | GrpcRoute,
    filters: tuple[Filter, ...],
    grants: ReferenceGrants,
    services: Mapping[ServiceRef, Service],
    failures: list[tuple[str, str]],
) -> tuple[Mirror, ...]:
    found = []
    for f in filters:
        if f.type != REQUEST_MIRROR or f.mirror is None:
            continue
        resolved, failure = _resolve_backend(route, f.mirror.backend, grants, services)
        if failure is not None:
            failures.append(failure)
            continue
        assert resolved is not None
        percent = 100.0
        if f.mirror.percent is not None:
            percent = float(f.mirror.percent)
        elif f.mirror.fraction is not None:
            numerator, denominator = f.mirror.fraction
            percent = 100.0 * numerator / denominator
        found.append(Mirror(resolved.service, resolved.port, percent))
    return tuple(found)


def _model_rule(
    match: HttpMatch, rule: HttpRule, backends: tuple[WeightedBackend, ...], mirrors: tuple[Mirror, ...]
) -> RouteRule:
    """One match of `rule` as a model rule (the Gateway API's PathPrefix is a prefix of whole
    segments: the gateway translator matches PREFIX so)."""
    path_value = match.path.value
    if match.path.type == "PathPrefix" and len(path_value) > 1:
        path_value = path_value.rstrip("/") or "/"  # a trailing slash is ignored
    model_match = RouteMatch(
        path=PathMatch(_PATH_KINDS[match.path.type], path_value),
        headers=tuple(
            HeaderMatch(
                header.name.lower(),
                HeaderMatchKind.EXACT if header.type == "Exact" else HeaderMatchKind.REGEX,
                header.value,
            )
            for header in match.headers
        ),
        method=match.method,
        query=tuple(
            QueryMatch(query.name, QueryMatchKind.EXACT if query.type == "Exact" else QueryMatchKind.REGEX, query.value)
            for query in match.query_params
        ),
    )
    by_type = {f.type: f for f in rule.filters}
    redirect = None
    if (found := by_type.get(REQUEST_REDIRECT)) is not None and found.redirect is not None:
        api = found.redirect
        redirect = Redirect(
            scheme=api.scheme,
            hostname=api.hostname,
            port=api.port,
            path=api.path.value if api.path is not None and api.path.type == "ReplaceFullPath" else None,
            prefix=api.path.value if api.path is not None and api.path.type == "ReplacePrefixMatch" else None,
            status=api.status_code,
        )
    prefix_rewrite = path_rewrite = host_rewrite = None
    if (found := by_type.get(URL_REWRITE)) is not None and found.rewrite is not None:
        host_rewrite = found.rewrite.hostname
        if (path := found.rewrite.path) is not None:
            if path.type == "ReplaceFullPath":
                path_rewrite = path.value or "/"
            else:
                prefix_rewrite = path.value or "/"
    cors = None
    if (found := by_type.get(CORS)) is not None and found.cors is not None and found.cors.allow_origins:
        api_cors = found.cors
        cors = CorsPolicy(
            allow_origins=api_cors.allow_origins,
            allow_methods=api_cors.allow_methods,
            allow_headers=api_cors.allow_headers,
            expose_headers=api_cors.expose_headers,
            max_age=api_cors.max_age,
            allow_credentials=bool(api_cors.allow_credentials),
        )
    request_headers = _modifier(by_type.get(REQUEST_HEADER_MODIFIER), response=False)
    if redirect is not None:
        return RouteRule(
            model_match,
            (),
            redirect=redirect,
            response_headers=_modifier(by_type.get(RESPONSE_HEADER_MODIFIER), response=True),
            cors=cors,
        )
    return RouteRule(
        match=model_match,
        backends=backends,
        timeout=_timeout(rule),
        backend_timeout=_backend_timeout(rule),
        prefix_rewrite=prefix_rewrite,
        request_headers=request_headers,
        response_headers=_modifier(by_type.get(RESPONSE_HEADER_MODIFIER), response=True),
        path_rewrite=path_rewrite,
        host_rewrite=host_rewrite,
        mirrors=mirrors,
        cors=cors,
    )


def _timeout(rule: HttpRule) -> float | None:
    if rule.timeouts is None or rule.timeouts.request_ms is None:
        return None
    return rule.timeouts.request_ms / 1000


def _backend_timeout(rule: HttpRule) -> float | None:
    """`timeouts.backendRequest`, in seconds: the bound on one request to a backend."""
    if rule.timeouts is None or rule.timeouts.backend_request_ms is None:
        return None
    return rule.timeouts.backend_request_ms / 1000


def _modifier(found: Filter | None, *, response: bool) -> HeaderModifier | None:
    api: ApiHeaderModifier | None = None
    if found is not None:
        api = found.response_headers if response else found.request_headers
    if api is None:
        return None
    return HeaderModifier(
        set=tuple(HeaderValue(h.name, h.value) for h in api.set),
        add=tuple(HeaderValue(h.name, h.value) for h in api.add),
        remove=api.remove,
    )


def _grpc_rules(
    route: GrpcRoute, grants: ReferenceGrants, services: Mapping[ServiceRef, Service]
) -> tuple[list[tuple[tuple[object, ...], GatewayRule]], Condition]:
    """The model rules of GRPCRoute `route` (one per match), and its ResolvedRefs."""
    found: list[tuple[tuple[object, ...], GatewayRule]] = []
    failures: list[tuple[str, str]] = []
    for rule_index, rule in enumerate(route.rules):
        backends, unresolved = _backends(route, rule, grants, services, failures)
        mirrors = _mirrors(route, rule.filters, grants, services, failures)
        unsupported = [f for f in rule.filters if f.type == EXTENSION_REF]
        unsupported += [f for backend in rule.backends for f in backend.filters]
        if unsupported:
            kinds = ", ".join(sorted({f.type for f in unsupported}))
            failures.append((c.REASON_INVALID_KIND, f"rule {rule_index + 1}: {kinds} filters are not supported"))
        by_type = {f.type: f for f in rule.filters}
        for match_index, match in enumerate(rule.matches or (GrpcMatch(),)):
            model = RouteRule(
                match=_grpc_match(match),
                backends=() if unsupported else backends,
                request_headers=_modifier(by_type.get(REQUEST_HEADER_MODIFIER), response=False),
                response_headers=_modifier(by_type.get(RESPONSE_HEADER_MODIFIER), response=True),
                mirrors=mirrors,
                # gRPC streams live long: Envoy's default 15 s route timeout would cut them.
                timeout=0,
            )
            method = match.method
            key = (
                _GRPC_SECOND,
                -len(method.service or "") if method is not None else 0,
                -len(method.method or "") if method is not None else 0,
                -len(match.headers),
                route.created,
                route.namespace,
                route.name,
                rule_index,
                match_index,
            )
            found.append(
                (key, GatewayRule(model, max(1, unresolved) if unsupported else unresolved, GRPC_UNRESOLVED_STATUS))
            )
    if failures:
        message = "; ".join(message for _, message in failures)
        return found, c.condition(c.RESOLVED_REFS, False, failures[0][0], message, route.generation)
    return found, c.condition(c.RESOLVED_REFS, True, c.REASON_RESOLVED_REFS, "", route.generation)


def _grpc_match(match: GrpcMatch) -> RouteMatch:
    """A GRPCRouteMatch as the path match of the HTTP/2 request a call is (`/service/method`)."""
    method = match.method
    headers = tuple(
        HeaderMatch(
            header.name.lower(),
            HeaderMatchKind.EXACT if header.type == "Exact" else HeaderMatchKind.REGEX,
            header.value,
        )
        for header in match.headers
    )
    if method is None:
        path = PathMatch(PathMatchKind.PREFIX, "/")
    elif method.type == "Exact" and method.service is not None and method.method is not None:
        path = PathMatch(PathMatchKind.EXACT, f"/{method.service}/{method.method}")
    elif method.type == "Exact" and method.method is None:
        path = PathMatch(PathMatchKind.PREFIX, f"/{method.service}")
    else:
        exact = method.type == "Exact"
        service = (re.escape(method.service) if exact else method.service) if method.service else "[^/]+"
        name = (re.escape(method.method) if exact else method.method) if method.method else "[^/]+"
        path = PathMatch(PathMatchKind.REGEX, f"/{service}/{name}")
    return RouteMatch(path=path, headers=headers, method="POST")


# --- the model ---


def _model_gateway(entry: _Served, status: GatewayStatus) -> Gateway:
    gateway = entry.gateway
    listeners = []
    servable = {listener.name for listener in status.listeners if listener.servable}
    for listener in gateway.listeners:
        if listener.name not in servable:
            continue
        hosts = tuple(
            GatewayHost(hostname, tuple(rule for _, rule in sorted(rules, key=lambda item: item[0])))
            for hostname, rules in sorted(entry.rules[listener.name].items())
        )
        listeners.append(
            GatewayListener(
                name=listener.name,
                port=listener.port,
                protocol=ListenerProtocol(listener.protocol),
                hostname=listener.hostname,
                certificates=entry.certificates[listener.name],
                hosts=hosts,
            )
        )
    listeners.sort(key=lambda listener: (listener.port, listener.name))
    return Gateway(gateway.namespace, gateway.name, tuple(listeners))


# --- the mesh (GAMMA): routes whose parentRef is a Service ---
#
# An HTTPRoute or GRPCRoute whose parentRef is a core Service configures the traffic every client
# in the mesh (sidecars, proxyless gRPC) sends to that Service: its rules become one route table
# attached to the Service (`RouteTable.service`), the rules of every such route of the Service in
# the precedence order of a Gateway's. A parentRef's `port` narrows the table to that port
# (`RouteTable.port`). A producer route (in the Service's namespace) applies to every client; a
# consumer route (in another namespace) to that namespace's clients only (`RouteTable.consumer`),
# before the producer routes. Hostnames are ignored (GAMMA's rule). A rule whose backends did not
# all resolve sends to those that did; one with none is left out (sidecar routes have no share
# answered 500).

# The name of the route table of a Service's mesh routes: `gateway-api.<namespace>.<name>` (see
# `mesh_route_name` for a port's and a consumer's).
MESH_ROUTE_PREFIX = "gateway-api"


@dataclass(frozen=True, slots=True)
class MeshResolution:
    """What `resolve_mesh` found: the route tables of Services (sorted by name) and the status of
    each route with a Service parent (its Service parents only)."""

    routes: tuple[RouteTable, ...] = ()
    status: GatewayApiStatus = field(default_factory=GatewayApiStatus)


def is_service_parent(parent: ParentRef) -> bool:
    """Whether `parent` is a Service: a mesh (GAMMA) parent, not a Gateway."""
    return parent.group == CORE_GROUP and parent.kind == "Service"


def mesh_route_name(service: ServiceRef, port: int | None = None, consumer: str = "") -> str:
    """The name of the route table the mesh routes of `service` make (of its `port` alone; for the
    clients of namespace `consumer` alone): `gateway-api.<ns>.<name>[.<port>][@<consumer>]`.
    Names and namespaces are DNS labels, so neither a port after a dot nor `@` can be read as
    part of them."""
    name = f"{MESH_ROUTE_PREFIX}.{service.namespace}.{service.name}"
    name = name if port is None else f"{name}.{port}"
    return f"{name}@{consumer}" if consumer else name


def resolve_mesh(
    objects: GatewayApiObjects,
    services: Mapping[ServiceRef, Service],
    origins: Mapping[tuple[str, Key], str] | None = None,
) -> MeshResolution:
    """The route tables the HTTPRoutes and GRPCRoutes of `objects` with a Service parent make, and
    their status for those parents. `origins` names where an object was said (`file:line`), for the
    tables' origins; else `Kind namespace/name`.

    A parentRef without a port makes the Service's table, for all its ports; one with a port makes
    that port's table, which holds the Service-wide routes' rules too (a port's traffic follows
    both, by the one precedence order), so a port with a table of its own loses none of them.
    A route in another namespace than its parent Service's is a consumer route (GAMMA): its tables
    are for its own namespace's clients (`RouteTable.consumer`), which follow them instead of the
    producer routes; it is Accepted as a producer route is."""
    grants = ReferenceGrants(tuple(parsed.value for parsed in objects.reference_grants.values() if not parsed.problems))
    rules_of: dict[tuple[ServiceRef, int | None, str], list[tuple[tuple[object, ...], RouteRule]]] = {}
    said: dict[tuple[ServiceRef, int | None, str], set[str]] = {}
    statuses: dict[str, dict[Key, RouteStatus]] = {HTTP_ROUTE: {}, GRPC_ROUTE: {}}
    kinds: tuple[tuple[str, Mapping[Key, Parsed[HttpRoute]] | Mapping[Key, Parsed[GrpcRoute]]], ...] = (
        (HTTP_ROUTE, objects.http_routes),
        (GRPC_ROUTE, objects.grpc_routes),
    )
    for kind, routes in kinds:
        for key, parsed in routes.items():
            route = parsed.value
            mesh_parents = [parent for parent in route.parent_refs if is_service_parent(parent)]
            if not mesh_parents:
                continue
            own = grants.with_parents(frozenset((p.namespace or route.namespace, p.name) for p in mesh_parents))
            if isinstance(route, GrpcRoute):
                rules, resolved = _grpc_rules(route, own, services)
            else:
                rules, resolved = _http_rules(route, own, services)
            problems = [str(problem) for problem in parsed.problems]
            parents = []
            for parent in mesh_parents:
                accepted, target = _mesh_parent(route, parent, problems, services)
                if target is not None:
                    found = rules_of.setdefault(target, [])
                    for precedence, gateway_rule in rules:
                        if (rule := _mesh_rule(gateway_rule)) is not None:
                            found.append((precedence, rule))
                    where = (origins or {}).get((kind, key), f"{kind} {key[0]}/{key[1]}")
                    said[target] = said.get(target, set()) | {where}
                parents.append(ParentStatus(_written(parent, route.namespace), (accepted, resolved)))
            statuses[kind][key] = RouteStatus(route.generation, tuple(parents))
    tables = []
    for (ref, port, consumer), found in rules_of.items():
        if port is not None:  # the Service-wide rules (of the same clients) apply to this port too
            found = found + rules_of.get((ref, None, consumer), [])
            said[(ref, port, consumer)] |= said.get((ref, None, consumer), set())
        ordered = tuple(rule for _, rule in sorted(found, key=lambda item: item[0]))
        if ordered:
            origin = ", ".join(sorted(said[(ref, port, consumer)]))
            name = mesh_route_name(ref, port, consumer)
            tables.append(RouteTable(name, ordered, service=ref, origin=origin, port=port, consumer=consumer))
    status = GatewayApiStatus(
        MappingProxyType({}), MappingProxyType(statuses[HTTP_ROUTE]), MappingProxyType(statuses[GRPC_ROUTE])
    )
    return MeshResolution(tuple(sorted(tables, key=lambda table: table.name)), status)


def _mesh_parent(
    route: HttpRoute | GrpcRoute, parent: ParentRef, problems: list[str], services: Mapping[ServiceRef, Service]
) -> tuple[Condition, tuple[ServiceRef, int | None, str] | None]:
    """The route's Accepted for the Service `parent`, and (that Service, the parentRef's port or
    None, the consumer namespace or "" for a producer route) when it is accepted."""
    generation = route.generation
    namespace = parent.namespace or route.namespace
    named = f"Service {namespace}/{parent.name}"
    if problems:
        return c.condition(c.ACCEPTED, False, c.REASON_UNSUPPORTED_VALUE, "; ".join(problems), generation), None
    if parent.section_name is not None:
        message = f"{named}: sectionName on a Service parent is not supported"
        return c.condition(c.ACCEPTED, False, c.REASON_UNSUPPORTED_VALUE, message, generation), None
    ref = ServiceRef(namespace, parent.name)
    service = services.get(ref)
    if service is None:
        return c.condition(c.ACCEPTED, False, c.REASON_NO_MATCHING_PARENT, f"{named} is not found", generation), None
    if parent.port is not None and service.port(parent.port) is None:
        message = f"{named} has no port {parent.port}"
        return c.condition(c.ACCEPTED, False, c.REASON_NO_MATCHING_PARENT, message, generation), None
    # A route in another namespace than its Service's is a consumer route: its own namespace's clients only.
    consumer = route.namespace if namespace != route.namespace else ""
    return c.condition(c.ACCEPTED, True, c.REASON_ACCEPTED, "", generation), (ref, parent.port, consumer)


def _mesh_rule(gateway_rule: GatewayRule) -> RouteRule | None:
    """A Gateway rule as a sidecar's route rule: its resolved backends only (None when it has none
    and no redirect); a PathPrefix, a prefix of whole segments, as the regex saying so unless the
    rule rewrites the prefix (which Envoy applies to prefix matches only; then `/api` also takes
    `/apiary`, as a policy-file prefix does)."""
    rule = gateway_rule.rule
    if not rule.backends and rule.redirect is None:
        return None
    path = rule.match.path
    # A prefix ending in "/" (`/`, a GRPCRoute's `/service/`) already ends at a segment's end.
    if path.kind is PathMatchKind.PREFIX and not path.value.endswith("/") and rule.prefix_rewrite is None:
        segments = PathMatch(PathMatchKind.REGEX, f"{re.escape(path.value)}(/.*)?")
        rule = dataclasses.replace(rule, match=dataclasses.replace(rule.match, path=segments))
    return rule


def conflicted_mesh_parents(status: GatewayApiStatus, lost: Mapping[ServiceRef, str]) -> GatewayApiStatus:
    """`status` with each Service parent in `lost` that was Accepted made Accepted=False, reason
    Conflicted, saying why (`lost`'s message): the route tables the Gateway API routes make for
    that Service lost to a route of higher precedence (the merge's rule), so none of them serves."""

    def mark(routes: Mapping[Key, RouteStatus]) -> Mapping[Key, RouteStatus]:
        found = dict(routes)
        for key, route in routes.items():
            parents = []
            for parent in route.parents:
                ref = parent.parent
                why = lost.get(ServiceRef(ref.namespace or key[0], ref.name)) if is_service_parent(ref) else None
                accepted = next((one for one in parent.conditions if one.type == c.ACCEPTED), None)
                if why is None or accepted is None or accepted.status != c.TRUE:
                    parents.append(parent)
                    continue
                refused = c.condition(c.ACCEPTED, False, c.REASON_CONFLICTED, why, accepted.observed_generation)
                others = tuple(one for one in parent.conditions if one.type != c.ACCEPTED)
                parents.append(ParentStatus(ref, (refused, *others)))
            found[key] = RouteStatus(route.generation, tuple(parents))
        return MappingProxyType(found)

    return dataclasses.replace(status, http_routes=mark(status.http_routes), grpc_routes=mark(status.grpc_routes))


def joined_status(gateways: GatewayApiStatus, mesh: GatewayApiStatus) -> GatewayApiStatus:
    """The status of `gateways` (`resolve`'s) with the Service parents of `mesh` (`resolve_mesh`'s)
    added to each route's parents."""

    def join(first: Mapping[Key, RouteStatus], second: Mapping[Key, RouteStatus]) -> Mapping[Key, RouteStatus]:
        if not second:
            return first
        found = dict(first)
        for key, status in second.items():
            before = found.get(key)
            found[key] = status if before is None else RouteStatus(before.generation, before.parents + status.parents)
        return MappingProxyType(found)

    return GatewayApiStatus(
        gateways.gateways,
        join(gateways.http_routes, mesh.http_routes),
        join(gateways.grpc_routes, mesh.grpc_routes),
        gateways.backend_tls_policies,
    )


# --- BackendTLSPolicy -------------------------------------------------------------------------

# The key of a ConfigMap's data holding the PEM CA certificates a BackendTLSPolicy names.
CA_CERTIFICATE_KEY = "ca.crt"
_PEM_CERT = "-----BEGIN CERTIFICATE-----"
_SAN_KINDS = {"Hostname": SanKind.DNS, "URI": SanKind.URI}


@dataclass(frozen=True, slots=True)
class _TlsTrust:
    """What a policy's validation resolved to: the PEM bundle (or the system store), and the
    ResolvedRefs condition's reason and message."""

    ca_certificates: str
    system: bool
    resolved: bool
    reason: str
    message: str

    @property
    def usable(self) -> bool:
        return self.system or bool(self.ca_certificates)


def resolve_backend_tls(
    resolution: Resolution,
    objects: GatewayApiObjects,
    services: Mapping[ServiceRef, Service],
    ca_certificates: Mapping[Key, str],
) -> Resolution:
    """`resolution` with the BackendTLSPolicies of `objects` applied: each served Gateway whose
    rules (backends or mirrors) reach a port of a Service a policy targets holds that port's
    `BackendTls`, and each such policy's status names that Gateway as an ancestor.

    `ca_certificates`: the `ca.crt` of each ConfigMap read, by (namespace, name); a ConfigMap
    absent from it is missing. The spec's rules: a target is a core Service (other kinds are
    ignored), narrowed to one port by `sectionName` (the port's name). For one port, a policy
    naming it by `sectionName` wins over one naming the whole Service; among policies naming the
    same Service and section, the oldest wins (then namespace/name), the others are
    `Accepted=False` `Conflicted` for the Gateways that reach it. A `caCertificateRefs` entry
    not a core ConfigMap is `ResolvedRefs=False` `InvalidKind`; one missing, or without PEM
    certificates under `ca.crt`, `InvalidCACertificateRef`, and with none valid the policy is
    `Accepted=False` `NoValidCACertificate`. Either way the spec's "connections using an invalid
    CACertificateRef MUST fail" with a 5xx holds: the Gateway's rules' share of traffic to that
    port becomes unresolved (answered 500, mirrors to it dropped), never sent in plain text.
    `wellKnownCACertificates: System` uses the proxy's system trust store. A policy with
    problems is `Accepted=False` `Invalid`. Pure: ConfigMaps are handed in."""
    policies = sorted(
        objects.backend_tls_policies.items(),
        key=lambda item: (item[1].value.created or "~", item[0]),
    )
    # (service, section or None) → the key of the policy applying there (the first, oldest).
    winners: dict[tuple[ServiceRef, str | None], Key] = {}
    conflicted: set[tuple[Key, ServiceRef, str | None]] = set()
    # (service, section or None) → every policy naming it, oldest first (for their status).
    naming: dict[tuple[ServiceRef, str | None], list[Key]] = {}
    for key, parsed in policies:
        for target in dict.fromkeys(_service_targets(parsed.value)):
            naming.setdefault(target, []).append(key)
            if not parsed.problems and winners.setdefault(target, key) != key:
                conflicted.add((key, *target))
    trust = {key: _trust(parsed.value, ca_certificates) for key, parsed in policies}
    # Gateway key → (service, port name) → BackendTls; policy key → ancestor → conditions
    applied: dict[Key, dict[tuple[ServiceRef, str], BackendTls]] = {}
    refused: dict[Key, set[tuple[ServiceRef, str]]] = {}
    ancestors: dict[Key, dict[Key, tuple[Condition, ...]]] = {}
    for gateway in resolution.gateways:
        gateway_key = (gateway.namespace, gateway.name)
        for ref, port in sorted(_reached_ports(gateway, services), key=lambda item: (str(item[0]), item[1])):
            policy_key, section = _applying(winners, ref, port)
            contenders = dict.fromkeys([*naming.get((ref, port), ()), *naming.get((ref, None), ())])
            for key in contenders:
                parsed = objects.backend_tls_policies[key]
                conditions = _policy_conditions(parsed, trust[key], key != policy_key, conflicted, ref, port)
                before = ancestors.setdefault(key, {}).get(gateway_key)
                ancestors[key][gateway_key] = _worse(before, conditions)
            if policy_key is None or (policy_key, ref, section) in conflicted:
                continue
            policy = objects.backend_tls_policies[policy_key].value
            found = trust[policy_key]
            if not found.resolved:
                refused.setdefault(gateway_key, set()).add((ref, port))
                continue
            applied.setdefault(gateway_key, {})[(ref, port)] = BackendTls(
                ref,
                port,
                policy.hostname,
                found.ca_certificates,
                found.system,
                tuple((_SAN_KINDS[san.type], san.value) for san in policy.subject_alt_names),
            )
    gateways = []
    for gateway in resolution.gateways:
        gateway_key = (gateway.namespace, gateway.name)
        if gateway_key in refused:
            gateway = _without_backends(gateway, refused[gateway_key], services)
        if by_port := applied.get(gateway_key):
            gateway = dataclasses.replace(
                gateway, backend_tls=tuple(v for _, v in sorted(by_port.items(), key=_port_order))
            )
        gateways.append(gateway)
    statuses = {
        key: PolicyStatus(
            objects.backend_tls_policies[key].value.generation,
            tuple(AncestorStatus(ancestor, conds) for ancestor, conds in sorted(found.items()))[:MAX_POLICY_ANCESTORS],
        )
        for key, found in sorted(ancestors.items())
    }
    status = dataclasses.replace(resolution.status, backend_tls_policies=MappingProxyType(statuses))
    return Resolution(tuple(gateways), status)


def _without_backends(
    gateway: Gateway, refused: set[tuple[ServiceRef, str]], services: Mapping[ServiceRef, Service]
) -> Gateway:
    """`gateway` with the backends on `refused` ports moved to each rule's unresolved share (and
    mirrors to them dropped): a policy applies there whose CA references do not all resolve."""

    def refuses(ref: ServiceRef, port: str | int | None) -> bool:
        service = services.get(ref)
        found = service.port(port) if service is not None else None
        return found is not None and (ref, found.name) in refused

    def without(gateway_rule: GatewayRule) -> GatewayRule:
        rule = gateway_rule.rule
        kept = tuple(b for b in rule.backends if not refuses(b.service, b.port))
        mirrors = tuple(m for m in rule.mirrors if not refuses(m.service, m.port))
        if len(kept) == len(rule.backends) and len(mirrors) == len(rule.mirrors):
            return gateway_rule
        lost = sum(b.weight for b in rule.backends if refuses(b.service, b.port))
        return dataclasses.replace(
            gateway_rule,
            rule=dataclasses.replace(rule, backends=kept, mirrors=mirrors),
            unresolved_weight=gateway_rule.unresolved_weight + lost,
        )

    listeners = tuple(
        dataclasses.replace(
            listener,
            hosts=tuple(
                dataclasses.replace(host, rules=tuple(without(rule) for rule in host.rules)) for host in listener.hosts
            ),
        )
        for listener in gateway.listeners
    )
    return dataclasses.replace(gateway, listeners=listeners)


def _port_order(item: tuple[tuple[ServiceRef, str], BackendTls]) -> tuple[str, str, str]:
    (ref, port), _ = item
    return (ref.namespace, ref.name, port)


def _service_targets(policy: BackendTlsPolicy) -> list[tuple[ServiceRef, str | None]]:
    """The (Service, sectionName) pairs `policy` targets: core Services in its namespace only."""
    return [
        (ServiceRef(policy.namespace, target.name), target.section_name)
        for target in policy.target_refs
        if target.group == CORE_GROUP and target.kind == "Service"
    ]


def _applying(
    winners: Mapping[tuple[ServiceRef, str | None], Key], ref: ServiceRef, port: str
) -> tuple[Key | None, str | None]:
    """The policy applying to `port` of `ref` and the section it won: one naming the port first."""
    for section in (port, None):
        key = winners.get((ref, section))
        if key is not None:
            return key, section
    return None, None


def _reached_ports(gateway: Gateway, services: Mapping[ServiceRef, Service]) -> set[tuple[ServiceRef, str]]:
    """Every (Service, port name) the rules of `gateway` send traffic (or mirrored copies) to."""
    found: set[tuple[ServiceRef, str]] = set()
    for listener in gateway.listeners:
        for host in listener.hosts:
            for gateway_rule in host.rules:
                rule = gateway_rule.rule
                targets = [(b.service, b.port) for b in rule.backends] + [(m.service, m.port) for m in rule.mirrors]
                for ref, port in targets:
                    service = services.get(ref)
                    found_port = service.port(port) if service is not None else None
                    if found_port is not None:  # the port the translators' route will use
                        found.add((ref, found_port.name))
    return found


def _trust(policy: BackendTlsPolicy, ca_certificates: Mapping[Key, str]) -> _TlsTrust:
    """What `policy`'s validation resolves to against the ConfigMaps' `ca.crt`s."""
    if policy.well_known_ca_certificates == "System":
        return _TlsTrust("", True, True, c.REASON_RESOLVED_REFS, "uses the system trust store")
    bundles: list[str] = []
    reason, message = c.REASON_RESOLVED_REFS, "all CA certificate references resolved"
    for ref in policy.ca_certificate_refs:
        if ref.group != CORE_GROUP or ref.kind != "ConfigMap":
            reason, message = c.REASON_INVALID_KIND, f"{ref.group}/{ref.kind} {ref.name}: only core ConfigMaps hold CAs"
            continue
        text = ca_certificates.get((policy.namespace, ref.name))
        if text is None:
            if reason != c.REASON_INVALID_KIND:
                reason = c.REASON_INVALID_CA_CERTIFICATE_REF
                message = f"ConfigMap {policy.namespace}/{ref.name} does not exist or has no {CA_CERTIFICATE_KEY}"
            continue
        if _PEM_CERT not in text:
            if reason != c.REASON_INVALID_KIND:
                reason = c.REASON_INVALID_CA_CERTIFICATE_REF
                message = f"ConfigMap {policy.namespace}/{ref.name}: {CA_CERTIFICATE_KEY} holds no PEM certificate"
            continue
        bundles.append(text if text.endswith("\n") else text + "\n")
    resolved = reason == c.REASON_RESOLVED_REFS
    return _TlsTrust("".join(bundles), False, resolved, reason, message)


def _policy_conditions(
    parsed: Parsed[BackendTlsPolicy],
    trust: _TlsTrust,
    loses: bool,
    conflicted: set[tuple[Key, ServiceRef, str | None]],
    ref: ServiceRef,
    port: str,
) -> tuple[Condition, ...]:
    """Accepted and ResolvedRefs of a policy for one port of `ref` a Gateway reaches. `loses`: a
    more specific or older policy applies there."""
    policy = parsed.value
    generation = policy.generation
    key = (policy.namespace, policy.name)
    resolved = c.condition(c.RESOLVED_REFS, trust.resolved, trust.reason, trust.message, generation)
    if parsed.problems:
        why = "; ".join(str(problem) for problem in parsed.problems)
        accepted = c.condition(c.ACCEPTED, False, c.REASON_INVALID, why, generation)
    elif not trust.usable:
        accepted = c.condition(c.ACCEPTED, False, c.REASON_NO_VALID_CA_CERTIFICATE, trust.message, generation)
    elif loses and any((key, ref, section) in conflicted for section in (port, None)):
        message = f"another policy applies to Service {ref} port {port}: the oldest wins"
        accepted = c.condition(c.ACCEPTED, False, c.REASON_CONFLICTED, message, generation)
    else:
        accepted = c.condition(c.ACCEPTED, True, c.REASON_ACCEPTED, "the policy is applied", generation)
    return (accepted, resolved)


def _worse(before: tuple[Condition, ...] | None, now: tuple[Condition, ...]) -> tuple[Condition, ...]:
    """Of two condition sets for one ancestor, the one not accepted (a Gateway reaching several
    targeted ports reports the policy's worst)."""
    if before is None:
        return now
    return now if before[0].status == c.TRUE and now[0].status != c.TRUE else before
