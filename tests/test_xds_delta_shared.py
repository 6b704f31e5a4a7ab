"""Delta streams in step share their state (delta_shared.py), and one stream's own changes stay its own.

Against an in-process server, as in test_xds_delta.py ("nothing was sent" is proven by a probe
that must be answered next), and on `DeltaStream`s driven directly, where what they share is seen.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from types import MappingProxyType

import pytest

from meshplane.xds.cache import SnapshotCache
from meshplane.xds.server.delta import DeltaStream
from meshplane.xds.server.delta_shared import DeltaShared
from meshplane.xds.server.tracking import StreamKind, StreamRegistry, StreamTrack, SyncState
from tests.test_xds_delta import Prober
from tests.xds_fixtures import (
    CDS,
    EDS,
    AdsStream,
    XdsHarness,
    delta_request,
    delta_versions,
    node,
    snapshot,
    start_harness,
)

MOVED: dict[str, tuple[int, ...]] = {"a": (9090,), "b": (9090,)}


@pytest.fixture
async def xds() -> AsyncIterator[XdsHarness]:
    async for harness in start_harness():
        yield harness


async def in_step(xds: XdsHarness, node_id: str) -> tuple[AdsStream, dict[str, str]]:
    """A stream holding every cluster and the endpoints of `a` and `b`, all acknowledged; returns
    the endpoint versions it was sent."""
    stream = xds.delta()
    await stream.send(delta_request(CDS, with_node=node(node_id)))
    clusters = await stream.recv()
    await stream.send(delta_request(CDS, nonce=clusters.nonce))
    await stream.send(delta_request(EDS, ["a", "b"]))
    assigned = await stream.recv()
    assert sorted(delta_versions(assigned)) == ["a", "b"]
    await stream.send(delta_request(EDS, nonce=assigned.nonce))
    return stream, delta_versions(assigned)


def tracks(xds: XdsHarness) -> dict[str, StreamTrack]:
    return {track.node_id: track for track in xds.registry.streams()}


async def test_streams_in_step_share_one_record_of_what_they_were_sent(xds: XdsHarness) -> None:
    xds.current = snapshot(["a", "b"])
    first, _ = await in_step(xds, "delta-a")
    second, _ = await in_step(xds, "delta-b")
    probe = Prober()
    await probe(first)
    await probe(second)
    one, other = (track for track in xds.registry.streams())
    assert one.types[CDS].resources is other.types[CDS].resources
    assert one.types[EDS].resources is other.types[EDS].resources
    moved_a: dict[str, tuple[int, ...]] = {"a": (9090,)}
    xds.publish(snapshot(["a", "b"], endpoint_ports=moved_a))
    for stream in (first, second):
        changed = await stream.recv()
        assert list(delta_versions(changed)) == ["a"]
        await stream.send(delta_request(EDS, nonce=changed.nonce))
        await probe(stream)
    assert one.types[EDS].resources is other.types[EDS].resources
    assert [r.name for r in one.types[EDS].sent_resources()] == ["a", "b"]


async def test_one_streams_unsubscribe_and_nack_do_not_reach_a_stream_in_step(xds: XdsHarness) -> None:
    xds.current = snapshot(["a", "b"])
    mine, before = await in_step(xds, "delta-a")
    theirs, _ = await in_step(xds, "delta-b")
    probe = Prober()
    await mine.send(delta_request(EDS, unsubscribe=["a"]))
    await probe(mine)

    xds.publish(snapshot(["a", "b"], endpoint_ports=MOVED))
    rejected = await mine.recv()
    assert list(delta_versions(rejected)) == ["b"]  # it no longer asks for a
    sent = await theirs.recv()
    assert sorted(delta_versions(sent)) == ["a", "b"]
    await mine.send(delta_request(EDS, nonce=rejected.nonce, error="bad endpoints"))
    await theirs.send(delta_request(EDS, nonce=sent.nonce))
    await probe(mine)
    await probe(theirs)
    found = tracks(xds)
    assert found["delta-a"].types[EDS].state is SyncState.NACKED
    assert found["delta-b"].types[EDS].state is SyncState.SYNCED

    # b goes back to what the first stream holds (rolled back): nothing is due there, while the
    # second stream, which accepted the move, gets b back.
    xds.publish(snapshot(["a", "b"], endpoint_ports={"a": MOVED["a"]}))
    back = await theirs.recv()
    assert delta_versions(back) == {"b": before["b"]}
    await theirs.send(delta_request(EDS, nonce=back.nonce))
    await probe(mine)
    await probe(theirs)

    # Resubscribing sends a again, to the stream that asked only.
    await mine.send(delta_request(EDS, ["a"]))
    again = await mine.recv()
    assert list(delta_versions(again)) == ["a"]
    assert delta_versions(again)["a"] != before["a"]
    await probe(theirs)


def test_shared_maps_are_read_only_and_made_once_per_change() -> None:
    shared = DeltaShared()
    clusters = snapshot(["a", "b"]).of_type(CDS)
    updates = tuple(clusters.by_name.values())
    held = shared.versions_after(clusters, shared.no_versions, updates, ())
    assert isinstance(held, MappingProxyType)
    assert dict(held) == {name: resource.version for name, resource in clusters.by_name.items()}
    assert shared.versions_after(clusters, shared.no_versions, tuple(updates), ()) is held
    assert not shared.no_versions
    dropped = shared.versions_after(clusters, held, (), ("a",))
    assert list(dropped) == ["b"]
    assert list(held) == ["a", "b"]
    with pytest.raises(TypeError):
        held["c"] = "1"  # type: ignore[index]


def test_responses_are_built_once_per_key() -> None:
    shared = DeltaShared()
    clusters = snapshot(["a"]).of_type(CDS)
    built = []

    def build() -> bytes:
        built.append(1)
        return b"response-%d" % len(built)

    first = shared.response(clusters, ((), (), "1"), build)
    assert shared.response(clusters, ((), (), "1"), build) is first
    assert shared.response(clusters, ((), (), "2"), build) == b"response-2"
    assert len(built) == 2


def test_what_is_remembered_for_a_type_set_goes_with_it() -> None:
    shared = DeltaShared()
    clusters = snapshot(["a"]).of_type(CDS)
    shared.versions_after(clusters, shared.no_versions, tuple(clusters.by_name.values()), ())
    assert len(shared) == 1
    del clusters
    gc.collect()
    assert len(shared) == 0


def delta_streams(count: int) -> list[DeltaStream]:
    """Streams of one server (one registry), of one group, not yet attached."""
    cache, registry = SnapshotCache(), StreamRegistry()
    return [DeltaStream(cache, registry, StreamKind.DELTA_ADS, None, f"peer-{i}") for i in range(count)]


def test_streams_in_step_hold_one_map_and_send_one_response() -> None:
    current = snapshot(["a", "b"])
    streams = delta_streams(2)
    sent = []
    for index, stream in enumerate(streams):
        stream.handle(delta_request(CDS, with_node=node(f"delta-{index}")))
        sent.append(stream.response_for(CDS, current))
        stream.handle(delta_request(EDS, ["a", "b"]))
        sent.append(stream.response_for(EDS, current))
    assert sent[0] is sent[2]
    assert sent[1] is sent[3]
    one, other = (stream.states for stream in streams)
    assert one[CDS].held is other[CDS].held
    assert one[EDS].held is other[EDS].held
    assert one[EDS].subscribed is other[EDS].subscribed
    assert dict(one[EDS].held) == {name: r.version for name, r in current.of_type(EDS).by_name.items()}


def test_an_unsubscribe_and_a_nack_change_their_own_stream_only() -> None:
    current = snapshot(["a", "b"])
    mine, theirs = delta_streams(2)
    for index, stream in enumerate((mine, theirs)):
        stream.handle(delta_request(EDS, ["a", "b"], with_node=node(f"delta-{index}")))
        assert stream.response_for(EDS, current) is not None
    mine.handle(delta_request(EDS, unsubscribe=["a"]))
    assert (sorted(mine.states[EDS].held), sorted(mine.states[EDS].subscribed)) == (["b"], ["b"])
    assert (sorted(theirs.states[EDS].held), sorted(theirs.states[EDS].subscribed)) == (["a", "b"], ["a", "b"])

    moved = snapshot(["a", "b"], endpoint_ports=MOVED)
    for stream in (mine, theirs):
        assert stream.response_for(EDS, moved) is not None
    nonce = list(mine.states[EDS].unacked)[-1]  # the latest response: the move
    mine.handle(delta_request(EDS, nonce=nonce, error="bad endpoints"))
    before = current.of_type(EDS).by_name
    after = moved.of_type(EDS).by_name
    assert dict(mine.states[EDS].held) == {"b": before["b"].version}  # rolled back
    assert dict(theirs.states[EDS].held) == {name: after[name].version for name in ("a", "b")}
    assert not theirs.states[EDS].rejected


def test_streams_reconnecting_with_the_same_versions_share_them() -> None:
    before, current = snapshot(["a", "b"]), snapshot(["a", "b"], endpoint_ports={"b": (9090,)})
    holding = {"a": current.of_type(EDS).by_name["a"].version, "b": before.of_type(EDS).by_name["b"].version}
    streams = delta_streams(2)
    sent, claimed = [], []
    for index, stream in enumerate(streams):
        initial = dict(holding)  # each client's own copy, as off the wire
        stream.handle(delta_request(EDS, ["a", "b"], with_node=node(f"delta-{index}"), initial=initial))
        claimed.append(stream.states[EDS].held)
        sent.append(stream.response_for(EDS, current))
    assert claimed[0] is claimed[1]
    assert sent[0] is sent[1]
    one, other = (stream.states[EDS].held for stream in streams)
    assert one is other
    assert dict(one) == {name: resource.version for name, resource in current.of_type(EDS).by_name.items()}


def test_a_stream_that_went_its_own_way_shares_again_once_it_holds_its_interest() -> None:
    current = snapshot(["a", "b"])
    streams = delta_streams(2)
    for index, stream in enumerate(streams):
        stream.handle(delta_request(EDS, ["a", "b"], with_node=node(f"delta-{index}")))
        stream.response_for(EDS, current)
        stream.handle(delta_request(EDS, unsubscribe=["a"]))
        assert isinstance(stream.states[EDS].held, dict)  # its own, after its own change
        stream.handle(delta_request(EDS, ["a"]))
        again = stream.response_for(EDS, current)
        assert again is not None
        assert not isinstance(stream.states[EDS].held, dict)
    one, other = (stream.states[EDS].held for stream in streams)
    assert one is other
    assert sorted(one) == ["a", "b"]
