"""The Gateway API rules the conformance suite checks end to end, checked here on the translation
and the resolution alone (pure, fast), one named case each:

- HTTPRouteHostnameIntersection, HTTPRouteListenerPortMatching: the backend sees the Host header as
  the client sent it (port included); virtual hosts match whatever port the Host names.
- HTTPRouteRedirectPortAndScheme: a redirect without port or scheme names the Gateway listener's
  port (left out when it is the scheme's own), never the proxy's offset port.
- HTTPRouteTimeoutBackendRequest: `timeouts.backendRequest` bounds the request to the backend.
- GatewayHTTPListenerIsolation: a host gets only the rules of the most specific listener matching it.
- GatewayInvalidParametersRef: a Gateway naming infrastructure parameters is not Accepted
  (`InvalidParameters`) and not served.
"""

from __future__ import annotations

from typing import Any

import pytest
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (
    HttpConnectionManager,
)

from meshplane.discovery.gateway_api.conditions import ACCEPTED, REASON_INVALID_PARAMETERS
from meshplane.discovery.gateway_api.http_routes import parse_http_route
from meshplane.model import (
    Endpoint,
    Gateway,
    GatewayHost,
    GatewayListener,
    GatewayRule,
    ListenerProtocol,
    Mesh,
    PathMatch,
    PathMatchKind,
    ProxyGroup,
    ProxyRole,
    Redirect,
    RetryPolicy,
    RouteMatch,
    RouteRule,
    Service,
    ServicePort,
    ServiceRef,
    WeightedBackend,
)
from meshplane.xds.translate import translate
from meshplane.xds.types import TypeUrl
from tests.test_gateway_api_resolve import gateway, http, resolved, route

WEB = ServiceRef("shop", "web")
GROUP = ProxyGroup(ProxyRole.GATEWAY, gateway="shop/edge", listen_address="127.0.0.1", port_offset=8000)


def mesh_of(*listeners: GatewayListener) -> Mesh:
    web = Service("web", "shop", (ServicePort("http", 8080),), (Endpoint("127.0.0.2", 9000, "http"),))
    return Mesh.of([web], gateways=[Gateway("shop", "edge", listeners)])


def forward(path: str, **more: Any) -> GatewayRule:
    match = RouteMatch(PathMatch(PathMatchKind.EXACT, path))
    return GatewayRule(RouteRule(match, (WeightedBackend(WEB, 8080),), **more))


def redirect(path: str, **more: Any) -> GatewayRule:
    return GatewayRule(RouteRule(RouteMatch(PathMatch(PathMatchKind.EXACT, path)), (), redirect=Redirect(**more)))


def route_configs(mesh: Mesh) -> dict[str, Any]:
    configs: tuple[Any, ...] = translate(mesh, GROUP).resources[TypeUrl.ROUTE]
    return {config.name: config for config in configs}


def hosts_and_paths(config: Any) -> dict[str, list[str]]:
    return {vhost.domains[0]: [route.match.path for route in vhost.routes] for vhost in config.virtual_hosts}


def test_the_backend_sees_the_host_header_port_and_domains_match_any_port() -> None:
    mesh = mesh_of(GatewayListener("http", 8080, ListenerProtocol.HTTP, hosts=(GatewayHost("*", (forward("/"),)),)))
    listeners: tuple[Any, ...] = translate(mesh, GROUP).resources[TypeUrl.LISTENER]
    (listener,) = listeners
    hcm = HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    assert not hcm.strip_any_host_port
    assert not hcm.strip_matching_host_port
    assert route_configs(mesh)["gateway_16080"].ignore_port_in_host_matching


@pytest.mark.parametrize(
    ("port", "protocol", "rule", "expected"),
    [
        pytest.param(8080, ListenerProtocol.HTTP, redirect("/r", hostname="example.org"), 8080, id="listener-8080"),
        pytest.param(80, ListenerProtocol.HTTP, redirect("/r", hostname="example.org"), 0, id="listener-80-omitted"),
        pytest.param(443, ListenerProtocol.HTTPS, redirect("/r"), 0, id="listener-443-omitted"),
        pytest.param(8443, ListenerProtocol.HTTPS, redirect("/r"), 8443, id="listener-8443"),
        pytest.param(8080, ListenerProtocol.HTTP, redirect("/r", scheme="https"), 0, id="scheme-given-its-port"),
        pytest.param(8080, ListenerProtocol.HTTP, redirect("/r", port=9090), 9090, id="port-given"),
    ],
)
def test_a_redirect_without_port_names_the_gateway_listeners_port(
    port: int, protocol: ListenerProtocol, rule: GatewayRule, expected: int
) -> None:
    certificates = ("shop/tls",) if protocol is ListenerProtocol.HTTPS else ()
    listener = GatewayListener("l", port, protocol, certificates=certificates, hosts=(GatewayHost("*", (rule,)),))
    config = route_configs(mesh_of(listener))[f"gateway_{port + GROUP.port_offset}"]
    assert config.virtual_hosts[0].routes[0].redirect.port_redirect == expected


@pytest.mark.parametrize(
    ("more", "route_timeout", "per_try"),
    [
        pytest.param({"backend_timeout": 1.0}, 1.0, None, id="backend-only"),
        pytest.param({"timeout": 10.0, "backend_timeout": 1.0}, 1.0, None, id="the-stricter-of-both"),
        pytest.param({"timeout": 0.0, "backend_timeout": 2.0}, 2.0, None, id="request-unbounded"),
        pytest.param({"timeout": 3.0, "backend_timeout": 0.0}, 3.0, None, id="backend-unbounded"),
        pytest.param({"timeout": 10.0, "backend_timeout": 1.0, "retry": RetryPolicy()}, 10.0, 1.0, id="per-try"),
    ],
)
def test_a_backend_request_timeout_bounds_the_request_to_the_backend(
    more: dict[str, Any], route_timeout: float, per_try: float | None
) -> None:
    rule = forward("/slow", **more)
    listener = GatewayListener("http", 80, ListenerProtocol.HTTP, hosts=(GatewayHost("*", (rule,)),))
    action = route_configs(mesh_of(listener))["gateway_8080"].virtual_hosts[0].routes[0].route
    assert action.timeout.ToTimedelta().total_seconds() == route_timeout
    if per_try is None:
        assert not action.HasField("retry_policy")
    else:
        assert action.retry_policy.per_try_timeout.ToTimedelta().total_seconds() == per_try


