"""The edge registry: validated registrations with leases, kept in memory and in a durable store.

Owns the registry's rules:
- a registration lives while its lease is renewed; `expire()` (run every `check_interval` by
  `run()`) drops lapsed ones, so an expired device leaves the config within one check interval;
- registering again is idempotent: the same device keeps its lease, its fields are replaced, and
  a new site moves it (the old site's gateway loses it in the same rebuild);
- a registration is acknowledged only after the store made it durable;
- addresses must lie inside the site's ranges and never in loopback, link-local, metadata or
  similar ranges; malformed or oversized fields are refused; every refusal says why;
- a principal acts only on itself: a device token on its own id, a class token on devices of its
  class (renewals and removals need the lease id too), an operator token reads and removes; a
  device's client certificate issued by the registry's CA only renews (registers again) its live
  registration, and only while it is the certificate last issued to it (its serial), so a
  deregistered, lapsed or superseded certificate cannot be exchanged for a new one: that needs a
  token (a certificate of another PKI, trusted by `--registry-client-ca`, acts as a device token);
- a registration carrying a CSR gets a certificate for the device's SPIFFE id from the CA
  (`identity.py`) when one is configured, or is refused (FAILED_PRECONDITION) when none is; a
  refused CSR refuses the registration (INVALID_ARGUMENT); with `csr_from_class_tokens` off, a
  class token's CSR is refused (PERMISSION_DENIED): only a device token or the device's current
  certificate gets one. Only registrations issue: heartbeats renew the lease, never the
  certificate; a device's first certificate counts as `certificates_issued`, a later one while its
  registration is live as `certificates_renewed`. The CSR is checked and signed in a worker thread
  (an RSA signature check costs milliseconds); registrations and removals of one device still
  take effect in the order they arrived (`_Turns`). The registry never makes a private key. A
  lease that ends, or a deregistration, while its device's certificate is still valid is an
  identity revoked (edge gateways of sites with TLS stop accepting it), counted as
  `identity_revocations`.

Sites come from the policy files (a callable, read at each registration; None until they have
loaded, when registrations are refused with UNAVAILABLE, which devices retry). `on_change` is called
when the set of live devices or their fields change, never for a mere renewal, so heartbeats do not
rebuild config; `take_changes()` says which devices those were, as data. Knows no wire format;
`meshplane.registry_api.service` maps these calls to gRPC and JSON.

On a shared store (`SharedStore`: several replicas, one database) the registry's live devices are
that replica's view of the database: the store decides lease expiry by the database's clock and
tells the registry what changed anywhere (`apply_stored`); the registry then expires nothing
itself, and a lease is live while its row is. While the store cannot be reached the registry is
not synced (so not ready), and every write is refused UNAVAILABLE with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import ipaddress
import logging
import math
import re
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

from meshplane.discovery.registry import heap
from meshplane.discovery.registry.auth import Principal, PrincipalKind
from meshplane.discovery.registry.identity import (
    LIFETIME_LEASES,
    MAX_LIFETIME,
    CaExpired,
    CertificateAuthority,
    CsrRefused,
    IssuedCertificate,
)
from meshplane.discovery.registry.store import (
    Delete,
    LeaseLost,
    Put,
    Registration,
    RegistrationStore,
    Renew,
    SharedStore,
)
from meshplane.model import (
    Device,
    DeviceEndpoint,
    ProblemKind,
    Site,
    SourceStatus,
    forbidden_address_reason,
    is_device_class,
    is_device_id,
)
from meshplane.model.changes import DeviceChanges

log = logging.getLogger(__name__)

MAX_ENDPOINTS = 8
MAX_VERSION_LENGTH = 64
MAX_LABELS = 16
MAX_LABEL_KEY_LENGTH = 63
MAX_LABEL_VALUE_LENGTH = 253
MAX_LEASE_ID_LENGTH = 64
_LABEL_KEY = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_./]{0,61}[A-Za-z0-9])?$")


class ErrorCode(StrEnum):
    """The gRPC status each refusal maps to (named as in grpc.StatusCode)."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    NOT_FOUND = "NOT_FOUND"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    UNAVAILABLE = "UNAVAILABLE"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"


class RegistryError(Exception):
    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class RegisterInput:
    """A registration as a device asks for it, before validation."""

    device_id: str
    device_class: str
    site: str
    endpoints: tuple[tuple[str, int], ...]
    version: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    ttl_seconds: float = 0
    lease_id: str = ""
    csr: str = ""  # a PEM certificate signing request, or empty (see `identity.py`)


