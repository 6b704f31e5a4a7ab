"""What a change reaches, and where builds run.

- Each role declares what of the mesh it reads (`translate.ROLES`); the declarations are true
  (a part a role does not declare can change without changing a byte of its output).
- The publisher translates again only the groups a change reaches: a device registration
  rebuilds the edge gateway and leaves sidecar, gRPC, device and mobile snapshots as they were.
- A stream of a group the cache lacks is attached without a translation; the publisher's loop
  builds the group and the stream gets its config.
- `/config?role=…` previews equal what a proxy of the group gets, and write nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from aiohttp import ClientSession, web

from meshplane.model import (
    Device,
    DeviceEndpoint,
    Gateway,
    GatewayHost,
    GatewayListener,
    GatewayRule,
    ListenerProtocol,
    Locality,
    Mesh,
    ProxyGroup,
    ProxyRole,
    RouteMatch,
    RouteRule,
    WeightedBackend,
)
from meshplane.model.changes import MeshChanges
from meshplane.model.mesh import device_order
from meshplane.model.telemetry import AccessLog, Telemetry
from meshplane.status.config_dump import group_dump
from meshplane.status.document import StatusInputs
from meshplane.status.http import status_app
from meshplane.xds import publisher as publisher_module
from meshplane.xds.cache import SnapshotCache
from meshplane.xds.publisher import SnapshotPublisher
from meshplane.xds.server import stream as stream_module
from meshplane.xds.server.service import XdsServices, create_server
from meshplane.xds.server.tracking import StreamRegistry
from meshplane.xds.snapshot import Snapshot
from meshplane.xds.translate import ROLES, translate
from meshplane.xds.types import TypeUrl
from tests.golden.edge_cases import BERLIN, HAMBURG, MUNICH, fleet_with_tls
from tests.xds_fixtures import AdsStream, node, request, unpack_names

GATEWAY = ProxyGroup(ProxyRole.EDGE_GATEWAY, outbound_port=15080, site=BERLIN.id)
DEVICE = ProxyGroup(ProxyRole.DEVICE, site=BERLIN.id)
MOBILE = ProxyGroup(ProxyRole.MOBILE, site=MUNICH.id)
SIDECAR = ProxyGroup()
SIDECAR_ZONE = ProxyGroup(locality=Locality("eu-central", "eu-central-1b"))
GRPC = ProxyGroup(ProxyRole.GRPC)
GATEWAY_API = ProxyGroup(ProxyRole.GATEWAY, gateway="shop/edge", listen_address="127.0.0.1")
GROUP_OF_ROLE = {
    ProxyRole.SIDECAR: SIDECAR,
    ProxyRole.GRPC: GRPC,
    ProxyRole.EDGE_GATEWAY: GATEWAY,
    ProxyRole.DEVICE: DEVICE,
    ProxyRole.MOBILE: MOBILE,
    ProxyRole.GATEWAY: GATEWAY_API,
}
GROUPS = (SIDECAR, SIDECAR_ZONE, GRPC, GATEWAY, DEVICE, MOBILE, GATEWAY_API)


def registered(mesh: Mesh, device_id: str) -> Mesh:
    """`mesh` with one more device at Berlin (as the merge adds one: in mesh order)."""
    device = Device(device_id, "bike", BERLIN.id, (DeviceEndpoint("10.20.9.9", 8080),))
    return dataclasses.replace(mesh, devices=tuple(sorted((*mesh.devices, device), key=device_order)))


def with_gateway(mesh: Mesh) -> Mesh:
    """`mesh` with the Gateway `shop/edge`: one HTTP listener sending everything to the first service."""
    first = mesh.services[0]
    rule = GatewayRule(RouteRule(RouteMatch(), (WeightedBackend(first.ref, first.ports[0].port),)))
    listener = GatewayListener("http", 80, ListenerProtocol.HTTP, hosts=(GatewayHost("*", (rule,)),))
    return dataclasses.replace(mesh, gateways=(Gateway("shop", "edge", (listener,)),))


def moved_endpoint(mesh: Mesh) -> Mesh:
    """`mesh` with the first service's first endpoint at another address."""
    first = mesh.services[0]
    endpoint = dataclasses.replace(first.endpoints[0], address="10.0.9.99")
    service = dataclasses.replace(first, endpoints=(endpoint, *first.endpoints[1:]))
    return dataclasses.replace(mesh, services=(service, *mesh.services[1:]))


