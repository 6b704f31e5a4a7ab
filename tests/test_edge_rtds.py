"""Envoy Mobile's view of the server: ADS with CDS and RTDS only, SotW and Delta.

A `mobile` node asks for every cluster and for the `meshplane` runtime layer; the server answers
both from the mobile group's snapshot (STATIC clusters, so no EDS is ever needed)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.runtime.v3 import rtds_pb2
from google.protobuf import struct_pb2

from meshplane.model import ProxyGroup, ProxyRole
from meshplane.xds import names
from meshplane.xds.snapshot import Snapshot
from meshplane.xds.translate import translate
from meshplane.xds.types import TypeUrl
from tests.golden.edge_cases import fleet
from tests.xds_fixtures import XdsHarness, delta_request, node, request, start_harness

MOBILE = ProxyGroup(ProxyRole.MOBILE, site="gym-munich")


@pytest.fixture
async def xds() -> AsyncIterator[XdsHarness]:
    async for harness in start_harness():
        harness.current = Snapshot.of(translate(fleet(), MOBILE).resources)
        yield harness


def mobile_node() -> object:
    found = node("app-1", role="mobile")
    found.metadata.update({"site": "gym-munich"})
    return found


def runtime_of(packed: object) -> rtds_pb2.Runtime:
    runtime = rtds_pb2.Runtime()
    assert packed.Unpack(runtime)  # type: ignore[attr-defined]
    return runtime


async def test_sotw_mobile_gets_clusters_and_its_runtime_layer(xds: XdsHarness) -> None:
    stream = xds.ads()
    await stream.send(request(TypeUrl.CLUSTER, with_node=mobile_node()))
    clusters = await stream.recv()
    assert clusters.type_url == TypeUrl.CLUSTER.value
    for packed in clusters.resources:
        cluster = cluster_pb2.Cluster()
        packed.Unpack(cluster)
        assert cluster.type == cluster_pb2.Cluster.STATIC
    await stream.send(request(TypeUrl.CLUSTER, version=clusters.version_info, nonce=clusters.nonce))
    await stream.send(request(TypeUrl.RUNTIME, [names.MOBILE_RUNTIME_NAME]))
    answer = await stream.recv()
    assert answer.type_url == TypeUrl.RUNTIME.value
    [packed] = answer.resources
    runtime = runtime_of(packed)
    layer = struct_pb2.Struct()
    layer.CopyFrom(runtime.layer)
    assert (runtime.name, layer["meshplane.site"]) == ("meshplane", "gym-munich")
    await stream.close()


async def test_delta_mobile_gets_its_runtime_layer(xds: XdsHarness) -> None:
    stream = xds.delta()
    await stream.send(delta_request(TypeUrl.RUNTIME, [names.MOBILE_RUNTIME_NAME], with_node=mobile_node()))
    answer = await stream.recv()
    assert answer.type_url == TypeUrl.RUNTIME.value
    assert [resource.name for resource in answer.resources] == ["meshplane"]
    assert runtime_of(answer.resources[0].resource).name == "meshplane"
    await stream.close()
