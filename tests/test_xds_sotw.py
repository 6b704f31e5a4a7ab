"""SotW protocol rules, against an in-process server with hand-built snapshots.

"No response" is never asserted by waiting: after the request under test, a probe request that
must be answered is sent on the same stream; the server handles requests in order, so the next
response being the probe's proves nothing was sent for the request under test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from envoy.service.cluster.v3 import cds_pb2_grpc
from envoy.service.endpoint.v3 import eds_pb2_grpc

from tests.xds_fixtures import (
    CDS,
    EDS,
    LDS,
    RDS,
    SDS,
    AdsStream,
    XdsHarness,
    node,
    request,
    snapshot,
    start_harness,
    unpack_names,
)


@pytest.fixture
async def xds() -> AsyncIterator[XdsHarness]:
    async for harness in start_harness():
        yield harness


async def probe(stream: AdsStream) -> None:
    """Asks for a secret by a new name; the very next response must be the SDS answer to it."""
    probe.count += 1  # type: ignore[attr-defined]
    await stream.send(request(SDS, [f"probe-{probe.count}"]))  # type: ignore[attr-defined]
    response = await stream.recv()
    assert response.type_url == SDS.value, f"expected the probe's SDS response, got {response.type_url}"


probe.count = 0  # type: ignore[attr-defined]


async def test_wildcard_cds_sends_every_cluster_with_version_and_nonce(xds: XdsHarness) -> None:
    xds.current = snapshot(["a", "b"])
    stream = xds.ads()
    await stream.send(request(CDS, with_node=node()))
    response = await stream.recv()
    assert response.type_url == CDS.value
    assert unpack_names(response) == ["a", "b"]
    assert response.version_info == xds.current.of_type(CDS).version
    assert response.nonce


async def test_ack_sends_nothing_and_a_new_snapshot_is_pushed(xds: XdsHarness) -> None:
    xds.current = snapshot(["a"])
    stream = xds.ads()
    await stream.send(request(CDS, with_node=node()))
    first = await stream.recv()
    await stream.send(request(CDS, version=first.version_info, nonce=first.nonce))
    await probe(stream)
    xds.publish(snapshot(["a", "b"]))
    second = await stream.recv()
    assert unpack_names(second) == ["a", "b"]
    assert second.nonce != first.nonce
    track = xds.registry.streams()[0]
    assert track.types[CDS].acked_version == first.version_info


async def test_nack_is_recorded_and_the_rejected_version_never_resent(xds: XdsHarness) -> None:
    xds.current = snapshot(["a"])
    stream = xds.ads()
    await stream.send(request(CDS, with_node=node("envoy-7")))
    good = await stream.recv()
    await stream.send(request(CDS, version=good.version_info, nonce=good.nonce))
    xds.publish(snapshot(["a", "bad"]))
    bad = await stream.recv()
    await stream.send(request(CDS, version=good.version_info, nonce=bad.nonce, error="cluster bad: invalid"))
    await probe(stream)
    # The same (rejected) content published again must not be re-sent either.
    xds.publish(snapshot(["a", "bad"]))
    await probe(stream)
    nack = xds.registry.recent_nacks[-1]
    assert (nack.node_id, nack.type_url, nack.rejected_version) == ("envoy-7", CDS, bad.version_info)
    assert nack.message == "cluster bad: invalid"
    assert xds.registry.streams()[0].types[CDS].last_nack == nack
    assert xds.registry.nack_counts[CDS] == 1
    # A newer version is sent.
    xds.publish(snapshot(["a", "fixed"]))
    fixed = await stream.recv()
    assert unpack_names(fixed) == ["a", "fixed"]


async def test_stale_nonce_is_ignored(xds: XdsHarness) -> None:
    xds.current = snapshot(["a"])
    stream = xds.ads()
    await stream.send(request(CDS, with_node=node()))
    first = await stream.recv()
    xds.publish(snapshot(["a", "b"]))
    second = await stream.recv()
    # A NACK of the first response arrives after the second was sent: stale, so not a NACK.
    await stream.send(request(CDS, version="", nonce=first.nonce, error="late"))
    await probe(stream)
    assert not xds.registry.recent_nacks
    await stream.send(request(CDS, version=second.version_info, nonce=second.nonce))
    await probe(stream)
    assert xds.registry.streams()[0].types[CDS].acked_version == second.version_info


async def test_eds_answers_only_the_names_asked_for(xds: XdsHarness) -> None:
    xds.current = snapshot(["a", "b", "c"])
    stream = xds.ads()
    await stream.send(request(EDS, ["c", "a", "missing"], with_node=node()))
    response = await stream.recv()
    assert unpack_names(response) == ["a", "c"]


async def test_warming_re_request_with_acked_nonce_is_answered(xds: XdsHarness) -> None:
    xds.current = snapshot(["a"])
    stream = xds.ads()
    await stream.send(request(CDS, with_node=node()))
    cds = await stream.recv()
    await stream.send(request(EDS, ["a"]))
    eds = await stream.recv()
    await stream.send(request(EDS, ["a"], version=eds.version_info, nonce=eds.nonce))  # ACK
    await stream.send(request(CDS, version=cds.version_info, nonce=cds.nonce))
    # CDS changes cluster a; Envoy re-requests its endpoints repeating the acknowledged nonce.
    xds.publish(snapshot(["a"], connect_ms=500))
    changed = await stream.recv()
    assert changed.type_url == CDS.value
    await stream.send(request(EDS, ["a"], version=eds.version_info, nonce=eds.nonce))
    again = await stream.recv()
    assert again.type_url == EDS.value
    assert unpack_names(again) == ["a"]
    assert again.version_info == eds.version_info


async def test_listeners_wait_until_clusters_are_acknowledged(xds: XdsHarness) -> None:
    xds.current = snapshot(["a"], listeners={"l": "r"}, route_clusters={"r": "a"})
    stream = xds.ads()
    await stream.send(request(CDS, with_node=node()))
    cds = await stream.recv()
    await stream.send(request(LDS))
    await probe(stream)  # LDS is held: CDS is not acknowledged yet (clusters may be warming)
    await stream.send(request(CDS, version=cds.version_info, nonce=cds.nonce))
    lds = await stream.recv()
    assert lds.type_url == LDS.value
    assert unpack_names(lds) == ["l"]


async def test_removed_cluster_stays_until_routes_stop_using_it(xds: XdsHarness) -> None:
    xds.current = snapshot(["a", "b"], listeners={"l": "r"}, route_clusters={"r": "b"})
    stream = xds.ads()
    await stream.send(request(CDS, with_node=node()))
    cds = await stream.recv()
    await stream.send(request(CDS, version=cds.version_info, nonce=cds.nonce))
    await stream.send(request(LDS))
    lds = await stream.recv()
    await stream.send(request(LDS, version=lds.version_info, nonce=lds.nonce))
    await stream.send(request(RDS, ["r"]))
    rds = await stream.recv()
    await stream.send(request(RDS, ["r"], version=rds.version_info, nonce=rds.nonce))
    await probe(stream)
    # b is removed and the route moves to a: routes first, b stays in CDS until they are acknowledged.
    xds.publish(snapshot(["a"], listeners={"l": "r"}, route_clusters={"r": "a"}))
    new_rds = await stream.recv()
    assert new_rds.type_url == RDS.value
    await stream.send(request(RDS, ["r"], version=new_rds.version_info, nonce=new_rds.nonce))
    final_cds = await stream.recv()
    assert final_cds.type_url == CDS.value
    assert unpack_names(final_cds) == ["a"]


async def test_slow_stream_gets_the_latest_snapshot_not_a_backlog(xds: XdsHarness) -> None:
    xds.current = snapshot(["a"])
    stream = xds.ads()
    await stream.send(request(CDS, with_node=node()))
    first = await stream.recv()
    await stream.send(request(CDS, version=first.version_info, nonce=first.nonce))
    await probe(stream)
    # Three snapshots in a row, with no chance for the stream to run in between.
    for clusters in (["a", "b"], ["a", "b", "c"], ["a", "b", "c", "d"]):
        xds.publish(snapshot(clusters))
    latest = await stream.recv()
    assert unpack_names(latest) == ["a", "b", "c", "d"]
    await probe(stream)


async def test_per_type_services_imply_their_type(xds: XdsHarness) -> None:
    xds.current = snapshot(["a", "b"])
    clusters = AdsStream(cds_pb2_grpc.ClusterDiscoveryServiceStub(xds.channel).StreamClusters())
    await clusters.send(request("", with_node=node("cds-only")))
    assert unpack_names(await clusters.recv()) == ["a", "b"]
    eds = AdsStream(eds_pb2_grpc.EndpointDiscoveryServiceStub(xds.channel).StreamEndpoints())
    await eds.send(request(EDS, ["b"], with_node=node("eds-only")))
    assert unpack_names(await eds.recv()) == ["b"]
    wrong = AdsStream(eds_pb2_grpc.EndpointDiscoveryServiceStub(xds.channel).StreamEndpoints())
    await wrong.send(request(CDS, with_node=node("wrong")))
    code, details = await wrong.status()
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "EDS service" in details


@pytest.mark.parametrize(
    ("bad_request", "expected"),
    [
        pytest.param(request(CDS), "must carry a node", id="no-node"),
        pytest.param(
            request("type.googleapis.com/envoy.Nope", with_node=node()), "unknown type_url", id="unknown-type"
        ),
        pytest.param(request("", with_node=node()), "type_url is required", id="no-type-on-ads"),
        pytest.param(request(EDS, ["ok", "bad\nname"], with_node=node()), "malformed resource name", id="bad-name"),
        pytest.param(request(EDS, ["x" * 2000], with_node=node()), "malformed resource name", id="long-name"),
        pytest.param(request(CDS, with_node=node(role="pilot")), "unknown metadata.role", id="unknown-role"),
        pytest.param(request(CDS, with_node=node("")), "node.id", id="empty-node-id"),
    ],
)
async def test_bad_requests_end_their_stream_only(xds: XdsHarness, bad_request: object, expected: str) -> None:
    xds.current = snapshot(["a"])
    healthy = xds.ads()
    await healthy.send(request(CDS, with_node=node("healthy")))
    first = await healthy.recv()
    bad = xds.ads()
    await bad.send(bad_request)
    code, details = await bad.status()
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert expected in details
    # The other stream is unaffected.
    await healthy.send(request(CDS, version=first.version_info, nonce=first.nonce))
    xds.publish(snapshot(["a", "b"]))
    assert unpack_names(await healthy.recv()) == ["a", "b"]


async def test_group_snapshot_is_dropped_when_its_last_stream_ends(xds: XdsHarness) -> None:
    stream = xds.ads()
    await stream.send(request(CDS, with_node=node()))
    await stream.recv()
    assert len(xds.cache.groups()) == 1
    await stream.close()
    # The server notices the cancellation asynchronously; a fresh stream's request is handled after it.
    other = xds.ads()
    await other.send(request(CDS, with_node=node("other", zone="z9")))
    await other.recv()
    assert [g.locality.zone for g in xds.cache.groups()] == ["z9"]