# One change of each part of the mesh a role may or may not read (`Dependencies` field → change).
CHANGES_OF_PART = {
    "devices": lambda mesh: registered(mesh, "bike-new"),
    "sites": lambda mesh: dataclasses.replace(mesh, sites=tuple(s for s in mesh.sites if s != HAMBURG)),
    "secrets": lambda mesh: dataclasses.replace(mesh, certificates=mesh.certificates[:1]),
    "routes": lambda mesh: dataclasses.replace(mesh, routes=()),
    "endpoints": moved_endpoint,
    # An access log on stdout for every role that takes telemetry: grpc and mobile take none.
    "telemetry": lambda mesh: dataclasses.replace(mesh, telemetry=Telemetry(access_logs=(AccessLog(),))),
    "gateways": with_gateway,
}


def undeclared() -> Iterator[Any]:
    for role, row in ROLES.items():
        for part in CHANGES_OF_PART:
            if not getattr(row.depends, part):
                yield pytest.param(role, part, id=f"{role}-ignores-{part}")


@pytest.mark.parametrize(("role", "part"), list(undeclared()))
def test_a_part_a_role_does_not_declare_never_changes_its_output(role: ProxyRole, part: str) -> None:
    # The gateway role serves a Gateway here, so what it ignores is shown ignored by one that has listeners.
    mesh = with_gateway(fleet_with_tls()) if role is ProxyRole.GATEWAY else fleet_with_tls()
    changed = CHANGES_OF_PART[part](mesh)
    assert changed != mesh
    group = GROUP_OF_ROLE[role]
    assert translate(changed, group) == translate(mesh, group)


def test_every_role_is_in_the_table() -> None:
    assert set(ROLES) == set(ProxyRole) == set(GROUP_OF_ROLE)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        pytest.param(lambda m: registered(m, "bike-new"), MeshChanges(devices=True), id="registration"),
        pytest.param(CHANGES_OF_PART["sites"], MeshChanges(sites=True), id="sites"),
        pytest.param(CHANGES_OF_PART["secrets"], MeshChanges(secrets=True), id="secrets"),
        pytest.param(CHANGES_OF_PART["routes"], MeshChanges(routes=True), id="routes"),
        pytest.param(CHANGES_OF_PART["telemetry"], MeshChanges(telemetry=True), id="telemetry"),
        pytest.param(CHANGES_OF_PART["gateways"], MeshChanges(gateways=True), id="gateways"),
        pytest.param(
            lambda m: dataclasses.replace(m, cluster_domain="example.org"), MeshChanges(services=True), id="domain"
        ),
        pytest.param(
            lambda m: dataclasses.replace(m, services=m.services[1:]), MeshChanges(services=True), id="removed"
        ),
        pytest.param(lambda m: m, MeshChanges(), id="nothing"),
    ],
)
def test_changes_name_the_part_of_the_mesh_that_changed(change: Any, expected: MeshChanges) -> None:
    mesh = fleet_with_tls()
    assert MeshChanges.between(mesh, change(mesh)) == expected
    # Equal content built anew (as a source that rebuilds its objects does) is no change.
    assert MeshChanges.between(mesh, fleet_with_tls()) == MeshChanges()


def test_an_endpoint_change_names_its_service() -> None:
    mesh = fleet_with_tls()
    assert MeshChanges.between(mesh, moved_endpoint(mesh)) == MeshChanges(endpoints=frozenset({mesh.services[0].ref}))


def subscribed_and_published(mesh: Mesh, groups: tuple[ProxyGroup, ...]) -> tuple[SnapshotPublisher, SnapshotCache]:
    cache = SnapshotCache()
    for group in groups:
        cache.subscribe(group, asyncio.Event())
    publisher = SnapshotPublisher(cache)
    publisher.publish(mesh)
    assert not publisher.state.problems
    return publisher, cache


def counted_translations(monkeypatch: pytest.MonkeyPatch) -> list[ProxyGroup]:
    """Every group the publisher translates (whole) from now on, in order, until `monkeypatch` undoes
    it: the seam that counts builds."""
    found: list[ProxyGroup] = []
    real = publisher_module.translate

    def counting(mesh: Mesh, group: ProxyGroup) -> Any:
        found.append(group)
        return real(mesh, group)

    monkeypatch.setattr(publisher_module, "translate", counting)
    return found


@pytest.fixture
def translations(monkeypatch: pytest.MonkeyPatch) -> list[ProxyGroup]:
    """Every group the publisher translates (whole), in order: the seam that counts builds."""
    return counted_translations(monkeypatch)


