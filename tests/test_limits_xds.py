"""xDS input limits: streams per client (refused with RESOURCE_EXHAUSTED, others unaffected, slots
freed however a stream ends; a client is its address, or its certificate over mTLS) and streams
per connection (HTTP/2's MAX_CONCURRENT_STREAMS)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest

from meshplane.model import ProxyGroup
from meshplane.status.grpc_stats import GrpcStats, InstrumentedXdsServices
from meshplane.tls import ReloadingCredentials, TlsFiles
from meshplane.xds.cache import SnapshotCache
from meshplane.xds.server import service
from meshplane.xds.server.service import XdsServices, client_of, create_server
from meshplane.xds.server.tracking import StreamRegistry
from meshplane.xds.snapshot import Snapshot
from tests.tls_certs import Pair, issue, make_ca
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


async def refused(stream: AdsStream, first: DiscoveryRequest) -> tuple[grpc.StatusCode, str]:
    """Sends `first` on a stream the server refuses, and returns the status it ended with.

    A stream over its client's limit is refused on its headers, before the server reads a request:
    its status may arrive before the client's write completes, which then fails with that very
    status. Either way the status is the call's, which `status()` reads back."""
    with contextlib.suppress(grpc.aio.AioRpcError):  # refused before the request went out
        await stream.send(first)
    return await stream.status()


async def end_cleanly(stream: AdsStream) -> None:
    """Closes the client's side; the OK status arrives only after the handler (and its `finally`) ended."""
    await stream.call.done_writing()
    assert (await stream.status())[0] == grpc.StatusCode.OK


async def test_a_client_over_its_limit_is_refused_and_another_client_is_served(limited: Limited) -> None:
    held = [limited.ads(limited.ipv4) for _ in range(LIMIT)]
    for i, stream in enumerate(held):
        await gets_config(stream, f"a-{i}")

    code, message = await refused(limited.ads(limited.ipv4), request(CDS, with_node=node("a-extra")))
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


def mtls_channel(port: int, ca: Pair, client: Pair) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.certificate.read_bytes(),
        private_key=client.key.read_bytes(),
        certificate_chain=client.certificate.read_bytes(),
    )
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials)


async def test_over_mtls_a_client_is_its_certificate_not_its_address(tmp_path: Path) -> None:
    """Two proxies on one address (127.0.0.1), each with its own certificate: one over its limit is
    refused by name, the other is still served."""
    ca = make_ca(tmp_path / "ca")
    server_pair = issue(ca, tmp_path, "server", "IP:127.0.0.1")
    first = issue(ca, tmp_path, "first", "URI:meshplane://role/sidecar")
    second = issue(ca, tmp_path, "second", "URI:meshplane://role/grpc")
    cache = SnapshotCache()
    services = XdsServices(cache, StreamRegistry(), max_streams_per_client=LIMIT)
    serve_current(cache, snapshot(["a", "b"]))
    tls = ReloadingCredentials(TlsFiles(server_pair.certificate, server_pair.key, ca.certificate))
    server, port = create_server(services, "127.0.0.1:0", tls)
    await server.start()
    one, other = mtls_channel(port, ca, first), mtls_channel(port, ca, second)
    try:
        held = [AdsStream(ads_pb2_grpc.AggregatedDiscoveryServiceStub(one).StreamAggregatedResources())
                for _ in range(LIMIT)]  # fmt: skip
        for i, stream in enumerate(held):
            await gets_config(stream, f"first-{i}")

        extra = AdsStream(ads_pb2_grpc.AggregatedDiscoveryServiceStub(one).StreamAggregatedResources())
        code, message = await refused(extra, request(CDS, with_node=node("first-extra")))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        fingerprint = hashlib.sha256(first.certificate.read_bytes()).hexdigest()[:16]
        assert f"client certificate meshplane://role/sidecar sha256:{fingerprint}" in message
        assert f"the limit is {LIMIT} per client" in message
        assert services.refused_streams == 1

        # Same address, another certificate: a client of its own, with its own LIMIT streams.
        others = [AdsStream(ads_pb2_grpc.AggregatedDiscoveryServiceStub(other).StreamAggregatedResources())
                  for _ in range(LIMIT)]  # fmt: skip
        for i, stream in enumerate(others):
            await stream.send(request(CDS, with_node=node(f"second-{i}", role="grpc")))
            assert unpack_names(await stream.recv()) == ["a", "b"]
        assert sorted(services.client_streams.values()) == [LIMIT, LIMIT]
        assert all(client.startswith("certificate ") for client in services.client_streams)
        assert services.refused_streams == 1

        for stream in [*held, *others]:
            await end_cleanly(stream)
        assert services.client_streams == {}
    finally:
        await one.close(None)
        await other.close(None)
        await server.stop(None)


