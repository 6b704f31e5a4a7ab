"""Backend protocols a Gateway serves by a Service port's `appProtocol` (the Gateway API's GEP-1911).

- `kubernetes.io/h2c`: HTTP/2 with prior knowledge upstream (the port's cluster speaks HTTP/2 in
  clear text); `kubernetes.io/ws`: HTTP/1, and every listener of the Gateway lets WebSocket upgrades
  through (Envoy answers 403 to an upgrade it is not configured for); `kubernetes.io/wss`: TCP for
  sidecars; other values fall back to the port name's prefix.
- Envoy accepts the listeners and clusters so configured (`envoy --mode validate`).

Through a real Envoy: tests/conformance (HTTPRouteBackendProtocolH2C and
HTTPRouteBackendProtocolWebSocket, whose stand-ins speak only h2c, and WebSocket).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from meshplane.discovery.kubernetes_mapping import protocol_of
from meshplane.model import (
    Endpoint,
    Gateway,
    GatewayHost,
    GatewayListener,
    GatewayRule,
    ListenerProtocol,
    Mesh,
    PathMatch,
    Protocol,
    RouteMatch,
    RouteRule,
    Service,
    ServicePort,
    ServiceRef,
    WeightedBackend,
)
from meshplane.xds.translate import translate
from meshplane.xds.translate.clusters import HTTP_PROTOCOL_OPTIONS
from meshplane.xds.types import TypeUrl
from tests.golden.test_envoy_validation import envoy_validate, validation_bootstrap
from tests.test_gateway_api_translate import GROUP, hcm_of

ECHO = ServiceRef("infra", "echo")
# As upstream's infra-backend-v1: HTTP/1 on 8080, h2c on 8081, WebSocket on 8082.
PORTS = (
    ServicePort("first-port", 8080),
    ServicePort("second-port", 8081, Protocol.HTTP2),
    ServicePort("third-port", 8082, Protocol.HTTP1),
)
SERVICE = Service(
    ECHO.name,
    ECHO.namespace,
    PORTS,
    tuple(Endpoint("127.0.0.2", 9000 + index, port.name) for index, port in enumerate(PORTS)),
)


def rule(port: int) -> GatewayRule:
    return GatewayRule(RouteRule(RouteMatch(path=PathMatch()), (WeightedBackend(ECHO, port),)))


MESH = Mesh.of(
    [SERVICE],
    gateways=[
        Gateway(
            "shop",
            "edge",
            (
                GatewayListener("h2c", 80, ListenerProtocol.HTTP, hosts=(GatewayHost("*", (rule(8081),)),)),
                GatewayListener("ws", 8000, ListenerProtocol.HTTP, hosts=(GatewayHost("*", (rule(8082),)),)),
            ),
        )
    ],
)


@pytest.mark.parametrize(
    ("port", "expected"),
    [
        ({"name": "second-port", "appProtocol": "kubernetes.io/h2c"}, Protocol.HTTP2),
        ({"name": "third-port", "appProtocol": "kubernetes.io/ws"}, Protocol.HTTP1),
        ({"name": "web", "appProtocol": "kubernetes.io/wss"}, Protocol.TCP),
        ({"name": "grpc-api", "appProtocol": "HTTPS"}, Protocol.GRPC),
        ({"name": "btls", "appProtocol": "HTTPS"}, Protocol.HTTP1),
        ({"name": "h2c-api"}, Protocol.HTTP2),
    ],
    ids=["h2c", "ws", "wss-is-tcp", "unknown-falls-back-to-the-name", "https-is-http1", "name-prefix"],
)
def test_app_protocol_decides_what_a_service_port_speaks(port: dict[str, Any], expected: Protocol) -> None:
    assert protocol_of(port) is expected


def listeners() -> dict[str, Any]:
    return {listener.name: listener for listener in translate(MESH, GROUP).resources[TypeUrl.LISTENER]}


def test_every_gateway_listener_lets_websocket_upgrades_through() -> None:
    found = listeners()
    assert sorted(found) == ["gateway_16000", "gateway_8080"]
    for listener in found.values():
        hcm = hcm_of(listener.filter_chains[0])
        assert [(c.upgrade_type, c.HasField("enabled")) for c in hcm.upgrade_configs] == [("websocket", False)]


def test_an_h2c_port_gets_an_http2_cluster_and_the_others_http1() -> None:
    clusters = {c.name: c for c in translate(MESH, GROUP).resources[TypeUrl.CLUSTER]}

    def http2(name: str) -> bool:
        packed = clusters[name].typed_extension_protocol_options.get(HTTP_PROTOCOL_OPTIONS)
        if packed is None:
            return False
        options = http_protocol_options_pb2.HttpProtocolOptions()
        assert packed.Unpack(options)
        return options.explicit_http_config.HasField("http2_protocol_options")

    assert http2("echo.infra:8081")
    assert not http2("echo.infra:8080")
    assert not http2("echo.infra:8082")


@pytest.mark.envoy
def test_envoy_accepts_the_upgrades_and_the_h2c_cluster(tmp_path: Path) -> None:
    result = envoy_validate(validation_bootstrap(translate(MESH, GROUP)), tmp_path / "gateway.json")
    assert result.returncode == 0, result.stdout + result.stderr
