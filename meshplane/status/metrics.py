"""`/metrics`: the control plane's state in the Prometheus text format.

Metrics are read at scrape time from what the server already keeps (the stream registry, the
cache, the sources' status, the debouncer's counters, the gRPC counters), by one collector on a
`CollectorRegistry` of this control plane's own: no module-level metric objects, so two control
planes in one process (tests) never share a count. Rebuild durations are observed as rebuilds
happen (`observe_rebuild`, called by the composition root).

Names follow Prometheus conventions: `meshplane_` prefix, counters end in `_total`, durations are
`_seconds`. The full list is in docs/status-api.md.

Rollout gauges (`meshplane_generation`, `meshplane_generation_proxies`) are the newest entry of
`/changes`, computed by the same function (changes.py), so a scrape and `/changes` never disagree
on who reached a generation.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from meshplane import __version__
from meshplane.status.changes import NACKED, PENDING, REACHED, one_generation
from meshplane.status.document import StatusInputs, group_site, node_types, proxies_by_node
from meshplane.status.grpc_stats import GrpcStats
from meshplane.xds.publication import ChangeLog, PublishState
from meshplane.xds.server.tracking import DurationHistogram, StreamKind, SyncState
from meshplane.xds.types import TypeUrl

REBUILD_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _no_counts() -> Mapping[str, int]:
    return {}


class ControlPlaneMetrics:
    """Every metric of one control plane.

    `render()` gives the scrape body; `debounce()` returns the debouncer's counters (`pokes`,
    `runs`, `merged`); `source_errors()` the errors each source reported since start (`SourceWatch`);
    `changes` is the publisher's change log (as `status_app` receives it): without it, or before the
    first generation, the rollout gauges have no sample.
    """

    def __init__(
        self,
        inputs: StatusInputs,
        *,
        debounce: Callable[[], Mapping[str, int]] = _no_counts,
        source_errors: Callable[[], Mapping[str, int]] = _no_counts,
        grpc_stats: GrpcStats | None = None,
        changes: ChangeLog | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.rebuilds = {kind: DurationHistogram(REBUILD_BUCKETS) for kind in ("full", "endpoints")}
        self._collector = _StateCollector(
            inputs, debounce, source_errors, grpc_stats or GrpcStats(), self.rebuilds, changes
        )
        self.registry.register(self._collector)
        ProcessCollector(registry=self.registry)

    def observe_rebuild(self, state: PublishState) -> None:
        """Counts one publication (`state` is the publisher's state right after it)."""
        self.rebuilds["endpoints" if state.endpoints_only else "full"].observe(state.duration_seconds)

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The scrape body and its content type, as the scraper's Accept header asks: the classic
        text format (0.0.4) by default, OpenMetrics when asked for."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


class _StateCollector(Collector):
    def __init__(
        self,
        inputs: StatusInputs,
        debounce: Callable[[], Mapping[str, int]],
        source_errors: Callable[[], Mapping[str, int]],
        grpc_stats: GrpcStats,
        rebuilds: Mapping[str, DurationHistogram],
        changes: ChangeLog | None,
    ) -> None:
        self._inputs = inputs
        self._changes = changes
        self._rebuilds = rebuilds
        self._debounce = debounce
        self._source_errors = source_errors
        self._grpc = grpc_stats

    def describe(self) -> list[Metric]:
        return []  # families vary with what is connected; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        yield from self._build_info()
        yield from self._streams()
        yield from self._pushes()
        yield from self._snapshots()
        yield from self._rebuild_metrics()
        yield from self._rollout()
        yield from self._debouncer()
        yield from self._sources()
        yield from self._grpc_server()

    def _build_info(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("meshplane_build_info", "Always 1; the running version.", labels=["version"])
        info.add_metric([__version__], 1)
        yield info

    def _streams(self) -> Iterator[Metric]:
        registry = self._inputs.registry
        connected = GaugeMetricFamily(
            "meshplane_xds_connected_streams",
            "Open xDS streams by proxy role, site and stream kind (sotw/delta, ads or per type).",
            labels=["role", "site", "kind"],
        )
        counts: Counter[tuple[str, str, str]] = Counter()
        for track in registry.streams():
            counts[(str(track.group.role), group_site(track.group) or "", str(track.kind))] += 1
        for labels, count in sorted(counts.items()):
            connected.add_metric(list(labels), count)
        yield connected
        opened = CounterMetricFamily("meshplane_xds_streams_opened", "xDS streams opened, by kind.", labels=["kind"])
        closed = CounterMetricFamily("meshplane_xds_streams_closed", "xDS streams closed, by kind.", labels=["kind"])
        for kind in StreamKind:
            opened.add_metric([str(kind)], registry.opened_counts[kind])
            closed.add_metric([str(kind)], registry.closed_counts[kind])
        yield opened
        yield closed
        refused = CounterMetricFamily(
            "meshplane_xds_streams_refused",
            "xDS streams the server refused or ended for cause, by gRPC status code: RESOURCE_EXHAUSTED "
            "(streams per client), UNAUTHENTICATED (no certificate or known token), PERMISSION_DENIED (a claim "
            "its identity does not grant), INVALID_ARGUMENT (a request it cannot serve).",
            labels=["grpc_code"],
        )
        for code, count in sorted(registry.refused_counts.items()):
            refused.add_metric([code], count)
        yield refused
        withheld = CounterMetricFamily(
            "meshplane_xds_secrets_withheld",
            "Secrets holding private keys not sent to an unauthenticated xDS stream (no --client-ca, no "
            "--xds-tokens), each secret counted once per stream.",
        )
        withheld.add_metric([], registry.secrets_withheld)
        yield withheld
        proxies = GaugeMetricFamily(
            "meshplane_xds_proxies",
            "Connected proxies by xDS type and sync state (SYNCED, STALE, NACKED, NOT SENT).",
            labels=["type", "state"],
        )
        states: Counter[tuple[str, str]] = Counter()
        for streams in proxies_by_node(registry).values():
            combined = node_types(streams)  # each type over all of the proxy's streams, as /status shows it
            for type_url in TypeUrl:
                entry = combined.get(type_url)
                states[(type_url.short, str(entry.state if entry is not None else SyncState.NOT_SENT))] += 1
        for type_url in TypeUrl:
            for state in SyncState:
                proxies.add_metric([type_url.short, str(state)], states[(type_url.short, str(state))])
        yield proxies

    def _pushes(self) -> Iterator[Metric]:
        registry = self._inputs.registry
        pushes = CounterMetricFamily("meshplane_xds_pushes", "xDS responses sent, by type.", labels=["type"])
        acks = CounterMetricFamily("meshplane_xds_acks", "ACKs received, by type.", labels=["type"])
        nacks = CounterMetricFamily("meshplane_xds_nacks", "NACKs received (config a proxy rejected).", labels=["type"])
        latency = HistogramMetricFamily(
            "meshplane_xds_push_latency_seconds",
            "From a snapshot's publication (or the stream's connection, if later) to the proxy's ACK of it.",
            labels=["type"],
        )
        convergence = HistogramMetricFamily(
            "meshplane_proxy_convergence_seconds",
            "From a change's first observation (before debounce and build) to a proxy's ACK of the content "
            "carrying it; once per stream, type and generation, for streams connected before its publication.",
            labels=["type"],
        )
        for type_url in TypeUrl:
            labels = [type_url.short]
            pushes.add_metric(labels, registry.push_counts[type_url])
            acks.add_metric(labels, registry.ack_counts[type_url])
            nacks.add_metric(labels, registry.nack_counts[type_url])
            histogram = registry.push_latency[type_url]
            buckets = [(_bound(bound), count) for bound, count in histogram.cumulative()]
            latency.add_metric(labels, buckets, histogram.sum)
            converged = registry.convergence[type_url]
            convergence.add_metric(labels, [(_bound(b), n) for b, n in converged.cumulative()], converged.sum)
        yield from (pushes, acks, nacks, latency, convergence)

    def _snapshots(self) -> Iterator[Metric]:
        cache = self._inputs.cache
        groups = GaugeMetricFamily("meshplane_snapshot_groups", "Proxy groups with at least one stream.")
        resources = GaugeMetricFamily(
            "meshplane_snapshot_resources", "Resources in each group's current snapshot.", labels=["group", "type"]
        )
        count = 0
        for group in cache.groups():
            count += 1
            snapshot = cache.snapshot(group)
            if snapshot is None:
                continue
            for type_url in TypeUrl:
                resources.add_metric([str(group), type_url.short], len(snapshot.of_type(type_url)))
        groups.add_metric([], count)
        state = self._inputs.publish_state()
        published = GaugeMetricFamily(
            "meshplane_last_publish_timestamp_seconds", "When the mesh was last published (Unix time)."
        )
        if state.published_at is not None:
            published.add_metric([], state.published_at)
        problems = GaugeMetricFamily(
            "meshplane_publish_problems", "Problems of the last publication (groups whose snapshot was not published)."
        )
        problems.add_metric([], len(state.problems))
        yield from (groups, resources, published, problems)

    def _rebuild_metrics(self) -> Iterator[Metric]:
        count = CounterMetricFamily(
            "meshplane_rebuilds",
            "Snapshot rebuilds (publications of the mesh), by kind: full, or endpoints (the fast path).",
            labels=["kind"],
        )
        seconds = HistogramMetricFamily(
            "meshplane_rebuild_duration_seconds",
            "How long a rebuild took: translate, serialise, check and publish every group's snapshot.",
            labels=["kind"],
        )
        for kind, histogram in self._rebuilds.items():
            count.add_metric([kind], histogram.count)
            seconds.add_metric([kind], [(_bound(b), n) for b, n in histogram.cumulative()], histogram.sum)
        yield count
        yield seconds

    def _rollout(self) -> Iterator[Metric]:
        generation = GaugeMetricFamily(
            "meshplane_generation",
            "The newest generation (publication that changed something), as /changes numbers it.",
        )
        proxies = GaugeMetricFamily(
            "meshplane_generation_proxies",
            "Connected proxies of the groups the newest generation reached, by whether they have reached it, "
            "are pending, or NACKed it (counted once per node, as /changes counts them).",
            labels=["state"],
        )
        log = self._changes
        newest = log.newest if log is not None else None
        if log is not None and newest is not None:
            counts = one_generation(log, self._inputs.registry, self._inputs.cache, newest)["proxies"]
            generation.add_metric([], newest)
            for state in (REACHED, PENDING, NACKED):
                proxies.add_metric([state], counts[state])
        yield generation
        yield proxies

    def _debouncer(self) -> Iterator[Metric]:
        counts = self._debounce()
        for key, doc in (
            ("pokes", "Change notifications received by the debouncer."),
            ("runs", "Rebuilds the debouncer ran."),
            ("merged", "Change notifications merged into a rebuild another one caused."),
        ):
            name = "merges" if key == "merged" else key
            family = CounterMetricFamily(f"meshplane_debounce_{name}", doc)
            family.add_metric([], counts.get(key, 0))
            yield family

    def _sources(self) -> Iterator[Metric]:
        now = time.time()
        synced = GaugeMetricFamily("meshplane_source_synced", "1 when the source has synced.", labels=["source"])
        current = GaugeMetricFamily(
            "meshplane_source_current_errors", "Errors the source reports now.", labels=["source"]
        )
        errors = CounterMetricFamily(
            "meshplane_source_errors", "Errors the source reported since start.", labels=["source"]
        )
        age = GaugeMetricFamily(
            "meshplane_source_sync_age_seconds", "Seconds since the source's last good sync.", labels=["source"]
        )
        objects = GaugeMetricFamily(
            "meshplane_source_objects", "Objects the source serves, by kind.", labels=["source", "kind"]
        )
        events = CounterMetricFamily(
            "meshplane_source_events",
            "Source events since start (e.g. registrations, rejected registrations, lease expiries).",
            labels=["source", "event"],
        )
        counted = self._source_errors()
        for source in self._inputs.sources():
            name = source.name
            synced.add_metric([name], 1 if source.synced else 0)
            current.add_metric([name], len(source.errors))
            errors.add_metric([name], counted.get(name, 0))
            if source.last_success is not None:
                age.add_metric([name], max(0.0, now - source.last_success))
            for kind, count in sorted(source.counts.items()):
                objects.add_metric([name, kind], count)
            for event, count in sorted(source.events.items()):
                events.add_metric([name, event], count)
        yield from (synced, current, errors, age, objects, events)

    def _grpc_server(self) -> Iterator[Metric]:
        stats = self._grpc
        families = (
            ("started", "RPCs started on the server.", stats.started),
            ("msg_received", "Stream messages received on the server.", stats.received),
            ("msg_sent", "Stream messages sent by the server.", stats.sent),
        )
        for name, doc, counter in families:
            family = CounterMetricFamily(f"meshplane_grpc_server_{name}", doc, labels=["grpc_service", "grpc_method"])
            for (service, method), count in sorted(counter.items()):
                family.add_metric([service, method], count)
            yield family
        handled = CounterMetricFamily(
            "meshplane_grpc_server_handled",
            "RPCs completed on the server, by status code.",
            labels=["grpc_service", "grpc_method", "grpc_code"],
        )
        for (service, method, code), count in sorted(stats.handled.items()):
            handled.add_metric([service, method, code], count)
        yield handled


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)
