"""Consumer routes (GAMMA): a mesh route in the client's namespace for a Service of another
applies to that namespace's clients only, and takes precedence over the Service's own routes there.

- Resolution: a consumer route is Accepted and makes a table for its namespace
  (`gateway-api.<ns>.<name>[.<port>]@<consumer>`); its backendRef to its own parent Service needs
  no ReferenceGrant, any other Service of another namespace still does.
- Model: a consumer table and the producer table of one Service port do not conflict; two
  consumer tables of one namespace do.
- Nodes and bootstraps: `node.metadata.namespace` (`meshplane bootstrap --namespace`) makes the
  group's namespace, for sidecars and gRPC clients; a bad one is INVALID_ARGUMENT.
- Translation: a group of the consumer's namespace gets the consumer table, every other group
  (and one saying no namespace) the producer's; upstream's MeshConsumerRoute, as data.
"""

from __future__ import annotations

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from google.protobuf import struct_pb2

from meshplane.bootstrap.render import BootstrapOptions, render
from meshplane.discovery.gateway_api.objects import GatewayApiObjects
from meshplane.discovery.gateway_api.resolve import resolve_mesh
from meshplane.discovery.policy_schema import parse_policy
from meshplane.model import (
    HeaderModifier,
    HeaderValue,
    Mesh,
    ProblemKind,
    Protocol,
    ProxyGroup,
    ProxyRole,
    RouteMatch,
    RouteRule,
    RouteTable,
    Service,
    ServicePort,
    ServiceRef,
    TrafficPolicy,
    WeightedBackend,
)
from meshplane.xds.server.nodes import ProtocolError, proxy_group
from meshplane.xds.translate import translate
from meshplane.xds.types import TypeUrl

ECHO = ServiceRef("mesh", "echo-v1")
OTHER = ServiceRef("mesh", "echo-v2")


def services() -> dict[ServiceRef, Service]:
    ports = (ServicePort("http", 80), ServicePort("http-alt", 8080))
    return {ref: Service(ref.name, ref.namespace, ports, policy=TrafficPolicy()) for ref in (ECHO, OTHER)}


def consumer_route(backend: str, grant: bool = False) -> str:
    text = f"""\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: add-header, namespace: consumer}}
spec:
  parentRefs: [{{group: "", kind: Service, name: echo-v1, namespace: mesh}}]
  rules:
    - filters:
        - {{type: ResponseHeaderModifier, responseHeaderModifier: {{set: [{{name: X-Header-Set, value: set}}]}}}}
      backendRefs: [{{name: {backend}, namespace: mesh, port: 80}}]
"""
    if grant:
        text += """\
---
apiVersion: gateway.networking.k8s.io/v1
kind: ReferenceGrant
metadata: {name: let-consumer, namespace: mesh}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: consumer}]
  to: [{group: "", kind: Service}]
"""
    return text


def resolved(text: str) -> tuple[tuple[RouteTable, ...], list[str]]:
    parsed = parse_policy(text, "p.yaml")
    assert parsed.errors == ()
    objects = GatewayApiObjects(
        http_routes={d.key: d.parsed for d in parsed.gateway_api if d.kind == "HTTPRoute"},
        reference_grants={d.key: d.parsed for d in parsed.gateway_api if d.kind == "ReferenceGrant"},
    )
    found = resolve_mesh(objects, services())
    (status,) = found.status.http_routes.values()
    return found.routes, [f"{c.type} {c.status} {c.reason}" for c in status.parents[0].conditions]


def test_a_consumer_route_is_accepted_and_makes_its_namespaces_table() -> None:
    tables, conditions = resolved(consumer_route("echo-v1"))
    assert conditions == ["Accepted True Accepted", "ResolvedRefs True ResolvedRefs"]
    (table,) = tables
    assert (table.name, table.service, table.port, table.consumer) == (
        "gateway-api.mesh.echo-v1@consumer",
        ECHO,
        None,
        "consumer",
    )


def test_another_service_of_the_parents_namespace_still_needs_a_reference_grant() -> None:
    tables, conditions = resolved(consumer_route("echo-v2"))
    assert conditions[1] == "ResolvedRefs False RefNotPermitted"
    assert tables == ()  # its one rule has no backend left
    tables, conditions = resolved(consumer_route("echo-v2", grant=True))
    assert conditions[1] == "ResolvedRefs True ResolvedRefs"
    assert [table.rules[0].backends[0].service for table in tables] == [OTHER]


def rule(header: str) -> tuple[RouteRule, ...]:
    modifier = HeaderModifier(set=(HeaderValue("X-Header-Set", header),))
    return (RouteRule(RouteMatch(), (WeightedBackend(ECHO, 80),), response_headers=modifier),)


