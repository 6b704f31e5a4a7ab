"""Delta (incremental) protocol rules, against an in-process server with hand-built snapshots.

As in the SotW tests, "nothing was sent" is proven by a probe that must be answered next.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.xds_fixtures import (
    CDS,
    EDS,
    LDS,
    RDS,
    SDS,
    AdsStream,
    XdsHarness,
    delta_request,
    delta_versions,
    node,
    snapshot,
    start_harness,
)


@pytest.fixture
async def xds() -> AsyncIterator[XdsHarness]:
    async for harness in start_harness():
        yield harness


class Prober:
    def __init__(self) -> None:
        self.count = 0

    async def __call__(self, stream: AdsStream) -> None:
        """Subscribes to a secret that does not exist: the next response must report it absent."""
        self.count += 1
        name = f"probe-{self.count}"
        await stream.send(delta_request(SDS, [name]))
        response = await stream.recv()
        assert response.type_url == SDS.value
        assert list(response.removed_resources) == [name]
        await stream.send(delta_request(SDS, nonce=response.nonce))


async def connect(xds: XdsHarness, **initial: dict[str, str]) -> tuple[AdsStream, object]:
    stream = xds.delta()
    await stream.send(delta_request(CDS, with_node=node("delta-1"), initial=initial.get("cds")))
    return stream, await stream.recv()


async def test_wildcard_first_request_gets_everything_then_only_changes(xds: XdsHarness) -> None:
    probe = Prober()
    xds.current = snapshot(["a", "b"])
    stream, first = await connect(xds)
    assert sorted(delta_versions(first)) == ["a", "b"]
    await stream.send(delta_request(CDS, nonce=first.nonce))
    await probe(stream)
    xds.publish(snapshot(["a", "b", "c"]))
    second = await stream.recv()
    assert list(delta_versions(second)) == ["c"]
    assert not second.removed_resources
    await stream.send(delta_request(CDS, nonce=second.nonce))
    xds.publish(snapshot(["a", "c"]))
    third = await stream.recv()
    assert not third.resources
    assert list(third.removed_resources) == ["b"]


async def test_initial_resource_versions_are_honoured_on_reconnect(xds: XdsHarness) -> None:
    before = snapshot(["a", "b"])
    xds.current = snapshot(["a", "b"], connect_ms=100)
    # The reconnecting client holds the current a, and b as it was before the change.
    held = {"a": xds.current.of_type(CDS).by_name["a"].version, "b": before.of_type(CDS).by_name["b"].version}
    _stream, first = await connect(xds, cds=held)
    assert list(delta_versions(first)) == ["b"]


async def test_reconnect_holding_everything_gets_an_empty_answer_and_no_flap(xds: XdsHarness) -> None:
    xds.current = snapshot(["a", "b"])
    held = {name: r.version for name, r in xds.current.of_type(CDS).by_name.items()}
    _stream, first = await connect(xds, cds=held)
    assert not first.resources
    assert not first.removed_resources


async def test_unsubscribe_then_resubscribe_sends_again(xds: XdsHarness) -> None:
    probe = Prober()
    xds.current = snapshot(["a", "b"])
    stream = xds.delta()
    await stream.send(delta_request(EDS, ["a"], with_node=node()))
    first = await stream.recv()
    assert list(delta_versions(first)) == ["a"]
    await stream.send(delta_request(EDS, unsubscribe=["a"], nonce=first.nonce))
    await probe(stream)
    await stream.send(delta_request(EDS, ["a"]))
    again = await stream.recv()
    assert list(delta_versions(again)) == ["a"]


async def test_nack_is_recorded_and_not_resent_until_changed(xds: XdsHarness) -> None:
    probe = Prober()
    xds.current = snapshot(["a"])
    stream, first = await connect(xds)
    await stream.send(delta_request(CDS, nonce=first.nonce))
    xds.publish(snapshot(["a", "bad"]))
    bad = await stream.recv()
    await stream.send(delta_request(CDS, nonce=bad.nonce, error="bad cluster"))
    await probe(stream)
    xds.publish(snapshot(["a", "bad"]))
    await probe(stream)
    nack = xds.registry.recent_nacks[-1]
    assert (nack.node_id, nack.type_url, nack.message) == ("delta-1", CDS, "bad cluster")
    xds.publish(snapshot(["a", "bad"], connect_ms=900))  # the rejected cluster changed: sent again
    changed = await stream.recv()
    assert sorted(delta_versions(changed)) == ["a", "bad"]


async def test_changed_eds_cluster_gets_its_endpoints_again(xds: XdsHarness) -> None:
    xds.current = snapshot(["a"])
    stream, cds = await connect(xds)
    await stream.send(delta_request(EDS, ["a"]))
    eds = await stream.recv()
    await stream.send(delta_request(EDS, nonce=eds.nonce))
    await stream.send(delta_request(CDS, nonce=cds.nonce))
    xds.publish(snapshot(["a"], connect_ms=700))  # cluster a changes, its endpoints do not
    changed = await stream.recv()
    assert changed.type_url == CDS.value
    resent = await stream.recv()
    assert resent.type_url == EDS.value
    assert delta_versions(resent) == delta_versions(eds)


async def test_absent_name_is_reported_removed_once(xds: XdsHarness) -> None:
    probe = Prober()
    stream = xds.delta()
    await stream.send(delta_request(EDS, ["ghost"], with_node=node()))
    response = await stream.recv()
    assert list(response.removed_resources) == ["ghost"]
    await stream.send(delta_request(EDS, nonce=response.nonce))
    await probe(stream)
    xds.publish(snapshot(["ghost"]))
    appeared = await stream.recv()
    assert list(delta_versions(appeared)) == ["ghost"]


async def test_removed_cluster_stays_until_routes_stop_using_it(xds: XdsHarness) -> None:
    xds.current = snapshot(["a", "b"], listeners={"l": "r"}, route_clusters={"r": "b"})
    stream, cds = await connect(xds)
    await stream.send(delta_request(CDS, nonce=cds.nonce))
    await stream.send(delta_request(LDS))
    lds = await stream.recv()
    await stream.send(delta_request(LDS, nonce=lds.nonce))
    await stream.send(delta_request(RDS, ["r"]))
    rds = await stream.recv()
    await stream.send(delta_request(RDS, nonce=rds.nonce))
    xds.publish(snapshot(["a"], listeners={"l": "r"}, route_clusters={"r": "a"}))
    new_rds = await stream.recv()
    assert new_rds.type_url == RDS.value
    await stream.send(delta_request(RDS, nonce=new_rds.nonce))
    removal = await stream.recv()
    assert removal.type_url == CDS.value
    assert list(removal.removed_resources) == ["b"]
