"""xDS input limits: streams per client (refused with RESOURCE_EXHAUSTED, others unaffected, slots
freed however a stream ends) and streams per connection (HTTP/2's MAX_CONCURRENT_STREAMS)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc

from meshplane.model import ProxyGroup
from meshplane.xds.cache import SnapshotCache
from meshplane.xds.server import service
from meshplane.xds.server.service import XdsServices, client_of, create_server
from meshplane.xds.server.tracking import StreamRegistry
from meshplane.xds.snapshot import Snapshot
from tests.xds_fixtures import CDS, AdsStream, node, request, snapshot, unpack_names

LIMIT = 2


def serve_current(cache: SnapshotCache, current: Snapshot) -> None:
    """Every group a stream asks for gets `current`."""

    def wanted(group: ProxyGroup) -> None:
        cache.set_snapshot(group, current)

    cache.on_group_wanted = wanted


@dataclass
class Limited:
    services: XdsServices
    ipv4: grpc.aio.Channel  # client A: 127.0.0.1
    ipv6: grpc.aio.Channel  # client B: ::1

    def ads(self, channel: grpc.aio.Channel) -> AdsStream:
        return AdsStream(ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources())


@pytest.fixture
async def limited() -> AsyncIterator[Limited]:
    cache = SnapshotCache()
    services = XdsServices(cache, StreamRegistry(), max_streams_per_client=LIMIT)
    current = snapshot(["a", "b"])
    serve_current(cache, current)
    server, port = create_server(services, "[::]:0")  # both stacks: two clients by IP on one host
    await server.start()
    ipv4 = grpc.aio.insecure_channel(f"ipv4:127.0.0.1:{port}")
    ipv6 = grpc.aio.insecure_channel(f"ipv6:[::1]:{port}")
    try:
        yield Limited(services, ipv4, ipv6)
    finally:
        await ipv4.close(None)
        await ipv6.close(None)
        await server.stop(None)


async def gets_config(stream: AdsStream, node_id: str) -> None:
    await stream.send(request(CDS, with_node=node(node_id)))
    response = await stream.recv()
    assert unpack_names(response) == ["a", "b"]


async def end_cleanly(stream: AdsStream) -> None:
    """Closes the client's side; the OK status arrives only after the handler (and its `finally`) ended."""
    await stream.call.done_writing()
    assert (await stream.status())[0] == grpc.StatusCode.OK


async def test_a_client_over_its_limit_is_refused_and_another_client_is_served(limited: Limited) -> None:
    held = [limited.ads(limited.ipv4) for _ in range(LIMIT)]
    for i, stream in enumerate(held):
        await gets_config(stream, f"a-{i}")

    refused = limited.ads(limited.ipv4)
    await refused.send(request(CDS, with_node=node("a-extra")))
    code, message = await refused.status()
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"the limit is {LIMIT} per client" in message
    assert "127.0.0.1" in message
    assert limited.services.refused_streams == 1

    # Client B, a different address, is unaffected; so are A's open streams.
    other = limited.ads(limited.ipv6)
    await gets_config(other, "b-0")
    assert limited.services.client_streams == {"127.0.0.1": LIMIT, "::1": 1}
    await held[0].send(request(CDS, version="x", nonce="y", with_node=node("a-0")))

    for stream in [*held, other]:
        await end_cleanly(stream)
    assert limited.services.client_streams == {}


async def test_a_closed_stream_frees_its_slot(limited: Limited) -> None:
    held = [limited.ads(limited.ipv4) for _ in range(LIMIT)]
    for i, stream in enumerate(held):
        await gets_config(stream, f"a-{i}")
    await end_cleanly(held[0])

    again = limited.ads(limited.ipv4)
    await gets_config(again, "a-again")
    assert limited.services.client_streams["127.0.0.1"] == LIMIT
    for stream in (held[1], again):
        await end_cleanly(stream)


