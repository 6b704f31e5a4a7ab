"""What meshplane writes on a Gateway's and a route's `status`, and the gateway proxy's node contract.

- A condition keeps its `lastTransitionTime` while its status stays; a new status gets `now`.
- Nothing to write when the object holds the status already (so writes never loop).
- A route's `status.parents` of other controllers are kept; ours replaced, or removed when we owe none.
- A Gateway's `Programmed` follows the Envoys serving it, its `addresses` are theirs.
- `node.metadata.gateway` and `port_offset` of a gateway proxy, checked (bad input is INVALID_ARGUMENT).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from google.protobuf import struct_pb2

from meshplane.discovery.gateway_api.conditions import (
    Condition,
    GatewayStatus,
    ListenerStatus,
    ParentStatus,
    RouteStatus,
)
from meshplane.discovery.gateway_api.gateways import RouteKind
from meshplane.discovery.gateway_api.object_status import gateway_status, route_status
from meshplane.discovery.gateway_api.references import ParentRef
from meshplane.model import ProxyGroup, ProxyRole
from meshplane.xds.server.nodes import ProtocolError, group_problem, peer_address, proxy_group

OURS = "meshplane.io/gateway-controller"
EARLIER = datetime(2026, 1, 1, tzinfo=UTC)
NOW = datetime(2026, 6, 1, tzinfo=UTC)
ACCEPTED = Condition("Accepted", "True", "Accepted", "", 4)
LISTENER = ListenerStatus(
    "http",
    (RouteKind("gateway.networking.k8s.io", "HTTPRoute"),),
    2,
    (ACCEPTED, Condition("ResolvedRefs", "True", "ResolvedRefs", "", 4)),
    True,
)
GATEWAY = GatewayStatus(4, (ACCEPTED,), (LISTENER,))
PARENT = ParentRef("edge", namespace="shop")
ROUTE = RouteStatus(7, (ParentStatus(PARENT, (Condition("Accepted", "True", "Accepted", "", 7),)),))


def written(status: dict[str, Any] | None) -> dict[str, Any]:
    assert status is not None
    return {"status": status}


def types_of(conditions: list[dict[str, Any]]) -> dict[str, tuple[str, str, str]]:
    return {c["type"]: (c["status"], c["reason"], c["lastTransitionTime"]) for c in conditions}


def test_a_gateway_is_pending_without_envoys_then_programmed_with_their_addresses() -> None:
    pending = gateway_status({}, GATEWAY, [], EARLIER)
    assert pending is not None
    assert types_of(pending["conditions"])["Programmed"][:2] == ("False", "Pending")
    assert "addresses" not in pending
    (listener,) = pending["listeners"]
    assert listener["attachedRoutes"] == 2
    assert listener["supportedKinds"] == [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"}]

    served = gateway_status(written(pending), GATEWAY, ["127.0.0.1"], NOW)
    assert served is not None
    conditions = types_of(served["conditions"])
    assert conditions["Programmed"] == ("True", "Programmed", "2026-06-01T00:00:00Z")
    assert conditions["Accepted"] == ("True", "Accepted", "2026-01-01T00:00:00Z")  # unchanged status: time kept
    assert served["addresses"] == [{"type": "IPAddress", "value": "127.0.0.1"}]
    assert types_of(served["listeners"][0]["conditions"])["Programmed"][:2] == ("True", "Programmed")
    assert gateway_status(written(served), GATEWAY, ["127.0.0.1"], NOW) is None  # nothing to write


def test_a_routes_parents_of_other_controllers_are_kept() -> None:
    theirs = {"parentRef": {"name": "other"}, "controllerName": "example.com/else", "conditions": []}
    status = route_status({"status": {"parents": [theirs]}}, ROUTE, OURS, EARLIER)
    assert status is not None
    first, ours = status["parents"]
    assert first == theirs
    assert ours["controllerName"] == OURS
    assert ours["parentRef"] == {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "edge",
                                 "namespace": "shop"}  # fmt: skip
    assert ours["conditions"][0]["observedGeneration"] == 7
    assert route_status(written(status), ROUTE, OURS, NOW) is None
    removed = route_status(written(status), None, OURS, NOW)
    assert removed == {"parents": [theirs]}


# --- the node contract of a gateway proxy ---


def node(**metadata: Any) -> base_pb2.Node:
    found = base_pb2.Node(id="gw-1")
    found.metadata.CopyFrom(struct_pb2.Struct())
    found.metadata.update({"role": "gateway", **metadata})
    return found


def test_a_gateway_node_names_its_gateway_listen_address_and_offset() -> None:
    group = proxy_group(node(gateway="shop/edge", listen_address="127.0.0.1", port_offset=8000))
    assert group == ProxyGroup(ProxyRole.GATEWAY, gateway="shop/edge", listen_address="127.0.0.1", port_offset=8000)
    assert group_problem(group) is None
    assert "for shop/edge" in str(group)


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param({}, id="no-gateway"),
        pytest.param({"gateway": "edge"}, id="no-namespace"),
        pytest.param({"gateway": "Shop/Edge"}, id="uppercase"),
        pytest.param({"gateway": "shop/" + "e" * 300}, id="too-long"),
        pytest.param({"gateway": 7}, id="not-a-string"),
        pytest.param({"gateway": "shop/edge", "port_offset": -1}, id="negative-offset"),
        pytest.param({"gateway": "shop/edge", "port_offset": 70000}, id="offset-too-big"),
        pytest.param({"gateway": "shop/edge", "port_offset": 1.5}, id="fractional-offset"),
        pytest.param({"gateway": "shop/edge", "listen_address": "nowhere"}, id="bad-listen-address"),
    ],
)
def test_a_gateway_node_with_bad_metadata_is_refused(metadata: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError) as refused:
        proxy_group(node(**metadata))
    assert refused.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "gw-1" in refused.value.message


def test_other_roles_ignore_gateway_metadata() -> None:
    found = base_pb2.Node(id="s-1")
    found.metadata.update({"gateway": "shop/edge", "port_offset": 5})
    assert proxy_group(found) == ProxyGroup()


@pytest.mark.parametrize(
    ("peer", "expected"),
    [("ipv4:10.0.0.7:51234", "10.0.0.7"), ("ipv6:[::1]:51234", "::1"), ("unix:/tmp/socket", "")],
)
def test_peer_address(peer: str, expected: str) -> None:
    assert peer_address(peer) == expected
