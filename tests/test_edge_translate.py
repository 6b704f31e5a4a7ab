"""The edge roles' translation, by behaviour: which devices a gateway reaches, the device's
priority tiers, mobile's CDS + RTDS only, and that sidecar and gRPC output ignore edge content."""

from __future__ import annotations

import dataclasses
from typing import Any

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from google.protobuf import struct_pb2

from meshplane.model import Device, DeviceEndpoint, Locality, Mesh, ProxyGroup, ProxyRole, UpstreamTls
from meshplane.model.mesh import device_order
from meshplane.status.config_dump import DumpError, group_from_query
from meshplane.xds.server.nodes import ProtocolError, proxy_group
from meshplane.xds.snapshot import Snapshot
from meshplane.xds.translate import translate
from meshplane.xds.translate.edge_gateway import DEVICE_HEADER
from meshplane.xds.types import TypeUrl
from tests.golden.cases import CASES
from tests.golden.edge_cases import BERLIN, HOMES, MUNICH, fleet, fleet_with_tls

GATEWAY_BERLIN = ProxyGroup(ProxyRole.EDGE_GATEWAY, outbound_port=15080, site="gym-berlin")


def routed_devices(mesh: Mesh, group: ProxyGroup) -> list[str]:
    [to_devices] = [c for c in translate(mesh, group).resources[TypeUrl.ROUTE] if c.name.startswith("edge_to_devices")]
    found = []
    for route in to_devices.virtual_hosts[0].routes:
        [header] = route.match.headers
        assert header.name == DEVICE_HEADER
        found.append(header.string_match.exact)
    return found


def tiers(cluster: Any) -> list[list[str]]:
    by_priority: dict[int, list[str]] = {}
    for group in cluster.load_assignment.endpoints:
        by_priority.setdefault(group.priority, []).extend(
            f"{e.endpoint.address.socket_address.address}:{e.endpoint.address.socket_address.port_value}"
            for e in group.lb_endpoints
        )
    return [by_priority[p] for p in sorted(by_priority)]


def test_a_gateway_reaches_only_live_devices_of_its_own_site() -> None:
    mesh = fleet()
    assert routed_devices(mesh, GATEWAY_BERLIN) == ["bike-0001", "tread-0007"]
    clusters = {c.name for c in translate(mesh, GATEWAY_BERLIN).resources[TypeUrl.CLUSTER]}
    assert {"device/bike-0001", "device/tread-0007"} <= clusters
    assert "device/bike-0009" not in clusters, "a device of another site"
    # An expired lease: the registry leaves the device out of the mesh, so no route is left.
    expired = dataclasses.replace(mesh, devices=tuple(d for d in mesh.devices if d.id != "bike-0001"))
    assert routed_devices(expired, GATEWAY_BERLIN) == ["tread-0007"]
    # A device that moved to Munich is no longer reachable through Berlin's gateway.
    moved = dataclasses.replace(
        mesh,
        devices=tuple(
            sorted(
                (
                    dataclasses.replace(d, site="gym-munich", endpoints=(DeviceEndpoint("10.30.1.5", 8080),))
                    if d.id == "bike-0001"
                    else d
                    for d in mesh.devices
                ),
                key=device_order,  # mesh order, as the merge gives it
            )
        ),
    )
    assert routed_devices(moved, GATEWAY_BERLIN) == ["tread-0007"]
    assert routed_devices(moved, dataclasses.replace(GATEWAY_BERLIN, site="gym-munich")) == ["bike-0001", "bike-0009"]


def test_a_device_goes_through_its_gateways_then_the_region_then_the_cloud() -> None:
    resources = translate(fleet(), ProxyGroup(ProxyRole.DEVICE, site="gym-berlin")).resources
    catalog = next(c for c in resources[TypeUrl.CLUSTER] if c.name == "catalog.fitness:8080")
    assert catalog.type == cluster_pb2.Cluster.STATIC
    assert tiers(catalog) == [
        ["10.20.0.2:15080", "10.20.0.3:15080"],  # Berlin's own gateways
        ["10.40.0.2:15080", "10.30.0.2:15080"],  # Hamburg's and Munich's, the same region
        ["10.0.1.10:8080"],  # the cloud directly
    ]
    assert resources[TypeUrl.ENDPOINT] == ()
    names = {c.name for c in resources[TypeUrl.CLUSTER]}
    assert "telemetry.fitness:5432" not in names, "TCP ports stay in the cloud"


