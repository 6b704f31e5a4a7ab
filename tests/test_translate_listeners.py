"""LDS translation: the sidecar's outbound HTTP and TCP listeners, and gRPC's api_listeners."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.core.v3 import config_source_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from meshplane.model import Mesh, Protocol, ProxyGroup, ProxyRole, Service, ServicePort
from meshplane.xds.translate import Translation, translate
from meshplane.xds.types import TypeUrl

HCM = http_connection_manager_pb2.HttpConnectionManager
GRPC = ProxyGroup(role=ProxyRole.GRPC)


def listeners(translation: Translation) -> dict[str, Any]:
    return {listener.name: listener for listener in translation.resources[TypeUrl.LISTENER]}


def unpack(packed: Any, message: Any) -> Any:
    assert packed.Unpack(message)
    return message


def tcp(name: str, namespace: str, port: int) -> Service:
    return Service(name, namespace, (ServicePort("tcp", port, Protocol.TCP),))


@pytest.mark.parametrize("outbound_port", [15001, 15006])
def test_outbound_http_listener_exists_even_for_an_empty_mesh(outbound_port: int) -> None:
    translation = translate(Mesh.of([]), ProxyGroup(outbound_port=outbound_port))
    (listener,) = translation.resources[TypeUrl.LISTENER]
    assert listener.name == f"outbound_http_{outbound_port}"
    assert (listener.address.socket_address.address, listener.address.socket_address.port_value) == (
        "127.0.0.1",
        outbound_port,
    )
    (chain,) = listener.filter_chains
    (network_filter,) = chain.filters
    assert network_filter.name == "envoy.filters.network.http_connection_manager"
    hcm = unpack(network_filter.typed_config, HCM())
    assert hcm.codec_type == HCM.AUTO
    assert hcm.stat_prefix
    assert hcm.rds.route_config_name == f"outbound_http_{outbound_port}"
    assert hcm.rds.config_source.HasField("ads")
    assert [f.name for f in hcm.http_filters] == ["envoy.filters.http.router"]
    assert hcm.http_filters[0].typed_config.type_url.endswith("envoy.extensions.filters.http.router.v3.Router")
    # Its routes are there too, even with no virtual hosts.
    (routes,) = translation.resources[TypeUrl.ROUTE]
    assert routes.name == hcm.rds.route_config_name


def test_tcp_port_listener() -> None:
    translation = translate(Mesh.of([tcp("db", "data", 5432)]), ProxyGroup())
    listener = listeners(translation)["outbound_tcp_5432"]
    assert listener.address.socket_address.address == "127.0.0.1"
    assert listener.address.socket_address.port_value == 5432
    proxy = unpack(listener.filter_chains[0].filters[0].typed_config, tcp_proxy_pb2.TcpProxy())
    assert proxy.cluster == "db.data:5432"
    assert translation.warnings == ()


@pytest.mark.parametrize(
    ("services", "outbound_port", "winners", "warnings"),
    [
        pytest.param(
            [tcp("b", "ns", 5432), tcp("a", "ns", 5432)],
            15001,
            {5432: "a.ns:5432"},
            ["TCP port 5432 of ns/b is already taken by ns/a; no listener"],
            id="same-port-first-by-name-wins",
        ),
        pytest.param(
            [tcp("a", "zz", 6379), tcp("z", "aa", 6379)],
            15001,
            {6379: "z.aa:6379"},
            ["TCP port 6379 of zz/a is already taken by aa/z; no listener"],
            id="namespace-sorts-first",
        ),
        pytest.param(
            [tcp("a", "ns", 15001), tcp("b", "ns", 15006)],
            15001,
            {15006: "b.ns:15006"},
            ["TCP port 15001 of ns/a is already taken by the outbound HTTP listener outbound_http_15001; no listener"],
            id="outbound-port",
        ),
        pytest.param(
            [tcp("a", "ns", 15001), tcp("b", "ns", 15006)],
            15006,
            {15001: "a.ns:15001"},
            ["TCP port 15006 of ns/b is already taken by the outbound HTTP listener outbound_http_15006; no listener"],
            id="other-outbound-port",
        ),
        pytest.param(
            [tcp("a", "ns", 5432), tcp("b", "ns", 5433)],
            15001,
            {5432: "a.ns:5432", 5433: "b.ns:5433"},
            [],
            id="no-clash",
        ),
    ],
)
def test_tcp_port_clashes(
    services: list[Service], outbound_port: int, winners: dict[int, str], warnings: list[str]
) -> None:
    mesh = Mesh.of(services)
    assert mesh.problems() == []
    translation = translate(mesh, ProxyGroup(outbound_port=outbound_port))
    got = {
        listener.address.socket_address.port_value: unpack(
            listener.filter_chains[0].filters[0].typed_config, tcp_proxy_pb2.TcpProxy()
        ).cluster
        for listener in translation.resources[TypeUrl.LISTENER]
        if listener.name.startswith("outbound_tcp_")
    }
    assert got == winners
    assert list(translation.warnings) == warnings
    # The clusters of the losers are still there (routes may not use them, but other proxies' may).
    assert len(translation.resources[TypeUrl.CLUSTER]) == len(services)


def test_grpc_api_listeners() -> None:
    mesh = Mesh.of(
        [
            Service(
                "greeter",
                "demo",
                (
                    ServicePort("grpc", 50051, Protocol.GRPC),
                    ServicePort("http", 8080),
                    ServicePort("h2", 8443, Protocol.HTTP2),
                ),
                hosts=("greeter.example.com", "*.greeter.example.com"),
            )
        ]
    )
    translation = translate(mesh, GRPC)
    got = listeners(translation)
    assert sorted(got) == [
        "greeter.demo.svc.cluster.local:50051",
        "greeter.demo.svc:50051",
        "greeter.demo:50051",
        "greeter.example.com:50051",
        "greeter:50051",
    ]
    for listener in got.values():
        assert not listener.HasField("address")
        assert list(listener.filter_chains) == []
        hcm = unpack(listener.api_listener.api_listener, HCM())
        assert hcm.rds.route_config_name == "grpc/greeter.demo:50051"
        assert hcm.rds.config_source.HasField("ads")
        assert hcm.rds.config_source.resource_api_version == config_source_pb2.V3
        assert [f.name for f in hcm.http_filters] == ["envoy.filters.http.router"]
    assert translation.warnings == ()


def test_grpc_listener_name_clash() -> None:
    mesh = Mesh.of(
        [
            Service("a", "ns", (ServicePort("grpc", 9000, Protocol.GRPC),), hosts=("rpc.example.com", "b.ns")),
            Service("b", "ns", (ServicePort("grpc", 9000, Protocol.GRPC),), hosts=("rpc.example.com",)),
            Service("c", "ns", (ServicePort("grpc", 9001, Protocol.GRPC),), hosts=("rpc.example.com",)),
        ]
    )
    translation = translate(mesh, GRPC)
    got = listeners(translation)
    route_of = {name: unpack(item.api_listener.api_listener, HCM()).rds.route_config_name for name, item in got.items()}
    assert route_of["rpc.example.com:9000"] == "grpc/a.ns:9000"
    assert route_of["b.ns:9000"] == "grpc/b.ns:9000"  # a service's own name beats another's alias
    assert route_of["rpc.example.com:9001"] == "grpc/c.ns:9001"  # another port: no clash
    assert translation.warnings == (
        "listener 'b.ns:9000' of a.ns:9000 is already taken by b.ns:9000; left out",
        "listener 'rpc.example.com:9000' of b.ns:9000 is already taken by a.ns:9000; left out",
    )


def test_grpc_role_has_no_sidecar_listeners() -> None:
    mesh = Mesh.of([tcp("db", "data", 5432), Service("web", "data", (ServicePort("http", 80),))])
    assert translate(mesh, GRPC).resources[TypeUrl.LISTENER] == ()
