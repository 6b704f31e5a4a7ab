"""What every connected stream was sent, what it acknowledged and what it rejected.

Owns `StreamRegistry`: the server writes here as it sends and receives; the status endpoint and
metrics only read. Every NACK is logged once, counted, kept on its stream and in a bounded list
of recent NACKs (Istio's /debug/syncz, Envoy Gateway's xds_nack_total).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from enum import StrEnum

from meshplane.model import ProxyGroup
from meshplane.xds.types import TypeUrl

log = logging.getLogger(__name__)


class StreamKind(StrEnum):
    SOTW_ADS = "sotw-ads"
    DELTA_ADS = "delta-ads"
    SOTW = "sotw"
    DELTA = "delta"


@dataclass(frozen=True, slots=True)
class Nack:
    node_id: str
    type_url: TypeUrl
    rejected_version: str
    message: str
    at: float


@dataclass(slots=True)
class TypeTrack:
    """One type on one stream. Versions are aggregate versions (SotW) or the system version (Delta)."""

    sent_version: str = ""
    sent_nonce: str = ""
    sent_at: float | None = None
    acked_version: str = ""
    acked_at: float | None = None
    pending_nonce: str = ""
    resource_count: int = 0
    last_nack: Nack | None = None


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
    types: dict[TypeUrl, TypeTrack] = field(default_factory=dict)

    def of(self, type_url: TypeUrl) -> TypeTrack:
        track = self.types.get(type_url)
        if track is None:
            track = self.types[type_url] = TypeTrack()
        return track


class StreamRegistry:
    """Live streams and recent NACKs. Cheap enough to update on every send and every ACK."""

    def __init__(self, recent_nacks: int = 200) -> None:
        self._streams: dict[int, StreamTrack] = {}
        self._ids = itertools.count(1)
        self.recent_nacks: deque[Nack] = deque(maxlen=recent_nacks)
        self.nack_counts: Counter[TypeUrl] = Counter()
        self.push_counts: Counter[TypeUrl] = Counter()

    def open(
        self, kind: StreamKind, node_id: str, node_cluster: str, group: ProxyGroup, user_agent: str, peer: str
    ) -> StreamTrack:
        track = StreamTrack(next(self._ids), kind, node_id, node_cluster, group, user_agent, peer, time.time())
        self._streams[track.stream_id] = track
        return track

    def close(self, track: StreamTrack) -> None:
        self._streams.pop(track.stream_id, None)

    def streams(self) -> list[StreamTrack]:
        return sorted(self._streams.values(), key=lambda t: (t.node_id, t.stream_id))

    def sent(self, track: StreamTrack, type_url: TypeUrl, version: str, nonce: str, count: int) -> None:
        entry = track.of(type_url)
        entry.sent_version, entry.sent_nonce, entry.pending_nonce = version, nonce, nonce
        entry.sent_at = time.time()
        entry.resource_count = count
        self.push_counts[type_url] += 1

    def acked(self, track: StreamTrack, type_url: TypeUrl, version: str) -> None:
        entry = track.of(type_url)
        entry.acked_version, entry.pending_nonce = version, ""
        entry.acked_at = time.time()

    def nacked(self, track: StreamTrack, type_url: TypeUrl, rejected_version: str, message: str) -> Nack:
        nack = Nack(track.node_id, type_url, rejected_version, message, time.time())
        entry = track.of(type_url)
        entry.last_nack, entry.pending_nonce = nack, ""
        self.recent_nacks.append(nack)
        self.nack_counts[type_url] += 1
        log.warning(
            "NACK from node %s for %s version %s: %s",
            track.node_id,
            type_url.short,
            rejected_version,
            message,
            extra={"node_id": track.node_id, "type": type_url.short, "version": rejected_version},
        )
        return nack