def test_a_site_without_gateways_goes_to_the_cloud_directly() -> None:
    resources = translate(fleet(), ProxyGroup(ProxyRole.DEVICE, site=HOMES.id)).resources
    telemetry = next(c for c in resources[TypeUrl.CLUSTER] if c.name == "telemetry.fitness:9090")
    # Ready endpoints only (a terminating one is no target for a new device connection), by locality.
    assert tiers(telemetry) == [["10.0.2.10:9090", "10.0.2.11:9090"]]


def test_device_routes_retry_on_the_next_priority() -> None:
    [config] = translate(fleet(), ProxyGroup(ProxyRole.DEVICE, site="gym-berlin")).resources[TypeUrl.ROUTE]
    for vhost in config.virtual_hosts:
        for route in vhost.routes:
            policy = route.route.retry_policy
            assert policy.retry_priority.name == "envoy.retry_priorities.previous_priorities"
            if route.route.cluster.startswith("telemetry"):  # gRPC: streams live by the caller's deadline
                assert route.route.timeout.ToNanoseconds() == 0
                assert not policy.HasField("per_try_timeout")
            else:
                assert route.route.timeout.seconds == 30


def test_mobile_gets_clusters_and_runtime_only() -> None:
    resources = translate(fleet(), ProxyGroup(ProxyRole.MOBILE, site=MUNICH.id)).resources
    present = {type_url for type_url, messages in resources.items() if messages}
    assert present == {TypeUrl.CLUSTER, TypeUrl.RUNTIME}
    assert all(c.type == cluster_pb2.Cluster.STATIC for c in resources[TypeUrl.CLUSTER])
    [runtime] = resources[TypeUrl.RUNTIME]
    layer = struct_pb2.Struct()
    layer.CopyFrom(runtime.layer)
    assert layer["meshplane.site"] == "gym-munich"
    assert layer["meshplane.clusters.fitness.catalog.http"] == "catalog.fitness:8080"


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_sidecar_and_grpc_output_ignore_edge_content(case: Any) -> None:
    edge = dataclasses.replace(
        case.mesh,
        sites=(BERLIN,),
        devices=(Device("bike-1", "bike", "gym-berlin", (DeviceEndpoint("10.20.1.5", 80),)),),
    )
    for group in case.groups:
        assert translate(edge, group) == translate(case.mesh, group)


@pytest.mark.parametrize(
    ("device", "problem"),
    [
        pytest.param(
            Device("bike-1", "bike", "gym-paris", (DeviceEndpoint("10.20.1.5", 80),)), "unknown site", id="unknown-site"
        ),
        pytest.param(
            Device("bike-1", "bike", "gym-berlin", (DeviceEndpoint("10.99.1.5", 80),)),
            "outside the ranges",
            id="outside",
        ),
        pytest.param(
            Device("bike-1", "bike", "gym-berlin", (DeviceEndpoint("127.0.0.1", 80),)), "loopback", id="loopback"
        ),
    ],
)
def test_the_model_refuses_devices_a_proxy_must_not_route_to(device: Device, problem: str) -> None:
    problems = Mesh.of([], sites=[BERLIN], devices=[device]).problems()
    assert any(problem in str(found) for found in problems), problems


def node(role: str, site: str | None, **extra: object) -> base_pb2.Node:
    metadata = struct_pb2.Struct()
    metadata.update({"role": role, **({"site": site} if site is not None else {}), **extra})
    return base_pb2.Node(id="n1", metadata=metadata)


def test_edge_nodes_name_their_site() -> None:
    assert proxy_group(node("edge-gateway", "gym-berlin")).site == "gym-berlin"
    assert proxy_group(node("mobile", "gym-berlin")).role is ProxyRole.MOBILE
    assert proxy_group(node("sidecar", "gym-berlin")).site == "", "a sidecar's site changes nothing"
    for bad in (None, "", "Gym Berlin"):
        with pytest.raises(ProtocolError) as refused:
            proxy_group(node("device", bad))
        assert refused.value.code is grpc.StatusCode.INVALID_ARGUMENT
        assert "needs metadata.site" in refused.value.message


def test_a_tls_service_is_reached_through_gateways_only() -> None:
    mesh = fleet()
    secured = tuple(
        dataclasses.replace(s, tls=UpstreamTls(trust="cloud-ca")) if s.name == "catalog" else s for s in mesh.services
    )
    translation = translate(
        dataclasses.replace(mesh, services=secured), ProxyGroup(ProxyRole.DEVICE, site="gym-berlin")
    )
    catalog = next(c for c in translation.resources[TypeUrl.CLUSTER] if c.name == "catalog.fitness:8080")
    assert not catalog.HasField("transport_socket"), "devices get no SDS certificates"
    assert tiers(catalog) == [["10.20.0.2:15080", "10.20.0.3:15080"], ["10.40.0.2:15080", "10.30.0.2:15080"]]
    assert any("through gateways only" in warning for warning in translation.warnings)


