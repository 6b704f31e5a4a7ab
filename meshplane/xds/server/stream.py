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
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Iterator
from typing import Any, Generic, TypeVar

import grpc

from meshplane.xds.cache import CacheSubscription, SnapshotCache
from meshplane.xds.server.identity import CLIENT_CERTIFICATE, Grant, refusal
from meshplane.xds.server.nodes import MAX_NAME_LENGTH, ProtocolError, proxy_group
from meshplane.xds.server.responses import ResponseCache
from meshplane.xds.server.tracking import StreamKind, StreamRegistry, StreamTrack
from meshplane.xds.snapshot import Snapshot
from meshplane.xds.types import ADS_ORDER, TypeUrl, parse_type_url

log = logging.getLogger(__name__)

RequestT = TypeVar("RequestT")

# Seconds a stream has, from its headers, for its first request (which names the node). Envoy and
# gRPC clients send it at once; a client that opens streams and never says who it is would
# otherwise hold its stream slots (per client, per connection) for as long as it likes.
DEFAULT_FIRST_REQUEST_TIMEOUT = 10.0


class SendGate:
    """Bounds the bytes that streams have handed to gRPC and gRPC has not sent yet.

    Thousands of streams woken together (a new snapshot, or every proxy reconnecting after a
    restart: Istio issue 35263) would otherwise all queue their responses in gRPC at once: every
    in-flight message in memory at the same time (gRPC copies each), and requests (ACKs) waiting
    behind them. A stream reserves its response's size before handing it over and returns it
    once gRPC has taken it; small responses (an endpoint update) pass at once while the budget
    has room, large ones (a full config to a reconnecting herd) go a budget's worth at a time, in
    arrival order. A client that stops reading holds its share at most `hold` seconds, so a few
    stalled proxies cannot block the rest; `hold` must still be longer than a slow but live client
    takes to read a full config under load, or the budget stops bounding anything (at 1 s, 5,000
    streams syncing at once peaked at 1.25 GB RSS; at 30 s, 0.67 GB). A single response
    larger than the budget still goes, alone.
    """

    def __init__(self, budget: int = 64 * 1024 * 1024, hold: float = 10.0) -> None:
        if budget < 1:
            raise ValueError("a send gate needs a positive budget")
        self.budget = budget
        self.hold = hold
        self.in_flight = 0
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    async def acquire(self, size: int) -> Callable[[], None]:
        """Waits until `size` bytes fit; returns their release (idempotent; it also runs by itself after `hold`)."""
        if self._waiting or not self._fits(size):
            waiter = asyncio.get_running_loop().create_future()
            self._waiting.append((size, waiter))
            try:
                await waiter  # _give_back() reserved our size before waking us
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._give_back(size)  # woken and cancelled at once: return what was reserved
                else:
                    self._waiting.remove((size, waiter))
                raise
        else:
            self.in_flight += size
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                timer.cancel()
                self._give_back(size)

        timer = asyncio.get_running_loop().call_later(self.hold, release)
        return release

    def _fits(self, size: int) -> bool:
        return self.in_flight == 0 or self.in_flight + size <= self.budget

    def _give_back(self, size: int) -> None:
        self.in_flight -= size
        while self._waiting and self._fits(self._waiting[0][0]):
            size, waiter = self._waiting.popleft()
            if not waiter.done():
                self.in_flight += size
                waiter.set_result(None)


def check_node_text(node: Any) -> None:
    """Refuses a node whose id, cluster or user agent is longer than any proxy's (1 KiB): they are
    kept for the status endpoint and written into log lines, so the client must not size them."""
    fields = (
        ("node.id", node.id),
        ("node.cluster", node.cluster),
        ("node.user_agent_name", node.user_agent_name),
        ("node.user_agent_version", node.user_agent_version),
    )
    for name, value in fields:
        if len(value) > MAX_NAME_LENGTH:
            raise ProtocolError(
                grpc.StatusCode.INVALID_ARGUMENT, f"{name} has {len(value)} characters; at most {MAX_NAME_LENGTH}"
            )


def _build_version(node: Any) -> str:
    """`node.user_agent_build_version` as `major.minor.patch` (Envoy sets it, not `user_agent_version`)."""
    if not node.HasField("user_agent_build_version"):
        return ""
    version = node.user_agent_build_version.version
    return f"{version.major_number}.{version.minor_number}.{version.patch}"


