"""A simulated fleet of edge devices: register, heartbeat, stand-in backends, traffic, deregister.

Owns one client's view of the edge registry (protos/meshplane/edge/v1/registry.proto) for N
devices of one site, all registering the same `address` on ports `port_base + i`. It must not
import the control plane (meshplane.xds, discovery, status, app): it is a client, and what it
knows of the server is the wire contract. `meshplane simulate devices` is its command; the demo
(`make run`), docker-compose and the benchmarks use it as a library:

    stop = asyncio.Event()
    fleet = Fleet(FleetOptions(registry="127.0.0.1:18001", site="gym", count=100, address="198.18.0.2"))
    task = asyncio.create_task(fleet.run(stop))
    await fleet.registered.wait()
    ...
    stop.set()
    stats = await task          # every device deregistered, every backend stopped

What scales, and why:
- Registrations: `concurrency` calls in flight on one channel (HTTP/2 multiplexes them); a
  refusal the registry calls transient (UNAVAILABLE: sites not loaded or the server not up yet;
  RESOURCE_EXHAUSTED: the per-principal rate limit; DEADLINE_EXCEEDED) is retried with capped,
  jittered exponential back-off until `stop`; any other refusal gives that device up, counted
  under its reason (`FleetStats.refused`).
- Heartbeats: `heartbeat_streams` long-lived `HeartbeatStream`s, each carrying the renewals of a
  fixed share of the devices, pipelined (all requests of a round written while the answers are
  read). One stream per device would be thousands of server-side streams; unary calls cost a
  call each. The server answers in order and ends the stream at its first refusal, so the first
  unanswered device is the refused one: on NOT_FOUND (its lease lapsed) that device registers
  again and the rest of the round goes on over a new stream.
- Stand-in backends (`backends=True`): one aiohttp server per device (meshplane.sample_backend),
  so one listening socket each: fine for hundreds of devices; for thousands raise the open-files
  limit (`ulimit -n`) above the fleet size plus the connections in flight.
- Traffic (`traffic_url`): a fleet-wide rate (`traffic_rate` requests a second, spread over the
  registered devices in turn), not a rate per device, so a large fleet does not multiply it.
- Certificates (`certificates=True`, for a site whose gateway requires client certificates): each
  device makes its own key and registers with a CSR (`identity.py`); its traffic goes over TLS
  (`traffic_url` https, the gateway verified by `traffic_ca`) presenting the certificate issued,
  and it registers again with a new key's CSR before half the certificate's lifetime (one renewal
  loop scans the fleet twice a second: a comparison a device). A lapsed lease registers anew with
  a new key too. Keys stay in this process and a private directory removed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import ssl
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec

from meshplane.addresses import split_address
from meshplane.api.edge.v1 import registry_pb2 as pb
from meshplane.api.edge.v1 import registry_pb2_grpc
from meshplane.model.devices import forbidden_address_reason, is_device_class, is_device_id
from meshplane.sample_backend import start_http_backend
from meshplane.simulate.identity import DeviceIdentity, new_key_and_csr, take_certificate

DEFAULT_REGISTRY_PORT = 18001
# Refusals the registry documents as "retry" (docs/edge.md, Refusals), and a call that timed out.
RETRYABLE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED}
)
CALL_TIMEOUT = 10.0  # seconds for one unary call
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 5.0  # seconds
MAX_REASON = 300  # characters of a status message kept as a reason
RENEW_SCAN = 0.5  # seconds between the renewal loop's looks at the fleet
RENEW_RETRY = 1.0  # seconds before a failed renewal is tried again


@dataclass(frozen=True)
class FleetOptions:
    """What to simulate. `problems()` lists everything wrong; `Fleet` refuses options with any."""

    registry: str  # host:port of meshplane.edge.v1.Registry (gRPC); the port defaults to 18001
    site: str
    count: int
    address: str  # the IP every device registers: inside the site's device_ranges, not loopback
    port_base: int = 20000  # device i registers address:port_base+i (and serves there with backends)
    device_class: str = "bike"
    id_prefix: str = "sim"  # device i is f"{id_prefix}-{site}-{i:05d}"
    token: str | None = None  # bearer token: a class token of device_class covers the whole fleet
    ttl_seconds: float = 30.0  # requested; the registry clamps it to its bounds
    heartbeat_interval: float | None = None  # None: a third of the shortest TTL granted
    heartbeat_streams: int = 4
    backends: bool = False  # serve "hello from device <id> …" on address:port of each device
    traffic_url: str | None = None  # e.g. http://127.0.0.1:15080/: the site gateway's device listener
    traffic_host: str | None = None  # Host header naming a cloud service, e.g. "web"
    traffic_rate: float = 10.0  # requests a second, fleet-wide, spread over the registered devices
    concurrency: int = 64  # registrations (and deregistrations, requests) in flight
    version: str = "1.0.0"
    labels: Mapping[str, str] = field(default_factory=dict)
    tls_ca: Path | None = None  # registry over TLS: trust this CA (None with a cert: system roots)
    tls_cert: Path | None = None  # with tls_key: a client certificate (mTLS)
    tls_key: Path | None = None
    certificates: bool = False  # register with a CSR, send traffic with the certificate, renew it
    traffic_ca: Path | None = None  # with certificates: the CA of the gateway's certificate

    def device_id(self, index: int) -> str:
        return f"{self.id_prefix}-{self.site}-{index:05d}"

    def problems(self) -> list[str]:
        found = []
        try:
            registry_target(self.registry)
        except ValueError:
            found.append(f"registry {self.registry!r} is not host:port")
        if self.count < 1:
            found.append(f"count must be at least 1, not {self.count}")
        if self.port_base < 1 or self.port_base + max(self.count, 1) - 1 > 65535:
            found.append(f"ports {self.port_base}..{self.port_base + self.count - 1} are not all within 1-65535")
        if not is_device_id(self.device_id(max(self.count - 1, 0))):
            found.append(f"device ids like {self.device_id(0)!r} are malformed ([A-Za-z0-9][A-Za-z0-9._-]{{0,127}})")
        if not is_device_class(self.device_class):
            found.append(f"class {self.device_class!r} must be a lowercase RFC 1123 label")
        reason = forbidden_address_reason(self.address)
        if reason is not None:
            found.append(f"address {self.address} {reason}: the registry refuses it")
        if self.ttl_seconds < 1:
            found.append("ttl_seconds must be at least 1")
        if self.heartbeat_interval is not None and self.heartbeat_interval <= 0:
            found.append("heartbeat_interval must be positive")
        if self.heartbeat_streams < 1 or self.concurrency < 1:
            found.append("heartbeat_streams and concurrency must be at least 1")
        if (self.traffic_url is None) != (self.traffic_host is None):
            found.append("traffic_url and traffic_host go together")
        if self.traffic_url is not None and self.traffic_rate <= 0:
            found.append("traffic_rate must be positive")
        if (self.tls_cert is None) != (self.tls_key is None):
            found.append("tls_cert and tls_key go together")
        if self.certificates and self.traffic_url is not None and not self.traffic_url.startswith("https://"):
            found.append("with certificates, traffic_url must be https:// (the gateway's TLS device listener)")
        if self.traffic_ca is not None and not self.certificates:
            found.append("traffic_ca goes with certificates")
        return found


def _counter() -> Counter[str]:
    return Counter()


@dataclass
class FleetStats:
    """What the fleet did so far. Counters map a reason ("NOT_FOUND: device … has no live lease")
    to how often it happened; `snapshot()` is a copy that later changes do not touch."""

    count: int
    registered: int = 0  # devices whose first registration succeeded
    refused: Counter[str] = field(default_factory=_counter)  # devices given up, by reason
    retried: Counter[str] = field(default_factory=_counter)  # transient refusals retried, by reason
    reregistered: int = 0  # registrations again after a lapsed lease (NOT_FOUND on a renewal)
    heartbeats_ok: int = 0
    heartbeats_failed: Counter[str] = field(default_factory=_counter)
    requests_ok: int = 0
    requests_failed: Counter[str] = field(default_factory=_counter)
    backends: int = 0  # stand-in backends serving now
    deregistered: int = 0
    abandoned: int = 0  # leases left to expire: deregistration was abandoned (`Fleet.abandon`)
    deregister_failed: Counter[str] = field(default_factory=_counter)
    certificates_issued: int = 0  # certificates received with registrations (renewals counted apart)
    certificates_renewed: int = 0
    renewals_failed: Counter[str] = field(default_factory=_counter)
    registration_seconds: float | None = None  # from the start until every device registered or was given up
    started: float = field(default_factory=time.monotonic)
    elapsed: float = 0.0  # seconds since `started`, as of the last snapshot

    def snapshot(self) -> FleetStats:
        copy = FleetStats(**{f.name: getattr(self, f.name) for f in fields(self)})
        for name in (
            "refused",
            "retried",
            "heartbeats_failed",
            "requests_failed",
            "deregister_failed",
            "renewals_failed",
        ):
            setattr(copy, name, Counter(getattr(self, name)))
        copy.elapsed = time.monotonic() - self.started
        return copy

    @property
    def refused_total(self) -> int:
        return sum(self.refused.values())

    @property
    def heartbeats_failed_total(self) -> int:
        return sum(self.heartbeats_failed.values())

    @property
    def requests_failed_total(self) -> int:
        return sum(self.requests_failed.values())

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: counters as {reason: count}, most frequent first."""
        shown: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name == "started":
                continue
            shown[item.name] = dict(value.most_common()) if isinstance(value, Counter) else value
        shown["elapsed"] = round(self.elapsed, 3)
        if self.registration_seconds is not None:
            shown["registration_seconds"] = round(self.registration_seconds, 3)
        return shown


