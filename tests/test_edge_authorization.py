"""Device policy at the edge gateway, without Envoy running (but `envoy --mode validate` on the
output): what the model decides per site and class, what the translation puts in LDS and RDS, and
that a registration changes RDS only."""

from __future__ import annotations

import base64
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2

from meshplane.model import (
    Device,
    DeviceEndpoint,
    Endpoint,
    Mesh,
    Mirror,
    PathMatch,
    ProxyGroup,
    ProxyRole,
    Redirect,
    RouteMatch,
    RouteRule,
    RouteTable,
    Service,
    ServicePort,
    Site,
    WeightedBackend,
)
from meshplane.model.changes import MeshChanges
from meshplane.model.device_policy import (
    ClassAccess,
    DefaultAccess,
    DevicePolicy,
    DeviceRateLimit,
    JwksUri,
    JwtProvider,
    PathKind,
    PathRule,
    ServiceAccess,
    site_device_policy,
)
from meshplane.model.problems import ProblemKind
from meshplane.model.services import ServiceRef
from meshplane.xds import names
from meshplane.xds.translate import translate
from meshplane.xds.translate.edge_authorization import (
    AUTHORIZATION_FILTER,
    CALLER_FILTER,
    CALLER_HEADER,
    JWT_FILTER,
    RATE_LIMIT_FILTER,
)
from meshplane.xds.types import TypeUrl
from tests.golden.test_envoy_validation import envoy_validate, validation_bootstrap

GATEWAY = ProxyGroup(ProxyRole.EDGE_GATEWAY, outbound_port=15080, site="gym")
CATALOG = ServiceRef("default", "catalog")
BILLING = ServiceRef("default", "billing")


def ec_jwks() -> str:
    """A JWKS of one new P-256 key."""
    numbers = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()

    def member(value: int) -> str:
        return base64.urlsafe_b64encode(value.to_bytes(32, "big")).rstrip(b"=").decode()

    return json.dumps({"keys": [{"kty": "EC", "crv": "P-256", "x": member(numbers.x), "y": member(numbers.y)}]})


JWKS = ec_jwks()
OFF_CURVE = json.dumps({"keys": [{"kty": "EC", "crv": "P-256", "x": "A" * 43, "y": "A" * 43}]})


def service(ref: ServiceRef, port: int = 8080) -> Service:
    return Service(ref.name, ref.namespace, (ServicePort("http", port),), (Endpoint("10.0.0.1", port, "http"),))


def device(name: str, device_class: str, address: str) -> Device:
    return Device(name, device_class, "gym", (DeviceEndpoint(address, 8080),))


BIKE = device("bike-1", "bike", "198.18.0.2")
TREAD = device("tread-1", "tread", "198.18.0.3")
BIKES_TO_CATALOG = DevicePolicy(
    "bikes",
    classes=("bike",),
    allow=(ServiceAccess(CATALOG, (PathRule(PathKind.PREFIX, "/rides"),), ("GET",)),),
    rate_limit=DeviceRateLimit(5, 1.0, 10),
)


def mesh(
    *policies: DevicePolicy, devices: tuple[Device, ...] = (BIKE, TREAD), routes: tuple[RouteTable, ...] = ()
) -> Mesh:
    return Mesh.of(
        [service(CATALOG), service(BILLING)],
        routes=routes,
        sites=[Site("gym", "local", device_ranges=("198.18.0.0/24",))],
        devices=list(devices),
        device_policies=list(policies),
    )


def built(m: Mesh) -> dict[TypeUrl, dict[str, Any]]:
    translation = translate(m, GATEWAY)
    return {
        kind: {getattr(message, "name"): message for message in messages}  # noqa: B009
        for kind, messages in translation.resources.items()
        if kind is not TypeUrl.ENDPOINT  # assignments are named by cluster_name
    }


def device_listener_filters(resources: dict[TypeUrl, dict[str, Any]]) -> list[str]:
    listener = resources[TypeUrl.LISTENER][names.gateway_from_devices_listener_name(15080)]
    manager = http_connection_manager_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    return [f.name for f in manager.http_filters]


def outbound(resources: dict[TypeUrl, dict[str, Any]]) -> Any:
    return resources[TypeUrl.ROUTE][names.gateway_from_devices_route_name(15080)]


def vhost(resources: dict[TypeUrl, dict[str, Any]], ref: ServiceRef) -> Any:
    name = names.virtual_host_name(ref, ServicePort("http", 8080))
    return next(v for v in outbound(resources).virtual_hosts if v.name == name)