async def test_a_registration_rebuilds_the_gateway_and_leaves_every_other_group_as_it_was(
    translations: list[ProxyGroup],
) -> None:
    mesh = fleet_with_tls()
    publisher, cache = subscribed_and_published(mesh, GROUPS)
    before = {group: cache.snapshot(group) for group in GROUPS}
    translations.clear()

    new = registered(mesh, "bike-new")
    publisher.publish(new, MeshChanges.between(mesh, new))

    assert translations == [GATEWAY]
    assert publisher.rebuilt == 1
    gateway, old_gateway = cache.snapshot(GATEWAY), before[GATEWAY]
    assert gateway is not None
    assert old_gateway is not None
    assert gateway.version != old_gateway.version
    assert any("bike-new" in name for name in gateway.of_type(TypeUrl.CLUSTER).by_name)
    for group in GROUPS:
        if group != GATEWAY:
            snapshot, earlier = cache.snapshot(group), before[group]
            assert snapshot is earlier, group  # the very object: not rebuilt, not even compared
            assert snapshot is not None
            assert earlier is not None
            assert snapshot.version == earlier.version


def test_a_registration_serialises_the_new_device_only_and_equals_a_full_build() -> None:
    """The other devices' clusters keep their `Resource` (the same bytes object, serialised once);
    the result is what building the gateway from scratch gives."""
    mesh = fleet_with_tls()
    publisher, cache = subscribed_and_published(mesh, (GATEWAY,))
    before = cache.snapshot(GATEWAY)
    assert before is not None
    old = before.of_type(TypeUrl.CLUSTER).by_name
    assert sum("device/" in name for name in old) >= 2

    new = registered(mesh, "bike-new")
    publisher.publish(new, MeshChanges(devices=True))

    after = cache.snapshot(GATEWAY)
    assert after is not None
    clusters = after.of_type(TypeUrl.CLUSTER).by_name
    for name, resource in old.items():
        if name.startswith("device/"):
            assert clusters[name] is resource, name
    assert "device/bike-new" in clusters
    _, fresh = subscribed_and_published(new, (GATEWAY,))
    scratch = fresh.snapshot(GATEWAY)
    assert scratch is not None
    assert after.version == scratch.version


async def test_an_endpoint_change_takes_the_fast_path_in_every_eds_role_and_equals_a_full_build(
    translations: list[ProxyGroup],
) -> None:
    mesh = fleet_with_tls()
    publisher, cache = subscribed_and_published(mesh, GROUPS)
    before = {group: cache.snapshot(group) for group in GROUPS}
    translations.clear()

    new = moved_endpoint(mesh)
    publisher.publish(new)

    # Devices and apps have their endpoints inline (STATIC clusters): they are translated again.
    assert sorted(translations) == sorted([DEVICE, MOBILE])
    assert publisher.state.endpoints_only
    _, full = subscribed_and_published(new, GROUPS)
    for group in GROUPS:
        snapshot, fresh, earlier = cache.snapshot(group), full.snapshot(group), before[group]
        assert snapshot is not None
        assert fresh is not None
        assert earlier is not None
        assert snapshot.version == fresh.version, group
        if ROLES[group.role].depends.eds:
            assert snapshot.of_type(TypeUrl.CLUSTER) is earlier.of_type(TypeUrl.CLUSTER)