def test_a_backend_request_timeout_is_resolved_from_the_http_route() -> None:
    rules = [{"backendRefs": [{"name": "web", "port": 8080}], "timeouts": {"request": "10s", "backendRequest": "1s"}}]
    resolution = resolved([gateway([http()])], [route(rules=rules)])
    (served,) = resolution.gateways
    (rule,) = served.listeners[0].hosts[0].rules
    assert (rule.rule.timeout, rule.rule.backend_timeout) == (10.0, 1.0)
    assert not parse_http_route(route(rules=rules)).problems


# The listeners and routes of upstream's gateway-http-listener-isolation-with-hostname-intersection:
# each route's hostnames already intersected with its listener's hostname, as resolution gives them.
ISOLATION_LISTENERS = (
    GatewayListener(
        "empty-hostname",
        80,
        ListenerProtocol.HTTP,
        hosts=(
            GatewayHost("*.example.com", (forward("/empty-hostname"),)),
            GatewayHost("bar.com", (forward("/empty-hostname"),)),
        ),
    ),
    GatewayListener(
        "wildcard-example-com",
        80,
        ListenerProtocol.HTTP,
        hostname="*.example.com",
        hosts=(GatewayHost("*.example.com", (forward("/wildcard-example-com"),)),),
    ),
    GatewayListener(
        "wildcard-foo-example-com",
        80,
        ListenerProtocol.HTTP,
        hostname="*.foo.example.com",
        hosts=(
            GatewayHost("*.foo.example.com", (forward("/wildcard-foo-example-com"),)),
            GatewayHost("abc.foo.example.com", (forward("/wildcard-foo-example-com"),)),
        ),
    ),
    GatewayListener(
        "abc-foo-example-com",
        80,
        ListenerProtocol.HTTP,
        hostname="abc.foo.example.com",
        hosts=(GatewayHost("abc.foo.example.com", (forward("/abc-foo-example-com"),)),),
    ),
)


def test_a_host_gets_only_the_rules_of_the_most_specific_listener_matching_it() -> None:
    config = route_configs(mesh_of(*ISOLATION_LISTENERS))["gateway_8080"]
    assert hosts_and_paths(config) == {
        "*.example.com": ["/wildcard-example-com"],
        "*.foo.example.com": ["/wildcard-foo-example-com"],
        "abc.foo.example.com": ["/abc-foo-example-com"],
        "bar.com": ["/empty-hostname"],
    }


def test_a_listener_hostname_without_its_own_rules_still_isolates_its_hosts() -> None:
    listeners = (
        GatewayListener("any", 80, ListenerProtocol.HTTP, hosts=(GatewayHost("*", (forward("/any"),)),)),
        GatewayListener(
            "wildcard",
            80,
            ListenerProtocol.HTTP,
            hostname="*.example.com",
            hosts=(GatewayHost("a.example.com", (forward("/a"),)),),
        ),
    )
    config = route_configs(mesh_of(*listeners))["gateway_8080"]
    # b.example.com belongs to the wildcard listener, which has no route for it: 404, not /any.
    assert hosts_and_paths(config) == {"*": ["/any"], "*.example.com": [], "a.example.com": ["/a"]}


def test_listeners_without_overlap_keep_their_virtual_hosts_as_they_were() -> None:
    listeners = (
        GatewayListener(
            "a", 80, ListenerProtocol.HTTP, hostname="a.example", hosts=(GatewayHost("a.example", (forward("/a"),)),)
        ),
        GatewayListener(
            "b", 80, ListenerProtocol.HTTP, hostname="b.example", hosts=(GatewayHost("b.example", (forward("/b"),)),)
        ),
    )
    config = route_configs(mesh_of(*listeners))["gateway_8080"]
    assert hosts_and_paths(config) == {"a.example": ["/a"], "b.example": ["/b"]}


@pytest.mark.parametrize(
    "reference",
    [
        pytest.param({"group": "invalid.io", "kind": "InvalidParameters", "name": "invalid"}, id="unsupported-kind"),
        pytest.param({"group": "", "kind": "ConfigMap", "name": "missing"}, id="missing-configmap"),
    ],
)
def test_a_gateway_naming_infrastructure_parameters_is_not_accepted(reference: dict[str, str]) -> None:
    resolution = resolved([gateway([http()], infrastructure={"parametersRef": reference})])
    assert resolution.gateways == ()
    (status,) = resolution.status.gateways.values()
    accepted = next(condition for condition in status.conditions if condition.type == ACCEPTED)
    assert (accepted.status, accepted.reason) == ("False", REASON_INVALID_PARAMETERS)
    assert reference["name"] in accepted.message


def test_a_parameters_ref_missing_its_kind_is_a_problem_with_a_reason() -> None:
    resolution = resolved([gateway([http()], infrastructure={"parametersRef": {"group": "x.io", "name": "p"}})])
    assert resolution.gateways == ()
    (status,) = resolution.status.gateways.values()
    accepted = next(condition for condition in status.conditions if condition.type == ACCEPTED)
    assert accepted.status == "False"
    assert "parametersRef.kind" in accepted.message