def rbac_policies(config: Any) -> dict[str, Any]:
    per_route = rbac_pb2.RBACPerRoute()
    config.typed_per_filter_config[AUTHORIZATION_FILTER].Unpack(per_route)
    return dict(per_route.rbac.rules.policies)


# --- the model ---


def test_a_site_no_policy_selects_is_not_governed() -> None:
    assert site_device_policy((dataclasses.replace(BIKES_TO_CATALOG, sites=("other",)),), "gym", {"bike"}) is None


def test_restricted_classes_get_their_allow_list_and_others_everything_unless_default_deny() -> None:
    policy = site_device_policy((BIKES_TO_CATALOG,), "gym", {"bike", "tread"})
    assert policy is not None
    assert policy.access("bike").services == BIKES_TO_CATALOG.allow
    assert policy.access("tread") == ClassAccess(None, None)
    assert policy.unidentified_allowed
    deny = DevicePolicy("zero-trust", default=DefaultAccess.DENY)
    policy = site_device_policy((BIKES_TO_CATALOG, deny), "gym", {"bike", "tread"})
    assert policy is not None
    assert policy.access("tread").services == ()
    assert not policy.unidentified_allowed


def test_the_strictest_rate_limit_holds() -> None:
    loose = DevicePolicy("loose", classes=("bike",), rate_limit=DeviceRateLimit(100))
    policy = site_device_policy((BIKES_TO_CATALOG, loose), "gym", {"bike"})
    assert policy is not None
    assert policy.access("bike").rate_limit == DeviceRateLimit(5, 1.0, 10)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        pytest.param(DevicePolicy("x", classes=("Bike",)), "classes: 'Bike' is not a valid name", id="class"),
        pytest.param(
            DevicePolicy("x", sites=("gym",), classes=("bike",), default=DefaultAccess.DENY),
            "default applies",
            id="default-with-classes",
        ),
        pytest.param(
            DevicePolicy("x", allow=(ServiceAccess(CATALOG, (PathRule(PathKind.EXACT, "rides"),)),)),
            "must start with /",
            id="path",
        ),
        pytest.param(
            DevicePolicy("x", allow=(ServiceAccess(CATALOG, methods=("FETCH",)),)), "method 'FETCH'", id="method"
        ),
        pytest.param(DevicePolicy("x", rate_limit=DeviceRateLimit(0)), "requests 0 is out of range", id="rate"),
        pytest.param(DevicePolicy("x", rate_limit=DeviceRateLimit(1, float("nan"))), "interval nan", id="nan"),
        pytest.param(DevicePolicy("x", require_jwt=(ServiceAccess(CATALOG),)), "needs jwt_providers", id="no-provider"),
        pytest.param(
            DevicePolicy("x", jwt_providers=(JwtProvider("p", "https://issuer", jwks="{}"),)),
            "non-empty list `keys`",
            id="jwks",
        ),
        pytest.param(
            DevicePolicy("x", jwt_providers=(JwtProvider("p", "i", jwks=OFF_CURVE),)),
            "not a usable EC public key",
            id="off-curve",
        ),
        pytest.param(
            DevicePolicy("x", jwt_providers=(JwtProvider("p", "i", jwks=JWKS, jwks_uri=JwksUri("a", 80, "/")),)),
            "exactly one of",
            id="two-key-sources",
        ),
    ],
)
def test_bad_policies_are_problems_naming_them(policy: DevicePolicy, expected: str) -> None:
    problems = mesh(policy).problems()
    assert any(expected in problem.message and "device policy x" in problem.message for problem in problems), problems


def test_unknown_sites_and_twice_named_policies_are_problems() -> None:
    problems = mesh(DevicePolicy("a", sites=("nowhere",)), DevicePolicy("a")).problems()
    assert {problem.kind for problem in problems} == {ProblemKind.UNKNOWN_SITE, ProblemKind.DUPLICATE}


def test_a_policy_change_is_a_sites_change() -> None:
    assert MeshChanges.between(mesh(), mesh(BIKES_TO_CATALOG)) == MeshChanges(sites=True)


# --- the translation ---


def test_an_ungoverned_site_keeps_its_listener_and_routes() -> None:
    before = built(mesh())
    assert device_listener_filters(before) == ["envoy.filters.http.router"]
    assert AUTHORIZATION_FILTER not in outbound(before).typed_per_filter_config


