"""Random DiscoveryRequests against a live server (hypothesis): it never crashes, never sends a
stream another group's resources, and keeps serving a well-behaved stream meanwhile.

Two groups have disjoint snapshots (sidecars in zone `a` get clusters `a-*`, in zone `b` get
`b-*`). The fuzzed stream claims zone `a`; anything named `b-*` reaching it would be a leak.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshplane.model import ProxyGroup
from meshplane.xds.snapshot import Snapshot
from meshplane.xds.types import TypeUrl
from tests.xds_fixtures import (
    CDS,
    READ_TIMEOUT,
    XdsHarness,
    delta_request,
    node,
    request,
    snapshot,
    start_harness,
    unpack_names,
)

NAMES = st.one_of(
    st.sampled_from(["a-1", "a-2", "b-1", "b-2", "*", "", "x" * 1500]),
    st.text(min_size=0, max_size=40),
)
TYPE_URLS = st.one_of(
    st.sampled_from([t.value for t in TypeUrl]),
    st.sampled_from(["", "type.googleapis.com/envoy.config.core.v3.Nope", "garbage"]),
    st.text(max_size=30),
)
NONCES = st.one_of(st.just(""), st.integers(0, 6).map(str), st.text(max_size=8))


@st.composite
def sotw_requests(draw: st.DrawFn) -> discovery_pb2.DiscoveryRequest:
    return request(
        draw(TYPE_URLS),
        draw(st.lists(NAMES, max_size=5)),
        version=draw(st.text(max_size=10)),
        nonce=draw(NONCES),
        error=draw(st.one_of(st.none(), st.text(max_size=20))),
        with_node=draw(st.sampled_from([None, node("fuzz", zone="a"), node("fuzz", zone="b", role="nope")])),
    )


@st.composite
def delta_requests(draw: st.DrawFn) -> discovery_pb2.DeltaDiscoveryRequest:
    message = delta_request(
        draw(st.sampled_from(list(TypeUrl))),
        draw(st.lists(NAMES, max_size=4)),
        draw(st.lists(NAMES, max_size=3)),
        nonce=draw(NONCES),
        error=draw(st.one_of(st.none(), st.text(max_size=20))),
        initial=draw(st.dictionaries(NAMES, st.text(max_size=8), max_size=3)),
        with_node=draw(st.sampled_from([None, node("fuzz", zone="a")])),
    )
    message.type_url = draw(TYPE_URLS)
    return message


def fuzz_stream(target: str, requests: list[Any], delta: bool) -> tuple[list[str], grpc.StatusCode | None]:
    """Sends `requests` on one stream with grpcio's synchronous client; returns the name of every
    resource it was sent and how the stream ended (None: OK).

    The synchronous client, not grpc.aio: when a client write races with the server ending the
    stream, grpc.aio's client reports its own "Internal error from Core" instead of the status the
    server sent (seen here: the sync client always shows the server's INVALID_ARGUMENT).
    """
    received: list[str] = []
    with grpc.insecure_channel(target) as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        call = stub.DeltaAggregatedResources if delta else stub.StreamAggregatedResources
        try:
            for response in call(iter(requests), timeout=READ_TIMEOUT):
                # Only resources sent count: a name in `removed_resources` tells the client that a
                # name it asked for does not exist for it, which reveals nothing of the other group.
                received.extend(unpack_names(response))
        except grpc.RpcError as error:
            code: grpc.StatusCode = error.code()  # type: ignore[attr-defined]
            return received, None if code is grpc.StatusCode.DEADLINE_EXCEEDED else code
    return received, None


def zones(harness: XdsHarness, zone_a: Snapshot, zone_b: Snapshot) -> None:
    def wanted(group: ProxyGroup) -> None:
        harness.cache.set_snapshot(group, zone_a if group.locality.zone == "a" else zone_b)

    harness.cache.on_group_wanted = wanted


async def scenario(requests: list[object], delta: bool) -> None:
    async for xds in start_harness():
        await run_scenario(xds, requests, delta)


async def run_scenario(xds: XdsHarness, requests: list[object], delta: bool) -> None:
    zones(xds, snapshot(["a-1", "a-2"]), snapshot(["b-1", "b-2"]))
    honest = xds.ads()
    await honest.send(request(CDS, with_node=node("honest", zone="b")))
    assert unpack_names(await honest.recv()) == ["b-1", "b-2"]

    # The fuzzed stream runs in a thread; the stream stays open until its deadline unless refused.
    fuzzing = asyncio.create_task(asyncio.to_thread(fuzz_stream, xds.target, requests, delta))
    # Meanwhile the honest stream is still served: a new snapshot for its group reaches it.
    for group in xds.cache.groups():
        if group.locality.zone == "b":
            xds.cache.set_snapshot(group, snapshot(["b-1", "b-2", "b-3"]))
    assert unpack_names(await honest.recv()) == ["b-1", "b-2", "b-3"]
    received, code = await fuzzing
    # The server ends a fuzzed stream only by refusing a request.
    assert code in (None, grpc.StatusCode.INVALID_ARGUMENT), code
    leaked = [name for name in received if name.startswith("b-")]
    assert not leaked, f"zone-a stream received zone-b resources: {leaked}"


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One event loop for every example: grpc.aio binds its completion-queue poller to a loop, so a
    new loop per example (asyncio.run) would leave callbacks aimed at closed loops."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "60")),  # more for a deeper local run
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@FUZZ
@given(requests=st.lists(sotw_requests(), min_size=1, max_size=8))
def test_fuzzed_sotw_requests(loop: asyncio.AbstractEventLoop, requests: list[discovery_pb2.DiscoveryRequest]) -> None:
    loop.run_until_complete(scenario(list(requests), delta=False))


@FUZZ
@given(requests=st.lists(delta_requests(), min_size=1, max_size=8))
def test_fuzzed_delta_requests(
    loop: asyncio.AbstractEventLoop, requests: list[discovery_pb2.DeltaDiscoveryRequest]
) -> None:
    loop.run_until_complete(scenario(list(requests), delta=True))