class Stream(Generic[RequestT]):
    """Base of one xDS stream. Subclasses implement `handle` (one request) and `due` (what to send)."""

    def __init__(
        self,
        cache: SnapshotCache,
        registry: StreamRegistry,
        kind: StreamKind,
        fixed_type: TypeUrl | None,
        peer: str,
        send_gate: SendGate | None = None,
        first_request_timeout: float = DEFAULT_FIRST_REQUEST_TIMEOUT,
        shared: ResponseCache | None = None,
    ) -> None:
        self.cache = cache
        # What the server derives from snapshots, shared by its streams (responses.py); a stream
        # given none shares only with itself.
        self.shared = shared if shared is not None else ResponseCache()
        self.first_request_timeout = first_request_timeout
        self.send_gate = send_gate
        self.registry = registry
        self.kind = kind
        self.fixed_type = fixed_type
        self.peer = peer
        self.waker = asyncio.Event()
        self.inbox: deque[RequestT] = deque()
        self.client_done = False
        # What the peer's client certificate or bearer token (`credential` says which) grants (see
        # identity.py); None: no credential, no check.
        self.grants: tuple[Grant, ...] | None = None
        self.credential = CLIENT_CERTIFICATE
        # Whether secrets holding private keys may be sent (keys.py): the server sets it True for an
        # authenticated stream, or for any with --insecure-serve-keys-without-client-auth.
        self.serves_keys = False
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
        check_node_text(node)
        group = proxy_group(node)
        # With mTLS or tokens, the credential must grant the role (and site) the node claims.
        site = str(getattr(group, "site", ""))
        if (reason := refusal(self.grants, group.role.value, site, self.credential)) is not None:
            raise ProtocolError(grpc.StatusCode.PERMISSION_DENIED, f"node {node.id}: {reason}")
        user_agent = f"{node.user_agent_name} {node.user_agent_version or _build_version(node)}"
        self.track = self.registry.open(
            self.kind, node.id, node.cluster, group, user_agent.strip(), self.peer, node=node
        )
        self.subscription = self.cache.subscribe(group, self.waker)
        log.info("stream %d opened: node %s, group %s, %s", self.track.stream_id, node.id, group, self.kind)
        return self.track

    def withheld_secrets(self, type_url: TypeUrl, snapshot: Snapshot) -> frozenset[str]:
        """The names of `snapshot`'s resources of `type_url` this stream must not be sent: its
        secrets holding private keys when the stream may not have keys (keys.py), else none."""
        if type_url is not TypeUrl.SECRET or self.serves_keys:
            return frozenset()
        return self.shared.private_key_secrets(snapshot)

    def note_withheld(self, type_url: TypeUrl, names: Iterable[str]) -> None:
        """Records which secrets the stream asked for and is not sent (status, log once, count)."""
        assert self.track is not None
        self.registry.keys_withheld(self.track, type_url, names)

    def close(self) -> None:
        """Ends the stream (with OK) at its next wake-up, which this causes."""
        self.server_closing = True
        self.waker.set()

    def handle(self, request: RequestT) -> None:
        raise NotImplementedError

    def due(self, snapshot: Snapshot) -> Iterator[bytes]:
        """Every response due from `snapshot`, type by type in ADS order (clusters before their
        endpoints, listeners before their routes). On ADS, listeners and routes wait while a CDS
        response is unacknowledged: Envoy withholds that ACK until new clusters have warmed, so
        routes never point at a cluster that is not ready."""
        order = ADS_ORDER if self.is_ads else (self.fixed_type,)
        for type_url in order:
            assert type_url is not None
            if type_url not in self.subscribed_types():
                continue
            if self.is_ads and type_url in (TypeUrl.LISTENER, TypeUrl.ROUTE) and self.clusters_unacked():
                continue
            payload = self.response_for(type_url, snapshot)
            if payload is not None:
                yield payload

    def subscribed_types(self) -> Collection[TypeUrl]:
        """The types this stream has asked for."""
        raise NotImplementedError

    def subscriptions(self) -> dict[TypeUrl, frozenset[str] | None]:
        """Per type asked for, the names subscribed to; None for a wildcard subscription (every
        resource of the type, the names given besides included)."""
        raise NotImplementedError

    def clusters_unacked(self) -> bool:
        """True while a CDS response sent on this stream awaits its ACK or NACK."""
        raise NotImplementedError

    def response_for(self, type_url: TypeUrl, snapshot: Snapshot) -> bytes | None:
        """The response for one subscribed type, or None when nothing is due for it."""
        raise NotImplementedError

    async def _read(self, requests: AsyncIterator[RequestT]) -> None:
        try:
            async for request in requests:
                self.inbox.append(request)
                self.waker.set()
        finally:
            self.client_done = True
            self.waker.set()

    async def _wait_for_first_request(self, deadline: float) -> None:
        """Waits for a wake-up; raises ProtocolError (DEADLINE_EXCEEDED) once `deadline` (loop
        time) has passed and no request has been handled yet."""
        try:
            async with asyncio.timeout_at(deadline):
                await self.waker.wait()
        except TimeoutError:
            raise ProtocolError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"no request arrived within {self.first_request_timeout:g} s of the stream's start: "
                "the first request must come at once and carry the node",
            ) from None

    async def responses(self, requests: AsyncIterator[RequestT]) -> AsyncIterator[bytes]:
        """The stream's responses, until the client closes its side or a ProtocolError ends it.

        A stream whose first request (the one that binds it to its node) has not been handled
        within `first_request_timeout` seconds ends with DEADLINE_EXCEEDED and the reason."""
        reader = asyncio.create_task(self._read(requests))
        deadline = asyncio.get_running_loop().time() + self.first_request_timeout
        try:
            while True:
                if self.track is None:
                    await self._wait_for_first_request(deadline)
                else:
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
                if snapshot is None:
                    continue
                for payload in self.due(snapshot):
                    if self.send_gate is None:
                        yield payload
                        continue
                    release = await self.send_gate.acquire(len(payload))
                    try:
                        yield payload  # resumes once gRPC has taken the message
                    finally:
                        release()
        finally:
            reader.cancel()
            if self.subscription is not None:
                self.subscription.close()
            if self.track is not None:
                self.registry.close(self.track)
                log.info("stream %d closed: node %s", self.track.stream_id, self.track.node_id)