def test_a_governed_site_gets_the_policy_filters_in_order() -> None:
    resources = built(mesh(BIKES_TO_CATALOG))
    assert device_listener_filters(resources) == [
        CALLER_FILTER,
        AUTHORIZATION_FILTER,
        RATE_LIMIT_FILTER,
        "envoy.filters.http.router",
    ]
    assert CALLER_HEADER in outbound(resources).request_headers_to_remove


def test_the_restricted_service_lists_its_classes_and_the_rest_excludes_restricted_ones() -> None:
    resources = built(mesh(BIKES_TO_CATALOG))
    catalog = rbac_policies(vhost(resources, CATALOG))
    assert set(catalog) == {"class/bike", "class/tread", "unidentified"}
    bike = catalog["class/bike"]
    assert "/rides/" in str(bike.permissions[0])
    assert "GET" in str(bike.permissions[0])
    assert "198.18.0.2" in str(bike.principals[0])
    assert "x-device-class" in str(bike.principals[0])
    # Billing has no per-host config: the RouteConfiguration's holds, which leaves bikes out.
    assert AUTHORIZATION_FILTER not in vhost(resources, BILLING).typed_per_filter_config
    assert set(rbac_policies(outbound(resources))) == {"class/tread", "unidentified"}


def test_default_deny_leaves_unidentified_callers_and_unrestricted_classes_out() -> None:
    resources = built(mesh(BIKES_TO_CATALOG, DevicePolicy("zero-trust", default=DefaultAccess.DENY)))
    assert set(rbac_policies(vhost(resources, CATALOG))) == {"class/bike"}
    assert rbac_policies(outbound(resources)) == {}


def test_each_device_of_a_limited_class_has_its_own_bucket() -> None:
    resources = built(
        mesh(
            BIKES_TO_CATALOG,
            devices=(BIKE, dataclasses.replace(BIKE, id="bike-2", endpoints=(DeviceEndpoint("198.18.0.4", 1),)), TREAD),
        )
    )
    config = local_rate_limit_pb2.LocalRateLimit()
    outbound(resources).typed_per_filter_config[RATE_LIMIT_FILTER].Unpack(config)
    assert [descriptor.entries[0].value for descriptor in config.descriptors] == ["198.18.0.2", "198.18.0.4"]
    assert {descriptor.token_bucket.max_tokens for descriptor in config.descriptors} == {10}
    assert config.rate_limits[0].actions[0].request_headers.header_name == CALLER_HEADER


def test_a_registration_changes_the_routes_and_never_the_listener() -> None:
    before = built(mesh(BIKES_TO_CATALOG, devices=(BIKE,)))
    after = built(mesh(BIKES_TO_CATALOG, devices=(BIKE, TREAD)))
    assert before[TypeUrl.LISTENER] == after[TypeUrl.LISTENER]
    assert outbound(before) != outbound(after)


JWT_POLICY = DevicePolicy(
    "mobile",
    jwt_providers=(JwtProvider("auth", "https://auth.example", ("fitness-app",), jwks=JWKS),),
    require_jwt=(ServiceAccess(BILLING),),
)


def test_jwt_requirements_are_per_service_in_rds_with_the_providers_in_lds() -> None:
    resources = built(mesh(JWT_POLICY))
    assert device_listener_filters(resources)[-2] == JWT_FILTER
    per_route = jwt_pb2.PerRouteConfig()
    vhost(resources, BILLING).typed_per_filter_config[JWT_FILTER].Unpack(per_route)
    assert per_route.requirement_name == "mobile"
    assert JWT_FILTER not in vhost(resources, CATALOG).typed_per_filter_config


def test_a_jwks_uri_on_a_mesh_service_is_fetched_over_its_cluster() -> None:
    uri = JwtProvider("auth", "https://auth.example", jwks_uri=JwksUri("catalog.default", 8080, "/jwks.json"))
    resources = built(mesh(dataclasses.replace(JWT_POLICY, jwt_providers=(uri,))))
    listener = resources[TypeUrl.LISTENER][names.gateway_from_devices_listener_name(15080)]
    manager = http_connection_manager_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    config = jwt_pb2.JwtAuthentication()
    next(f for f in manager.http_filters if f.name == JWT_FILTER).typed_config.Unpack(config)
    remote = config.providers["mobile/auth"].remote_jwks.http_uri
    assert remote.cluster == names.cluster_name(CATALOG, ServicePort("http", 8080))


# --- enforcement follows where traffic goes ---

BIKES_TO_BILLING = DevicePolicy("bikes", classes=("bike",), allow=(ServiceAccess(BILLING),))
TREADS_TO_CATALOG = DevicePolicy("treads", classes=("tread",), allow=(ServiceAccess(CATALOG),))


