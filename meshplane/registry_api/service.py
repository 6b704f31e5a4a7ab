"""The gRPC Registry service (protos/meshplane/edge/v1/registry.proto) over an `EdgeRegistry`.

Every RPC authenticates first: an `authorization: Bearer <token>` metadata value, else (when the
server runs TLS with client certificates) the certificate's device id. Registry errors become the
gRPC status they name, with their reason as the message. `RegistryCalls` holds the RPCs as plain
async functions of (request message, principal) so the JSON mirror (`meshplane.registry_api.http`)
shares them exactly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from meshplane.api.edge.v1 import registry_pb2, registry_pb2_grpc
from meshplane.discovery.registry.auth import Principal, PrincipalKind, TokenAuthenticator, principal_for_certificate
from meshplane.discovery.registry.registry import (
    EdgeRegistry,
    ErrorCode,
    EventKind,
    Filter,
    RegisterInput,
    RegistryError,
)
from meshplane.discovery.registry.store import Registration
from meshplane.grpc_limits import DEFAULT_MAX_CALLS_PER_CLIENT, DEFAULT_REQUEST_TIMEOUT, CallLimits, ConnectionLimits

log = logging.getLogger(__name__)

pb = registry_pb2

_EVENT_KINDS = {
    EventKind.ADDED: pb.WatchEvent.ADDED,
    EventKind.MODIFIED: pb.WatchEvent.MODIFIED,
    EventKind.REMOVED: pb.WatchEvent.REMOVED,
    EventKind.EXPIRED: pb.WatchEvent.EXPIRED,
}


def timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    value = timestamp_pb2.Timestamp()
    value.FromNanoseconds(round(seconds * 1e9))
    return value


def device_message(row: Registration) -> pb.Device:
    device = row.device
    certificate = row.certificate
    issued = (
        pb.IssuedCertificate(
            serial=certificate.serial, not_after=timestamp(certificate.not_after), uri_san=certificate.uri_san
        )
        if certificate is not None
        else None
    )
    return pb.Device(
        device_id=device.id,
        device_class=device.device_class,
        site=device.site,
        endpoints=[pb.Endpoint(address=e.address, port=e.port) for e in device.endpoints],
        version=device.version,
        labels=dict(device.labels),
        expires_at=timestamp(row.expires_at),
        registered_at=timestamp(row.registered_at),
        certificate=issued,
    )


# Register calls per principal: a steady 100 a second with bursts of 1,000 (`--registry-rate`,
# `--registry-burst`). A device registers once per start, but one class token may front a whole
# fleet (a gym's bikes) that restarts at once after a power cut: the burst is sized for that. A
# runaway device or a leaked token is still held to 100 a second, a fraction of what the registry
# takes (docs/edge.md, Figures), so the other principals keep registering.
DEFAULT_REGISTER_RATE = 100.0
DEFAULT_REGISTER_BURST = 1_000
# Buckets kept before the full (idle) ones are forgotten; a full bucket is the same as none.
_MAX_IDLE_BUCKETS = 10_000


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """A token bucket per key: `burst` calls at once, refilled at `rate` a second. `clock` is
    injectable (monotonic seconds) so tests move time instead of sleeping. Rate 0: no limit."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self.clock = clock
        self._buckets: dict[object, _Bucket] = {}

    def allow(self, key: object) -> bool:
        if self.rate <= 0:
            return True
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= _MAX_IDLE_BUCKETS:
                self._forget_full(now)
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        else:
            bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) * self.rate)
            bucket.at = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def _forget_full(self, now: float) -> None:
        for key, bucket in list(self._buckets.items()):
            if bucket.tokens + (now - bucket.at) * self.rate >= self.burst:
                del self._buckets[key]