@pytest.fixture
async def xds(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[SnapshotPublisher, grpc.aio.Channel, list[bool]]]:
    """An in-process xDS server fed by a running publisher; yields it, a channel, and one entry per
    translation: True when it ran inside a stream's attach."""
    inside_attach = threading.local()
    during_attach: list[bool] = []
    real_attach = stream_module.Stream.attach
    real_translate = publisher_module.translate

    def attach(self: Any, *args: Any) -> Any:
        inside_attach.value = True
        try:
            return real_attach(self, *args)
        finally:
            inside_attach.value = False

    def translating(mesh: Mesh, group: ProxyGroup) -> Any:
        during_attach.append(getattr(inside_attach, "value", False))
        return real_translate(mesh, group)

    monkeypatch.setattr(stream_module.Stream, "attach", attach)
    monkeypatch.setattr(publisher_module, "translate", translating)
    cache = SnapshotCache()
    publisher = SnapshotPublisher(cache)
    server, port = create_server(XdsServices(cache, StreamRegistry()), "127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    building = asyncio.create_task(publisher.run())
    try:
        yield publisher, channel, during_attach
    finally:
        building.cancel()
        await channel.close()
        await server.stop(None)


async def test_a_new_groups_stream_is_attached_without_a_translation_and_gets_its_config(
    xds: tuple[SnapshotPublisher, grpc.aio.Channel, list[bool]],
) -> None:
    from envoy.service.discovery.v3 import ads_pb2_grpc

    publisher, channel, during_attach = xds
    publisher.publish(fleet_with_tls())
    assert during_attach == []  # no stream yet: nothing to build
    stream = AdsStream(ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources())
    try:
        await stream.send(request(TypeUrl.CLUSTER, with_node=node("grpc-1", role="grpc", zone="eu-central-1b")))
        response = await stream.recv()
    finally:
        await stream.close()
    assert "catalog.fitness:8080" in unpack_names(response)
    assert during_attach == [False]  # built once, by the publisher's loop, never inside attach


@pytest.fixture
async def status(
    translations: list[ProxyGroup],
) -> AsyncIterator[tuple[SnapshotPublisher, SnapshotCache, ClientSession, str]]:
    cache = SnapshotCache()
    for group in GROUPS:
        cache.subscribe(group, asyncio.Event())
    publisher = SnapshotPublisher(cache)
    publisher.publish(fleet_with_tls())
    inputs = StatusInputs(
        sources=list,
        publish_state=lambda: publisher.state,
        cache=cache,
        registry=StreamRegistry(),
        snapshot_for=publisher.snapshot_for,
        admin_token="token",
    )
    runner = web.AppRunner(status_app(inputs), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        async with ClientSession(headers={"Authorization": "Bearer token"}) as session:
            yield publisher, cache, session, f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


PREVIEWS = {
    "role=sidecar&outbound_port=15001": SIDECAR,
    "role=sidecar&outbound_port=15001&region=eu-central&zone=eu-central-1b": SIDECAR_ZONE,
    "role=grpc&outbound_port=15001": GRPC,
    "role=edge-gateway&site=gym-berlin": GATEWAY,
    "role=device&site=gym-berlin&outbound_port=15001": DEVICE,
    "role=mobile&site=gym-munich&outbound_port=15001": MOBILE,
}


async def test_a_preview_equals_what_a_proxy_of_the_group_gets(
    status: tuple[SnapshotPublisher, SnapshotCache, ClientSession, str],
) -> None:
    _, cache, session, base = status
    for query, group in PREVIEWS.items():
        async with session.get(f"{base}/config?{query}") as response:
            assert response.status == 200, await response.text()
            dump = await response.json()
        snapshot = cache.snapshot(group)
        assert snapshot is not None
        assert dump == group_dump(group, snapshot, True), query


async def test_previews_write_nothing_and_run_off_the_event_loop(
    status: tuple[SnapshotPublisher, SnapshotCache, ClientSession, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    publisher, cache, session, base = status
    memo, groups = publisher.memo_size(), cache.groups()
    snapshots = {group: cache.snapshot(group) for group in groups}
    loop_thread = threading.get_ident()
    threads: list[int] = []
    real = publisher_module.translate

    def recording(mesh: Mesh, group: ProxyGroup) -> Any:
        threads.append(threading.get_ident())
        return real(mesh, group)

    monkeypatch.setattr(publisher_module, "translate", recording)
    for port in range(20000, 20040):
        for query in (f"role=sidecar&outbound_port={port}", f"role=edge-gateway&site=gym-{port}&zone=z{port}"):
            async with session.get(f"{base}/config?{query}") as response:
                assert response.status == 200, await response.text()
    assert len(threads) == 80
    assert loop_thread not in threads
    assert publisher.memo_size() == memo
    assert cache.groups() == groups
    assert {group: cache.snapshot(group) for group in groups} == snapshots


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        pytest.param("role=sidecar&outbound_port=70000", "is not a port", id="port-too-high"),
        pytest.param("role=sidecar&outbound_port=0", "is not a port", id="port-zero"),
        pytest.param("role=edge-gateway", "needs site", id="gateway-without-site"),
        pytest.param("role=device&site=Not_A_Site", "needs site", id="bad-site"),
        pytest.param("role=sidecar&site=gym-berlin", "site is for the edge roles", id="sidecar-with-site"),
    ],
)
async def test_a_preview_of_a_group_no_node_can_be_in_is_refused(
    status: tuple[SnapshotPublisher, SnapshotCache, ClientSession, str],
    translations: list[ProxyGroup],
    query: str,
    problem: str,
) -> None:
    _, _, session, base = status
    translations.clear()
    async with session.get(f"{base}/config?{query}") as response:
        assert response.status == 400
        assert problem in (await response.json())["error"]
    assert translations == []


def test_a_preview_is_none_before_a_mesh_and_the_memo_holds_only_groups_with_streams() -> None:
    cache = SnapshotCache()
    publisher = SnapshotPublisher(cache)
    assert publisher.snapshot_for(SIDECAR) is None
    one = cache.subscribe(SIDECAR, asyncio.Event())
    cache.subscribe(SIDECAR_ZONE, asyncio.Event())
    publisher.publish(fleet_with_tls())
    assert publisher.memo_size() == 3  # one base, its default locality's endpoints, the zone's
    one.close()
    publisher.publish(moved_endpoint(fleet_with_tls()))
    assert publisher.memo_size() == 2  # the default locality's set went with its last stream...
    assert isinstance(publisher.snapshot_for(SIDECAR), Snapshot)  # ...and a preview needs no memo
