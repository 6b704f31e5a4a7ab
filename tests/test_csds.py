"""CSDS (`envoy.service.status.v3.ClientStatusDiscoveryService`) on the xDS port.

Real xDS streams connect to an in-process server (and, in one case, grpcio's own xDS client to a
whole control plane); a CSDS client built from the generated stubs asks what it serves. A state
the server reaches after a client's request (an ACK handled, a subscription seen) is waited for by
asking again until the answer shows it, never by sleeping for a while and hoping.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2
from envoy.service.cluster.v3 import cds_pb2_grpc
from envoy.service.endpoint.v3 import eds_pb2_grpc
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc
from envoy.type.matcher.v3 import node_pb2, regex_pb2, string_pb2, struct_pb2, value_pb2

from meshplane.demo.greeter import start_greeter
from meshplane.xds.cache import SnapshotCache
from meshplane.xds.server.csds import MAX_REFUSAL_BYTES, access_refusal
from meshplane.xds.server.service import XdsServices, create_server
from meshplane.xds.server.tracking import MAX_NACK_MESSAGE_BYTES, StreamRegistry, kept_node
from meshplane.xds.snapshot import Snapshot
from meshplane.xds.types import TypeUrl
from tests.envoy_harness import REPO
from tests.netns import make_device_host, unavailable_reason
from tests.preconditions import require, requires
from tests.test_envoy_integration import start_plane
from tests.test_grpc_xds_client import greeter_policy, write_grpc_bootstrap
from tests.xds_fixtures import CDS, EDS, LDS, SDS, AdsStream, eds_cluster, endpoints, node, request

ADMIN_TOKEN = "csds-admin-token-for-tests"
KEY_TEXT = "-----BEGIN PRIVATE KEY-----\nMIIEvQ-secret-key-body\n-----END PRIVATE KEY-----\n"
ANSWER_TIMEOUT = 10.0

SYNCED, STALE, NOT_SENT, ERROR = csds_pb2.SYNCED, csds_pb2.STALE, csds_pb2.NOT_SENT, csds_pb2.ERROR


def mesh_snapshot() -> Snapshot:
    """Two EDS clusters with endpoints, and two secrets: one carrying a private key, one a CA bundle."""
    key_pair = secret_pb2.Secret(
        name="client-cert",
        tls_certificate=common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(inline_string="CERTIFICATE"),
            private_key=base_pb2.DataSource(inline_string=KEY_TEXT),
        ),
    )
    bundle = secret_pb2.Secret(
        name="mesh-ca",
        validation_context=common_pb2.CertificateValidationContext(
            trusted_ca=base_pb2.DataSource(inline_string="CA BUNDLE")
        ),
    )
    return Snapshot.of(
        {
            CDS: [eds_cluster("c1"), eds_cluster("c2")],
            EDS: [endpoints("c1", 8080), endpoints("c2", 8081)],
            SDS: [key_pair, bundle],
        }
    )


class Plane:
    """An in-process xDS server (with CSDS) and a channel to it."""

    def __init__(self, registry: StreamRegistry, channel: grpc.aio.Channel, port: int) -> None:
        self.registry = registry
        self.channel = channel
        self.port = port

    def ads(self, channel: grpc.aio.Channel | None = None) -> AdsStream:
        from envoy.service.discovery.v3 import ads_pb2_grpc

        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel or self.channel)
        return AdsStream(stub.StreamAggregatedResources())

    def csds(self, channel: grpc.aio.Channel | None = None) -> csds_pb2_grpc.ClientStatusDiscoveryServiceStub:
        return csds_pb2_grpc.ClientStatusDiscoveryServiceStub(channel or self.channel)


@contextlib.asynccontextmanager
async def running_plane(address: str = "127.0.0.1:0", **options: Any) -> AsyncIterator[Plane]:
    cache = SnapshotCache()
    registry = StreamRegistry()
    server, port = create_server(XdsServices(cache, registry, **options), address)
    await server.start()
    current = mesh_snapshot()

    def serve(group: Any) -> None:
        cache.set_snapshot(group, current)

    cache.on_group_wanted = serve
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Plane(registry, channel, port)
    finally:
        await channel.close(None)
        await server.stop(None)


@pytest.fixture
async def plane() -> AsyncIterator[Plane]:
    async with running_plane() as running:
        yield running


async def answer_when(
    csds: csds_pb2_grpc.ClientStatusDiscoveryServiceStub,
    condition: Callable[[csds_pb2.ClientStatusResponse], bool],
    request: csds_pb2.ClientStatusRequest | None = None,
    metadata: tuple[tuple[str, str], ...] = (),
) -> csds_pb2.ClientStatusResponse:
    """Asks until the answer meets `condition` (the server handles a client's requests on its own
    schedule); fails with the last answer after `ANSWER_TIMEOUT`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ANSWER_TIMEOUT
    while True:
        answer = await csds.FetchClientStatus(request or csds_pb2.ClientStatusRequest(), metadata=metadata)
        if condition(answer):
            return answer
        assert loop.time() < deadline, f"CSDS never answered as expected; last answer:\n{answer}"
        await asyncio.sleep(0.01)


