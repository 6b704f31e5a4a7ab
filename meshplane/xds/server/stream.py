"""What SotW and Delta streams share: reading requests, the first request's node, and lifecycle.

A stream is one coroutine that alternates between handling the requests that arrived and sending
what is due from the current snapshot. It sleeps on one `asyncio.Event`, set by its request reader
and by the cache when its group's snapshot changes, so it never queues snapshots: it always sends
from the latest one.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator, Iterator
from typing import Any, Generic, TypeVar

import grpc

from meshplane.xds.cache import CacheSubscription, SnapshotCache
from meshplane.xds.server.nodes import ProtocolError, proxy_group
from meshplane.xds.server.tracking import StreamKind, StreamRegistry, StreamTrack
from meshplane.xds.snapshot import Snapshot
from meshplane.xds.types import TypeUrl, parse_type_url

log = logging.getLogger(__name__)

RequestT = TypeVar("RequestT")


class Stream(Generic[RequestT]):
    """Base of one xDS stream. Subclasses implement `handle` (one request) and `due` (what to send)."""

    def __init__(
        self, cache: SnapshotCache, registry: StreamRegistry, kind: StreamKind, fixed_type: TypeUrl | None, peer: str
    ) -> None:
        self.cache = cache
        self.registry = registry
        self.kind = kind
        self.fixed_type = fixed_type
        self.peer = peer
        self.waker = asyncio.Event()
        self.inbox: deque[RequestT] = deque()
        self.client_done = False
        self.server_closing = False
        self.track: StreamTrack | None = None
        self.subscription: CacheSubscription | None = None
        self._nonces = itertools.count(1)

    @property
    def is_ads(self) -> bool:
        return self.fixed_type is None

    def next_nonce(self) -> str:
        return str(next(self._nonces))

    def resolve_type(self, type_url: str) -> TypeUrl:
        """The type a request is about: its own on ADS, the service's on a per-type stream."""
        if self.fixed_type is not None:
            if type_url and type_url != self.fixed_type.value:
                raise ProtocolError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"type_url {type_url!r} sent on the {self.fixed_type.short} service",
                )
            return self.fixed_type
        if not type_url:
            raise ProtocolError(grpc.StatusCode.INVALID_ARGUMENT, "type_url is required on ADS")
        resolved = parse_type_url(type_url)
        if resolved is None:
            served = ", ".join(t.value for t in TypeUrl)
            raise ProtocolError(
                grpc.StatusCode.INVALID_ARGUMENT, f"unknown type_url {type_url!r}; this server serves {served}"
            )
        return resolved

    def attach(self, node: Any, present: bool) -> StreamTrack:
        """Binds the stream to its node's group on the first request; later requests may omit the node."""
        if self.track is not None:
            return self.track
        if not present:
            raise ProtocolError(grpc.StatusCode.INVALID_ARGUMENT, "the first request of a stream must carry a node")
        group = proxy_group(node)
        user_agent = f"{node.user_agent_name} {node.user_agent_version or node.user_agent_build_version.version}"
        self.track = self.registry.open(self.kind, node.id, node.cluster, group, user_agent.strip(), self.peer)
        self.subscription = self.cache.subscribe(group, self.waker)
        log.info("stream %d opened: node %s, group %s, %s", self.track.stream_id, node.id, group, self.kind)
        return self.track

    def close(self) -> None:
        """Ends the stream (with OK) at its next wake-up, which this causes."""
        self.server_closing = True
        self.waker.set()

    def handle(self, request: RequestT) -> None:
        raise NotImplementedError

    def due(self, snapshot: Snapshot) -> Iterator[bytes]:
        raise NotImplementedError

    async def _read(self, requests: AsyncIterator[RequestT]) -> None:
        try:
            async for request in requests:
                self.inbox.append(request)
                self.waker.set()
        finally:
            self.client_done = True
            self.waker.set()

    async def responses(self, requests: AsyncIterator[RequestT]) -> AsyncIterator[bytes]:
        """The stream's responses, until the client closes its side or a ProtocolError ends it."""
        reader = asyncio.create_task(self._read(requests))
        try:
            while True:
                await self.waker.wait()
                self.waker.clear()
                while self.inbox:
                    self.handle(self.inbox.popleft())
                if self.server_closing:
                    return  # the server is stopping: end with OK so the client reconnects at once
                if self.client_done:
                    if reader.done() and (error := reader.exception()) is not None:
                        raise error
                    return
                snapshot = self.subscription.snapshot if self.subscription is not None else None
                if snapshot is not None:
                    for payload in self.due(snapshot):
                        yield payload
        finally:
            reader.cancel()
            if self.subscription is not None:
                self.subscription.close()
            if self.track is not None:
                self.registry.close(self.track)
                log.info("stream %d closed: node %s", self.track.stream_id, self.track.node_id)
