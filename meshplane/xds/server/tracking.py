"""What every connected stream was sent, what it acknowledged and what it rejected.

Owns `StreamRegistry`: the server writes here as it sends and receives; the status endpoint and
metrics only read. Every NACK is logged once, counted, kept on its stream and in a bounded list
of recent NACKs (Istio's /debug/syncz, Envoy Gateway's xds_nack_total). A NACK's message is the
client's text: it is kept and logged cut to `MAX_NACK_MESSAGE_BYTES` (marked, with its length),
and the recent NACKs hold at most `MAX_RECENT_NACK_BYTES` of messages in all, so a client NACKing
with megabytes of text grows neither the status document nor the log.

Also kept here, because only the server sees them happen: the resources each stream was last
sent per type (references to the snapshot's own `Resource` objects, not copies, for config dumps),
the push latency — from the moment a group's snapshot was published (or the stream connected,
if later) to the proxy's ACK of it — the convergence time — from when a change was first observed
(`Generation.changed`) to a proxy's ACK of the content that carries it, as Istio's
pilot_proxy_convergence_time, also noted per generation in the change log (`ChangeLog.reached`) —
the streams the server refused, by gRPC status code, and the secrets holding private keys
withheld from unauthenticated streams (keys.py), each logged and counted once per stream, and the
node each stream's first request carried (bounded: `kept_node`), which CSDS answers with (csds.py).
Delta streams in step share their records here, as they share their own state (`delta_shared`,
delta_shared.py): one map for every stream sent the same.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from envoy.config.core.v3 import base_pb2

from meshplane.logs import redact_secrets
from meshplane.model import ProxyGroup
from meshplane.xds.publication import ChangeLog
from meshplane.xds.server.delta_shared import DeltaShared, apply_sent, is_shared
from meshplane.xds.server.keys import WITHHELD_REASON
from meshplane.xds.snapshot import Resource, TypeResources
from meshplane.xds.types import TypeUrl

log = logging.getLogger(__name__)


class StreamKind(StrEnum):
    SOTW_ADS = "sotw-ads"
    DELTA_ADS = "delta-ads"
    SOTW = "sotw"
    DELTA = "delta"


class SyncState(StrEnum):
    """Where one type on one proxy stands, as `istioctl proxy-status` names it.

    SYNCED: the proxy acknowledged the last version sent. STALE: a version was sent and is not
    acknowledged yet. NACKED: the proxy's answer to the last version sent was a NACK (it keeps its
    previous config). NOT_SENT: nothing of this type was sent on any of the proxy's streams.
    """

    SYNCED = "SYNCED"
    STALE = "STALE"
    NACKED = "NACKED"
    NOT_SENT = "NOT SENT"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]


_SEVERITY = {SyncState.NOT_SENT: 0, SyncState.SYNCED: 1, SyncState.STALE: 2, SyncState.NACKED: 3}


# What is kept and logged of one NACK's error_detail.message (UTF-8 bytes): Envoy's own messages
# name the resource and the rule it broke in a few hundred bytes; the rest of a longer one is cut.
MAX_NACK_MESSAGE_BYTES = 4 * 1024
# The messages of `StreamRegistry.recent_nacks` together; the oldest go first beyond it. /status
# carries them all, and the dashboard fetches /status every 2 s.
MAX_RECENT_NACK_BYTES = 256 * 1024


def bounded_text(text: str, limit: int) -> str:
    """`text` cut to `limit` UTF-8 bytes (never inside a character), then marked
    `… [cut: N bytes in all]` with its original length, and key material redacted (a key the cut
    went through too: `redact_secrets` redacts a key to the end of the text). Client text kept or
    logged goes through here."""
    encoded = text.encode("utf-8", errors="replace")
    if len(encoded) <= limit:
        return redact_secrets(text)
    # Cut before redacting: the work done on a client's text is bounded by `limit`, not by its size.
    kept = redact_secrets(encoded[:limit].decode("utf-8", errors="ignore"))
    return f"{kept}… [cut: {len(encoded)} bytes in all]"


def bounded_nack_message(message: str) -> str:
    """A NACK's `error_detail.message` as it is kept and logged: see `bounded_text`."""
    return bounded_text(message, MAX_NACK_MESSAGE_BYTES)