def entries(answer: csds_pb2.ClientStatusResponse, node_id: str) -> dict[tuple[str, str], Any]:
    """The node's generic_xds_configs by (type short name, resource name)."""
    (config,) = [config for config in answer.config if config.node.id == node_id]
    return {(TypeUrl(entry.type_url).short, entry.name): entry for entry in config.generic_xds_configs}


def state_of(answer: csds_pb2.ClientStatusResponse, node_id: str, key: tuple[str, str]) -> int | None:
    if not any(config.node.id == node_id for config in answer.config):
        return None
    entry = entries(answer, node_id).get(key)
    return entry.config_status if entry is not None else None


async def connect(plane: Plane, node_id: str, role: str | None = None) -> tuple[AdsStream, Any]:
    """An ADS stream of `node_id` that asked for every cluster; returns it and the CDS response (not ACKed)."""
    stream = plane.ads()
    await stream.send(request(CDS, with_node=node(node_id, role=role)))
    return stream, await stream.recv()


async def test_each_connected_node_is_answered_and_synced_once_it_acked(plane: Plane) -> None:
    first, response = await connect(plane, "proxy-a", role="sidecar")
    second, _ = await connect(plane, "proxy-b")
    await first.send(request(CDS, version=response.version_info, nonce=response.nonce))

    answer = await answer_when(plane.csds(), lambda a: state_of(a, "proxy-a", ("CDS", "c1")) == SYNCED)

    assert [config.node.id for config in answer.config] == ["proxy-a", "proxy-b"]
    config = answer.config[0]
    assert config.node.cluster == "test"  # the node as the proxy sent it, metadata included
    assert config.node.metadata.fields["role"].string_value == "sidecar"
    synced = entries(answer, "proxy-a")
    assert sorted(synced) == [("CDS", "c1"), ("CDS", "c2")]
    for name in ("c1", "c2"):
        entry = synced["CDS", name]
        assert entry.type_url == CDS.value
        assert entry.version_info == response.version_info
        assert entry.client_status == csds_pb2.CLIENT_ACKED
        assert entry.last_updated.seconds > 0
        cluster = cluster_pb2.Cluster()
        assert entry.xds_config.Unpack(cluster)
        assert cluster.name == name
    # proxy-b has not answered its response yet: sent, not acknowledged.
    assert {entry.config_status for entry in entries(answer, "proxy-b").values()} == {STALE}
    assert {entry.client_status for entry in entries(answer, "proxy-b").values()} == {csds_pb2.CLIENT_UNKNOWN}
    for stream in (first, second):
        await stream.close()