@dataclass(frozen=True, slots=True)
class Registered:
    """A registration as accepted, and the certificate issued for its CSR (None without one)."""

    registration: Registration
    issued: IssuedCertificate | None = None


class EventKind(StrEnum):
    ADDED = "ADDED"
    MODIFIED = "MODIFIED"
    REMOVED = "REMOVED"
    EXPIRED = "EXPIRED"


@dataclass(frozen=True, slots=True)
class Event:
    kind: EventKind
    registration: Registration


@dataclass(frozen=True, slots=True)
class Filter:
    site: str = ""
    device_class: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)

    def matches(self, device: Device) -> bool:
        if self.site and device.site != self.site:
            return False
        if self.device_class and device.device_class != self.device_class:
            return False
        labels = dict(device.labels)
        return all(labels.get(key) == value for key, value in self.labels.items())


@dataclass(frozen=True, slots=True)
class LeaseSettings:
    default_ttl: float = 30.0
    min_ttl: float = 5.0
    max_ttl: float = 3600.0
    check_interval: float = 1.0

    def ttl(self, requested: float) -> float:
        if not requested:
            return self.default_ttl
        return min(max(requested, self.min_ttl), self.max_ttl)


_WATCH_QUEUE = 10_000
_OVERFLOW = object()


class EdgeRegistry:
    """Live registrations by device id. Use from one event loop."""

    def __init__(
        self,
        store: RegistrationStore,
        sites: Callable[[], Mapping[str, Site] | None],
        *,
        leases: LeaseSettings | None = None,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[], None] = lambda: None,
        authority: CertificateAuthority | None = None,
        csr_from_class_tokens: bool = True,
    ) -> None:
        """`authority`: the CA that signs devices' CSRs; None: a registration with a CSR is refused.
        `csr_from_class_tokens` off: a CSR is signed only for a device token or certificate."""
        self._store = store
        self._shared = store if isinstance(store, SharedStore) else None
        # Why the shared store cannot be reached now ("" while it can): not ready meanwhile.
        self._store_down = ""
        # A shared store's follower has caught up with the database since the load (its first
        # full re-read, after it began listening, is done): not ready before. A replica that took
        # calls meanwhile answered them behind that re-read.
        self._in_step = self._shared is None
        self.authority = authority
        self.csr_from_class_tokens = csr_from_class_tokens
        self._turns = _Turns()
        # Counted for /status and /metrics (meshplane_source_events_total{source="edge-registry"}).
        self.events: Counter[str] = Counter()
        self._sites = sites
        self.leases = leases or LeaseSettings()
        self._clock = clock
        self.on_change = on_change
        self._live: dict[str, Registration] = {}
        # Live devices per site, kept by `_put` and `_drop` (status counts it without a scan).
        self._devices_per_site: Counter[str] = Counter()
        # Live devices whose registration holds an issued certificate (kept by `_put` and `_drop`).
        self._certified = 0
        # When the sweep next looks at each device: one (time, device id) entry a device, earliest
        # first, and the time of each device's entry. A renewal does not touch them: when its entry
        # comes due, the sweep finds the lease renewed and looks again at its new end. So a sweep
        # costs the entries due, not the fleet, and renewals cost nothing here.
        self._expiries: list[tuple[float, str]] = []
        self._looks_at: dict[str, float] = {}
        self._watchers: set[asyncio.Queue[object]] = set()
        self._devices: tuple[Device, ...] | None = ()
        # What changed since the last `take_changes()` (see DeviceChanges): ids, or all of them.
        self._changed_ids: set[str] = set()
        self._changed_all = True
        self._loaded_at: float | None = None
        # For the status: when the store last answered (the registry is in sync while it does),
        # when it was last asked, and why it failed last, until it answers again.
        self._confirmed_at: float | None = None
        self._attempted_at: float | None = None
        self._store_error = ""

    # --- lifecycle ---

    async def load(self) -> None:
        """Reads the store. Every lease gets at least its TTL from now: devices could not renew while
        the control plane was down, so they are not punished for it (etcd does the same on leader
        change)."""
        now = self._clock()
        self._attempted_at = time.time()
        for row in await self._store.load():
            if self._shared is not None:  # the database's clock decides (see the module docstring)
                self._put(row)
                continue
            expires_at = max(row.expires_at, now + row.ttl)
            self._put(row.renewed(expires_at))
        self._loaded_at = self._confirmed_at = time.time()
        self._changed_all = True
        self._changed(())
        heap.settle()  # the fleet just read lives as long as the process: no full GC pass rescans it
        log.info("edge registry: loaded %d registrations", len(self._live))

    async def run(self) -> None:
        """Expires lapsed leases every check interval, until cancelled; on a shared store, follows
        the store instead (which expires them). With a CA, also watches its files (`_watch_authority`)."""
        async with asyncio.TaskGroup() as group:
            if self.authority is not None:
                group.create_task(self._watch_authority(self.authority))
            group.create_task(self._run_leases())

    async def _watch_authority(self, authority: CertificateAuthority) -> None:
        """Looks at the CA's files every check interval (a few `stat` calls); a renewed CA calls
        `on_change`, so the gateways' device trust is rebuilt at once, not at the next registration."""
        while True:
            await asyncio.sleep(self.leases.check_interval)
            if authority.refresh():
                log.info("edge registry: the CA certificate changed; the gateways' device trust follows")
                self.on_change()

    def trusted_ca_pem(self) -> str | None:
        """The CA certificates edge gateways verify devices by (`CertificateAuthority.trust_bundle`):
        a replaced one is kept as long as a certificate it issued may be valid, twice the longest
        lease (at most a day). None without a CA."""
        if self.authority is None:
            return None
        return self.authority.trust_bundle(min(MAX_LIFETIME, LIFETIME_LEASES * self.leases.max_ttl))

    async def _run_leases(self) -> None:
        if self._shared is not None:
            await self._shared.follow(self)
            return
        while True:
            await asyncio.sleep(self.leases.check_interval)
            self._attempted_at = time.time()
            try:
                await self.expire()
            except Exception as error:  # the store failed; the next pass tries again
                self._store_failed(error)
                log.exception("edge registry: expiring leases failed")
            else:
                self._store_answered()

    def _store_answered(self) -> None:
        self._confirmed_at = time.time()
        self._store_error = ""

    def _store_failed(self, error: Exception) -> None:
        self._store_error = f"the registration store failed: {type(error).__name__}: {str(error)[:300]}"

    async def _write(self, changes: list[Put | Renew | Delete]) -> None:
        """Writes to the store, keeping the status's view of it (see `status`). A renewal of a lease
        the store no longer holds is NOT_FOUND; any other failure of the store is UNAVAILABLE with
        its reason (nothing was acknowledged: the device retries)."""
        self._attempted_at = time.time()
        try:
            await self._store.write(changes)
        except LeaseLost as lost:
            raise RegistryError(ErrorCode.NOT_FOUND, f"device {lost.device_ids[0]} has no live lease") from None
        except Exception as error:
            self._store_failed(error)
            raise RegistryError(
                ErrorCode.UNAVAILABLE,
                f"the registration store is unavailable ({type(error).__name__}: {str(error)[:200]}); retry",
            ) from error
        self._store_answered()

    def end_watches(self) -> None:
        """Ends every `watch()` (they return after the events already queued)."""
        for watcher in list(self._watchers):
            with contextlib.suppress(asyncio.QueueFull):
                watcher.put_nowait(None)

    async def close(self) -> None:
        self.end_watches()
        await self._store.close()

    # --- reads ---

    def devices(self) -> tuple[Device, ...]:
        """Every live device, sorted by id (the merge admits them into the mesh: `DeviceAdmission`)."""
        if self._devices is None:
            self._devices = tuple(self._live[key].device for key in sorted(self._live))
        return self._devices

    def take_changes(self) -> DeviceChanges:
        """The devices changed since the previous call (the first call: everything), and forgets
        them: meant for one reader, the one that turns devices into config."""
        if self._changed_all:
            changes = DeviceChanges(everything=True)
        else:
            changes = DeviceChanges(ids=frozenset(self._changed_ids))
        self._changed_ids = set()
        self._changed_all = False
        return changes

    def _put(self, registration: Registration) -> None:
        """Makes `registration` its device's live one. A device joins, moves between sites or leaves
        `_live` only here and in `_drop` (a renewal replaces its registration in place), so the
        per-site counts stay right."""
        previous = self._live.get(registration.device.id)
        if previous is not None:
            self._uncount(previous)
        self._live[registration.device.id] = registration
        self._devices_per_site[registration.device.site] += 1
        self._certified += registration.certificate is not None
        if self._shared is not None:
            return  # the store sweeps lapsed leases: nothing to schedule here
        scheduled = self._looks_at.get(registration.device.id)
        if scheduled is None or scheduled > registration.expires_at:  # none, or too late: a shorter TTL
            self._look_at(registration.device.id, registration.expires_at)

    def _look_at(self, device_id: str, when: float) -> None:
        """Schedules the sweep's next look at `device_id` at `when` (an entry it had becomes stale)."""
        heapq.heappush(self._expiries, (when, device_id))
        self._looks_at[device_id] = when

    def _drop(self, device_id: str) -> None:
        self._uncount(self._live.pop(device_id))

    def _uncount(self, registration: Registration) -> None:
        site = registration.device.site
        self._devices_per_site[site] -= 1
        if self._devices_per_site[site] <= 0:
            del self._devices_per_site[site]
        self._certified -= registration.certificate is not None

    def get(self, device_id: str) -> Registration | None:
        return self._live.get(device_id)

    def device(self, device_id: str) -> Device | None:
        """The live device `device_id`, None when it is not registered."""
        registration = self._live.get(device_id)
        return registration.device if registration is not None else None

    def matching(self, selector: Filter) -> list[Registration]:
        return [self._live[key] for key in sorted(self._live) if selector.matches(self._live[key].device)]

    def first(self, site: str | None, limit: int) -> tuple[list[Registration], int]:
        """The first `limit` live registrations by device id (of `site` only, when given) and how
        many there are in all. One pass over the live devices, no sort of them all: at 100,000
        devices a lookup costs a scan, never a sorted copy."""
        total = len(self._live) if site is None else self._devices_per_site.get(site, 0)
        ids = (key for key, row in self._live.items() if site is None or row.device.site == site)
        return [self._live[key] for key in heapq.nsmallest(limit, ids)], total

    def __len__(self) -> int:
        return len(self._live)

    # --- writes ---

    async def register(self, principal: Principal, request: RegisterInput) -> Registration:
        """Registers (or re-registers) a device; a refusal is counted and logged once, with its reason.
        See `register_issuing` for the certificate issued when `request` carries a CSR."""
        return (await self.register_issuing(principal, request)).registration

    async def register_issuing(self, principal: Principal, request: RegisterInput) -> Registered:
        """Registers (or re-registers) a device and, when `request` carries a CSR, issues its
        certificate (counted as `certificates_issued`, or `certificates_renewed` when the device was
        live; a CSR refused, or sent while no CA is configured, as `csr_refused` and refuses the
        registration, which is then left as it was).
        A refusal is counted and logged once, with its reason."""
        try:
            registered = await self._register(principal, request)
        except RegistryError as error:
            self.events["rejected_registrations"] += 1
            log.warning(
                "registration of device %s by %s refused (%s): %s",
                _shown(request.device_id),
                principal,
                error.code.value,
                error.reason,
                extra={"device_id": request.device_id[:64], "code": error.code.value},
            )
            raise
        self.events["registrations"] += 1
        return registered

    async def _register(self, principal: Principal, request: RegisterInput) -> Registered:
        device = self._validate(request)
        self._authorize(principal, device.id, device.device_class)
        if request.csr and principal.kind is PrincipalKind.CLASS and not self.csr_from_class_tokens:
            self.events["csr_refused"] += 1
            raise RegistryError(
                ErrorCode.PERMISSION_DENIED,
                "this registry signs a csr only for the device's own token or certificate, not a class token"
                " (--registry-csr-device-credentials-only)",
            )
        async with self._turns.of(device.id):  # one device's changes land in the order they came
            self._admit(principal, device.id, request.lease_id, self._clock())
            ttl = self.leases.ttl(request.ttl_seconds)
            issued = None
            if request.csr:
                # Off the event loop: parsing and verifying the CSR, and signing, cost milliseconds.
                try:
                    issued = await asyncio.to_thread(self._issue, request.csr, device, ttl, self._clock())
                except RegistryError:
                    self.events["csr_refused"] += 1
                    raise
            # Checked again: the device's registration may have changed while the CA signed.
            now = self._clock()
            current = self._admit(principal, device.id, request.lease_id, now)
            return await self._commit(device, str(principal), current, ttl, now, issued)

    def _issued_here(self, principal: Principal) -> bool:
        """Whether a certificate principal's certificate is one this registry's CA issued (one that
        could not be read counts as such: the stricter rule)."""
        if principal.certificate is None:
            return True
        return self.authority is not None and self.authority.issued(principal.certificate)

    def _admit(self, principal: Principal, device_id: str, lease_id: str, now: float) -> Registration | None:
        """The device's live registration (None: none), when `principal` may register the device
        now; else RegistryError saying why."""
        current = self._live_registration(device_id, now)
        if (
            principal.by_certificate
            and self._issued_here(principal)
            and not _holds_current_certificate(principal, current)
        ):
            raise RegistryError(
                ErrorCode.PERMISSION_DENIED,
                f"a device certificate only renews the live registration of device {device_id} it was last issued"
                " for; this one is not (deregistered, lapsed or superseded): register with a token",
            )
        if current is not None and not self._may_take_over(principal, current, lease_id):
            raise RegistryError(
                ErrorCode.PERMISSION_DENIED,
                f"device {device_id} is registered by another holder; re-register with its lease_id",
            )
        return current

    async def _commit(
        self,
        device: Device,
        holder: str,
        current: Registration | None,
        ttl: float,
        now: float,
        issued: IssuedCertificate | None,
    ) -> Registered:
        lease_id = current.lease_id if current is not None else secrets.token_hex(16)
        registered_at = current.registered_at if current is not None else now
        # Without a new certificate, the last one issued to this device id is still the one it holds.
        kept = self._live.get(device.id)
        certificate = issued.record if issued is not None else kept.certificate if kept is not None else None
        registration = Registration(device, lease_id, holder, ttl, now + ttl, registered_at, certificate)
        await self._write([Put(registration)])
        previous = self._live.get(device.id)
        if previous is not kept and previous is not None and previous.renewed(registration.expires_at) == registration:
            # A shared store's notification of this very commit was applied while the write
            # returned: it holds the row as stored, its lease end by the database's clock, which
            # every other replica shows too. Keep it rather than this replica's estimate.
            registration = previous
        else:
            self._put(registration)
        if issued is not None:
            self.events["certificates_renewed" if current is not None else "certificates_issued"] += 1
        if previous is None or previous.device != device:
            kind = EventKind.ADDED if previous is None else EventKind.MODIFIED
            self._changed((device.id,))
            self._publish(Event(kind, registration))
        return Registered(registration, issued)

    def _issue(self, csr: str, device: Device, ttl: float, now: float) -> IssuedCertificate:
        """The certificate for `csr`, or RegistryError saying why none is issued. Runs in a worker
        thread: it touches nothing of the registry but the CA (the caller counts refusals)."""
        if self.authority is None:
            raise RegistryError(
                ErrorCode.FAILED_PRECONDITION,
                "this registry issues no certificates (it has no CA configured): register without a csr",
            )
        try:
            return self.authority.issue(csr, site=device.site, device_id=device.id, lease_ttl=ttl, now=now)
        except CaExpired as expired:  # not the device's doing: its CSR may be fine
            raise RegistryError(ErrorCode.FAILED_PRECONDITION, expired.reason) from None
        except CsrRefused as refused:
            raise RegistryError(ErrorCode.INVALID_ARGUMENT, refused.reason) from None

    async def heartbeat(self, principal: Principal, device_id: str, lease_id: str) -> Registration:
        current = self._leased(principal, device_id, lease_id)
        expires_at = self._clock() + current.ttl
        await self._write([Renew(device_id, expires_at)])
        renewed = current.renewed(expires_at)
        if self._live.get(device_id) is current:
            self._live[device_id] = renewed
        return renewed

    async def deregister(self, principal: Principal, device_id: str, lease_id: str) -> None:
        """Removes the registration at once; a certificate it held that is still valid is an
        identity revoked (`identity_revocations`): gateways stop accepting it with this change."""
        async with self._turns.of(device_id):
            if principal.kind is PrincipalKind.OPERATOR:
                current = self._live.get(device_id)
                if current is None:
                    raise RegistryError(ErrorCode.NOT_FOUND, f"device {device_id!r} is not registered")
            else:
                current = self._leased(principal, device_id, lease_id)
            await self._write([Delete(device_id)])
            self.events["deregistrations"] += 1
            if self._live.get(device_id) is not None:
                self._drop(device_id)
                self._count_revocations((current,), self._clock())
                self._changed((device_id,))
                self._publish(Event(EventKind.REMOVED, current))

    async def expire(self) -> list[str]:
        """Drops every registration whose lease has lapsed; returns their ids (sorted). Costs what
        lapsed (and the stale entries of renewed leases before them), not what is registered."""
        now = self._clock()
        lapsed: dict[str, Registration] = {}
        while self._expiries and self._expiries[0][0] <= now:
            when, device_id = heapq.heappop(self._expiries)
            if self._looks_at.get(device_id) != when:
                continue  # replaced by an earlier look (a registration with a shorter TTL)
            del self._looks_at[device_id]
            current = self._live.get(device_id)
            if current is None:
                continue  # left meanwhile
            if current.expires_at <= now:
                lapsed[device_id] = current
            else:  # renewed (or registered again) since: look again at its lease's new end
                self._look_at(device_id, current.expires_at)
        if not lapsed:
            return []
        lapsed = dict(sorted(lapsed.items()))
        for device_id in lapsed:
            self._drop(device_id)
        self.events["lease_expiries"] += len(lapsed)
        self._count_revocations(lapsed.values(), now)
        self._changed(lapsed)
        for row in lapsed.values():
            self._publish(Event(EventKind.EXPIRED, row))
        # Losing this delete to a crash is harmless: the lease is still lapsed after a restart
        # (load() grants one TTL of grace, after which it lapses again).
        await self._write([Delete(device_id) for device_id in lapsed])
        return list(lapsed)

    async def watch(self, selector: Filter) -> AsyncIterator[Event]:
        """The live devices matching `selector` as ADDED events, then every matching change."""
        events: asyncio.Queue[object] = asyncio.Queue(maxsize=_WATCH_QUEUE)
        self._watchers.add(events)
        try:
            for row in self.matching(selector):
                yield Event(EventKind.ADDED, row)
            while True:
                item = await events.get()
                if item is None:
                    return
                if item is _OVERFLOW:
                    raise RegistryError(ErrorCode.RESOURCE_EXHAUSTED, "watcher fell too far behind; watch again")
                assert isinstance(item, Event)
                if selector.matches(item.registration.device):
                    yield item
        finally:
            self._watchers.discard(events)

    # --- rules ---

    def _live_registration(self, device_id: str, now: float) -> Registration | None:
        current = self._live.get(device_id)
        if self._shared is not None:
            return current  # live while stored: the store decides expiry by the database's clock
        return current if current is not None and current.expires_at > now else None

    def _may_take_over(self, principal: Principal, current: Registration, lease_id: str) -> bool:
        if principal.kind is PrincipalKind.DEVICE:
            return True  # a device token names exactly this device
        return bool(lease_id) and secrets.compare_digest(lease_id, current.lease_id)

    def _leased(self, principal: Principal, device_id: str, lease_id: str) -> Registration:
        """The live registration of `device_id` held under `lease_id`, if `principal` may act on it."""
        if not is_device_id(device_id):
            raise RegistryError(ErrorCode.INVALID_ARGUMENT, f"device_id {_shown(device_id)} is malformed")
        current = self._live_registration(device_id, self._clock())
        if principal.kind is PrincipalKind.OPERATOR:
            raise RegistryError(ErrorCode.PERMISSION_DENIED, "an operator token cannot renew leases")
        self._authorize(principal, device_id, current.device.device_class if current else "")
        if (
            current is None
            or len(lease_id) > MAX_LEASE_ID_LENGTH
            or not secrets.compare_digest(lease_id.encode(), current.lease_id.encode())
        ):
            raise RegistryError(ErrorCode.NOT_FOUND, f"device {device_id} has no live lease {_shown(lease_id)}")
        return current

    @staticmethod
    def _authorize(principal: Principal, device_id: str, device_class: str) -> None:
        if principal.kind is PrincipalKind.DEVICE and principal.name != device_id:
            raise RegistryError(
                ErrorCode.PERMISSION_DENIED, f"credentials of device {principal.name} cannot act on device {device_id}"
            )
        if principal.kind is PrincipalKind.CLASS and device_class and principal.name != device_class:
            raise RegistryError(
                ErrorCode.PERMISSION_DENIED,
                f"credentials of class {principal.name} cannot act on a device of class {device_class}",
            )
        if principal.kind is PrincipalKind.OPERATOR:
            raise RegistryError(ErrorCode.PERMISSION_DENIED, "an operator token cannot register devices")

    def _validate(self, request: RegisterInput) -> Device:
        """The device `request` describes, or RegistryError with every reason: INVALID_ARGUMENT for
        malformed or oversized fields, PERMISSION_DENIED for addresses the site does not allow."""
        malformed: list[str] = []
        if not is_device_id(request.device_id):
            malformed.append(
                f"device_id {_shown(request.device_id)} is malformed (letters, digits, '.', '_', '-'; at most 128)"
            )
        if not is_device_class(request.device_class):
            malformed.append(f"device_class {_shown(request.device_class)} must be a lowercase RFC 1123 label")
        known = self._sites()
        if known is None:
            raise RegistryError(ErrorCode.UNAVAILABLE, "the sites (policy files) are not loaded yet; retry")
        site = known.get(request.site)
        if site is None:
            malformed.append(f"site {_shown(request.site)} is not a known site")
        if not request.endpoints:
            malformed.append("at least one endpoint is required")
        if len(request.endpoints) > MAX_ENDPOINTS:
            malformed.append(f"{len(request.endpoints)} endpoints; at most {MAX_ENDPOINTS}")
        if len(request.version) > MAX_VERSION_LENGTH or not request.version.isprintable():
            malformed.append(f"version must be at most {MAX_VERSION_LENGTH} printable characters")
        if len(request.labels) > MAX_LABELS:
            malformed.append(f"{len(request.labels)} labels; at most {MAX_LABELS}")
        for key, value in sorted(request.labels.items())[: MAX_LABELS + 1]:
            if len(key) > MAX_LABEL_KEY_LENGTH or not _LABEL_KEY.match(key):
                malformed.append(f"label key {_shown(key)} is malformed (at most {MAX_LABEL_KEY_LENGTH} characters)")
            if len(value) > MAX_LABEL_VALUE_LENGTH or not value.isprintable():
                malformed.append(
                    f"label {_shown(key)}: value must be at most {MAX_LABEL_VALUE_LENGTH} printable characters"
                )
        if len(request.lease_id) > MAX_LEASE_ID_LENGTH:
            malformed.append("lease_id is too long")
        if not math.isfinite(request.ttl_seconds) or request.ttl_seconds < 0:
            malformed.append("ttl_seconds must be a non-negative number")
        endpoints: list[DeviceEndpoint] = []
        denied: list[str] = []
        for address, port in request.endpoints[:MAX_ENDPOINTS]:
            if not 1 <= port <= 65535:
                malformed.append(f"endpoint {_shown(address)}: port {port} is out of range 1-65535")
                continue
            refusal = forbidden_address_reason(address)
            if refusal is not None and refusal.kind is ProblemKind.NOT_AN_IP_ADDRESS:
                # Shown escaped and cut: it is not an address, so it may hold anything.
                malformed.append(f"endpoint address {_shown(address)} {refusal.reason}")
                continue
            if refusal is not None:
                denied.append(f"endpoint address {address} {refusal.reason}")
                continue
            if site is not None and not _inside(address, site):
                ranges = ", ".join(site.device_ranges) or "none"
                denied.append(f"endpoint address {address} is outside the ranges of site {site.id} ({ranges})")
                continue
            endpoints.append(DeviceEndpoint(_canonical(address), port))
        if malformed:
            raise RegistryError(ErrorCode.INVALID_ARGUMENT, "; ".join(malformed))
        if denied:
            raise RegistryError(ErrorCode.PERMISSION_DENIED, "; ".join(denied))
        assert site is not None
        return Device(
            id=request.device_id,
            device_class=request.device_class,
            site=site.id,
            endpoints=tuple(sorted(set(endpoints))),
            version=request.version,
            labels=tuple(sorted(request.labels.items())),
        )

    # --- a shared store's view (`StoreView`) ---

    def apply_stored(
        self, rows: Sequence[Registration], gone: Sequence[str] = (), *, expired: bool = False, everything: bool = False
    ) -> None:
        """Makes the live devices agree with what the shared store holds (see `StoreView`). Devices
        whose fields did not change are replaced silently (a renewal elsewhere rebuilds nothing),
        keeping the `Device` object already held."""
        changed: list[str] = []
        for row in rows:
            previous = self._live.get(row.device.id)
            if previous is not None and previous.device == row.device:
                if previous == row:
                    continue  # a re-read of what is held: nothing to replace
                # The held Device may be frozen out of the collector's scans (heap.py); the copy
                # just parsed is freed now by reference counting instead of joining the heap.
                self._put(replace(row, device=previous.device))
                continue
            self._put(row)
            changed.append(row.device.id)
            self._publish(Event(EventKind.ADDED if previous is None else EventKind.MODIFIED, row))
        removed = set(gone)
        if everything:
            removed |= self._live.keys() - {row.device.id for row in rows}
        dropped: list[str] = []
        revoked: list[Registration] = []
        for device_id in sorted(removed):
            current = self._live.get(device_id)
            if current is None:
                continue
            self._drop(device_id)
            dropped.append(device_id)
            revoked.append(current)
            self._publish(Event(EventKind.EXPIRED if expired else EventKind.REMOVED, current))
        if expired and dropped:
            self.events["lease_expiries"] += len(dropped)
            self._count_revocations(revoked, self._clock())
        self._store_answered()
        if changed or dropped:
            self._changed([*changed, *dropped])

    def apply_lease_ends(self, ends: Sequence[tuple[str, str, float]]) -> list[str]:
        """Sets the lease ends of devices whose stored rows changed in nothing else (see
        `StoreView`): a renewal at another replica, seen by a re-read, rebuilds nothing and
        notifies no watcher. Returns the ids not held under the lease id given."""
        missing: list[str] = []
        live = self._live
        for device_id, lease_id, expires_at in ends:
            current = live.get(device_id)
            if current is None or current.lease_id != lease_id:
                missing.append(device_id)
            elif current.expires_at != expires_at:
                live[device_id] = current.renewed(expires_at)
        self._store_answered()
        return missing

    def store_unreachable(self, reason: str) -> bool:
        was_up = not self._store_down
        self._store_down = reason
        self._store_error = reason
        return was_up

    def store_reachable(self) -> bool:
        was_down = bool(self._store_down)
        self._store_down = ""
        self._in_step = True
        self._store_answered()
        return was_down

    def _count_revocations(self, lapsed: Iterable[Registration], now: float) -> None:
        """Counts `identity_revocations`: lapsed leases whose device still held an unexpired
        certificate, which edge gateways stop accepting with the lease (the certificate itself
        would have been valid until its not-after)."""
        revoked = sum(1 for row in lapsed if row.certificate is not None and row.certificate.not_after > now)
        if revoked:
            self.events["identity_revocations"] += revoked

    def count(self, event: str, n: int) -> None:
        self.events[event] += n

    # --- notifications ---

    def _changed(self, device_ids: Iterable[str]) -> None:
        self._devices = None
        if not self._changed_all:
            self._changed_ids.update(device_ids)
            # Bounded while nobody takes them: past one id per live device, "all of them" says as
            # much and costs a reader no more to act on.
            if len(self._changed_ids) > max(len(self._live), 1024):
                self._changed_ids = set()
                self._changed_all = True
        self.on_change()

    def _publish(self, event: Event) -> None:
        for watcher in list(self._watchers):
            try:
                watcher.put_nowait(event)
            except asyncio.QueueFull:
                self._watchers.discard(watcher)
                with contextlib.suppress(asyncio.QueueEmpty):
                    watcher.get_nowait()  # make room for the overflow marker
                watcher.put_nowait(_OVERFLOW)

    @property
    def status(self) -> SourceStatus:
        """In sync as of the store's last answer (its load, a lease sweep, a write): a healthy
        registry confirms it every check interval, so its sync age stays within one. `sites` counts
        the sites configured (the policy files' last good load), `sites_with_devices` those with a
        live device, `devices_with_certificates` the live devices holding an issued certificate."""
        configured = self._sites() or {}
        return SourceStatus(
            name="edge-registry",
            synced=self._loaded_at is not None and self._in_step and not self._store_down,
            last_success=self._confirmed_at,
            last_attempt=self._attempted_at,
            errors=(self._store_error,) if self._store_error else (),
            counts={
                "devices": len(self._live),
                "sites": len(configured),
                "sites_with_devices": len(self._devices_per_site),
                "devices_with_certificates": self._certified,
            },
            events=dict(self.events),
        )


def _holds_current_certificate(principal: Principal, current: Registration | None) -> bool:
    """Whether a certificate principal presents the certificate last issued to its device's live
    registration."""
    return (
        current is not None
        and current.certificate is not None
        and secrets.compare_digest(current.certificate.serial, principal.certificate_serial)
    )


class _Turns:
    """One FIFO lock per device id while anyone holds or waits for it (dropped after), so changes
    of one device that wait (a CSR signed in a thread, a store write) keep their arrival order,
    while other devices' go on."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def of(self, device_id: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(device_id, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[device_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[device_id]
            if users == 1:
                del self._locks[device_id]
            else:
                self._locks[device_id] = (lock, users - 1)


def _inside(address: str, site: Site) -> bool:
    ip = ipaddress.ip_address(address)
    return any(ip in network for network in site.networks())


def _canonical(address: str) -> str:
    return str(ipaddress.ip_address(address))


def _shown(value: str) -> str:
    return repr(value[:64]) + ("…" if len(value) > 64 else "")