@dataclass(frozen=True, slots=True)
class Nack:
    node_id: str
    type_url: TypeUrl
    rejected_version: str
    message: str
    at: float


# The status codes the server refuses a stream with (service.py): too many streams from its client,
# no certificate or known token, a claim its identity does not grant, a request it cannot serve,
# no first request in time (stream.py). Always exported, at 0 until counted, so an alert on their
# rate sees a series from the start.
REFUSAL_CODES = (
    "DEADLINE_EXCEEDED",
    "INVALID_ARGUMENT",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "UNAUTHENTICATED",
)


# Push latency buckets (seconds): a healthy push is tens of milliseconds; a warming cluster can
# hold an ACK for Envoy's 15 s initial fetch timeout.
LATENCY_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Convergence buckets (seconds): a change waits out the debounce (100 ms quiet, at most 1 s by
# default) and a build before its push, and a rollout to a large fleet can take minutes.
CONVERGENCE_BUCKETS: tuple[float, ...] = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class DurationHistogram:
    """Observations counted into fixed buckets (Prometheus semantics: a value lands in the first
    bucket whose upper bound is >= it; `counts` are per bucket, not cumulative; the last is +Inf)."""

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations <= it), ending with (+inf, count)."""
        running = list(itertools.accumulate(self.counts))
        return [*zip(self.bounds, running, strict=False), (float("inf"), running[-1])]


@dataclass(slots=True)
class TypeTrack:
    """One type on one stream. Versions are aggregate versions (SotW) or the system version (Delta).

    `resources` is what the proxy was sent and not told to remove: in SotW everything it holds
    after the last response, the snapshot's shared selection for the names it asked for (no
    per-stream copy; also when an EDS, RDS or SDS response carried only the changed ones, which the
    proxy merges into what it held), in Delta the sum of the
    responses (a name → resource map: shared by the streams sent the same, see `sent`, or the
    stream's own `dict`). The `*_seq` fields order sends, ACKs and NACKs on one registry without
    relying on clock resolution.
    """

    sent_version: str = ""
    sent_nonce: str = ""
    sent_at: float | None = None
    acked_version: str = ""
    acked_at: float | None = None
    pending_nonce: str = ""
    resource_count: int = 0
    last_nack: Nack | None = None
    resources: tuple[Resource, ...] | Mapping[str, Resource] = ()
    sent_seq: int = 0
    acked_seq: int = 0
    nacked_seq: int = 0
    latency_start: float | None = None  # monotonic; set when a new version is sent, cleared by its answer
    # The generation the last response sent brings the proxy to (`ChangeLog.generation_sent`; 0:
    # none kept), and the newest one an ACK of this type on this stream was counted for: each
    # (stream, type, generation) is counted once, and never one older than a generation counted.
    sent_generation: int = 0
    converged_generation: int = 0
    # Secrets the proxy asked for and is not sent, as they hold private keys and its stream is not
    # authenticated (keys.py); sorted. Envoy keeps what names them warming.
    keys_withheld: tuple[str, ...] = ()

    def sent_resources(self) -> tuple[Resource, ...]:
        """What the proxy was last sent of this type, less what it was told to remove, sorted by
        name. A NACKed response is included: this is what was sent, not what the proxy runs."""
        if isinstance(self.resources, tuple):
            return self.resources
        return tuple(sorted(self.resources.values(), key=lambda resource: resource.name))

    @property
    def state(self) -> SyncState:
        if not self.sent_seq:
            return SyncState.NOT_SENT
        if self.nacked_seq > self.sent_seq and self.nacked_seq > self.acked_seq:
            return SyncState.NACKED  # the answer to the latest response was a NACK
        if not self.pending_nonce and self.acked_seq > self.sent_seq and self.acked_version == self.sent_version:
            return SyncState.SYNCED
        return SyncState.STALE


@dataclass(slots=True)
class StreamTrack:
    stream_id: int
    kind: StreamKind
    node_id: str
    node_cluster: str
    group: ProxyGroup
    user_agent: str
    peer: str
    connected_at: float
    connected_monotonic: float = 0.0
    types: dict[TypeUrl, TypeTrack] = field(default_factory=dict)
    # Every secret ever withheld on this stream: each is logged and counted once per stream.
    withheld_noted: set[str] = field(default_factory=set)
    # The node of the stream's first request, as the proxy sent it (`kept_node`); CSDS answers with it.
    node: base_pb2.Node | None = None

    def of(self, type_url: TypeUrl) -> TypeTrack:
        track = self.types.get(type_url)
        if track is None:
            track = self.types[type_url] = TypeTrack()
        return track


# The bytes of a proxy's node kept per stream; a node bigger than this is kept without what makes
# it big (metadata, features, addresses).
MAX_KEPT_NODE_BYTES = 64 * 1024


def kept_node(node: base_pb2.Node) -> base_pb2.Node:
    """A copy of `node` to keep for the stream's lifetime: a copy, so the first request it came in
    is not kept with it. Never its `extensions`: Envoy lists every extension of its build there,
    the bulk of its node (several KiB, the same for every Envoy of the build), which 10,000 streams
    would hold 10,000 times. At most `MAX_KEPT_NODE_BYTES`, beyond which only its id, cluster,
    locality and user agent are kept."""
    kept = base_pb2.Node()
    kept.CopyFrom(node)
    kept.ClearField("extensions")
    if kept.ByteSize() > MAX_KEPT_NODE_BYTES:
        for name in ("metadata", "extensions", "client_features", "listening_addresses", "dynamic_parameters"):
            kept.ClearField(name)
    return kept


class StreamRegistry:
    """Live streams and recent NACKs. Cheap enough to update on every send and every ACK.

    `published_at(group)` gives the monotonic time the group's current snapshot was published
    (the cache knows); push latency is measured from it, or from the stream's connection when
    that is later (a proxy cannot get a snapshot before it connects). With `changes` (the
    publisher's change log), an ACK of content a kept generation published is observed into
    `convergence` and noted on that generation (`ChangeLog.reached`): a few dictionary look-ups at the
    send, one at the ACK, whatever the number of streams and generations.
    """

    def __init__(
        self,
        recent_nacks: int = 200,
        published_at: Callable[[ProxyGroup], float | None] = lambda group: None,
        changes: ChangeLog | None = None,
    ) -> None:
        self._streams: dict[int, StreamTrack] = {}
        self._ids = itertools.count(1)
        self._seq = itertools.count(1)
        # Bumped by every change a reader could see (a stream opened or closed, a response sent, an
        # answer, withheld secrets): equal revisions mean nothing changed (status caches key on it).
        self.revision = 0
        self._published_at = published_at
        self.recent_nacks: deque[Nack] = deque(maxlen=recent_nacks)
        self._recent_nack_bytes = 0  # the UTF-8 size of the messages in `recent_nacks`
        self.nack_counts: Counter[TypeUrl] = Counter()
        self.push_counts: Counter[TypeUrl] = Counter()
        self.ack_counts: Counter[TypeUrl] = Counter()
        self.opened_counts: Counter[StreamKind] = Counter()
        self.closed_counts: Counter[StreamKind] = Counter()
        # Streams refused or ended by the server for cause, by gRPC status code name (a bounded set:
        # `REFUSAL_CODES`); never by client or message, which would be unbounded label values.
        self.refused_counts: Counter[str] = Counter({code: 0 for code in REFUSAL_CODES})
        self.push_latency: dict[TypeUrl, DurationHistogram] = {t: DurationHistogram() for t in TypeUrl}
        self.changes = changes
        self.convergence: dict[TypeUrl, DurationHistogram] = {
            t: DurationHistogram(CONVERGENCE_BUCKETS) for t in TypeUrl
        }
        # Secrets withheld from unauthenticated streams (keys.py): each (stream, secret) counted once.
        self.secrets_withheld = 0
        # What Delta streams in step share: their records here and their own state (delta.py).
        self.delta_shared = DeltaShared()

    def open(
        self,
        kind: StreamKind,
        node_id: str,
        node_cluster: str,
        group: ProxyGroup,
        user_agent: str,
        peer: str,
        node: base_pb2.Node | None = None,
    ) -> StreamTrack:
        """Records a new stream; `node`, the node its first request carried, is kept (`kept_node`)."""
        track = StreamTrack(
            next(self._ids), kind, node_id, node_cluster, group, user_agent, peer, time.time(), time.monotonic()
        )
        if node is not None:
            track.node = kept_node(node)
        self._streams[track.stream_id] = track
        self.opened_counts[kind] += 1
        self.revision += 1
        return track

    def close(self, track: StreamTrack) -> None:
        if self._streams.pop(track.stream_id, None) is not None:
            self.closed_counts[track.kind] += 1
            self.revision += 1

    def refused(self, code: str) -> None:
        """Counts a stream the server refused, or ended for cause, with status `code` (its name)."""
        self.refused_counts[code] += 1

    def streams(self) -> list[StreamTrack]:
        return sorted(self._streams.values(), key=lambda t: (t.node_id, t.stream_id))

    def sent(
        self,
        track: StreamTrack,
        type_url: TypeUrl,
        version: str,
        nonce: str,
        resources: Sequence[Resource],
        removed: Iterable[str] | None = None,
        *,
        held: Iterable[Resource] = (),
        source: TypeResources | None = None,
    ) -> None:
        """Records a response. SotW (`removed` None): `resources` is everything the proxy now has of
        the type, kept as given (pass the snapshot's tuple, and it is shared, not copied), even
        when the response itself carried only the changed ones (EDS, RDS, SDS: sotw.py). Delta:
        `resources` were added or changed and `removed` names were removed; `held` are resources the
        proxy already had (a reconnecting client's `initial_resource_versions`), recorded, not sent.
        With `source` (the type set `resources` come from), the record is a map shared with every
        stream of this registry whose record was the same and that was sent the same."""
        entry = track.of(type_url)
        if removed is None:
            entry.resources = resources if isinstance(resources, tuple) else tuple(resources)
        else:
            record = entry.resources
            if isinstance(record, tuple):  # nothing recorded yet: a Delta record is a map
                record = {r.name: r for r in record} if record else self.delta_shared.no_holding
            if source is not None and is_shared(record):
                # A record still shared stays shared: streams sent the same get the same map.
                updates, gone = tuple(resources), tuple(removed)
                entry.resources = self.delta_shared.holding_after(source, record, tuple(held), updates, gone)
            else:
                own = record if isinstance(record, dict) else dict(record)
                entry.resources = apply_sent(own, tuple(held), tuple(resources), tuple(removed))
        if version != entry.acked_version and (version != entry.sent_version or entry.latency_start is None):
            # A version the proxy does not have yet: its latency runs from when it could first have
            # been pushed, the snapshot's publication or the stream's connection, whichever is later.
            published = self._published_at(track.group)
            entry.latency_start = max(published or 0.0, track.connected_monotonic) or time.monotonic()
        entry.sent_version, entry.sent_nonce, entry.pending_nonce = version, nonce, nonce
        if self.changes is not None:
            entry.sent_generation = self.changes.generation_sent(track.group, str(type_url), version) or 0
        entry.sent_at = time.time()
        entry.sent_seq = next(self._seq)
        self.revision += 1
        entry.resource_count = len(entry.resources)
        self.push_counts[type_url] += 1

    def acked(self, track: StreamTrack, type_url: TypeUrl, version: str) -> None:
        entry = track.of(type_url)
        entry.acked_version, entry.pending_nonce = version, ""
        entry.acked_at = time.time()
        entry.acked_seq = next(self._seq)
        self.revision += 1
        self.ack_counts[type_url] += 1
        if entry.latency_start is not None and version == entry.sent_version:
            self.push_latency[type_url].observe(max(0.0, time.monotonic() - entry.latency_start))
            entry.latency_start = None
        if self.changes is not None and version == entry.sent_version:
            number = entry.sent_generation
            if number > entry.converged_generation:
                entry.converged_generation = number
                seconds = self.changes.reached(number, track.connected_monotonic, time.monotonic())
                if seconds is not None:
                    self.convergence[type_url].observe(seconds)

    def caught_up(self, track: StreamTrack, type_url: TypeUrl, version: str, resources: Sequence[Resource]) -> None:
        """Records that a Delta proxy holds, and acknowledged, exactly `resources` (the current ones
        of the type, at `version`) without a new response: after a NACK, the snapshot went back to
        what it holds. Its state becomes SYNCED; `last_nack` stays, as history. Not an ACK count."""
        entry = track.of(type_url)
        entry.resources = {resource.name: resource for resource in resources}
        entry.resource_count = len(entry.resources)
        entry.sent_version = entry.acked_version = version
        entry.pending_nonce = ""
        entry.acked_at = time.time()
        entry.acked_seq = next(self._seq)
        self.revision += 1
        entry.latency_start = None

    def keys_withheld(self, track: StreamTrack, type_url: TypeUrl, names: Iterable[str]) -> None:
        """Records that `names` (what the stream asked for that holds a private key) are withheld
        from it now; a name not withheld before on this stream is logged and counted."""
        withheld = tuple(sorted(names))
        entry = track.of(type_url)
        entry.keys_withheld = withheld
        self.revision += 1
        new = [name for name in withheld if name not in track.withheld_noted]
        if not new:
            return
        track.withheld_noted.update(new)
        self.secrets_withheld += len(new)
        log.warning(
            "withheld %s %s from node %s (stream %d): %s",
            "secret" if len(new) == 1 else "secrets",
            ", ".join(new),
            track.node_id,
            track.stream_id,
            WITHHELD_REASON,
            extra={
                "event": "keys_withheld",
                "node_id": track.node_id,
                "type": type_url.short,
                "secrets": new,
                "group": str(track.group),
            },
        )

    def nacked(self, track: StreamTrack, type_url: TypeUrl, rejected_version: str, message: str) -> Nack:
        # The client's message is shown to operators and logged: never key material, never unbounded.
        nack = Nack(track.node_id, type_url, rejected_version, bounded_nack_message(message), time.time())
        entry = track.of(type_url)
        entry.last_nack, entry.pending_nonce = nack, ""
        entry.nacked_seq = next(self._seq)
        self.revision += 1
        entry.latency_start = None
        self._remember_nack(nack)
        self.nack_counts[type_url] += 1
        log.warning(
            "NACK from node %s for %s version %s: %s",
            track.node_id,
            type_url.short,
            rejected_version,
            nack.message,
            extra={
                "event": "nack",
                "node_id": track.node_id,
                "type": type_url.short,
                "version": rejected_version,
                "group": str(track.group),
            },
        )
        return nack

    def _remember_nack(self, nack: Nack) -> None:
        """Appends `nack` to `recent_nacks`, dropping the oldest beyond its length or byte budget."""
        if len(self.recent_nacks) == self.recent_nacks.maxlen:
            self._recent_nack_bytes -= _message_bytes(self.recent_nacks[0])
        self.recent_nacks.append(nack)
        self._recent_nack_bytes += _message_bytes(nack)
        while self._recent_nack_bytes > MAX_RECENT_NACK_BYTES and len(self.recent_nacks) > 1:
            self._recent_nack_bytes -= _message_bytes(self.recent_nacks.popleft())


def _message_bytes(nack: Nack) -> int:
    return len(nack.message.encode("utf-8", errors="replace"))