async def test_a_nack_is_an_error_holding_its_message_bounded(plane: Plane) -> None:
    stream, response = await connect(plane, "proxy-nack")
    await stream.send(request(CDS, nonce=response.nonce, error="cluster c1: invalid connect_timeout " + "x" * 10_000))

    answer = await answer_when(plane.csds(), lambda a: state_of(a, "proxy-nack", ("CDS", "c1")) == ERROR)

    entry = entries(answer, "proxy-nack")["CDS", "c1"]
    assert entry.client_status == csds_pb2.CLIENT_NACKED
    assert entry.error_state.version_info == response.version_info
    assert entry.error_state.details.startswith("cluster c1: invalid connect_timeout")
    assert len(entry.error_state.details.encode()) < MAX_NACK_MESSAGE_BYTES + 100
    assert "bytes in all" in entry.error_state.details
    assert entry.error_state.last_update_attempt.seconds > 0
    await stream.close()


async def test_a_type_subscribed_and_not_sent_yet_is_not_sent_and_a_sent_one_stale(plane: Plane) -> None:
    # On ADS, listeners wait while a CDS response is unacknowledged: LDS is asked for, not sent.
    stream, _ = await connect(plane, "proxy-waiting")
    await stream.send(request(LDS))

    answer = await answer_when(plane.csds(), lambda a: state_of(a, "proxy-waiting", ("LDS", "")) is not None)

    held = entries(answer, "proxy-waiting")
    assert held["LDS", ""].config_status == NOT_SENT
    assert held["LDS", ""].client_status == csds_pb2.CLIENT_REQUESTED
    assert not held["LDS", ""].HasField("xds_config")
    assert held["CDS", "c1"].config_status == STALE
    await stream.close()


async def test_a_node_with_several_streams_is_one_client(plane: Plane) -> None:
    """A proxy without ADS opens a stream per type: CSDS answers one ClientConfig holding both."""
    clusters = cds_pb2_grpc.ClusterDiscoveryServiceStub(plane.channel).StreamClusters()
    assignments = eds_pb2_grpc.EndpointDiscoveryServiceStub(plane.channel).StreamEndpoints()
    cds, eds = AdsStream(clusters), AdsStream(assignments)
    await cds.send(request(CDS, with_node=node("per-type")))
    await eds.send(request(EDS, ["c2"], with_node=node("per-type")))
    await cds.recv()
    await eds.recv()

    answer = await answer_when(plane.csds(), lambda a: state_of(a, "per-type", ("EDS", "c2")) == STALE)

    assert [config.node.id for config in answer.config] == ["per-type"]
    assert sorted(entries(answer, "per-type")) == [("CDS", "c1"), ("CDS", "c2"), ("EDS", "c2")]
    await cds.close()
    await eds.close()


def id_matcher(**pattern: Any) -> node_pb2.NodeMatcher:
    return node_pb2.NodeMatcher(node_id=string_pb2.StringMatcher(**pattern))


def regex(pattern: str) -> node_pb2.NodeMatcher:
    return id_matcher(safe_regex=regex_pb2.RegexMatcher(regex=pattern))


def role_matcher(role: str) -> node_pb2.NodeMatcher:
    return node_pb2.NodeMatcher(
        node_metadatas=[
            struct_pb2.StructMatcher(
                path=[struct_pb2.StructMatcher.PathSegment(key="role")],
                value=value_pb2.ValueMatcher(string_match=string_pb2.StringMatcher(exact=role)),
            )
        ]
    )