class RegistryCalls:
    """The Registry RPCs as functions of (request, principal); raise RegistryError to refuse.

    Register is rate limited per principal (`register_limit`, unlimited when not given); heartbeats are not: they are
    cheap (no config rebuild), periodic, and only renew what a Register created."""

    def __init__(self, registry: EdgeRegistry, register_limit: RateLimiter | None = None) -> None:
        self.registry = registry
        self.register_limit = register_limit or RateLimiter(0, DEFAULT_REGISTER_BURST)  # none: unlimited

    async def register(self, request: pb.RegisterRequest, principal: Principal) -> pb.RegisterResponse:
        limit = self.register_limit
        if not limit.allow(principal):
            self.registry.events["rate_limited_registrations"] += 1
            raise RegistryError(
                ErrorCode.RESOURCE_EXHAUSTED,
                f"too many Register calls from {principal}: the limit is {limit.rate:g} a second"
                f" (bursts of {limit.burst}); retry later",
            )
        registered = await self.registry.register_issuing(
            principal,
            RegisterInput(
                device_id=request.device_id,
                device_class=request.device_class,
                site=request.site,
                endpoints=tuple((e.address, e.port) for e in request.endpoints),
                version=request.version,
                labels=dict(request.labels),
                ttl_seconds=request.ttl_seconds,
                lease_id=request.lease_id,
                csr=request.csr,
            ),
        )
        registration, issued = registered.registration, registered.issued
        return pb.RegisterResponse(
            lease_id=registration.lease_id,
            ttl_seconds=round(registration.ttl),
            expires_at=timestamp(registration.expires_at),
            certificate=issued.certificate_pem if issued is not None else "",
            certificate_chain=issued.chain_pem if issued is not None else "",
        )

    async def heartbeat(self, request: pb.HeartbeatRequest, principal: Principal) -> pb.HeartbeatResponse:
        renewed = await self.registry.heartbeat(principal, request.device_id, request.lease_id)
        return pb.HeartbeatResponse(ttl_seconds=round(renewed.ttl), expires_at=timestamp(renewed.expires_at))

    async def deregister(self, request: pb.DeregisterRequest, principal: Principal) -> pb.DeregisterResponse:
        await self.registry.deregister(principal, request.device_id, request.lease_id)
        return pb.DeregisterResponse()

    async def get(self, request: pb.GetRequest, principal: Principal) -> pb.Device:
        if principal.kind is not PrincipalKind.OPERATOR and principal != Principal(
            PrincipalKind.DEVICE, request.device_id
        ):
            _class_may_read(principal, self.registry.get(request.device_id))
        row = self.registry.get(request.device_id)
        if row is None:
            raise RegistryError(ErrorCode.NOT_FOUND, f"device {request.device_id[:128]!r} is not registered")
        return device_message(row)

    async def list(self, request: pb.ListRequest, principal: Principal) -> pb.ListResponse:
        _operator_only(principal, "List")
        selector = Filter(request.site, request.device_class, dict(request.labels))
        return pb.ListResponse(devices=[device_message(row) for row in self.registry.matching(selector)])

    def watch(self, request: pb.WatchRequest, principal: Principal) -> AsyncIterator[pb.WatchEvent]:
        """The events; refuses at once (not at the first event) when `principal` may not watch."""
        _operator_only(principal, "Watch")
        return self._events(Filter(request.site, request.device_class, dict(request.labels)))

    async def _events(self, selector: Filter) -> AsyncIterator[pb.WatchEvent]:
        async for event in self.registry.watch(selector):
            yield pb.WatchEvent(kind=_EVENT_KINDS[event.kind], device=device_message(event.registration))


def _operator_only(principal: Principal, what: str) -> None:
    if principal.kind is not PrincipalKind.OPERATOR:
        raise RegistryError(ErrorCode.PERMISSION_DENIED, f"{what} needs an operator token")


def _class_may_read(principal: Principal, row: Registration | None) -> None:
    """A class token reads devices of its class; a device token only itself."""
    if principal.kind is PrincipalKind.CLASS and (row is None or row.device.device_class == principal.name):
        return
    raise RegistryError(ErrorCode.PERMISSION_DENIED, f"{principal} cannot read other devices")


# (authorization value, certificate common names, certificate URIs, the certificate's PEM or None)
Authenticate = Callable[[str | None, list[str], list[str], bytes | None], Principal | None]