def rule(*backends: ServiceRef, prefix: str = "/", **options: Any) -> RouteRule:
    return RouteRule(
        RouteMatch(PathMatch(value=prefix)), tuple(WeightedBackend(ref, weight=50) for ref in backends), **options
    )


def table_host(resources: dict[TypeUrl, dict[str, Any]], table: str) -> Any:
    return next(v for v in outbound(resources).virtual_hosts if v.name == names.route_table_virtual_host_name(table))


def route_named(host: Any, name: str) -> Any:
    return next(route for route in host.routes if route.name == name)


def test_a_route_table_host_carries_its_backends_allow_list() -> None:
    table = RouteTable("pay", (rule(BILLING),), hosts=("pay.example",))
    resources = built(mesh(BIKES_TO_BILLING, TREADS_TO_CATALOG, routes=(table,)))
    # Treads may not reach billing, bikes may: so through the table's host too (and, without
    # `default: deny`, callers that are no device, as everywhere).
    assert set(rbac_policies(table_host(resources, "pay"))) == {"class/bike", "unidentified"}


def test_a_route_table_host_needs_the_token_its_backend_requires() -> None:
    table = RouteTable("pay", (rule(BILLING),), hosts=("pay.example",))
    resources = built(mesh(JWT_POLICY, routes=(table,)))
    per_route = jwt_pb2.PerRouteConfig()
    table_host(resources, "pay").typed_per_filter_config[JWT_FILTER].Unpack(per_route)
    assert per_route.requirement_name == "mobile"


def test_a_services_table_sending_elsewhere_is_checked_per_route() -> None:
    # Catalog's own host: /pay goes to billing, the rest to catalog.
    table = RouteTable(
        "catalog", (rule(BILLING, prefix="/pay", name="pay"), rule(CATALOG, name="rest")), service=CATALOG
    )
    resources = built(mesh(TREADS_TO_CATALOG, JWT_POLICY, routes=(table,)))
    host = vhost(resources, CATALOG)
    assert AUTHORIZATION_FILTER not in host.typed_per_filter_config
    assert set(rbac_policies(route_named(host, "rest"))) == {"class/bike", "class/tread", "unidentified"}
    # Billing is no service treads may reach: the route takes the RouteConfiguration's allow-list,
    # which leaves them out (bikes, which no policy restricts, reach everything).
    assert AUTHORIZATION_FILTER not in route_named(host, "pay").typed_per_filter_config
    assert set(rbac_policies(outbound(resources))) == {"class/bike", "unidentified"}
    per_route = jwt_pb2.PerRouteConfig()
    route_named(host, "pay").typed_per_filter_config[JWT_FILTER].Unpack(per_route)
    assert per_route.requirement_name == "mobile"
    assert JWT_FILTER not in route_named(host, "rest").typed_per_filter_config


def test_weighted_backends_and_mirrors_need_every_services_allowance() -> None:
    split = RouteTable(
        "split",
        (rule(CATALOG, BILLING, name="split"), rule(CATALOG, name="mirrored", mirrors=(Mirror(BILLING),))),
        hosts=("split.example",),
    )
    both = DevicePolicy("both", classes=("row",), allow=(ServiceAccess(CATALOG), ServiceAccess(BILLING)))
    row = device("row-1", "row", "198.18.0.5")
    resources = built(mesh(BIKES_TO_BILLING, TREADS_TO_CATALOG, both, devices=(BIKE, TREAD, row), routes=(split,)))
    host = table_host(resources, "split")
    # One guard for both routes (both reach catalog and billing): said once, on the host.
    assert set(rbac_policies(host)) == {"class/row", "unidentified"}


def test_a_path_limited_allowance_grants_nothing_where_the_route_rewrites_the_path() -> None:
    table = RouteTable("rides", (rule(CATALOG, prefix="/r", prefix_rewrite="/rides"),), hosts=("rides.example",))
    resources = built(mesh(BIKES_TO_CATALOG, routes=(table,)))
    assert "class/bike" not in rbac_policies(table_host(resources, "rides"))
    assert "class/bike" in rbac_policies(vhost(resources, CATALOG))


def test_default_deny_covers_route_tables_and_redirects() -> None:
    tables = (
        RouteTable("pay", (rule(BILLING),), hosts=("pay.example",)),
        RouteTable("old", (RouteRule(RouteMatch(), (), redirect=Redirect(hostname="new.example")),), hosts=("old",)),
    )
    deny = DevicePolicy("zero-trust", default=DefaultAccess.DENY)
    resources = built(mesh(BIKES_TO_CATALOG, deny, routes=tables))
    assert rbac_policies(outbound(resources)) == {}  # every host without its own allow-list: nobody
    assert AUTHORIZATION_FILTER not in table_host(resources, "old").typed_per_filter_config
    assert AUTHORIZATION_FILTER not in table_host(resources, "pay").typed_per_filter_config


