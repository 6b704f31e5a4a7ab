"""The xDS port is bounded as the registry's gRPC port is (meshplane.grpc_limits), plus a deadline
for a stream's first request, against an in-process server on 127.0.0.1 with small bounds:

- a TCP connection that never completes the HTTP/2 handshake is closed by the server (the test
  waits for the close: a read returning EOF);
- a connection that carries no stream is closed after the idle timeout, while a connection that
  carries a proxy's open ADS stream is not: gRPC counts a connection idle only while no call is
  open on it, and an xDS stream stays open for the proxy's lifetime;
- a stream whose first request never arrives ends DEADLINE_EXCEEDED with the reason, is counted
  as refused, and frees its slot; a stream that spoke at once is served on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc

from meshplane.grpc_limits import ConnectionLimits
from meshplane.model import ProxyGroup
from meshplane.xds.cache import SnapshotCache
from meshplane.xds.server import service
from meshplane.xds.server.service import XdsServices, create_server
from meshplane.xds.server.tracking import StreamRegistry
from tests.http2_frames import EMPTY_SETTINGS, GOAWAY, PREFACE, frame_types
from tests.xds_fixtures import CDS, AdsStream, node, request, snapshot, unpack_names

TIMEOUT = 0.5  # the handshake, idle and first-request bounds here: the waits end on the event itself
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]  # a channel with a connection of its own


class Bounded:
    def __init__(self, services: XdsServices, cache: SnapshotCache, port: int) -> None:
        self.services, self.cache, self.port = services, cache, port

    def channel(self) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(f"127.0.0.1:{self.port}", options=OWN_CONNECTION)

    def publish(self, clusters: list[str]) -> None:
        for group in self.cache.groups():
            self.cache.set_snapshot(group, snapshot(clusters))


@contextlib.asynccontextmanager
async def serving(limits: ConnectionLimits) -> AsyncIterator[Bounded]:
    cache = SnapshotCache()

    def wanted(group: ProxyGroup) -> None:
        cache.set_snapshot(group, snapshot(["a"]))

    cache.on_group_wanted = wanted
    services = XdsServices(cache, StreamRegistry(), first_request_timeout=TIMEOUT)
    server, port = create_server(services, "127.0.0.1:0", connections=limits)
    await server.start()
    try:
        yield Bounded(services, cache, port)
    finally:
        await server.stop(None)


@pytest.fixture
async def bounded() -> AsyncIterator[Bounded]:
    async with serving(ConnectionLimits(handshake_timeout=TIMEOUT, idle_timeout=TIMEOUT)) as running:
        yield running


async def closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (no clock of ours: the test's
    own timeout is the bound)."""
    received = b""
    try:
        while chunk := await reader.read(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


async def until(condition: Callable[[], Any], what: str) -> None:
    """Waits for `condition` (checked on every loop turn, yielding to the server in between)."""
    for _ in range(100_000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


@pytest.mark.timeout(60)
async def test_a_connection_that_never_handshakes_is_closed() -> None:
    # Only the handshake bound is small: the idle bound (which also applies to a connection
    # without calls) must not be what closes it.
    async with serving(ConnectionLimits(handshake_timeout=TIMEOUT, idle_timeout=3600)) as bounded:
        reader, writer = await asyncio.open_connection("127.0.0.1", bounded.port)
        try:
            received = await closed_by_server(reader)
        finally:
            writer.close()
    assert GOAWAY in frame_types(received), received
    assert b"handshake" in received, received  # the GOAWAY's debug text names the reason


@pytest.mark.timeout(60)
async def test_a_connection_without_streams_is_closed_and_one_with_a_stream_is_kept(bounded: Bounded) -> None:
    proxy = bounded.channel()
    try:
        stream = AdsStream(ads_pb2_grpc.AggregatedDiscoveryServiceStub(proxy).StreamAggregatedResources())
        await stream.send(request(CDS, with_node=node("proxy")))
        first = await stream.recv()
        await stream.send(request(CDS, version=first.version_info, nonce=first.nonce))
        (track,) = bounded.services.registry.streams()

        # Opened after the proxy's connection, a connection without streams is closed first...
        reader, writer = await asyncio.open_connection("127.0.0.1", bounded.port)
        writer.write(PREFACE + EMPTY_SETTINGS)
        assert GOAWAY in frame_types(await closed_by_server(reader))
        writer.close()
        # ...twice over, for good measure: a gRPC channel whose one call ended goes idle too.
        quiet = bounded.channel()
        try:
            once = AdsStream(ads_pb2_grpc.AggregatedDiscoveryServiceStub(quiet).StreamAggregatedResources())
            await once.send(request(CDS, with_node=node("once")))
            await once.recv()
            await once.call.done_writing()
            assert (await once.status())[0] is grpc.StatusCode.OK
            await until(lambda: quiet.get_state() is grpc.ChannelConnectivity.IDLE, "the quiet channel's GOAWAY")
        finally:
            await quiet.close(None)

        # ...and the proxy's, whose stream is open, is not: still connected, its stream served, and
        # a new stream on the channel arrives over the same connection (same client port).
        assert proxy.get_state() is grpc.ChannelConnectivity.READY
        bounded.publish(["a", "b"])
        assert unpack_names(await stream.recv()) == ["a", "b"]
        again = AdsStream(ads_pb2_grpc.AggregatedDiscoveryServiceStub(proxy).StreamAggregatedResources())
        await again.send(request(CDS, with_node=node("proxy-again")))
        await again.recv()
        peers = {t.node_id: t.peer for t in bounded.services.registry.streams()}
        assert peers["proxy-again"] == track.peer
    finally:
        await proxy.close(None)


@pytest.mark.timeout(60)
async def test_a_stream_that_never_sends_its_first_request_ends_deadline_exceeded(bounded: Bounded) -> None:
    channel = bounded.channel()
    try:
        speaking = AdsStream(ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources())
        await speaking.send(request(CDS, with_node=node("speaking")))
        first = await speaking.recv()
        await speaking.send(request(CDS, version=first.version_info, nonce=first.nonce))

        silent = AdsStream(ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources())
        code, message = await silent.status()
        assert code is grpc.StatusCode.DEADLINE_EXCEEDED
        assert message == (
            f"no request arrived within {TIMEOUT:g} s of the stream's start: "
            "the first request must come at once and carry the node"
        )
        assert bounded.services.registry.refused_counts["DEADLINE_EXCEEDED"] == 1
        assert bounded.services.client_streams == {"127.0.0.1": 1}  # the silent stream's slot is free

        # The stream that spoke at once, opened before the silent one, is served past the deadline.
        bounded.publish(["a", "b"])
        assert unpack_names(await speaking.recv()) == ["a", "b"]
    finally:
        await channel.close(None)


async def test_the_port_gets_the_shared_connection_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """By default the registry's bounds (meshplane.grpc_limits), with the xDS flag's streams per connection."""
    seen: list[dict[str, Any]] = []
    real = grpc.aio.server

    def server(**kwargs: Any) -> Any:
        seen.append(dict(kwargs["options"]))
        return real(**kwargs)

    monkeypatch.setattr(grpc.aio, "server", server)
    create_server(XdsServices(SnapshotCache(), StreamRegistry()), "127.0.0.1:0", max_streams_per_connection=7)
    expected = dict(ConnectionLimits(max_streams_per_connection=7).grpc_options())
    assert {key: seen[0][key] for key in expected} == expected
    assert seen[0]["grpc.server_handshake_timeout_ms"] == 10_000
    assert seen[0]["grpc.max_connection_idle_ms"] == 300_000
    assert seen[0]["grpc.max_receive_message_length"] == service.MAX_REQUEST_BYTES