async def test_a_stream_ended_by_an_error_frees_its_slot(limited: Limited) -> None:
    for i in range(LIMIT + 1):  # more failed streams than the limit: none leaks its slot
        stream = limited.ads(limited.ipv4)
        await stream.send(request("type.googleapis.com/not.a.Type", with_node=node(f"bad-{i}")))
        code, _ = await stream.status()
        assert code not in (grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert limited.services.client_streams == {}
    await gets_config(limited.ads(limited.ipv4), "good")


async def test_zero_means_unlimited() -> None:
    cache = SnapshotCache()
    services = XdsServices(cache, StreamRegistry(), max_streams_per_client=0)
    current = snapshot(["a", "b"])
    serve_current(cache, current)
    server, port = create_server(services, "127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        streams = [AdsStream(ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources())
                   for _ in range(5)]  # fmt: skip
        for i, stream in enumerate(streams):
            await gets_config(stream, f"n-{i}")
        for stream in streams:
            await end_cleanly(stream)
    finally:
        await channel.close(None)
        await server.stop(None)


@pytest.mark.parametrize(
    ("peer", "auth", "client"),
    [
        pytest.param("ipv4:10.1.2.3:5555", {}, "10.1.2.3", id="ipv4"),
        pytest.param("ipv6:[fd00::1]:5555", {}, "fd00::1", id="ipv6"),
        pytest.param("ipv6:%5B::1%5D:5555", {}, "::1", id="ipv6-escaped"),
        pytest.param("unix:/run/xds.sock", {}, "unix:/run/xds.sock", id="unix"),
    ],
)
def test_client_without_certificate_is_its_address(peer: str, auth: dict[str, list[bytes]], client: str) -> None:
    assert client_of(peer, auth) == client


def test_client_with_certificate_is_the_certificate() -> None:
    def auth(pem: bytes) -> dict[str, list[bytes]]:
        return {"x509_pem_cert": [pem], "peer_uri": [b"meshplane://role/device/site/gym-12"]}

    one = client_of("ipv4:10.0.0.1:1", auth(b"cert-1"))
    assert one.startswith("certificate meshplane://role/device/site/gym-12 sha256:")
    assert client_of("ipv4:10.0.0.2:2", auth(b"cert-1")) == one  # same certificate, any address
    assert client_of("ipv4:10.0.0.1:1", auth(b"cert-2")) != one  # same SAN, another certificate


async def test_streams_per_connection_reach_grpc(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []
    real = grpc.aio.server

    def server(**kwargs: Any) -> Any:
        seen.append(dict(kwargs["options"]))
        return real(**kwargs)

    monkeypatch.setattr(grpc.aio, "server", server)
    create_server(XdsServices(SnapshotCache(), StreamRegistry()), "127.0.0.1:0", max_streams_per_connection=7)
    create_server(XdsServices(SnapshotCache(), StreamRegistry()), "127.0.0.1:0")
    assert seen[0]["grpc.max_concurrent_streams"] == 7
    assert seen[1]["grpc.max_concurrent_streams"] == service.DEFAULT_MAX_STREAMS_PER_CONNECTION


async def test_a_full_connection_leaves_other_connections_served() -> None:
    cache = SnapshotCache()
    current = snapshot(["a", "b"])
    serve_current(cache, current)
    server, port = create_server(XdsServices(cache, StreamRegistry()), "127.0.0.1:0", max_streams_per_connection=1)
    await server.start()
    own_pool = [("grpc.use_local_subchannel_pool", 1)]  # a connection of its own, as another proxy has
    first = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=own_pool)
    second = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=own_pool)
    try:
        held = AdsStream(ads_pb2_grpc.AggregatedDiscoveryServiceStub(first).StreamAggregatedResources())
        await gets_config(held, "first")
        other = AdsStream(ads_pb2_grpc.AggregatedDiscoveryServiceStub(second).StreamAggregatedResources())
        await gets_config(other, "second")
        for stream in (held, other):
            await end_cleanly(stream)
    finally:
        await first.close(None)
        await second.close(None)
        await server.stop(None)