def sds_names(cluster: Any) -> list[str]:
    tls = tls_pb2.UpstreamTlsContext()
    assert cluster.transport_socket.typed_config.Unpack(tls)
    common = tls.common_tls_context
    return [common.validation_context_sds_secret_config.name] + [
        c.name for c in common.tls_certificate_sds_secret_configs
    ]


def test_a_gateway_adds_a_services_tls_with_the_secrets_it_is_given() -> None:
    """The reviewer's defect: a gateway's cloud clusters are a sidecar's, so a TLS service's asks
    for secrets over SDS; with none given the snapshot was refused and every gateway froze."""
    translation = translate(fleet_with_tls(), GATEWAY_BERLIN)
    assert Snapshot.of(translation.resources).consistency_problems() == []
    catalog = next(c for c in translation.resources[TypeUrl.CLUSTER] if c.name == "catalog.fitness:8080")
    assert sds_names(catalog) == ["cloud-ca", "edge-client"]
    secrets = {secret.name: secret for secret in translation.resources[TypeUrl.SECRET]}
    assert set(secrets) == {"cloud-ca", "edge-client"}, "exactly what its clusters name: not unused-client"
    assert "BEGIN CERTIFICATE" in secrets["cloud-ca"].validation_context.trusted_ca.inline_string
    assert "PRIVATE KEY" in secrets["edge-client"].tls_certificate.private_key.inline_string
    # The device listener and its device clusters are plain: devices speak HTTP on the site network.
    assert all(
        not c.HasField("transport_socket")
        for c in translation.resources[TypeUrl.CLUSTER]
        if c.name.startswith("device/")
    )


@pytest.mark.parametrize("site", ["gym-berlin", HOMES.id])
@pytest.mark.parametrize("role", [ProxyRole.DEVICE, ProxyRole.MOBILE])
def test_devices_and_apps_take_no_secrets_and_no_tls(role: ProxyRole, site: str) -> None:
    translation = translate(fleet_with_tls(), ProxyGroup(role, site=site))
    assert Snapshot.of(translation.resources).consistency_problems() == []
    assert translation.resources[TypeUrl.SECRET] == ()
    catalog = next(c for c in translation.resources[TypeUrl.CLUSTER] if c.name == "catalog.fitness:8080")
    assert not catalog.HasField("transport_socket")
    assert ["10.0.1.10:8080"] not in tiers(catalog), "never the TLS service directly, in plaintext"
    if site == HOMES.id:  # a region without gateways: nothing reaches the service, and it says so
        assert tiers(catalog) == []
        assert any("catalog.fitness:8080" in w and "unreachable" in w for w in translation.warnings)
    else:
        assert not any("unreachable" in w for w in translation.warnings)


def listener_addresses(group: ProxyGroup) -> dict[str, str]:
    return {
        listener.name: f"{listener.address.socket_address.address}:{listener.address.socket_address.port_value}"
        for listener in translate(fleet(), group).resources[TypeUrl.LISTENER]
    }


@pytest.mark.parametrize(
    ("listen_address", "host"),
    [("", "0.0.0.0"), ("127.0.0.1", "127.0.0.1"), ("::1", "::1")],
    ids=["default", "v4", "v6"],
)
def test_the_gateways_listeners_bind_its_listen_address(listen_address: str, host: str) -> None:
    group = dataclasses.replace(GATEWAY_BERLIN, listen_address=listen_address)
    assert listener_addresses(group) == {
        "edge_from_devices_15080": f"{host}:15080",
        "edge_to_devices_15081": f"{host}:15081",
    }
    # Only the listeners differ: clusters, routes and secrets are the default gateway's.
    default = translate(fleet_with_tls(), GATEWAY_BERLIN).resources
    bound = translate(fleet_with_tls(), group).resources
    for type_url in (TypeUrl.CLUSTER, TypeUrl.ROUTE, TypeUrl.SECRET, TypeUrl.ENDPOINT):
        assert bound[type_url] == default[type_url]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("127.0.0.1", "127.0.0.1", id="v4"),
        pytest.param("10.20.0.2", "10.20.0.2", id="site-address"),
        pytest.param("::1", "::1", id="v6"),
        pytest.param("0:0:0:0:0:0:0:1", "::1", id="v6-canonical"),
        pytest.param("0.0.0.0", "", id="any-is-the-default"),
    ],
)
def test_a_gateway_node_names_its_listen_address(value: str, expected: str) -> None:
    group = proxy_group(node("edge-gateway", "gym-berlin", listen_address=value))
    assert group.listen_address == expected
    assert group == dataclasses.replace(proxy_group(node("edge-gateway", "gym-berlin")), listen_address=expected)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("localhost", id="a-name"),
        pytest.param("", id="empty"),
        pytest.param(" 127.0.0.1", id="space"),
        pytest.param("127.0.0.1:15080", id="with-port"),
        pytest.param("224.0.0.1", id="multicast"),
        pytest.param("fe80::1%eth0", id="v6-zone"),
        pytest.param("::ffff:127.0.0.1", id="v4-mapped"),
        pytest.param(127, id="a-number"),
    ],
)
def test_a_bad_listen_address_ends_the_stream_naming_it(value: object) -> None:
    with pytest.raises(ProtocolError) as refused:
        proxy_group(node("edge-gateway", "gym-berlin", listen_address=value))
    assert refused.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "metadata.listen_address" in refused.value.message


