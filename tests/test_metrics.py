"""`/metrics`: Prometheus text that parses, follows the naming conventions, and counts what happened.

The real-Envoy scenario (tests/test_status_envoy.py) checks NACKs, sync states, streams and gRPC
counts against real proxies; these tests cover the rest over hand-made state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import grpc
import pytest
from envoy.service.discovery.v3 import discovery_pb2
from prometheus_client.parser import text_string_to_metric_families

from meshplane.model import ProxyGroup, SourceStatus
from meshplane.status.changes import changes_document
from meshplane.status.document import StatusInputs
from meshplane.status.grpc_stats import GrpcStats, InstrumentedXdsServices
from meshplane.status.metrics import ControlPlaneMetrics
from meshplane.xds.cache import SnapshotCache
from meshplane.xds.publication import Cause, ChangeLog, Generation, PublishState
from meshplane.xds.server.service import create_server
from meshplane.xds.server.tracking import StreamKind, StreamRegistry
from meshplane.xds.types import TypeUrl
from tests.xds_fixtures import node, snapshot

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(metrics: ControlPlaneMetrics) -> tuple[Samples, dict[str, str]]:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    kinds = {}
    for family in text_string_to_metric_families(body.decode()):
        kinds[family.name] = family.type
        for sample in family.samples:
            if family.type == "counter":
                assert sample.name.endswith(("_total", "_created")), sample.name
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples, kinds


def source(name: str, synced: bool, errors: int, events: Mapping[str, int] | None = None) -> SourceStatus:
    return SourceStatus(
        name=name,
        synced=synced,
        last_success=1.0 if synced else None,
        last_attempt=2.0,
        errors=tuple(f"error {i}" for i in range(errors)),
        counts={"services": 3, "routes": 1},
        events=dict(events or {}),
    )


@pytest.fixture
def metrics() -> ControlPlaneMetrics:
    registry = StreamRegistry()
    track = registry.open(StreamKind.DELTA_ADS, "p", "web", ProxyGroup(), "envoy", "peer")
    registry.sent(track, TypeUrl.CLUSTER, "v1", "1", ())
    registry.acked(track, TypeUrl.CLUSTER, "v1")
    registry.sent(track, TypeUrl.ROUTE, "v1", "2", ())
    registry.nacked(track, TypeUrl.ROUTE, "v1", "no")
    sources = [
        source("policy-files", True, 0),
        source("edge-registry", False, 2, {"registrations": 5, "lease_expiries": 1, "rejected_registrations": 2}),
    ]
    inputs = StatusInputs(
        sources=lambda: sources,
        publish_state=lambda: PublishState(published_at=10.0, problems=("group x: missing",)),
        cache=SnapshotCache(),
        registry=registry,
    )
    return ControlPlaneMetrics(
        inputs,
        debounce=lambda: {"pokes": 7, "runs": 2, "merged": 5},
        source_errors=lambda: {"edge-registry": 4},
    )


def test_names_follow_prometheus_conventions(metrics: ControlPlaneMetrics) -> None:
    metrics.observe_rebuild(PublishState(published_at=1.0, duration_seconds=0.02))
    _, kinds = scrape(metrics)
    ours = {name: kind for name, kind in kinds.items() if name.startswith("meshplane_")}
    assert ours, kinds
    for name, kind in ours.items():
        if kind == "histogram":
            assert name.endswith("_seconds"), name
        if "duration" in name or "latency" in name or "age" in name:
            assert name.endswith("_seconds"), name
    expected = {
        "meshplane_xds_connected_streams": "gauge",
        "meshplane_xds_pushes": "counter",
        "meshplane_xds_push_latency_seconds": "histogram",
        "meshplane_xds_nacks": "counter",
        "meshplane_rebuilds": "counter",
        "meshplane_rebuild_duration_seconds": "histogram",
        "meshplane_debounce_merges": "counter",
        "meshplane_source_errors": "counter",
        "meshplane_source_sync_age_seconds": "gauge",
        "meshplane_source_events": "counter",
        "meshplane_grpc_server_started": "counter",
        "meshplane_grpc_server_handled": "counter",
    }
    assert {name: ours.get(name) for name in expected} == expected


def test_counts_what_happened(metrics: ControlPlaneMetrics) -> None:
    metrics.observe_rebuild(PublishState(published_at=1.0, duration_seconds=0.02))
    metrics.observe_rebuild(PublishState(published_at=2.0, duration_seconds=0.001, endpoints_only=True))
    samples, _ = scrape(metrics)
    assert samples[("meshplane_rebuilds_total", (("kind", "full"),))] == 1
    assert samples[("meshplane_rebuilds_total", (("kind", "endpoints"),))] == 1
    assert samples[("meshplane_rebuild_duration_seconds_count", (("kind", "full"),))] == 1
    assert samples[("meshplane_rebuild_duration_seconds_bucket", (("kind", "full"), ("le", "0.025")))] == 1
    assert samples[("meshplane_rebuild_duration_seconds_bucket", (("kind", "full"), ("le", "0.01")))] == 0
    assert samples[("meshplane_debounce_merges_total", ())] == 5
    assert samples[("meshplane_debounce_runs_total", ())] == 2
    assert samples[("meshplane_xds_pushes_total", (("type", "CDS"),))] == 1
    assert samples[("meshplane_xds_nacks_total", (("type", "RDS"),))] == 1
    assert samples[("meshplane_xds_push_latency_seconds_count", (("type", "CDS"),))] == 1
    assert samples[("meshplane_xds_push_latency_seconds_count", (("type", "RDS"),))] == 0  # NACKed: no latency
    assert samples[("meshplane_xds_proxies", (("state", "NACKED"), ("type", "RDS")))] == 1
    assert samples[("meshplane_xds_connected_streams", (("kind", "delta-ads"), ("role", "sidecar"), ("site", "")))] == 1
    assert samples[("meshplane_source_synced", (("source", "edge-registry"),))] == 0
    assert samples[("meshplane_source_current_errors", (("source", "edge-registry"),))] == 2
    assert samples[("meshplane_source_errors_total", (("source", "edge-registry"),))] == 4
    assert ("meshplane_source_sync_age_seconds", (("source", "edge-registry"),)) not in samples  # never synced
    assert samples[("meshplane_source_sync_age_seconds", (("source", "policy-files"),))] > 0
    assert samples[("meshplane_source_objects", (("kind", "services"), ("source", "policy-files")))] == 3
    events = (("event", "lease_expiries"), ("source", "edge-registry"))
    assert samples[("meshplane_source_events_total", events)] == 1
    registrations = (("event", "registrations"), ("source", "edge-registry"))
    assert samples[("meshplane_source_events_total", registrations)] == 5
    assert samples[("meshplane_publish_problems", ())] == 1


def test_two_control_planes_in_one_process_count_apart(metrics: ControlPlaneMetrics) -> None:
    other = ControlPlaneMetrics(
        StatusInputs(sources=list, publish_state=PublishState, cache=SnapshotCache(), registry=StreamRegistry())
    )
    metrics.observe_rebuild(PublishState(published_at=1.0))
    samples, _ = scrape(other)
    assert samples[("meshplane_rebuilds_total", (("kind", "full"),))] == 0


async def test_grpc_server_stats_count_calls_messages_and_codes() -> None:
    cache, registry, stats = SnapshotCache(), StreamRegistry(), GrpcStats()
    server, port = create_server(InstrumentedXdsServices(stats, cache, registry), "127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            method = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
            call = channel.stream_stream(
                method,
                request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
                response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
            )()
            group = ProxyGroup()
            await call.write(discovery_pb2.DiscoveryRequest(node=node("p1"), type_url=TypeUrl.CLUSTER.value))
            await subscribed(cache, group)
            cache.set_snapshot(group, snapshot())
            response = await call.read()
            assert response.type_url == TypeUrl.CLUSTER.value
            await call.done_writing()
            await call.code()
            # A refused stream: no node on its first request.
            bad = channel.stream_stream(
                method,
                request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
                response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
            )()
            await bad.write(discovery_pb2.DiscoveryRequest(type_url=TypeUrl.CLUSTER.value))
            assert await bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await server.stop(0)
    ads = ("envoy.service.discovery.v3.AggregatedDiscoveryService", "StreamAggregatedResources")
    assert stats.started[ads] == 2
    assert stats.received[ads] == 2
    assert stats.sent[ads] == 1
    assert stats.handled[(*ads, "OK")] == 1
    assert stats.handled[(*ads, "INVALID_ARGUMENT")] == 1


async def subscribed(cache: SnapshotCache, group: ProxyGroup, deadline: float = 10.0) -> None:
    """Waits until a stream of `group` has subscribed to the cache (its first request was handled)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while group not in cache.groups():
        assert loop.time() < end, "the stream never subscribed"
        await asyncio.sleep(0.01)