async def until(
    condition: Callable[[], bool], what: str, state: Callable[[], str] = lambda: "", deadline: float = 10.0
) -> None:
    """Polls `condition` until it holds; fails naming `what` (and `state()`) after `deadline` seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not condition():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what} {state()}".rstrip())
        await asyncio.sleep(0.01)


def names_of_size(total: int) -> list[str]:
    """Resource names (1 KiB each, within the name rules) adding up to about `total` bytes on the wire."""
    return [f"{i:08d}" + "x" * 1000 for i in range(total // 1011 + 1)]


async def test_an_oversized_request_is_refused_and_other_streams_are_served() -> None:
    cache = SnapshotCache()
    serve_current(cache, snapshot(["a", "b"]))
    stats = GrpcStats()
    services = InstrumentedXdsServices(stats, cache, StreamRegistry())
    server, port = create_server(services, "127.0.0.1:0")
    await server.start()
    # Our client may send more than the server takes; each channel is a connection of its own.
    options = [("grpc.max_send_message_length", 64 * 1024 * 1024), ("grpc.use_local_subchannel_pool", 1)]
    sender = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options)
    bystander = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options)
    try:
        elsewhere = AdsStream(ads_pb2_grpc.AggregatedDiscoveryServiceStub(bystander).StreamAggregatedResources())
        await gets_config(elsewhere, "bystander")
        neighbour = AdsStream(ads_pb2_grpc.AggregatedDiscoveryServiceStub(sender).StreamAggregatedResources())
        await gets_config(neighbour, "neighbour")  # same connection as the oversized request

        # Just under the limit: served (names are taken literally: the two that exist are sent).
        padding = names_of_size(service.MAX_REQUEST_BYTES - 64 * 1024)
        under = request(CDS, ["a", "b", *padding], with_node=node("under"))
        assert service.MAX_REQUEST_BYTES - 64 * 1024 < under.ByteSize() < service.MAX_REQUEST_BYTES
        large = AdsStream(ads_pb2_grpc.AggregatedDiscoveryServiceStub(sender).StreamAggregatedResources())
        await large.send(under)
        assert unpack_names(await large.recv()) == ["a", "b"]

        over = request(CDS, names_of_size(service.MAX_REQUEST_BYTES + 1024), with_node=node("over"))
        assert over.ByteSize() > service.MAX_REQUEST_BYTES
        oversized = AdsStream(ads_pb2_grpc.AggregatedDiscoveryServiceStub(sender).StreamAggregatedResources())
        await oversized.send(over)
        code, message = await oversized.status()
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"larger than max ({over.ByteSize()} vs. {service.MAX_REQUEST_BYTES})" in message
        # gRPC refuses it before our handler sees a request: nothing counts it as ours. Its handler
        # does run (grpc.aio steps a call's handler task before it can deliver that call's
        # cancellation), and ends in one of two ways, whichever grpc.aio delivers first: the failed
        # read of the oversized message, which grpc.aio reports as the end of the requests (the
        # handler returns as when a client closes its side: OK, to the counters), or the call's
        # cancellation by gRPC core (CANCELLED). Wait for that end: then only the three others run.
        ads = ("envoy.service.discovery.v3.AggregatedDiscoveryService", "StreamAggregatedResources")

        def ended() -> dict[str, int]:
            return {key[2]: count for key, count in stats.handled.items() if key[:2] == ads and count}

        await until(
            lambda: stats.started[ads] == 4 and sum(ended().values()) == 1,
            "the oversized stream's handler to end",
            lambda: f"started {stats.started[ads]}, ended {ended()}",
        )
        assert set(ended()) <= {"OK", "CANCELLED"}, ended()
        assert services.refused_streams == 0

        # The streams on the other connection and on the same one keep being served: a new
        # snapshot reaches both.
        for group in cache.groups():
            cache.set_snapshot(group, snapshot(["a", "b", "c"]))
        for stream in (elsewhere, neighbour):
            assert unpack_names(await stream.recv()) == ["a", "b", "c"]
        for stream in (elsewhere, neighbour, large):
            await end_cleanly(stream)
        assert services.client_streams == {}
    finally:
        await sender.close(None)
        await bystander.close(None)
        await server.stop(None)
