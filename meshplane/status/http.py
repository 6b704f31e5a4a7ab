"""The operator HTTP endpoint: `/healthz`, `/readyz` and `/status` (JSON).

Read-only by construction: it is handed read functions and the server's registries, and has no
way to change a source, a snapshot or a stream. Secrets never appear: it shows versions, names
and counts, never resource bodies.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from meshplane.xds.cache import SnapshotCache
from meshplane.xds.publisher import PublishState
from meshplane.xds.server.tracking import Nack, StreamRegistry, StreamTrack
from meshplane.xds.types import TypeUrl


@dataclass(frozen=True, slots=True)
class StatusInputs:
    """What the status endpoint reads. `sources` returns one mapping per source (name, synced, errors, …)."""

    sources: Callable[[], Sequence[Mapping[str, Any]]]
    publish_state: Callable[[], PublishState]
    cache: SnapshotCache
    registry: StreamRegistry


def readiness(inputs: StatusInputs) -> list[str]:
    """Why the control plane is not ready to serve; empty when it is."""
    reasons = []
    for source in inputs.sources():
        if not source.get("synced"):
            reasons.append(f"source {source.get('name')} has not synced")
    if inputs.publish_state().published_at is None:
        reasons.append("no configuration has been published yet")
    return reasons


def _nack(nack: Nack | None) -> dict[str, Any] | None:
    if nack is None:
        return None
    return {
        "node": nack.node_id,
        "type": nack.type_url.short,
        "version": nack.rejected_version,
        "message": nack.message,
        "at": nack.at,
    }


def _stream(track: StreamTrack) -> dict[str, Any]:
    types = {}
    for type_url in TypeUrl:
        entry = track.types.get(type_url)
        if entry is None:
            continue
        types[type_url.short] = {
            "sent_version": entry.sent_version,
            "sent_nonce": entry.sent_nonce,
            "acked_version": entry.acked_version,
            "pending_nonce": entry.pending_nonce,
            "resources": entry.resource_count,
            "last_nack": _nack(entry.last_nack),
        }
    return {
        "node": track.node_id,
        "cluster": track.node_cluster,
        "role": track.group.role.value,
        "locality": dataclasses.asdict(track.group.locality),
        "group": str(track.group),
        "kind": track.kind.value,
        "peer": track.peer,
        "user_agent": track.user_agent,
        "connected_at": track.connected_at,
        "types": types,
    }


def status_document(inputs: StatusInputs) -> dict[str, Any]:
    state = inputs.publish_state()
    groups = []
    for group, streams in inputs.cache.stream_counts().items():
        snapshot = inputs.cache.snapshot(group)
        groups.append(
            {
                "group": str(group),
                "streams": streams,
                "version": snapshot.version if snapshot else None,
                "resources": {t.short: len(snapshot.of_type(t)) for t in TypeUrl} if snapshot else {},
            }
        )
    return {
        "ready": not readiness(inputs),
        "not_ready_reasons": readiness(inputs),
        "sources": [dict(source) for source in inputs.sources()],
        "publish": dataclasses.asdict(state),
        "groups": groups,
        "proxies": [_stream(track) for track in inputs.registry.streams()],
        "recent_nacks": [_nack(nack) for nack in reversed(inputs.registry.recent_nacks)],
    }


def status_app(inputs: StatusInputs) -> web.Application:
    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        reasons = readiness(inputs)
        if reasons:
            return web.Response(status=503, text="not ready:\n" + "".join(f"- {r}\n" for r in reasons))
        return web.Response(text="ready\n")

    async def status(request: web.Request) -> web.Response:
        return web.json_response(status_document(inputs))

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/status", status)
    return app
