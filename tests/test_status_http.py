"""The operator endpoint over hand-made state: sync states, readiness, filters, dumps, secrets, methods.

The registry is driven as the server drives it (open, sent, acked, nacked); sources are plain
mappings a test changes, so readiness can be shown to follow a source losing its sync.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import pytest
from aiohttp import ClientSession, web
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from google.protobuf import any_pb2

from meshplane.model import Locality, ProxyGroup, ProxyRole, SourceStatus
from meshplane.status.document import StatusInputs
from meshplane.status.http import status_app
from meshplane.xds.cache import SnapshotCache
from meshplane.xds.publication import PublishState
from meshplane.xds.server.tracking import StreamKind, StreamRegistry, StreamTrack, SyncState
from meshplane.xds.snapshot import Resource, Snapshot
from meshplane.xds.types import TypeUrl
from tests.envoy_harness import REPO

SCHEMA = json.loads((REPO / "docs" / "status-api.schema.json").read_text())
TOKEN = "correct horse battery staple"
PRIVATE_KEY = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n"
HAS_SITE = "site" in {f.name for f in dataclasses.fields(ProxyGroup)}


def validate(document: Any, definition: str) -> None:
    jsonschema.validate(document, {**SCHEMA, "$ref": f"#/$defs/{definition}"})


def secret(name: str) -> secret_pb2.Secret:
    return secret_pb2.Secret(
        name=name,
        tls_certificate=common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(inline_string="-----BEGIN CERTIFICATE-----\nMIIB\n"),
            private_key=base_pb2.DataSource(inline_bytes=PRIVATE_KEY.encode()),
        ),
    )


def tls_cluster(name: str) -> cluster_pb2.Cluster:
    """A cluster with a private key inlined in its TLS context (not what our translators make: the
    redaction must not depend on that)."""
    context = tls_pb2.UpstreamTlsContext(
        common_tls_context=tls_pb2.CommonTlsContext(
            tls_certificates=[common_pb2.TlsCertificate(private_key=base_pb2.DataSource(inline_string=PRIVATE_KEY))]
        )
    )
    packed = any_pb2.Any()
    packed.Pack(context)
    cluster = cluster_pb2.Cluster(name=name)
    cluster.transport_socket.name = "envoy.transport_sockets.tls"
    cluster.transport_socket.typed_config.CopyFrom(packed)
    return cluster


@dataclass
class Endpoint:
    registry: StreamRegistry
    sources: list[SourceStatus]
    publish: list[PublishState]
    url: str
    session: ClientSession
    wanted_groups: list[ProxyGroup] = field(default_factory=list)

    async def get(self, path: str, token: str | None = None, method: str = "GET") -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        async with self.session.request(method, self.url + path, headers=headers) as response:
            text = await response.text()
            return response.status, json.loads(text) if response.content_type == "application/json" else text


def source(synced: bool, errors: tuple[str, ...] = ()) -> SourceStatus:
    return SourceStatus(
        name="policy-files",
        synced=synced,
        last_success=1.0 if synced else None,
        last_attempt=1.0,
        errors=errors,
        counts={"services": 1},
    )


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    registry = StreamRegistry()
    sources = [source(False)]
    publish = [PublishState()]
    wanted: list[ProxyGroup] = []
    snapshot = Snapshot.of({TypeUrl.CLUSTER: [tls_cluster("c")], TypeUrl.SECRET: [secret("s")]})

    def snapshot_for(group: ProxyGroup) -> Snapshot:
        wanted.append(group)
        return snapshot

    inputs = StatusInputs(
        sources=lambda: sources,
        publish_state=lambda: publish[0],
        cache=SnapshotCache(),
        registry=registry,
        snapshot_for=snapshot_for,
        admin_token=TOKEN,
    )
    runner = web.AppRunner(status_app(inputs), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    async with ClientSession() as session:
        yield Endpoint(registry, sources, publish, f"http://127.0.0.1:{runner.addresses[0][1]}", session, wanted)
    await runner.cleanup()


def open_stream(registry: StreamRegistry, node: str, group: ProxyGroup | None = None) -> StreamTrack:
    return registry.open(StreamKind.SOTW_ADS, node, "web", group or ProxyGroup(), "envoy", "ipv4:127.0.0.1:1")


def test_sync_state_follows_sends_acks_and_nacks() -> None:
    registry = StreamRegistry()
    track = open_stream(registry, "p")
    rds = track.of(TypeUrl.ROUTE)
    steps: list[tuple[Callable[[], object], SyncState]] = [
        (lambda: None, SyncState.NOT_SENT),
        (lambda: registry.sent(track, TypeUrl.ROUTE, "v1", "1", ()), SyncState.STALE),
        (lambda: registry.acked(track, TypeUrl.ROUTE, "v1"), SyncState.SYNCED),
        (lambda: registry.sent(track, TypeUrl.ROUTE, "v2", "2", ()), SyncState.STALE),
        (lambda: registry.nacked(track, TypeUrl.ROUTE, "v2", "bad regex"), SyncState.NACKED),
        (lambda: registry.sent(track, TypeUrl.ROUTE, "v3", "3", ()), SyncState.STALE),
        (lambda: registry.acked(track, TypeUrl.ROUTE, "v3"), SyncState.SYNCED),
    ]
    for step, expected in steps:
        step()
        assert rds.state is expected
    assert rds.last_nack is not None
    assert rds.last_nack.rejected_version == "v2"  # kept for operators
    assert registry.push_latency[TypeUrl.ROUTE].count == 2  # v1 and v3 were acknowledged; v2 was not


def test_delta_sends_accumulate_and_removals_leave_the_dump() -> None:
    registry = StreamRegistry()
    track = open_stream(registry, "p")
    a, b = (Resource.of(TypeUrl.CLUSTER, name, cluster_pb2.Cluster(name=name)) for name in ("a", "b"))
    registry.sent(track, TypeUrl.CLUSTER, "v1", "1", [a], removed=())
    registry.sent(track, TypeUrl.CLUSTER, "v2", "2", [b], removed=())
    assert [r.name for r in track.of(TypeUrl.CLUSTER).sent_resources()] == ["a", "b"]
    registry.sent(track, TypeUrl.CLUSTER, "v3", "3", [], removed=["a"])
    assert [r.name for r in track.of(TypeUrl.CLUSTER).sent_resources()] == ["b"]
    # SotW keeps the snapshot's own tuple: no per-stream copy.
    chosen = (a, b)
    registry.sent(track, TypeUrl.LISTENER, "v1", "4", chosen)
    assert track.of(TypeUrl.LISTENER).sent_resources() is chosen


async def test_readyz_is_not_ready_before_the_first_sync_and_after_a_source_loses_sync(endpoint: Endpoint) -> None:
    code, body = await endpoint.get("/readyz")
    assert code == 503
    assert "source policy-files has not synced" in body
    assert "no configuration has been published yet" in body
    endpoint.sources[0] = source(True)
    endpoint.publish[0] = PublishState(published_at=2.0, mesh_generation=1)
    assert (await endpoint.get("/readyz"))[0] == 200
    # The source loses its sync (e.g. its watch broke and it cannot list again).
    endpoint.sources[0] = source(False, ("watch failed: connection refused",))
    code, body = await endpoint.get("/readyz")
    assert code == 503
    assert "source policy-files has not synced: watch failed: connection refused" in body  # and why
    _, document = await endpoint.get("/status")
    assert document["ready"] is False
    assert document["sources"][0]["errors"] == ["watch failed: connection refused"]
    assert (await endpoint.get("/healthz"))[0] == 200  # alive all along


async def test_a_source_that_feeds_nothing_served_does_not_hold_readiness_back(endpoint: Endpoint) -> None:
    endpoint.sources[0] = source(True)
    endpoint.publish[0] = PublishState(published_at=2.0, mesh_generation=1)
    # Read and shown, not yet translated (the Gateway API source today): unsynced, yet ready.
    endpoint.sources.append(
        dataclasses.replace(source(False, ("the CRDs are not installed",)), name="gateway-api", feeds_mesh=False)
    )
    assert (await endpoint.get("/readyz"))[0] == 200
    endpoint.sources[-1] = dataclasses.replace(endpoint.sources[-1], feeds_mesh=True)
    code, body = await endpoint.get("/readyz")
    assert code == 503
    assert "source gateway-api has not synced" in body


async def test_status_filters_by_role_site_and_out_of_sync(endpoint: Endpoint) -> None:
    registry = endpoint.registry
    synced = open_stream(registry, "sidecar-ok")
    nacked = open_stream(registry, "sidecar-nacked", ProxyGroup(locality=Locality("r1", "a")))
    grpc = open_stream(registry, "grpc-client", ProxyGroup(role=ProxyRole.GRPC))
    for track in (synced, nacked, grpc):
        registry.sent(track, TypeUrl.CLUSTER, "v1", "1", ())
        registry.acked(track, TypeUrl.CLUSTER, "v1")
    registry.sent(nacked, TypeUrl.ROUTE, "v2", "2", ())
    registry.nacked(nacked, TypeUrl.ROUTE, "v2", "rejected")

    async def nodes(query: str) -> list[str]:
        code, document = await endpoint.get("/status" + query)
        assert code == 200, document
        validate(document, "status")
        return [proxy["node"] for proxy in document["proxies"]]

    assert await nodes("") == ["grpc-client", "sidecar-nacked", "sidecar-ok"]
    assert await nodes("?role=sidecar") == ["sidecar-nacked", "sidecar-ok"]
    assert await nodes("?role=grpc") == ["grpc-client"]
    assert await nodes("?out_of_sync=true") == ["sidecar-nacked"]
    assert await nodes("?role=grpc&out_of_sync=true") == []
    assert await nodes("?site=nowhere") == []
    _, document = await endpoint.get("/status?out_of_sync=1")
    assert [nack["node"] for nack in document["recent_nacks"]] == ["sidecar-nacked"]
    proxy = document["proxies"][0]
    assert proxy["locality"] == {"region": "r1", "zone": "a", "sub_zone": ""}
    assert proxy["types"]["RDS"]["state"] == "NACKED"
    assert proxy["types"]["RDS"]["last_nack"]["message"] == "rejected"
    assert proxy["types"]["EDS"]["state"] == "NOT SENT"
    assert proxy["group_fields"]["role"] == "sidecar"
    code, document = await endpoint.get("/status?rolee=sidecar")
    assert code == 400
    validate(document, "error")


@pytest.mark.skipif(not HAS_SITE, reason="ProxyGroup has no site field yet")
async def test_status_filters_by_site(endpoint: Endpoint) -> None:
    edge_role = next((role for role in ProxyRole if getattr(role, "is_edge", False)), ProxyRole.SIDECAR)
    at_site = dataclasses.replace(ProxyGroup(role=edge_role), site="factory-1")  # type: ignore[call-arg]
    open_stream(endpoint.registry, "gateway-1", at_site)
    open_stream(endpoint.registry, "sidecar-1")
    _, document = await endpoint.get("/status?site=factory-1")
    assert [proxy["node"] for proxy in document["proxies"]] == ["gateway-1"]
    assert document["proxies"][0]["site"] == "factory-1"
    assert document["proxies"][0]["group_fields"]["site"] == "factory-1"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("path", ["/", "/status", "/config?node=p", "/readyz", "/metrics"])
async def test_the_endpoint_is_read_only(endpoint: Endpoint, method: str, path: str) -> None:
    code, _ = await endpoint.get(path, method=method)
    assert code == 405


async def test_node_dump_withholds_secrets_without_the_token_and_never_shows_key_material(endpoint: Endpoint) -> None:
    track = open_stream(endpoint.registry, "p")
    cluster = Resource.of(TypeUrl.CLUSTER, "c", tls_cluster("c"))
    credentials = Resource.of(TypeUrl.SECRET, "s", secret("s"))
    endpoint.registry.sent(track, TypeUrl.CLUSTER, "v1", "1", (cluster,))
    endpoint.registry.sent(track, TypeUrl.SECRET, "v1", "2", (credentials,))

    code, dump = await endpoint.get("/config?node=p")
    assert code == 200
    validate(dump, "configDumpSent")
    assert dump["withheld"] == ["SDS"]
    assert set(dump["types"]) == {"CDS"}
    assert "PRIVATE KEY" not in json.dumps(dump)
    tls = dump["types"]["CDS"]["resources"][0]["resource"]["transport_socket"]["typed_config"]
    assert tls["common_tls_context"]["tls_certificates"][0]["private_key"] == {"inline_string": "[redacted]"}

    assert (await endpoint.get("/config?node=p", token="wrong"))[0] == 401
    assert (await endpoint.get("/config?node=p", token=TOKEN[:-1]))[0] == 401

    code, dump = await endpoint.get("/config?node=p", token=TOKEN)
    assert code == 200
    assert dump["withheld"] == []
    shown = dump["types"]["SDS"]["resources"][0]["resource"]
    assert shown["name"] == "s"
    assert shown["tls_certificate"]["private_key"] == {"inline_bytes": "[redacted]"}
    assert shown["tls_certificate"]["certificate_chain"] == {"inline_string": "[redacted]"}
    assert "MIIEvQ" not in json.dumps(dump)
    assert "PRIVATE KEY" not in json.dumps(dump)

    code, missing = await endpoint.get("/config?node=nobody")
    assert code == 404
    validate(missing, "error")


async def test_group_dump_reads_every_group_field_from_the_query(endpoint: Endpoint) -> None:
    code, dump = await endpoint.get("/config?role=grpc&region=r1&zone=a&outbound_port=15002", token=TOKEN)
    assert code == 200, dump
    validate(dump, "configDumpCurrent")
    assert endpoint.wanted_groups == [
        ProxyGroup(role=ProxyRole.GRPC, locality=Locality("r1", "a"), outbound_port=15002)
    ]
    assert dump["group_fields"]["outbound_port"] == 15002
    assert "PRIVATE KEY" not in json.dumps(dump)
    assert set(dump["types"]) >= {"CDS", "SDS"}

    code, error = await endpoint.get("/config?role=router")
    assert code == 400
    assert "one of: sidecar, grpc" in error["error"]
    code, error = await endpoint.get("/config?colour=blue")
    assert code == 400
    assert "colour" in error["error"]
    code, error = await endpoint.get("/config?outbound_port=eighty")
    assert code == 400
    code, dump = await endpoint.get("/config")
    assert code == 200
    assert dump["withheld"] == ["SDS"]
    assert "SDS" not in dump["types"]


async def test_without_a_configured_token_secrets_are_never_shown(endpoint: Endpoint) -> None:
    inputs = StatusInputs(sources=list, publish_state=PublishState, cache=SnapshotCache(), registry=endpoint.registry)
    runner = web.AppRunner(status_app(inputs), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        open_stream(endpoint.registry, "p")
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/config?node=p"
        async with endpoint.session.get(url, headers={"Authorization": "Bearer anything"}) as response:
            assert response.status == 401
        async with endpoint.session.get(url, headers={"Authorization": "Bearer "}) as response:
            assert response.status == 401
    finally:
        await runner.cleanup()


def test_every_documented_field_is_described_in_the_markdown() -> None:
    """The schema is the contract; the prose must describe every field it defines."""
    text = (REPO / "docs" / "status-api.md").read_text()
    names: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            names.update(name for name in node.get("properties", {}) if not name.startswith("@"))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(SCHEMA)
    undocumented = sorted(name for name in names if not re.search(rf"`{re.escape(name)}`", text))
    assert not undocumented, f"docs/status-api.md does not describe: {undocumented}"


def test_push_latency_runs_from_the_publication_or_the_connection_whichever_is_later() -> None:
    published = time.monotonic() - 100.0  # a snapshot published 100 s ago
    registry = StreamRegistry(published_at=lambda group: published)
    old = open_stream(registry, "old")
    old.connected_monotonic = published - 50.0  # connected before the publication
    registry.sent(old, TypeUrl.CLUSTER, "v1", "1", ())
    registry.acked(old, TypeUrl.CLUSTER, "v1")
    assert registry.push_latency[TypeUrl.CLUSTER].sum >= 100.0  # from the publication

    fresh = open_stream(registry, "fresh")  # connected now, long after the publication
    registry.sent(fresh, TypeUrl.LISTENER, "v1", "1", ())
    registry.acked(fresh, TypeUrl.LISTENER, "v1")
    assert registry.push_latency[TypeUrl.LISTENER].count == 1
    assert registry.push_latency[TypeUrl.LISTENER].sum < 100.0  # from its connection, not the publication


async def test_a_group_that_cannot_be_built_is_an_error_answer_not_a_crash() -> None:
    def broken(group: ProxyGroup) -> Snapshot:
        raise RuntimeError("translator bug")

    inputs = StatusInputs(
        sources=list, publish_state=PublishState, cache=SnapshotCache(), registry=StreamRegistry(), snapshot_for=broken
    )
    runner = web.AppRunner(status_app(inputs), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        async with ClientSession() as session:
            base = f"http://127.0.0.1:{runner.addresses[0][1]}"
            async with session.get(f"{base}/config?role=grpc") as response:
                assert response.status == 500
                body = await response.json()
            async with session.get(f"{base}/healthz") as response:
                assert response.status == 200
    finally:
        await runner.cleanup()
    validate(body, "error")
    assert "translator bug" in body["error"]