def authenticator(tokens: TokenAuthenticator, *, certificates: bool) -> Authenticate:
    """Principal from (authorization value, certificate common names, certificate URIs): a bearer
    token wins; a verified client certificate is the alternative when `certificates`."""

    def authenticate(
        authorization: str | None, common_names: list[str], uris: list[str], certificate_pem: bytes | None
    ) -> Principal | None:
        if authorization:
            return tokens.principal_for(authorization)
        if certificates:
            return principal_for_certificate(common_names, uris, certificate_pem)
        return None

    return authenticate


class RegistryServicer(registry_pb2_grpc.RegistryServicer):
    """The gRPC face of `RegistryCalls`."""

    def __init__(self, calls: RegistryCalls, authenticate: Authenticate) -> None:
        self._calls = calls
        self._authenticate = authenticate

    def _principal(self, context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
        metadata = dict(context.invocation_metadata() or ())
        authorization = metadata.get("authorization")
        auth = context.auth_context() or {}
        common_names = [v.decode() for v in auth.get("x509_common_name", [])]
        names = [*auth.get("x509_subject_alternative_name", []), *auth.get("peer_uri", [])]
        uris = [v.decode() for v in names if b"://" in v]
        pem = next(iter(auth.get("x509_pem_cert", ())), None)
        principal = self._authenticate(
            authorization if isinstance(authorization, str) else None, common_names, uris, pem
        )
        if principal is None:
            raise RegistryError(ErrorCode.UNAUTHENTICATED, "missing or unknown credentials (authorization: Bearer …)")
        return principal

    async def _unary(self, call: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await call(request, self._principal(context))
        except RegistryError as error:
            await context.abort(grpc.StatusCode[error.code.value], error.reason)

    async def Register(self, request: Any, context: Any) -> Any:
        return await self._unary(self._calls.register, request, context)

    async def Heartbeat(self, request: Any, context: Any) -> Any:
        return await self._unary(self._calls.heartbeat, request, context)

    async def Deregister(self, request: Any, context: Any) -> Any:
        return await self._unary(self._calls.deregister, request, context)

    async def Get(self, request: Any, context: Any) -> Any:
        return await self._unary(self._calls.get, request, context)

    async def List(self, request: Any, context: Any) -> Any:
        return await self._unary(self._calls.list, request, context)

    async def HeartbeatStream(self, request_iterator: Any, context: Any) -> Any:
        try:
            principal = self._principal(context)
            async for request in request_iterator:
                yield await self._calls.heartbeat(request, principal)
        except RegistryError as error:
            await context.abort(grpc.StatusCode[error.code.value], error.reason)

    async def Watch(self, request: Any, context: Any) -> Any:
        try:
            principal = self._principal(context)
            async for event in self._calls.watch(request, principal):
                yield event
        except RegistryError as error:
            await context.abort(grpc.StatusCode[error.code.value], error.reason)


def add_registry(server: grpc.aio.Server, calls: RegistryCalls, authenticate: Authenticate) -> None:
    registry_pb2_grpc.add_RegistryServicer_to_server(RegistryServicer(calls, authenticate), server)


def create_registry_server(
    calls: RegistryCalls,
    authenticate: Authenticate,
    address: str,
    *,
    credentials: grpc.ServerCredentials | None = None,
    connections: ConnectionLimits | None = None,
    call_limits: CallLimits | None = None,
) -> tuple[grpc.aio.Server, int]:
    """A gRPC server for the Registry on `address` (`host:port`, port 0 picks one); not started.

    Its connections are bounded by `connections` (handshake, idle, keepalive, streams per
    connection) and its calls by `call_limits` (per client address, time to send the request);
    both default to `meshplane.grpc_limits`' defaults."""
    options = [("grpc.max_receive_message_length", 64 * 1024), *(connections or ConnectionLimits()).grpc_options()]
    interceptors = [call_limits or CallLimits(DEFAULT_MAX_CALLS_PER_CLIENT, DEFAULT_REQUEST_TIMEOUT)]
    server = grpc.aio.server(options=options, interceptors=interceptors)
    add_registry(server, calls, authenticate)
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    return server, port