@pytest.mark.parametrize("role", ["sidecar", "grpc", "device", "mobile"])
def test_other_roles_ignore_listen_address(role: str) -> None:
    """Their listeners are loopback (or absent): the field changes nothing, so it must not split
    their group, and a value that would be bad for a gateway does not refuse them."""
    for value in ("127.0.0.1", "not an address"):
        assert proxy_group(node(role, "gym-berlin", listen_address=value)) == proxy_group(node(role, "gym-berlin"))


def test_the_listen_address_shows_in_the_groups_name_and_config_dump_queries() -> None:
    bound = dataclasses.replace(GATEWAY_BERLIN, listen_address="127.0.0.1")
    assert str(GATEWAY_BERLIN) == "edge-gateway@-:15080#gym-berlin"
    assert str(bound) == "edge-gateway@-:15080#gym-berlin on 127.0.0.1"

    query = {"role": "edge-gateway", "site": "gym-berlin", "outbound_port": "15080", "listen_address": "127.0.0.1"}
    assert group_from_query(query) == bound
    for bad in ({"role": "sidecar", "listen_address": "127.0.0.1"}, {**query, "listen_address": "localhost"}):
        with pytest.raises(DumpError, match="listen_address"):
            group_from_query(bad)


def test_groups_differing_in_any_field_have_different_names() -> None:
    """The name is a metric label: two groups sharing one would make Prometheus refuse the scrape."""
    groups = [
        GATEWAY_BERLIN,
        dataclasses.replace(GATEWAY_BERLIN, outbound_port=16080),
        dataclasses.replace(GATEWAY_BERLIN, listen_address="127.0.0.1"),
        dataclasses.replace(GATEWAY_BERLIN, site="gym-munich"),
        ProxyGroup(ProxyRole.DEVICE, site="gym-berlin"),
        ProxyGroup(ProxyRole.DEVICE, outbound_port=16001, site="gym-berlin"),
        ProxyGroup(ProxyRole.SIDECAR),
        ProxyGroup(ProxyRole.SIDECAR, outbound_port=16001),
        ProxyGroup(ProxyRole.SIDECAR, Locality("eu", "eu-1")),
        ProxyGroup(ProxyRole.SIDECAR, Locality("eu", "eu-1", "rack-7")),
        ProxyGroup(ProxyRole.SIDECAR, Locality("eu", "", "eu-1")),
    ]
    assert len({str(group) for group in groups}) == len(groups)


@pytest.mark.parametrize(
    ("role", "extra"),
    [
        pytest.param("sidecar", {"outbound_port": float("inf")}, id="port-infinite"),
        pytest.param("sidecar", {"outbound_port": float("nan")}, id="port-nan"),
        pytest.param("sidecar", {"outbound_port": 15001.5}, id="port-fraction"),
        pytest.param("sidecar", {"outbound_port": "x" * 10_000}, id="port-long-text"),
        pytest.param("gateway", {"gateway": "shop/edge", "port_offset": float("inf")}, id="offset-infinite"),
        pytest.param("gateway", {"gateway": "shop/edge", "port_offset": "9" * 10_000}, id="offset-long-digits"),
    ],
)
def test_a_number_in_node_metadata_that_is_no_whole_number_is_refused_with_a_short_reason(
    role: str, extra: dict[str, object]
) -> None:
    with pytest.raises(ProtocolError) as refused:
        proxy_group(node(role, None, **extra))
    assert refused.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert len(str(refused.value)) < 200  # the client's value is quoted cut, never whole