MATCHERS = [
    pytest.param([], ["edge-1", "edge-2", "sidecar-1"], id="none-answers-every-node"),
    pytest.param([id_matcher(exact="edge-2")], ["edge-2"], id="exact"),
    pytest.param([id_matcher(exact="EDGE-2", ignore_case=True)], ["edge-2"], id="exact-ignore-case"),
    pytest.param([id_matcher(prefix="edge-")], ["edge-1", "edge-2"], id="prefix"),
    pytest.param([id_matcher(suffix="-1")], ["edge-1", "sidecar-1"], id="suffix"),
    pytest.param([id_matcher(contains="car")], ["sidecar-1"], id="contains"),
    pytest.param([regex(r"edge-\d")], ["edge-1", "edge-2"], id="regex-matches-the-whole-id"),
    pytest.param([regex("edge")], [], id="regex-partial-is-no-match"),
    pytest.param([id_matcher(exact="edge-1"), id_matcher(prefix="side")], ["edge-1", "sidecar-1"], id="or"),
    pytest.param([role_matcher("grpc")], ["edge-1", "edge-2"], id="metadata"),
    pytest.param(
        [
            node_pb2.NodeMatcher(
                node_id=string_pb2.StringMatcher(suffix="2"), node_metadatas=role_matcher("grpc").node_metadatas
            )
        ],
        ["edge-2"],
        id="id-and-metadata",
    ),
]


@pytest.mark.parametrize(("matchers", "expected"), MATCHERS)
async def test_node_matchers_select_the_nodes_answered(
    plane: Plane, matchers: list[node_pb2.NodeMatcher], expected: list[str]
) -> None:
    streams = [
        (await connect(plane, node_id, role=role))[0]
        for node_id, role in (("edge-1", "grpc"), ("edge-2", "grpc"), ("sidecar-1", "sidecar"))
    ]
    answer = await plane.csds().FetchClientStatus(csds_pb2.ClientStatusRequest(node_matchers=matchers))
    assert [config.node.id for config in answer.config] == expected
    for stream in streams:
        await stream.close()