def _generation(log: ChangeLog, number: int, group: ProxyGroup, version: str) -> None:
    """Records generation `number` as the publisher does: `group`'s clusters at `version`."""
    cause = Cause(("policy files",))
    log.record(
        Generation(number, float(number), cause, ("services",), (), 0, {group: version}),
        {group: {str(TypeUrl.CLUSTER): version}},
    )


def test_rollout_gauges_count_the_newest_generation_as_changes_does() -> None:
    registry, cache, log = StreamRegistry(), SnapshotCache(), ChangeLog()
    group = ProxyGroup()
    inputs = StatusInputs(sources=list, publish_state=PublishState, cache=cache, registry=registry)
    metrics = ControlPlaneMetrics(inputs, changes=log)
    samples, kinds = scrape(metrics)
    assert kinds["meshplane_generation"] == "gauge"
    assert kinds["meshplane_generation_proxies"] == "gauge"
    # Nothing published yet: the families exist, with no sample to mislead an alert.
    assert not any(name.startswith("meshplane_generation") for name, _ in samples)

    _generation(log, 1, group, "v1")
    _generation(log, 2, group, "v2")
    streams = {
        node_id: registry.open(StreamKind.DELTA_ADS, node_id, "web", group, "envoy", "peer")
        for node_id in ("reached-1", "reached-2", "pending", "nacked")
    }
    for track in streams.values():
        registry.sent(track, TypeUrl.CLUSTER, "v1", "1", ())
        registry.acked(track, TypeUrl.CLUSTER, "v1")
        registry.sent(track, TypeUrl.CLUSTER, "v2", "2", ())
    registry.acked(streams["reached-1"], TypeUrl.CLUSTER, "v2")
    registry.acked(streams["reached-2"], TypeUrl.CLUSTER, "v2")
    registry.nacked(streams["nacked"], TypeUrl.CLUSTER, "v2", "rejected")

    samples, _ = scrape(metrics)
    assert samples[("meshplane_generation", ())] == 2
    by_state = {
        labels[0][1]: value for (name, labels), value in samples.items() if name == "meshplane_generation_proxies"
    }
    assert by_state == {"reached": 2, "pending": 1, "nacked": 1}
    newest = changes_document(log, registry, cache, 1)["generations"][0]["proxies"]
    assert by_state == {state: newest[state] for state in ("reached", "pending", "nacked")}


def test_without_a_change_log_the_rollout_gauges_have_no_sample(metrics: ControlPlaneMetrics) -> None:
    samples, kinds = scrape(metrics)
    assert kinds["meshplane_generation"] == "gauge"
    assert not any(name.startswith("meshplane_generation") for name, _ in samples)