async def _back_off(delay: float, ceiling: float = BACKOFF_MAX) -> float:
    """Waits about `delay` seconds, jittered (a fleet must not retry in step); the next delay, doubled
    up to `ceiling` and BACKOFF_MAX."""
    await asyncio.sleep(delay * random.uniform(0.5, 1.0))
    return min(delay * 2, ceiling, BACKOFF_MAX)


def registry_target(registry: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port`, `host` or `v6` → (host, port); the port defaults to 18001."""
    return split_address(registry, DEFAULT_REGISTRY_PORT)


def reason_of(error: grpc.aio.AioRpcError) -> str:
    return f"{error.code().name}: {(error.details() or '')[:MAX_REASON]}"


@dataclass(eq=False)
class _Device:
    index: int
    id: str
    port: int
    lease_id: str = ""  # "" while not registered
    backend: web.AppRunner | None = None
    identity: DeviceIdentity | None = None  # with certificates: the one it holds now


class Fleet:
    """Runs one simulated fleet; see the module docstring. One `run` per instance."""

    def __init__(
        self,
        options: FleetOptions,
        on_progress: Callable[[FleetStats], None] | None = None,
        *,
        progress_interval: float = 0.1,
    ) -> None:
        problems = options.problems()
        if problems:
            raise ValueError("; ".join(problems))
        self.options = options
        self.stats = FleetStats(options.count)
        # Set once every device has registered or been given up (never, if `stop` comes first).
        self.registered = asyncio.Event()
        self._on_progress = on_progress
        self._progress_interval = progress_interval
        self._devices = [_Device(i, options.device_id(i), options.port_base + i) for i in range(options.count)]
        self._granted_ttl: float | None = None
        self._lapsed: asyncio.Queue[_Device] = asyncio.Queue()
        self._slots = asyncio.Semaphore(options.concurrency)  # re-registrations, deregistrations
        self._abandoned = asyncio.Event()
        self._traffic_slots = asyncio.Semaphore(options.concurrency)  # requests in flight
        self._keys: Path  # with certificates: the private directory of the devices' key files, made by `run`
        host, port = registry_target(options.registry)
        self._target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        token = options.token
        self._metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()

    @property
    def device_ids(self) -> list[str]:
        return [device.id for device in self._devices]

    async def run(self, stop: asyncio.Event) -> FleetStats:
        """Registers, heartbeats, serves and sends until `stop` is set; then deregisters every
        device it registered and stops its backends (also when cancelled). Returns the final
        stats. An unexpected error (a bug, not a refusal) ends the run and is raised."""
        self.stats.started = time.monotonic()
        if self.options.certificates:
            self._keys = Path(tempfile.mkdtemp(prefix="meshplane-simulate-"))  # owner-only (0700)
        async with self._channel() as channel:
            self._stub = registry_pb2_grpc.RegistryStub(channel)
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.options.concurrency),
                timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT),
            )
            try:
                async with asyncio.TaskGroup() as group:
                    loops = [group.create_task(self._register_all())]
                    share = self.options.heartbeat_streams
                    loops += [group.create_task(self._run_heartbeats(self._devices[i::share])) for i in range(share)]
                    loops += [
                        group.create_task(self._run_reregistrations()) for _ in range(min(self.options.concurrency, 8))
                    ]
                    if self.options.traffic_url is not None:
                        loops.append(group.create_task(self._run_traffic(session)))
                    if self.options.certificates:
                        loops.append(group.create_task(self._run_renewals()))
                    if self._on_progress is not None:
                        loops.append(group.create_task(self._run_progress()))
                    await stop.wait()
                    for loop in loops:
                        loop.cancel()
            finally:
                await self._shutdown(session)
        if self._on_progress is not None:
            self._on_progress(self.stats.snapshot())
        return self.stats.snapshot()

    def _channel(self) -> grpc.aio.Channel:
        options = self.options
        # Straight to the registry: an http_proxy of the environment would see the bearer token.
        channel_options = [("grpc.enable_http_proxy", 0)]
        if options.tls_ca is None and options.tls_cert is None:
            return grpc.aio.insecure_channel(self._target, options=channel_options)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=options.tls_ca.read_bytes() if options.tls_ca else None,
            private_key=options.tls_key.read_bytes() if options.tls_key else None,
            certificate_chain=options.tls_cert.read_bytes() if options.tls_cert else None,
        )
        return grpc.aio.secure_channel(self._target, credentials, options=channel_options)

    # --- registration -------------------------------------------------------------------------

    async def _register_all(self) -> None:
        pending = iter(self._devices)

        async def worker() -> None:
            for device in pending:
                await self._register(device)

        async with asyncio.TaskGroup() as group:
            for _ in range(min(self.options.concurrency, len(self._devices))):
                group.create_task(worker())
        self.stats.registration_seconds = time.monotonic() - self.stats.started
        self.registered.set()

    async def _register(self, device: _Device, *, again: bool = False) -> bool:
        """Registers `device` (retrying transient refusals until cancelled); False when refused."""
        options = self.options
        if options.backends and device.backend is None:
            try:
                device.backend = await start_http_backend(f"device {device.id}", device.port, options.address)
            except OSError as error:
                # One reason for the fleet (no port in it), so the counts add up by cause.
                self.stats.refused[
                    f"stand-in backend on {options.address} did not start: "
                    + (os.strerror(error.errno) if error.errno else str(error))
                ] += 1
                return False
            self.stats.backends += 1
        key, request = self._registration(device)
        delay = BACKOFF_FIRST
        while True:
            try:
                answer = await self._stub.Register(request, metadata=self._metadata, timeout=CALL_TIMEOUT)
            except grpc.aio.AioRpcError as error:
                if error.code() in RETRYABLE:
                    self.stats.retried[reason_of(error)] += 1
                    delay = await _back_off(delay)
                    continue
                self.stats.refused[reason_of(error)] += 1
                await self._stop_backend(device)
                return False
            if key is not None:
                try:
                    self._take(device, key, answer)
                except ValueError as error:
                    self.stats.refused[f"certificate not taken: {error}"] += 1
                    await self._stop_backend(device)
                    return False
                self.stats.certificates_issued += 1
            device.lease_id = answer.lease_id
            if self._granted_ttl is None or answer.ttl_seconds < self._granted_ttl:
                self._granted_ttl = float(answer.ttl_seconds)
            if again:
                self.stats.reregistered += 1
            else:
                self.stats.registered += 1
            return True

    def _registration(self, device: _Device) -> tuple[ec.EllipticCurvePrivateKey | None, pb.RegisterRequest]:
        """The request registering `device` (again, with its lease id, while it holds one); with
        certificates, a new key and its CSR in the request."""
        options = self.options
        key, csr = new_key_and_csr() if options.certificates else (None, "")
        request = pb.RegisterRequest(
            device_id=device.id,
            device_class=options.device_class,
            site=options.site,
            endpoints=[pb.Endpoint(address=options.address, port=device.port)],
            version=options.version,
            labels=dict(options.labels),
            ttl_seconds=max(1, round(options.ttl_seconds)),
            lease_id=device.lease_id,
            csr=csr,
        )
        return key, request

    def _take(self, device: _Device, key: ec.EllipticCurvePrivateKey, answer: pb.RegisterResponse) -> None:
        if not answer.certificate:
            raise ValueError("the registry answered no certificate for the CSR")
        device.identity = take_certificate(
            key,
            answer.certificate,
            answer.certificate_chain,
            directory=self._keys,
            name=device.id,
            trust=self.options.traffic_ca,
        )

    async def _run_renewals(self) -> None:
        """Renews each registered device's certificate when due (`DeviceIdentity.renew_at`) by
        registering it again with a new key's CSR. Ends only when cancelled."""
        async with asyncio.TaskGroup() as group:
            renewing: set[_Device] = set()
            while True:
                now = time.monotonic()
                for device in self._devices:
                    identity = device.identity
                    due = device.lease_id and identity is not None and identity.renew_at <= now
                    if due and device not in renewing:
                        renewing.add(device)
                        task = group.create_task(self._renew(device))
                        task.add_done_callback(lambda _, device=device: renewing.discard(device))  # type: ignore[misc]
                await asyncio.sleep(RENEW_SCAN)

    async def _renew(self, device: _Device) -> None:
        key, request = self._registration(device)
        assert key is not None
        async with self._slots:
            try:
                answer = await self._stub.Register(request, metadata=self._metadata, timeout=CALL_TIMEOUT)
                self._take(device, key, answer)
            except (grpc.aio.AioRpcError, ValueError) as error:
                reason = reason_of(error) if isinstance(error, grpc.aio.AioRpcError) else str(error)
                self.stats.renewals_failed[reason] += 1
                if device.identity is not None:
                    device.identity.renew_at = time.monotonic() + RENEW_RETRY
                return
        device.lease_id = answer.lease_id
        self.stats.certificates_renewed += 1

    async def _run_reregistrations(self) -> None:
        while True:
            device = await self._lapsed.get()
            async with self._slots:
                await self._register(device, again=True)

    # --- heartbeats ---------------------------------------------------------------------------

    def _heartbeat_interval(self) -> float:
        if self.options.heartbeat_interval is not None:
            return self.options.heartbeat_interval
        return (self._granted_ttl or self.options.ttl_seconds) / 3

    async def _run_heartbeats(self, share: list[_Device]) -> None:
        """Renews the leases of `share` every interval over one HeartbeatStream (a new one after
        a failure). Ends only when cancelled."""
        call: grpc.aio.StreamStreamCall[pb.HeartbeatRequest, pb.HeartbeatResponse] | None = None
        try:
            while True:
                interval = self._heartbeat_interval()
                round_started = time.monotonic()
                due = [device for device in share if device.lease_id]
                delay = BACKOFF_FIRST
                while due:
                    if call is None:
                        # No request iterator: this side writes (grpc-stubs wrongly require one).
                        call = self._stub.HeartbeatStream(metadata=self._metadata)  # type: ignore[call-arg]
                    answered, code, reason = await self._beat(call, due)
                    self.stats.heartbeats_ok += answered
                    if code is None:
                        break
                    call.cancel()
                    call = None
                    if code is grpc.StatusCode.NOT_FOUND:
                        # The server ended the stream at this device: its lease lapsed. It registers
                        # again; the devices after it were not renewed yet and go on at once.
                        self.stats.heartbeats_failed[reason] += 1
                        lapsed = due[answered]
                        lapsed.lease_id = ""
                        self._lapsed.put_nowait(lapsed)
                        due = due[answered + 1 :]
                    else:
                        self.stats.heartbeats_failed[reason] += len(due) - answered
                        due = due[answered:]
                        delay = await _back_off(delay, ceiling=interval)
                # Re-read the interval while waiting: the first grant may be shorter than asked.
                while True:
                    remaining = round_started + self._heartbeat_interval() - time.monotonic()
                    if remaining <= 0:
                        break
                    await asyncio.sleep(min(remaining, 1.0))
        finally:
            if call is not None:
                call.cancel()

    async def _beat(
        self,
        call: grpc.aio.StreamStreamCall[pb.HeartbeatRequest, pb.HeartbeatResponse],
        due: list[_Device],
    ) -> tuple[int, grpc.StatusCode | None, str]:
        """Writes a renewal for each of `due` while reading the answers: (answered, None, "") when
        all were answered, else (answered, the status that ended the stream, its reason)."""
        limit = CALL_TIMEOUT + len(due) / 100  # a server that stops answering must not stall the share

        async def write() -> None:
            # A write after the server ended the stream fails; the reader reports why.
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                for device in due:
                    await call.write(pb.HeartbeatRequest(device_id=device.id, lease_id=device.lease_id))

        answered = 0
        writer = asyncio.create_task(write())
        try:
            async with asyncio.timeout(limit):
                while answered < len(due):
                    answer = await call.read()
                    if not isinstance(answer, pb.HeartbeatResponse):  # grpc.aio.EOF (not in grpc-stubs)
                        return answered, grpc.StatusCode.UNKNOWN, "UNKNOWN: the heartbeat stream ended early"
                    answered += 1
        except grpc.aio.AioRpcError as error:
            return answered, error.code(), reason_of(error)
        except TimeoutError:
            return answered, grpc.StatusCode.DEADLINE_EXCEEDED, f"DEADLINE_EXCEEDED: no answer within {limit:g} s"
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        return answered, None, ""

    # --- traffic ------------------------------------------------------------------------------

    async def _run_traffic(self, session: aiohttp.ClientSession) -> None:
        """`traffic_rate` requests a second to `traffic_url`, each from the next registered device
        in turn; behind schedule (a slow gateway), it does not burst to catch up."""
        period = 1.0 / self.options.traffic_rate
        turn = 0
        next_at = time.monotonic()
        async with asyncio.TaskGroup() as group:
            while True:
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                next_at = max(next_at + period, time.monotonic() - 1.0)
                for _ in range(len(self._devices)):
                    device = self._devices[turn % len(self._devices)]
                    turn += 1
                    if device.lease_id:
                        await self._traffic_slots.acquire()
                        group.create_task(self._request(session, device))
                        break

    async def _request(self, session: aiohttp.ClientSession, device: _Device) -> None:
        options = self.options
        assert options.traffic_url is not None
        assert options.traffic_host is not None
        headers = {
            "host": options.traffic_host,
            "x-device-class": options.device_class,
            "x-firmware-version": options.version,
        }
        # With certificates, the device's own: aiohttp pools connections per context, so each
        # device's requests go over its own TLS connections.
        context: ssl.SSLContext | bool = True
        if options.certificates:
            if device.identity is None:
                self._traffic_slots.release()
                return
            context = device.identity.context
        try:
            async with session.get(
                options.traffic_url, headers=headers, allow_redirects=False, ssl=context
            ) as response:
                await response.read()
                if response.status < 400:
                    self.stats.requests_ok += 1
                else:
                    self.stats.requests_failed[f"HTTP {response.status}"] += 1
        except (aiohttp.ClientError, TimeoutError) as error:
            self.stats.requests_failed[f"{type(error).__name__}: {str(error)[:MAX_REASON]}"] += 1
        finally:
            self._traffic_slots.release()

    # --- progress and shutdown ----------------------------------------------------------------

    async def _run_progress(self) -> None:
        assert self._on_progress is not None
        while True:
            self._on_progress(self.stats.snapshot())
            await asyncio.sleep(self._progress_interval)

    async def _deregister(self, device: _Device) -> None:
        request = pb.DeregisterRequest(device_id=device.id, lease_id=device.lease_id)
        async with self._slots:
            try:
                await self._stub.Deregister(request, metadata=self._metadata, timeout=CALL_TIMEOUT)
            except grpc.aio.AioRpcError as error:
                self.stats.deregister_failed[reason_of(error)] += 1
            else:
                self.stats.deregistered += 1
                device.lease_id = ""

    async def _stop_backend(self, device: _Device) -> None:
        if device.backend is not None:
            runner, device.backend = device.backend, None
            await runner.cleanup()
            self.stats.backends -= 1

    def abandon(self) -> None:
        """Stops deregistering at once (a second Ctrl-C, or a registry that no longer answers): the
        leases still held are left to expire within their TTL. Backends are stopped all the same."""
        self._abandoned.set()

    async def _deregister_all(self) -> None:
        async with asyncio.TaskGroup() as group:
            for device in self._devices:
                if device.lease_id:
                    group.create_task(self._deregister(device))

    async def _shutdown(self, session: aiohttp.ClientSession) -> None:
        """Deregisters every device holding a lease (until `abandon()`), then stops the backends and
        the session."""
        try:
            deregistering = asyncio.create_task(self._deregister_all())
            abandoned = asyncio.create_task(self._abandoned.wait())
            try:
                await asyncio.wait((deregistering, abandoned), return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (deregistering, abandoned):
                    task.cancel()
                await asyncio.gather(abandoned, return_exceptions=True)
                try:
                    await deregistering
                except asyncio.CancelledError:
                    self.stats.abandoned = sum(1 for device in self._devices if device.lease_id)
        finally:
            for device in self._devices:
                await self._stop_backend(device)
            await session.close()
            if self.options.certificates:
                shutil.rmtree(self._keys, ignore_errors=True)
