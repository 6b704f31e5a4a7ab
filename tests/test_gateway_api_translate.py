"""The `gateway` role's translation: a Gateway's listeners, routes and secrets for its Envoy.

- One listener per port (plus the group's offset) on the listen address; HTTP ports one filter
  chain, HTTPS ports one per listener chosen by SNI, terminating TLS with SDS certificates.
- One route configuration per port, a virtual host per hostname, rules in the model's order; a
  PathPrefix matches whole segments; unresolved backends answer 500 (all or their share).
- A node naming a Gateway the mesh lacks gets no listeners and a warning.
- Deterministic, and Envoy itself (`envoy --mode validate`) accepts the result.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (
    HttpConnectionManager,
)
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

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
    RouteMatch,
    RouteRule,
    Service,
    ServicePort,
    ServiceRef,
    TlsCertificate,
    WeightedBackend,
)
from meshplane.model.changes import MeshChanges
from meshplane.xds import names
from meshplane.xds.snapshot import Snapshot
from meshplane.xds.translate import ROLES, translate
from meshplane.xds.types import TypeUrl
from tests.certificates import fixed_self_signed_pem
from tests.golden.test_envoy_validation import envoy_validate, validation_bootstrap

WEB = ServiceRef("shop", "web")
API = ServiceRef("shop", "api")
GROUP = ProxyGroup(ProxyRole.GATEWAY, gateway="shop/edge", listen_address="127.0.0.1", port_offset=8000)


CHAIN, KEY = fixed_self_signed_pem("secure.example")


def service(ref: ServiceRef) -> Service:
    return Service(ref.name, ref.namespace, (ServicePort("http", 8080),), (Endpoint("127.0.0.2", 9000, "http"),))


def forward(path: PathMatch, *backends: WeightedBackend, unresolved: int = 0, **more: Any) -> GatewayRule:
    return GatewayRule(RouteRule(RouteMatch(path=path), tuple(backends), **more), unresolved)


RULES = (
    forward(PathMatch(PathMatchKind.EXACT, "/exact"), WeightedBackend(API, 8080)),
    forward(PathMatch(PathMatchKind.PREFIX, "/api"), WeightedBackend(API, 8080), prefix_rewrite="/"),
    forward(PathMatch(PathMatchKind.PREFIX, "/split"), WeightedBackend(WEB, 8080, 3), unresolved=1),
    forward(PathMatch(PathMatchKind.PREFIX, "/broken")),
    GatewayRule(RouteRule(RouteMatch(PathMatch(PathMatchKind.EXACT, "/old")), (), redirect=Redirect(path="/new"))),
    forward(PathMatch(), WeightedBackend(WEB, 8080)),
)
GATEWAY = Gateway(
    "shop",
    "edge",
    (
        GatewayListener("http", 80, ListenerProtocol.HTTP, hosts=(GatewayHost("*", RULES),)),
        GatewayListener(
            "https",
            443,
            ListenerProtocol.HTTPS,
            hostname="secure.example",
            certificates=("shop/tls",),
            hosts=(GatewayHost("secure.example", RULES[-1:]),),
        ),
    ),
)
MESH = Mesh.of([service(WEB), service(API)], certificates=[TlsCertificate("shop/tls", CHAIN, KEY)], gateways=[GATEWAY])


def resources(mesh: Mesh = MESH, group: ProxyGroup = GROUP) -> dict[TypeUrl, tuple[Any, ...]]:
    return dict(translate(mesh, group).resources)


def hcm_of(chain: Any) -> Any:
    hcm = HttpConnectionManager()
    chain.filters[0].typed_config.Unpack(hcm)
    return hcm


def test_one_listener_per_port_plus_offset_on_the_listen_address() -> None:
    listeners = resources()[TypeUrl.LISTENER]
    assert [listener.name for listener in listeners] == ["gateway_8080", "gateway_8443"]
    assert [listener.address.socket_address.port_value for listener in listeners] == [8080, 8443]
    assert {listener.address.socket_address.address for listener in listeners} == {"127.0.0.1"}
    http, _https = listeners
    assert hcm_of(http.filter_chains[0]).rds.route_config_name == names.gateway_route_name(8080)
    # The backend sees the Host header as the client sent it, port included.
    assert not hcm_of(http.filter_chains[0]).strip_any_host_port
    assert not hcm_of(http.filter_chains[0]).strip_matching_host_port


def test_an_https_listener_terminates_tls_by_sni_with_its_certificates_over_sds() -> None:
    https = resources()[TypeUrl.LISTENER][1]
    (chain,) = https.filter_chains
    assert list(chain.filter_chain_match.server_names) == ["secure.example"]
    tls = tls_pb2.DownstreamTlsContext()
    chain.transport_socket.typed_config.Unpack(tls)
    assert [c.name for c in tls.common_tls_context.tls_certificate_sds_secret_configs] == ["shop/tls"]
    assert [secret.name for secret in resources()[TypeUrl.SECRET]] == ["shop/tls"]
    assert [f.name for f in https.listener_filters] == ["envoy.filters.listener.tls_inspector"]


def test_routes_keep_the_models_order_and_the_gateway_apis_meaning() -> None:
    configs = {config.name: config for config in resources()[TypeUrl.ROUTE]}
    (vhost,) = configs["gateway_8080"].virtual_hosts
    assert list(vhost.domains) == ["*"]
    exact, api, split, broken, old, root = vhost.routes
    assert exact.match.path == "/exact"
    assert api.match.path_separated_prefix == "/api"
    assert not api.route.prefix_rewrite
    assert api.route.regex_rewrite.substitution == "/"
    clusters = [(c.name, c.weight.value) for c in split.route.weighted_clusters.clusters]
    assert clusters == [(names.cluster_name(WEB, service(WEB).ports[0]), 3), (names.GATEWAY_UNRESOLVED_CLUSTER, 1)]
    assert split.route.cluster_not_found_response_code == route_components_pb2.RouteAction.INTERNAL_SERVER_ERROR
    assert broken.direct_response.status == 500
    assert old.redirect.path_redirect == "/new"
    # The Gateway listener's port (80, HTTP's own: left out), never the proxy's offset port 8080.
    assert old.redirect.port_redirect == 0
    assert root.match.prefix == "/"


def test_a_node_naming_a_gateway_the_mesh_lacks_gets_no_listeners() -> None:
    group = dataclasses.replace(GROUP, gateway="shop/nope")
    translation = translate(MESH, group)
    assert translation.resources[TypeUrl.LISTENER] == ()
    assert translation.resources[TypeUrl.SECRET] == ()
    assert any("shop/nope" in warning and "no such Gateway" in warning for warning in translation.warnings)
    assert len(translation.resources[TypeUrl.CLUSTER]) == 2  # every service's, as a sidecar has them


def test_the_translation_is_deterministic_and_consistent() -> None:
    first, second = translate(MESH, GROUP), translate(MESH, GROUP)
    assert first == second
    assert Snapshot.of(first.resources).consistency_problems() == []


def test_the_gateway_role_reads_the_gateways_and_not_the_route_tables() -> None:
    depends = ROLES[ProxyRole.GATEWAY].depends
    assert depends.gateways
    assert depends.eds
    assert not depends.routes
    assert not any(row.depends.gateways for role, row in ROLES.items() if role is not ProxyRole.GATEWAY)
    assert MeshChanges.between(MESH, dataclasses.replace(MESH, gateways=())) == MeshChanges(gateways=True)


@pytest.mark.parametrize(
    ("group", "expected"),
    [
        pytest.param(ProxyGroup(ProxyRole.GATEWAY, gateway="shop/edge"), "0.0.0.0", id="any-address"),
        pytest.param(GROUP, "127.0.0.1", id="loopback"),
    ],
)
def test_the_listen_address(group: ProxyGroup, expected: str) -> None:
    assert {listener.address.socket_address.address for listener in resources(group=group)[TypeUrl.LISTENER]} == {
        expected
    }


def test_envoy_accepts_the_translation(tmp_path: Path) -> None:
    bootstrap = validation_bootstrap(translate(MESH, GROUP))
    for listener in bootstrap.static_resources.listeners:
        for chain in listener.filter_chains:
            hcm = HttpConnectionManager()
            chain.filters[0].typed_config.Unpack(hcm)
            # Inline routes make Envoy check every cluster exists; over RDS it does not, and the
            # unresolved share's cluster is meant not to.
            hcm.route_config.validate_clusters.value = False
            chain.filters[0].typed_config.Pack(hcm)
            if chain.HasField("transport_socket"):
                tls = tls_pb2.DownstreamTlsContext()
                chain.transport_socket.typed_config.Unpack(tls)
                for config in tls.common_tls_context.tls_certificate_sds_secret_configs:
                    config.ClearField("sds_config")
                chain.transport_socket.typed_config.Pack(tls)
    result = envoy_validate(bootstrap, tmp_path / "gateway.json")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_gateway_api_change_reuses_the_unchanged_services_clusters_and_assignments() -> None:
    from meshplane.xds.translate import translate_endpoints

    first = resources()
    # A route moved (the Gateway changed), the services kept: every cluster and assignment is the
    # very message built before, so the snapshot keeps its serialised bytes.
    moved = dataclasses.replace(MESH, gateways=(dataclasses.replace(GATEWAY, name="edge-2"),))
    again = resources(moved, dataclasses.replace(GROUP, gateway="shop/edge-2"))
    for type_url in (TypeUrl.CLUSTER, TypeUrl.ENDPOINT):
        assert [id(message) for message in again[type_url]] == [id(message) for message in first[type_url]]
    assert list(again[TypeUrl.ENDPOINT]) == list(translate_endpoints(moved, GROUP))
    # A service whose endpoints changed gets new assignments; the other keeps its own.
    web = next(s for s in MESH.services if s.ref == WEB)
    changed_web = dataclasses.replace(web, endpoints=(Endpoint("127.0.0.3", 9000, "http"),))
    changed = dataclasses.replace(MESH, services=tuple(changed_web if s is web else s for s in MESH.services))
    after = {a.cluster_name: a for a in resources(changed)[TypeUrl.ENDPOINT]}
    before = {a.cluster_name: a for a in first[TypeUrl.ENDPOINT]}
    assert after == {a.cluster_name: a for a in translate_endpoints(changed, GROUP)}
    for name, assignment in after.items():
        assert (assignment is before[name]) == ("api" in name), name