def test_a_consumer_table_and_the_producer_table_do_not_conflict_two_consumer_tables_do() -> None:
    producer = RouteTable("p", rule("p"), service=ECHO)
    consumer = RouteTable("c", rule("c"), service=ECHO, consumer="consumer")
    assert Mesh.of(list(services().values()), [producer, consumer]).problems() == []
    twice = Mesh.of(
        list(services().values()), [consumer, RouteTable("d", rule("d"), service=ECHO, consumer="consumer")]
    )
    (conflict,) = twice.problems()
    assert conflict.kind is ProblemKind.CONFLICT
    assert "service mesh/echo-v1 for the clients of namespace consumer" in conflict.message
    assert "is a namespace" in RouteTable("e", rule("e"), service=ECHO, consumer="Not_A_Label").problems()[0].message


def node(**metadata: object) -> base_pb2.Node:
    found = struct_pb2.Struct()
    found.update(metadata)
    return base_pb2.Node(id="n1", metadata=found)


def test_a_node_says_its_namespace_for_sidecars_and_grpc_clients() -> None:
    assert proxy_group(node(namespace="consumer")).namespace == "consumer"
    assert proxy_group(node(role="grpc", namespace="consumer")).namespace == "consumer"
    assert proxy_group(node()).namespace == ""
    # Another role's namespace changes nothing: it must not split the group.
    assert proxy_group(node(role="gateway", gateway="ns/gw", namespace="consumer")).namespace == ""
    assert str(ProxyGroup(namespace="consumer")).endswith(" in consumer")
    for bad in ("Consumer", 7, "a" * 64):
        with pytest.raises(ProtocolError) as refused:
            proxy_group(node(namespace=bad))
        assert refused.value.code is grpc.StatusCode.INVALID_ARGUMENT
        assert "metadata.namespace" in str(refused.value)
    with pytest.raises(ValueError, match="only a sidecar or a grpc client"):
        ProxyGroup(role=ProxyRole.DEVICE, site="gym", namespace="consumer")


def test_the_bootstrap_renders_the_namespace_a_sidecar_or_grpc_client_is_given() -> None:
    assert "    namespace: consumer\n" in render(BootstrapOptions(role="sidecar", namespace="consumer"))
    assert '"namespace": "consumer"' in render(BootstrapOptions(role="grpc", namespace="consumer"))
    assert "namespace" not in render(BootstrapOptions(role="sidecar")).split("metadata:")[1].split("\n\n")[0]
    assert BootstrapOptions(role="gateway", namespace="consumer").problems() == [
        "--namespace is for sidecar and grpc, not gateway"
    ]
    assert "is not a Kubernetes namespace" in BootstrapOptions(role="sidecar", namespace="Bad").problems()[0]


def header_of(mesh: Mesh, group: ProxyGroup, vhost: str) -> list[str]:
    resources = translate(mesh, group).resources
    configs = resources[TypeUrl.ROUTE]
    hosts = {host.name: host for config in configs for host in config.virtual_hosts}
    return [option.header.value for route in hosts[vhost].routes for option in route.response_headers_to_add]


def test_upstream_mesh_consumer_route_as_data_only_the_consumers_clients_follow_it() -> None:
    producer_on_80 = RouteTable("p", rule("producer"), service=ECHO, port=80)
    consumer = RouteTable("c", rule("set"), service=ECHO, consumer="consumer")
    mesh = Mesh.of(list(services().values()), [producer_on_80, consumer])
    assert mesh.problems() == []
    # The consumer's clients: their table, on every port, before the producer's port table.
    assert header_of(mesh, ProxyGroup(namespace="consumer"), "echo-v1.mesh:80") == ["set"]
    assert header_of(mesh, ProxyGroup(namespace="consumer"), "echo-v1.mesh:8080") == ["set"]
    # Everyone else: the producer's table (port 80) or the default route.
    for group in (ProxyGroup(namespace="mesh"), ProxyGroup()):
        assert header_of(mesh, group, "echo-v1.mesh:80") == ["producer"]
        assert header_of(mesh, group, "echo-v1.mesh:8080") == []


def test_proxyless_grpc_clients_choose_their_namespaces_table_too() -> None:
    ports = (ServicePort("grpc", 7070, Protocol.GRPC),)
    greeter, other = (
        Service("greeter", "mesh", ports, policy=TrafficPolicy()),
        Service("v2", "mesh", ports, policy=TrafficPolicy()),
    )
    to_other = (RouteRule(RouteMatch(), (WeightedBackend(other.ref, 7070),)),)
    mesh = Mesh.of([greeter, other], [RouteTable("c", to_other, service=greeter.ref, consumer="consumer")])
    assert mesh.problems() == []

    def cluster(group: ProxyGroup) -> str:
        configs = translate(mesh, group).resources[TypeUrl.ROUTE]
        hosts = [host for config in configs for host in config.virtual_hosts]
        (route,) = next(host for host in hosts if host.name.startswith("greeter.")).routes
        return str(route.route.cluster)

    assert cluster(ProxyGroup(role=ProxyRole.GRPC, namespace="consumer")) == "v2.mesh:7070"
    assert cluster(ProxyGroup(role=ProxyRole.GRPC)) == "greeter.mesh:7070"