@pytest.mark.parametrize(
    ("matcher", "reason"),
    [
        pytest.param(regex("edge-(\\d"), "invalid regex", id="bad-regex"),
        pytest.param(regex("(?=edge)edge"), "invalid regex", id="lookahead-is-not-re2"),
        pytest.param(regex("(a{20}){20}"), "over Envoy's limit", id="regex-too-big"),
        pytest.param(id_matcher(prefix="x" * 2000), "at most 1024", id="too-long"),
        pytest.param(node_pb2.NodeMatcher(node_id=string_pb2.StringMatcher()), "no match pattern", id="empty"),
    ],
)
async def test_a_matcher_that_cannot_be_answered_is_refused_with_its_reason(
    plane: Plane, matcher: node_pb2.NodeMatcher, reason: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await plane.csds().FetchClientStatus(csds_pb2.ClientStatusRequest(node_matchers=[matcher]))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason in (refused.value.details() or "")
    assert len((refused.value.details() or "").encode()) < MAX_REFUSAL_BYTES + 100


async def test_exclude_resource_contents_leaves_every_resource_out(plane: Plane) -> None:
    stream, _ = await connect(plane, "proxy-lean")
    lean = csds_pb2.ClientStatusRequest(exclude_resource_contents=True)
    answer = await answer_when(plane.csds(), lambda a: bool(a.config), lean)
    assert sorted(entries(answer, "proxy-lean")) == [("CDS", "c1"), ("CDS", "c2")]
    assert not any(entry.HasField("xds_config") for entry in answer.config[0].generic_xds_configs)
    full = await plane.csds().FetchClientStatus(csds_pb2.ClientStatusRequest())
    assert all(entry.HasField("xds_config") for entry in full.config[0].generic_xds_configs)
    await stream.close()


async def test_a_private_key_sent_to_a_proxy_is_redacted() -> None:
    async with running_plane(serve_keys_without_client_auth=True) as plane:
        stream = plane.ads()
        await stream.send(request(SDS, ["client-cert", "mesh-ca"], with_node=node("keyed")))
        await stream.recv()
        answer = await answer_when(plane.csds(), lambda a: state_of(a, "keyed", ("SDS", "client-cert")) == STALE)

        assert b"secret-key-body" not in answer.SerializeToString()
        secret = secret_pb2.Secret()
        assert entries(answer, "keyed")["SDS", "client-cert"].xds_config.Unpack(secret)
        assert secret.tls_certificate.private_key.inline_string == "[redacted]"
        assert secret.name == "client-cert"
        await stream.close()


async def test_a_secret_withheld_from_an_unauthenticated_stream_is_not_sent_and_has_no_contents(
    plane: Plane,
) -> None:
    stream = plane.ads()
    await stream.send(request(SDS, ["client-cert", "mesh-ca"], with_node=node("unkeyed")))
    await stream.recv()
    answer = await answer_when(plane.csds(), lambda a: state_of(a, "unkeyed", ("SDS", "client-cert")) is not None)

    assert b"secret-key-body" not in answer.SerializeToString()
    withheld = entries(answer, "unkeyed")["SDS", "client-cert"]
    assert withheld.config_status == NOT_SENT
    assert not withheld.HasField("xds_config")
    assert entries(answer, "unkeyed")["SDS", "mesh-ca"].config_status == STALE
    await stream.close()


async def test_stream_client_status_answers_each_request() -> None:
    async with running_plane() as plane:
        streams = [(await connect(plane, node_id))[0] for node_id in ("one", "two")]
        call = plane.csds().StreamClientStatus()
        await call.write(csds_pb2.ClientStatusRequest(node_matchers=[id_matcher(exact="one")]))
        first = await call.read()
        await call.write(csds_pb2.ClientStatusRequest())
        second = await call.read()
        await call.done_writing()
        assert [config.node.id for config in first.config] == ["one"]
        assert [config.node.id for config in second.config] == ["one", "two"]
        assert await call.read() is grpc.aio.EOF
        for stream in streams:
            await stream.close()


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def _write_then_read(call: Any) -> None:
    """One request, then the answer. The server may refuse the call before the request is written:
    then the write fails, with the same error the read would have."""
    await call.write(csds_pb2.ClientStatusRequest())
    await call.read()


async def test_with_an_admin_token_only_callers_sending_it_are_answered() -> None:
    async with running_plane(admin_token=ADMIN_TOKEN) as plane:
        stream, _ = await connect(plane, "guarded")
        csds = plane.csds()
        for metadata, code, reason in (
            ((), grpc.StatusCode.UNAUTHENTICATED, "send the admin token"),
            (bearer("wrong"), grpc.StatusCode.PERMISSION_DENIED, "wrong admin token"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await csds.FetchClientStatus(csds_pb2.ClientStatusRequest(), metadata=metadata)
            assert (refused.value.code(), reason in (refused.value.details() or "")) == (code, True)
            call = csds.StreamClientStatus(metadata=metadata)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await _write_then_read(call)
            assert refused.value.code() == code

        answer = await csds.FetchClientStatus(csds_pb2.ClientStatusRequest(), metadata=bearer(ADMIN_TOKEN))
        assert [config.node.id for config in answer.config] == ["guarded"]
        await stream.close()


async def test_a_port_that_authenticates_proxies_refuses_csds_without_an_admin_token() -> None:
    async with running_plane(authenticates_clients=True) as plane:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await plane.csds().FetchClientStatus(csds_pb2.ClientStatusRequest())
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "--admin-token" in (refused.value.details() or "")


@pytest.mark.parametrize(
    ("peer", "allowed"),
    [
        pytest.param("ipv4:127.0.0.1:5555", True, id="ipv4-loopback"),
        pytest.param("ipv6:%5B::1%5D:5555", True, id="ipv6-loopback"),
        pytest.param("ipv6:%5B::ffff:127.0.0.1%5D:5555", True, id="ipv4-mapped-loopback"),
        pytest.param("ipv4:10.0.0.7:5555", False, id="another-host"),
        pytest.param("ipv6:%5Bfd00::2%5D:5555", False, id="another-ipv6-host"),
        pytest.param("unix:/tmp/socket", False, id="not-an-address"),
    ],
)
def test_without_an_admin_token_only_loopback_is_answered(peer: str, allowed: bool) -> None:
    refusal = access_refusal(peer, (), None, authenticates_clients=False)
    assert (refusal is None) == allowed
    if refusal is not None:
        assert refusal.code == grpc.StatusCode.PERMISSION_DENIED
        assert "loopback" in refusal.message


@requires(unavailable_reason())
async def test_a_caller_from_another_address_is_refused_without_an_admin_token() -> None:
    """A caller whose address is not loopback: this host's end of a veth pair the test makes (the
    host's own interfaces vary from machine to machine; this one is always there)."""
    require(unavailable_reason())
    host = await asyncio.to_thread(make_device_host)
    try:
        async with running_plane("0.0.0.0:0") as plane:
            async with grpc.aio.insecure_channel(f"{host.host_address}:{plane.port}") as remote:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await plane.csds(remote).FetchClientStatus(csds_pb2.ClientStatusRequest())
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "loopback" in (refused.value.details() or "")
            assert (await plane.csds().FetchClientStatus(csds_pb2.ClientStatusRequest())).config == []
    finally:
        await asyncio.to_thread(host.close)


@pytest.mark.xdist_group("envoy")
async def test_grpcio_xds_client_is_seen_synced_through_a_whole_control_plane(tmp_path: Path) -> None:
    """grpcio's own xDS client resolves the greeter through meshplane; CSDS shows its node with
    every resource of the four types it holds acknowledged."""
    greeter, greeter_port = await start_greeter("greeter-1")
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "greeter.yaml").write_text(greeter_policy(greeter_port))
    plane, stop, task = await start_plane(policy)
    client = None
    try:
        bootstrap = write_grpc_bootstrap(tmp_path / "grpc-bootstrap.json", plane.xds_port)
        client = await asyncio.create_subprocess_exec(
            sys.executable,
            str(REPO / "tests" / "grpc_xds_client.py"),
            "xds:///greeter:50051",
            "ada",
            "a reply that never comes",  # keeps calling, so its xDS stream stays open
            env={"GRPC_XDS_BOOTSTRAP": str(bootstrap), "PATH": "/usr/bin:/bin"},
            stdout=asyncio.subprocess.PIPE,
        )
        assert client.stdout is not None
        assert (await asyncio.wait_for(client.stdout.readline(), 60)).decode().strip() == "hello ada from greeter-1"

        async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.xds_port}") as channel:
            csds = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(channel)

            def all_synced(answer: csds_pb2.ClientStatusResponse) -> bool:
                configs = [config for config in answer.config if config.node.id == "grpc-client-demo"]
                if not configs:
                    return False
                held = configs[0].generic_xds_configs
                types = {TypeUrl(entry.type_url).short for entry in held}
                return types >= {"LDS", "RDS", "CDS", "EDS"} and all(e.config_status == SYNCED for e in held)

            answer = await answer_when(csds, all_synced)
        (config,) = [config for config in answer.config if config.node.id == "grpc-client-demo"]
        assert config.node.metadata.fields["role"].string_value == "grpc"
        assert all(entry.client_status == csds_pb2.CLIENT_ACKED for entry in config.generic_xds_configs)
    finally:
        if client is not None and client.returncode is None:
            client.kill()
            await client.wait()
        stop.set()
        await task
        await greeter.stop(None)


def test_a_kept_node_leaves_out_the_extension_list_every_envoy_of_a_build_sends() -> None:
    sent = base_pb2.Node(
        id="sidecar~10.0.0.1",
        cluster="web",
        extensions=[base_pb2.Extension(name=f"envoy.filters.http.e{i}", category="filters") for i in range(200)],
    )
    sent.metadata.update({"role": "sidecar"})
    kept = kept_node(sent)
    assert (kept.id, kept.cluster, dict(kept.metadata)) == ("sidecar~10.0.0.1", "web", {"role": "sidecar"})
    assert not kept.extensions
    assert len(sent.extensions) == 200  # the request's node is left as it came