def test_a_route_needing_tokens_nobody_can_check_is_closed() -> None:
    uri = JwtProvider("auth", "https://auth.example", jwks_uri=JwksUri("nowhere.default", 80, "/jwks"))
    table = RouteTable("pay", (rule(BILLING),), hosts=("pay.example",))
    resources = built(mesh(dataclasses.replace(JWT_POLICY, jwt_providers=(uri,)), routes=(table,)))
    assert rbac_policies(table_host(resources, "pay")) == {}
    assert rbac_policies(vhost(resources, BILLING)) == {}


def test_weighted_backends_required_by_two_policies_need_both_tokens() -> None:
    other = DevicePolicy(
        "partners",
        jwt_providers=(JwtProvider("partner", "https://partner.example", jwks=JWKS),),
        require_jwt=(ServiceAccess(CATALOG),),
    )
    table = RouteTable("split", (rule(CATALOG, BILLING),), hosts=("split.example",))
    resources = built(mesh(JWT_POLICY, other, routes=(table,)))
    per_route = jwt_pb2.PerRouteConfig()
    table_host(resources, "split").typed_per_filter_config[JWT_FILTER].Unpack(per_route)
    assert per_route.requirement_name == "mobile&partners"
    config = jwt_filter_config(resources)
    both = config.requirement_map["mobile&partners"].requires_all.requirements
    assert [requirement.provider_name for requirement in both] == ["mobile/auth", "partners/partner"]
    assert set(config.requirement_map) == {"mobile", "partners", "mobile&partners"}


def jwt_filter_config(resources: dict[TypeUrl, dict[str, Any]]) -> Any:
    listener = resources[TypeUrl.LISTENER][names.gateway_from_devices_listener_name(15080)]
    manager = http_connection_manager_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    config = jwt_pb2.JwtAuthentication()
    next(f for f in manager.http_filters if f.name == JWT_FILTER).typed_config.Unpack(config)
    return config


def test_jwt_paths_and_methods_are_reported_as_not_enforced() -> None:
    partial = dataclasses.replace(
        JWT_POLICY, require_jwt=(ServiceAccess(BILLING, (PathRule(PathKind.PREFIX, "/pay"),), ("POST",)),)
    )
    [warning] = partial.unenforced()
    assert "device policy mobile: require_jwt 1 (default/billing)" in warning
    assert warning in translate(mesh(partial), GATEWAY).warnings
    assert JWT_POLICY.unenforced() == []


ROUTED = (
    RouteTable("pay", (rule(BILLING),), hosts=("pay.example",)),
    RouteTable("catalog", (rule(BILLING, prefix="/pay", name="pay"), rule(CATALOG, name="rest")), service=CATALOG),
)


@pytest.mark.parametrize(
    "policies",
    [
        pytest.param((BIKES_TO_CATALOG,), id="allow-and-rate-limit"),
        pytest.param((BIKES_TO_BILLING, TREADS_TO_CATALOG, JWT_POLICY), id="route-tables"),
        pytest.param((BIKES_TO_CATALOG, DevicePolicy("zero-trust", default=DefaultAccess.DENY)), id="default-deny"),
        pytest.param((JWT_POLICY,), id="jwt"),
    ],
)
def test_envoy_accepts_the_translation(policies: tuple[DevicePolicy, ...], tmp_path: Path) -> None:
    translation = translate(mesh(*policies, routes=ROUTED), GATEWAY)
    # The harness resolves EDS clusters; the device clusters are STATIC already: added as they are.
    clusters = translation.resources[TypeUrl.CLUSTER]
    static = [cluster for cluster in clusters if cluster.type == cluster_pb2.Cluster.STATIC]
    eds = tuple(cluster for cluster in clusters if cluster.type != cluster_pb2.Cluster.STATIC)
    bootstrap = validation_bootstrap(
        dataclasses.replace(translation, resources={**translation.resources, TypeUrl.CLUSTER: eds})
    )
    assert len(static) == 2
    bootstrap.static_resources.clusters.extend(static)
    result = envoy_validate(bootstrap, tmp_path / "gateway.json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "deprecated" not in (result.stdout + result.stderr).lower()
