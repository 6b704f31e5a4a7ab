"""BackendTLSPolicy: resolution (pure, named cases) and translation into gateway clusters.

Each resolution case builds the objects as the API server sends them (JSON), parses them with the
source's parsers, resolves the Gateway and its routes, then applies the policies with the
ConfigMaps' `ca.crt` handed in. Expectations follow the spec (apis/v1/backendtlspolicy_types.go)
and the conformance tests backendtlspolicy*.go of gateway-api v1.6.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Any

from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2

from meshplane.discovery.gateway_api.backend_tls_policies import parse_backend_tls_policy
from meshplane.discovery.gateway_api.gateway_classes import DEFAULT_CONTROLLER_NAME, parse_gateway_class
from meshplane.discovery.gateway_api.gateways import parse_gateway
from meshplane.discovery.gateway_api.http_routes import parse_http_route
from meshplane.discovery.gateway_api.objects import GatewayApiObjects, Key
from meshplane.discovery.gateway_api.resolve import Resolution, joined_status, resolve, resolve_backend_tls
from meshplane.model import Endpoint, Mesh, Protocol, ProxyGroup, ProxyRole, Service, ServicePort, ServiceRef
from meshplane.model.gateways import BackendTls, SanKind
from meshplane.xds.translate.clusters import SYSTEM_TRUST_STORE
from meshplane.xds.translate.gateway_api import build_gateway_api
from tests.test_gateway_api_resolve import gateway, gateway_class, http, keyed, route

NS = "shop"
V1 = "gateway.networking.k8s.io/v1"
PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
CA = {(NS, "backend-ca"): PEM}


def tls_service(name: str = "web") -> Service:
    return Service(
        name=name,
        namespace=NS,
        ports=(ServicePort("https", 443, Protocol.HTTP1), ServicePort("admin", 9443, Protocol.HTTP1)),
        endpoints=(Endpoint("10.0.0.1", 443, "https"), Endpoint("10.0.0.1", 9443, "admin")),
    )


SERVICES = {s.ref: s for s in (tls_service("web"), tls_service("api"))}
WEB = ServiceRef(NS, "web")


def policy(
    name: str = "web-tls",
    *,
    targets: list[dict[str, Any]] | None = None,
    hostname: str = "web.example.com",
    refs: list[dict[str, Any]] | None = None,
    well_known: str | None = None,
    sans: list[dict[str, Any]] | None = None,
    created: str = "2026-01-01T00:00:00Z",
) -> dict[str, Any]:
    validation: dict[str, Any] = {"hostname": hostname}
    if well_known:
        validation["wellKnownCACertificates"] = well_known
    else:
        validation["caCertificateRefs"] = (
            refs if refs is not None else [{"group": "", "kind": "ConfigMap", "name": "backend-ca"}]
        )
    if sans:
        validation["subjectAltNames"] = sans
    return {
        "apiVersion": V1,
        "kind": "BackendTLSPolicy",
        "metadata": {"namespace": NS, "name": name, "generation": 2, "creationTimestamp": created},
        "spec": {
            "targetRefs": targets if targets is not None else [{"group": "", "kind": "Service", "name": "web"}],
            "validation": validation,
        },
    }


def to_web(port: int = 443, name: str = "web") -> dict[str, Any]:
    return {"backendRefs": [{"name": name, "port": port}]}


def applied(
    policies: list[dict[str, Any]],
    rules: list[dict[str, Any]] | None = None,
    ca: dict[Key, str] | None = None,
) -> Resolution:
    objects = GatewayApiObjects(
        gateway_classes=MappingProxyType({("", "mesh"): parse_gateway_class(gateway_class())}),
        gateways=keyed([parse_gateway(gateway([http()]))]),
        http_routes=keyed([parse_http_route(route(rules=rules or [to_web()]))]),
        backend_tls_policies=keyed([parse_backend_tls_policy(p) for p in policies]),
    )
    first = resolve(objects, DEFAULT_CONTROLLER_NAME, SERVICES, frozenset())
    return resolve_backend_tls(first, objects, SERVICES, CA if ca is None else ca)


def policy_conditions(resolution: Resolution, name: str = "web-tls") -> dict[str, tuple[str, str]]:
    (ancestor,) = resolution.status.backend_tls_policies[(NS, name)].ancestors
    assert ancestor.ancestor == (NS, "edge")
    return {c.type: (c.status, c.reason) for c in ancestor.conditions}


def test_a_policy_on_a_service_a_route_reaches_gives_the_gateway_backend_tls() -> None:
    found = applied([policy()])
    (served,) = found.gateways
    assert served.backend_tls == (BackendTls(WEB, "https", "web.example.com", PEM),)
    assert policy_conditions(found) == {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs")}
    assert found.status.backend_tls_policies[(NS, "web-tls")].generation == 2
    assert served.problems(frozenset()) == []


def test_only_the_ports_the_routes_reach_get_tls() -> None:
    found = applied([policy()], rules=[to_web(443), to_web(9443)])
    assert [(t.service, t.port) for t in found.gateways[0].backend_tls] == [(WEB, "admin"), (WEB, "https")]
    unreached = applied([policy(targets=[{"group": "", "kind": "Service", "name": "api"}])])
    assert unreached.gateways[0].backend_tls == ()
    assert unreached.status.backend_tls_policies == {}


def test_section_name_narrows_the_policy_to_one_port() -> None:
    target = [{"group": "", "kind": "Service", "name": "web", "sectionName": "admin"}]
    found = applied([policy(targets=target)], rules=[to_web(443), to_web(9443)])
    assert [t.port for t in found.gateways[0].backend_tls] == ["admin"]


def test_the_oldest_of_two_policies_on_one_target_wins_the_other_is_conflicted() -> None:
    older = policy("older", hostname="old.example.com", created="2026-01-01T00:00:00Z")
    newer = policy("newer", hostname="new.example.com", created="2026-02-01T00:00:00Z")
    found = applied([newer, older])
    assert [t.sni for t in found.gateways[0].backend_tls] == ["old.example.com"]
    assert policy_conditions(found, "older")["Accepted"] == ("True", "Accepted")
    assert policy_conditions(found, "newer")["Accepted"] == ("False", "Conflicted")


def test_a_policy_naming_the_port_wins_over_one_naming_the_whole_service_without_conflict() -> None:
    whole = policy("whole", hostname="whole.example.com", created="2026-01-01T00:00:00Z")
    section = [{"group": "", "kind": "Service", "name": "web", "sectionName": "https"}]
    narrow = policy("narrow", targets=section, hostname="narrow.example.com", created="2026-03-01T00:00:00Z")
    found = applied([whole, narrow], rules=[to_web(443), to_web(9443)])
    assert {t.port: t.sni for t in found.gateways[0].backend_tls} == {
        "admin": "whole.example.com",
        "https": "narrow.example.com",
    }
    assert policy_conditions(found, "whole")["Accepted"] == ("True", "Accepted")
    assert policy_conditions(found, "narrow")["Accepted"] == ("True", "Accepted")


def unresolved(resolution: Resolution) -> list[tuple[int, int]]:
    """(resolved backends, unresolved weight) of each rule the Gateway serves."""
    return [
        (len(rule.rule.backends), rule.unresolved_weight)
        for listener in resolution.gateways[0].listeners
        for host in listener.hosts
        for rule in host.rules
    ]


def test_a_missing_ca_configmap_is_invalid_ca_certificate_ref_and_the_port_answers_500() -> None:
    target = [{"group": "", "kind": "Service", "name": "web", "sectionName": "https"}]
    found = applied([policy(targets=target)], rules=[to_web(443), to_web(9443)], ca={})
    assert found.gateways[0].backend_tls == ()
    # Never plain text to a port whose policy cannot verify: that share is answered 500; the
    # port no policy names is served as before.
    assert unresolved(found) == [(0, 1), (1, 0)]
    assert unresolved(applied([policy()])) == [(1, 0)]
    assert policy_conditions(found) == {
        "Accepted": ("False", "NoValidCACertificate"),
        "ResolvedRefs": ("False", "InvalidCACertificateRef"),
    }


def test_a_ca_configmap_without_pem_is_invalid_ca_certificate_ref() -> None:
    found = applied([policy()], ca={(NS, "backend-ca"): "not a certificate"})
    assert policy_conditions(found)["ResolvedRefs"] == ("False", "InvalidCACertificateRef")


def test_a_ca_ref_of_another_kind_is_invalid_kind() -> None:
    found = applied([policy(refs=[{"group": "", "kind": "Secret", "name": "backend-ca"}])])
    assert policy_conditions(found) == {
        "Accepted": ("False", "NoValidCACertificate"),
        "ResolvedRefs": ("False", "InvalidKind"),
    }


def test_one_invalid_ca_ref_of_two_fails_the_connections_but_the_policy_stays_accepted() -> None:
    refs = [
        {"group": "", "kind": "ConfigMap", "name": "backend-ca"},
        {"group": "", "kind": "ConfigMap", "name": "missing"},
    ]
    found = applied([policy(refs=refs)])
    assert found.gateways[0].backend_tls == ()
    assert unresolved(found) == [(0, 1)]
    assert policy_conditions(found) == {
        "Accepted": ("True", "Accepted"),
        "ResolvedRefs": ("False", "InvalidCACertificateRef"),
    }


def test_two_valid_ca_refs_are_both_trusted() -> None:
    refs = [
        {"group": "", "kind": "ConfigMap", "name": "backend-ca"},
        {"group": "", "kind": "ConfigMap", "name": "second-ca"},
    ]
    found = applied([policy(refs=refs)], ca={**CA, (NS, "second-ca"): PEM.replace("MIIB", "MIIC")})
    assert found.gateways[0].backend_tls[0].ca_certificates == PEM + PEM.replace("MIIB", "MIIC")


def test_well_known_system_uses_the_system_trust_store() -> None:
    found = applied([policy(well_known="System")], ca={})
    (tls,) = found.gateways[0].backend_tls
    assert tls.system_trust
    assert tls.ca_certificates == ""
    assert policy_conditions(found)["Accepted"] == ("True", "Accepted")


def test_subject_alt_names_are_carried_as_dns_and_uri() -> None:
    sans = [{"type": "Hostname", "hostname": "web.internal"}, {"type": "URI", "uri": "spiffe://shop/web"}]
    (tls,) = applied([policy(sans=sans)]).gateways[0].backend_tls
    assert tls.subject_alt_names == ((SanKind.DNS, "web.internal"), (SanKind.URI, "spiffe://shop/web"))


def test_an_invalid_policy_is_not_accepted_and_not_applied() -> None:
    broken = policy()
    del broken["spec"]["validation"]["hostname"]
    found = applied([broken])
    assert found.gateways[0].backend_tls == ()
    assert policy_conditions(found)["Accepted"] == ("False", "Invalid")


def test_joined_status_keeps_the_policies_status() -> None:
    found = applied([policy()])
    assert joined_status(found.status, Resolution().status).backend_tls_policies == (found.status.backend_tls_policies)


def gateway_mesh(tls: tuple[BackendTls, ...]) -> Mesh:
    resolution = applied([])
    (served,) = resolution.gateways
    return Mesh.of(list(SERVICES.values()), gateways=[dataclasses.replace(served, backend_tls=tls)])


GROUP = ProxyGroup(role=ProxyRole.GATEWAY, gateway=f"{NS}/edge")


def clusters_of(mesh: Mesh) -> dict[str, Any]:
    built, _ = build_gateway_api(mesh, GROUP)
    return {cluster.name: cluster for cluster in built["cds"]}


def upstream(cluster: Any) -> Any:
    context = tls_pb2.UpstreamTlsContext()
    assert cluster.transport_socket.typed_config.Unpack(context)
    return context


def test_a_gateway_cluster_of_a_tls_port_carries_sni_ca_and_san() -> None:
    clusters = clusters_of(gateway_mesh((BackendTls(WEB, "https", "web.example.com", PEM),)))
    context = upstream(clusters["web.shop:443"])
    assert context.sni == "web.example.com"
    validation = context.common_tls_context.validation_context
    assert validation.trusted_ca.inline_string == PEM
    assert [(m.san_type, m.matcher.exact) for m in validation.match_typed_subject_alt_names] == [
        (common_pb2.SubjectAltNameMatcher.DNS, "web.example.com")
    ]
    assert list(context.common_tls_context.alpn_protocols) == ["http/1.1"]
    assert not clusters["web.shop:9443"].HasField("transport_socket")
    assert not clusters["api.shop:443"].HasField("transport_socket")


def test_system_trust_and_given_sans_replace_the_hostname_check() -> None:
    tls = BackendTls(
        WEB, "https", "web.example.com", system_trust=True, subject_alt_names=((SanKind.URI, "spiffe://x"),)
    )
    validation = upstream(clusters_of(gateway_mesh((tls,)))["web.shop:443"]).common_tls_context.validation_context
    assert validation.trusted_ca.filename == SYSTEM_TRUST_STORE
    assert [(m.san_type, m.matcher.exact) for m in validation.match_typed_subject_alt_names] == [
        (common_pb2.SubjectAltNameMatcher.URI, "spiffe://x")
    ]


def test_backend_tls_leaves_the_shared_sidecar_clusters_unchanged() -> None:
    plain = clusters_of(gateway_mesh(()))
    with_tls = gateway_mesh((BackendTls(WEB, "https", "web.example.com", PEM),))
    clusters_of(with_tls)
    again = clusters_of(gateway_mesh(()))
    assert not again["web.shop:443"].HasField("transport_socket")
    assert again["web.shop:443"].SerializeToString() == plain["web.shop:443"].SerializeToString()


def test_a_backend_tls_without_trust_is_a_problem_of_the_gateway() -> None:
    (served,) = gateway_mesh((BackendTls(WEB, "https", "web.example.com"),)).gateways
    assert [str(p) for p in served.problems(frozenset())] == [
        "gateway shop/edge backend TLS shop/web:https: needs exactly one of CA certificates and the system trust store"
    ]
