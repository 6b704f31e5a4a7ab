"""SotW EDS, RDS and SDS responses carry only what changed; CDS and LDS stay full state.

The xDS protocol's "Grouping resources into responses"
(https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#grouping-resources-into-responses):
in SotW only Listener and Cluster responses must hold every resource; the other types are grouped
as in Delta, so a resource left out is neither removed nor changed. Responses still carry every
resource asked for where what the client holds is not known for sure (first response, changed
subscription, warming re-request, after a NACK). Against an in-process server with hand-built
snapshots; "nothing else was sent" is proven by the probe barrier of test_xds_sotw.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from envoy.service.discovery.v3 import discovery_pb2

from meshplane.xds.snapshot import aggregate_version
from tests.test_xds_sotw import probe
from tests.xds_fixtures import (
    CDS,
    EDS,
    RDS,
    AdsStream,
    XdsHarness,
    node,
    request,
    snapshot,
    start_harness,
    unpack_names,
)

NAMES = ["a", "b", "c"]


@pytest.fixture
async def xds() -> AsyncIterator[XdsHarness]:
    async for harness in start_harness():
        yield harness


async def subscribed(xds: XdsHarness, names: list[str] = NAMES) -> tuple[AdsStream, discovery_pb2.DiscoveryResponse]:
    """A stream that asked for the endpoints of `names` and acknowledged the first response."""
    stream = xds.ads()
    await stream.send(request(EDS, names, with_node=node()))
    first = await stream.recv()
    assert unpack_names(first) == sorted(names)
    await ack(stream, names, first)
    return stream, first


async def ack(stream: AdsStream, names: list[str], response: discovery_pb2.DiscoveryResponse) -> None:
    await stream.send(request(EDS, names, version=response.version_info, nonce=response.nonce))


def held_names(xds: XdsHarness) -> dict[str, str]:
    """What the registry (the status endpoint and config dumps) records the one proxy holds: name → version."""
    (track,) = xds.registry.streams()
    return {resource.name: resource.version for resource in track.types[EDS].sent_resources()}


async def test_a_one_endpoint_change_sends_only_that_resource(xds: XdsHarness) -> None:
    xds.current = snapshot(NAMES)
    stream, _ = await subscribed(xds)
    await probe(stream)  # the ACK is handled before the change
    xds.publish(snapshot(NAMES, endpoint_ports={"b": (9090,)}))
    changed = await stream.recv()
    assert changed.type_url == EDS.value
    assert unpack_names(changed) == ["b"]
    # The version is that of everything asked for, as in a full response.
    assert changed.version_info == aggregate_version(xds.current.of_type(EDS).by_name[name] for name in NAMES)
    # What the proxy holds is still every resource, at its current version.
    current = xds.current.of_type(EDS).by_name
    assert held_names(xds) == {name: current[name].version for name in NAMES}
    await ack(stream, NAMES, changed)
    await probe(stream)
    assert xds.registry.streams()[0].types[EDS].acked_version == changed.version_info


async def test_a_change_before_the_ack_is_sent_with_the_next_one(xds: XdsHarness) -> None:
    """The diff is against what the proxy acknowledged and what it was sent since: a response
    still unacknowledged may be rejected, and one reverted must be undone."""
    xds.current = snapshot(NAMES)
    stream, _ = await subscribed(xds)
    await probe(stream)
    xds.publish(snapshot(NAMES, endpoint_ports={"a": (9090,)}))
    assert unpack_names(await stream.recv()) == ["a"]
    # Not acknowledged yet; b changes: a is sent again with it.
    xds.publish(snapshot(NAMES, endpoint_ports={"a": (9090,), "b": (9090,)}))
    assert unpack_names(await stream.recv()) == ["a", "b"]
    # Still not acknowledged; both go back to what the proxy acknowledged: both are sent.
    xds.publish(snapshot(NAMES))
    assert unpack_names(await stream.recv()) == ["a", "b"]


async def test_a_new_subscription_name_gets_its_resource(xds: XdsHarness) -> None:
    xds.current = snapshot(NAMES)
    stream, first = await subscribed(xds, ["a"])
    await stream.send(request(EDS, ["a", "b"], version=first.version_info, nonce=first.nonce))
    grown = await stream.recv()
    assert "b" in unpack_names(grown)
    assert held_names(xds).keys() == {"a", "b"}


async def test_the_warming_re_request_gets_every_requested_resource(xds: XdsHarness) -> None:
    xds.current = snapshot(NAMES)
    stream, _ = await subscribed(xds)
    await probe(stream)
    xds.publish(snapshot(NAMES, endpoint_ports={"a": (9090,)}))
    changed = await stream.recv()
    assert unpack_names(changed) == ["a"]
    await ack(stream, NAMES, changed)
    # Envoy re-creates a cluster CDS changed and asks again, repeating the acknowledged nonce and
    # version: the warming cluster needs its endpoints though they did not change.
    await ack(stream, NAMES, changed)
    again = await stream.recv()
    assert again.type_url == EDS.value
    assert unpack_names(again) == NAMES
    assert again.version_info == changed.version_info


async def test_after_a_nack_the_next_response_carries_every_resource(xds: XdsHarness) -> None:
    """Envoy applies a SotW EDS response cluster by cluster, so after a NACK it may hold part of the
    rejected response: what it holds is not known, and the next response carries everything."""
    xds.current = snapshot(NAMES)
    stream, _ = await subscribed(xds)
    await probe(stream)
    xds.publish(snapshot(NAMES, endpoint_ports={"a": (9090,)}))
    rejected = await stream.recv()
    assert unpack_names(rejected) == ["a"]
    await stream.send(request(EDS, NAMES, version="", nonce=rejected.nonce, error="endpoints a: invalid"))
    await probe(stream)  # the rejected version is not sent again
    xds.publish(snapshot(NAMES, endpoint_ports={"a": (9090,), "c": (9090,)}))
    after = await stream.recv()
    assert unpack_names(after) == NAMES
    await ack(stream, NAMES, after)
    await probe(stream)
    # Acknowledged again: only changes from here on.
    xds.publish(snapshot(NAMES, endpoint_ports={"a": (9090,), "c": (9091,)}))
    assert unpack_names(await stream.recv()) == ["c"]


async def test_routes_carry_only_what_changed_and_clusters_stay_full(xds: XdsHarness) -> None:
    listeners = {"l": "r1"}
    xds.current = snapshot(NAMES, listeners=listeners, route_clusters={"r1": "a", "r2": "b"})
    stream = xds.ads()
    await stream.send(request(CDS, with_node=node()))
    cds = await stream.recv()
    await stream.send(request(CDS, version=cds.version_info, nonce=cds.nonce))
    await stream.send(request(RDS, ["r1", "r2"]))
    rds = await stream.recv()
    assert unpack_names(rds) == ["r1", "r2"]
    await stream.send(request(RDS, ["r1", "r2"], version=rds.version_info, nonce=rds.nonce))
    await probe(stream)
    # r2 moves to a new cluster d: CDS carries every cluster, RDS only r2.
    xds.publish(snapshot([*NAMES, "d"], listeners=listeners, route_clusters={"r1": "a", "r2": "d"}))
    clusters = await stream.recv()
    assert clusters.type_url == CDS.value
    assert unpack_names(clusters) == [*NAMES, "d"]
    await stream.send(request(CDS, version=clusters.version_info, nonce=clusters.nonce))
    routes = await stream.recv()
    assert routes.type_url == RDS.value
    assert unpack_names(routes) == ["r2"]
