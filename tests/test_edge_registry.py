"""The edge registry's rules, on a fake clock: leases, idempotent re-registration, site moves,
refusals with their reasons, authorization, watch events, and registrations surviving a restart
through the SQLite store."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import sqlite3
from collections.abc import Mapping
from pathlib import Path

import pytest

from meshplane.discovery.registry.auth import Principal, PrincipalKind, TokenAuthenticator, TokenFileError, token_digest
from meshplane.discovery.registry.registry import (
    EdgeRegistry,
    ErrorCode,
    EventKind,
    Filter,
    LeaseSettings,
    RegisterInput,
    RegistryError,
)
from meshplane.discovery.registry.store import MemoryStore, RegistrationStore, SqliteStore
from meshplane.model import GatewayAddress, Site

BERLIN = Site("gym-berlin", "eu-central", "a", (GatewayAddress("10.20.0.2", 15080),), ("10.20.0.0/16", "fd20::/48"))
MUNICH = Site("gym-munich", "eu-central", "b", (GatewayAddress("10.30.0.2", 15080),), ("10.30.0.0/16",))
SITES = {site.id: site for site in (BERLIN, MUNICH)}

BIKE_1 = Principal(PrincipalKind.DEVICE, "bike-1")
BIKES = Principal(PrincipalKind.CLASS, "bike")
OPERATOR = Principal(PrincipalKind.OPERATOR, "ops")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def bike(
    device_id: str = "bike-1", site: str = "gym-berlin", address: str = "10.20.1.5", **kwargs: object
) -> RegisterInput:
    fields: dict[str, object] = {
        "device_id": device_id,
        "device_class": "bike",
        "site": site,
        "endpoints": ((address, 8080),),
        "version": "3.2.1",
        "labels": {"row": "a"},
        "ttl_seconds": 10,
    }
    fields.update(kwargs)
    return RegisterInput(**fields)  # type: ignore[arg-type]


def make_registry(
    store: RegistrationStore | None = None, clock: Clock | None = None, sites: Mapping[str, Site] = SITES
) -> tuple[EdgeRegistry, list[int]]:
    changes: list[int] = []
    registry = EdgeRegistry(
        store or MemoryStore(),
        lambda: sites,
        leases=LeaseSettings(default_ttl=30, min_ttl=1, max_ttl=60, check_interval=1),
        clock=clock or Clock(),
        on_change=lambda: changes.append(1),
    )
    return registry, changes


async def test_register_renew_expire() -> None:
    clock = Clock()
    registry, changes = make_registry(clock=clock)
    registration = await registry.register(BIKE_1, bike())
    assert registration.ttl == 10
    assert registration.expires_at == clock.now + 10
    assert [d.id for d in registry.devices()] == ["bike-1"]
    assert len(changes) == 1

    clock.now += 8
    renewed = await registry.heartbeat(BIKE_1, "bike-1", registration.lease_id)
    assert renewed.expires_at == clock.now + 10
    assert len(changes) == 1, "a renewal changes no config"

    clock.now += 9  # 17 s after registering, 9 s after the renewal: alive
    assert await registry.expire() == []
    clock.now += 1
    assert await registry.expire() == ["bike-1"]
    assert registry.devices() == ()
    assert len(changes) == 2
    with pytest.raises(RegistryError) as refused:
        await registry.heartbeat(BIKE_1, "bike-1", registration.lease_id)
    assert refused.value.code is ErrorCode.NOT_FOUND


async def test_reregistering_is_idempotent_and_moves_sites() -> None:
    registry, changes = make_registry()
    first = await registry.register(BIKE_1, bike())
    again = await registry.register(BIKE_1, bike())
    assert again.lease_id == first.lease_id
    assert len(changes) == 1, "the same registration twice changes nothing"

    moved = await registry.register(BIKE_1, bike(site="gym-munich", address="10.30.1.5"))
    assert moved.lease_id == first.lease_id
    assert [(d.id, d.site) for d in registry.devices()] == [("bike-1", "gym-munich")]
    assert len(changes) == 2
    assert registry.matching(Filter(site="gym-berlin")) == []


async def test_deregister() -> None:
    registry, _ = make_registry()
    registration = await registry.register(BIKE_1, bike())
    with pytest.raises(RegistryError) as wrong_lease:
        await registry.deregister(BIKE_1, "bike-1", "not-the-lease")
    assert wrong_lease.value.code is ErrorCode.NOT_FOUND
    await registry.deregister(BIKE_1, "bike-1", registration.lease_id)
    assert registry.devices() == ()


REFUSALS = [
    pytest.param(
        bike(address="10.99.1.5"),
        ErrorCode.PERMISSION_DENIED,
        "outside the ranges of site gym-berlin",
        id="wrong-site-range",
    ),
    pytest.param(bike(address="127.0.0.1"), ErrorCode.PERMISSION_DENIED, "is a loopback address", id="loopback"),
    pytest.param(bike(address="::1"), ErrorCode.PERMISSION_DENIED, "is a loopback address", id="loopback-v6"),
    pytest.param(bike(address="169.254.169.254"), ErrorCode.PERMISSION_DENIED, "metadata", id="metadata"),
    pytest.param(bike(address="fd00:ec2::254"), ErrorCode.PERMISSION_DENIED, "metadata", id="metadata-v6"),
    pytest.param(
        bike(address="::ffff:169.254.169.254"), ErrorCode.PERMISSION_DENIED, "metadata", id="metadata-v4-mapped"
    ),
    pytest.param(bike(address="169.254.10.1"), ErrorCode.PERMISSION_DENIED, "link-local", id="link-local"),
    pytest.param(bike(address="fe80::1"), ErrorCode.PERMISSION_DENIED, "link-local", id="link-local-v6"),
    pytest.param(bike(address="0.0.0.0"), ErrorCode.PERMISSION_DENIED, "unspecified", id="unspecified"),
    pytest.param(bike(address="224.0.0.1"), ErrorCode.PERMISSION_DENIED, "multicast", id="multicast"),
    pytest.param(bike(address="gateway.local"), ErrorCode.INVALID_ARGUMENT, "is not an IP address", id="host-name"),
    pytest.param(bike(endpoints=(("10.20.1.5", 0),)), ErrorCode.INVALID_ARGUMENT, "out of range", id="port-zero"),
    pytest.param(bike(endpoints=()), ErrorCode.INVALID_ARGUMENT, "at least one endpoint", id="no-endpoints"),
    pytest.param(
        bike(endpoints=tuple((f"10.20.1.{i}", 80) for i in range(1, 10))),
        ErrorCode.INVALID_ARGUMENT,
        "at most 8",
        id="too-many-endpoints",
    ),
    pytest.param(bike(site="gym-paris"), ErrorCode.INVALID_ARGUMENT, "not a known site", id="unknown-site"),
    pytest.param(
        bike(device_id="bike 1"), ErrorCode.INVALID_ARGUMENT, "device_id 'bike 1' is malformed", id="id-with-space"
    ),
    pytest.param(bike(device_id="-bike"), ErrorCode.INVALID_ARGUMENT, "is malformed", id="id-leading-dash"),
    pytest.param(bike(device_id="b" * 129), ErrorCode.INVALID_ARGUMENT, "is malformed", id="id-too-long"),
    pytest.param(bike(device_id="bike/../1"), ErrorCode.INVALID_ARGUMENT, "is malformed", id="id-with-slash"),
    pytest.param(bike(device_class="Bike!"), ErrorCode.INVALID_ARGUMENT, "device_class", id="bad-class"),
    pytest.param(bike(version="v" * 65), ErrorCode.INVALID_ARGUMENT, "version must be at most 64", id="long-version"),
    pytest.param(bike(version="1\n2"), ErrorCode.INVALID_ARGUMENT, "printable", id="version-control-chars"),
    pytest.param(
        bike(labels={f"k{i}": "v" for i in range(17)}),
        ErrorCode.INVALID_ARGUMENT,
        "17 labels; at most 16",
        id="too-many-labels",
    ),
    pytest.param(bike(labels={"k": "v" * 254}), ErrorCode.INVALID_ARGUMENT, "at most 253", id="oversized-label-value"),
    pytest.param(bike(labels={"k" * 64: "v"}), ErrorCode.INVALID_ARGUMENT, "label key", id="oversized-label-key"),
    pytest.param(
        bike(labels={"a b": "v"}), ErrorCode.INVALID_ARGUMENT, "label key 'a b' is malformed", id="bad-label-key"
    ),
]


@pytest.mark.parametrize(("request_", "code", "reason"), REFUSALS)
async def test_refused_registrations_say_why(request_: RegisterInput, code: ErrorCode, reason: str) -> None:
    registry, changes = make_registry()
    principal = Principal(PrincipalKind.DEVICE, request_.device_id)
    with pytest.raises(RegistryError) as refused:
        await registry.register(principal, request_)
    assert refused.value.code is code
    assert reason in refused.value.reason
    assert registry.devices() == ()
    assert changes == []


async def test_a_site_without_ranges_takes_no_device() -> None:
    closed = Site("closed", "eu-central")
    registry, _ = make_registry(sites={"closed": closed})
    with pytest.raises(RegistryError) as refused:
        await registry.register(BIKE_1, bike(site="closed"))
    assert refused.value.code is ErrorCode.PERMISSION_DENIED
    assert "outside the ranges of site closed (none)" in refused.value.reason


async def test_a_device_acts_only_on_itself() -> None:
    registry, _ = make_registry()
    with pytest.raises(RegistryError) as other:
        await registry.register(BIKE_1, bike(device_id="bike-2"))
    assert other.value.code is ErrorCode.PERMISSION_DENIED
    assert "credentials of device bike-1 cannot act on device bike-2" in other.value.reason

    mine = await registry.register(Principal(PrincipalKind.DEVICE, "bike-2"), bike(device_id="bike-2"))
    with pytest.raises(RegistryError) as renew:
        await registry.heartbeat(BIKE_1, "bike-2", mine.lease_id)
    assert renew.value.code is ErrorCode.PERMISSION_DENIED
    with pytest.raises(RegistryError):
        await registry.deregister(BIKE_1, "bike-2", mine.lease_id)
    assert [d.id for d in registry.devices()] == ["bike-2"]


async def test_class_tokens_need_the_lease_to_take_over_or_renew() -> None:
    registry, _ = make_registry()
    first = await registry.register(BIKES, bike(device_id="bike-7"))
    with pytest.raises(RegistryError) as hijack:
        await registry.register(BIKES, bike(device_id="bike-7", address="10.20.9.9"))
    assert hijack.value.code is ErrorCode.PERMISSION_DENIED
    assert "send its lease_id" in hijack.value.reason or "lease_id" in hijack.value.reason
    again = await registry.register(BIKES, bike(device_id="bike-7", lease_id=first.lease_id))
    assert again.lease_id == first.lease_id
    with pytest.raises(RegistryError) as other_class:
        await registry.register(BIKES, bike(device_id="tread-1", device_class="tread"))
    assert other_class.value.code is ErrorCode.PERMISSION_DENIED
    with pytest.raises(RegistryError) as operator:
        await registry.register(OPERATOR, bike())
    assert operator.value.code is ErrorCode.PERMISSION_DENIED


async def test_watch_sees_current_devices_then_changes() -> None:
    clock = Clock()
    registry, _ = make_registry(clock=clock)
    await registry.register(BIKE_1, bike())
    events = registry.watch(Filter(site="gym-berlin"))
    first = await anext(events)
    assert (first.kind, first.registration.device.id) == (EventKind.ADDED, "bike-1")
    bike_2 = Principal(PrincipalKind.DEVICE, "bike-2")
    await registry.register(bike_2, bike(device_id="bike-2"))
    await registry.register(
        Principal(PrincipalKind.DEVICE, "bike-3"), bike(device_id="bike-3", site="gym-munich", address="10.30.0.9")
    )
    await registry.register(bike_2, bike(device_id="bike-2", version="3.3.0"))
    clock.now += 11
    await registry.expire()
    seen = [(e.kind, e.registration.device.id) for e in [await anext(events) for _ in range(4)]]
    assert seen == [
        (EventKind.ADDED, "bike-2"),
        (EventKind.MODIFIED, "bike-2"),
        (EventKind.EXPIRED, "bike-1"),
        (EventKind.EXPIRED, "bike-2"),
    ]
    await events.aclose()


async def test_registrations_survive_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    store = SqliteStore(tmp_path / "registry.db")
    registry, _ = make_registry(store, clock)
    one = await registry.register(BIKE_1, bike())
    await registry.register(Principal(PrincipalKind.DEVICE, "bike-2"), bike(device_id="bike-2", labels={"row": "b"}))
    gone = await registry.register(Principal(PrincipalKind.DEVICE, "bike-3"), bike(device_id="bike-3"))
    await registry.deregister(Principal(PrincipalKind.DEVICE, "bike-3"), "bike-3", gone.lease_id)
    await registry.close()

    restarted, _ = make_registry(SqliteStore(tmp_path / "registry.db"), clock)
    await restarted.load()
    assert [d.id for d in restarted.devices()] == ["bike-1", "bike-2"]
    assert restarted.devices() == registry.devices()
    kept = restarted.get("bike-1")
    assert kept is not None
    assert kept.lease_id == one.lease_id
    # The lease goes on: the device renews with the lease it had.
    await restarted.heartbeat(BIKE_1, "bike-1", one.lease_id)
    await restarted.close()


async def test_sqlite_store_is_wal_with_full_sync(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "registry.db")
    registry, _ = make_registry(store)
    await registry.register(BIKE_1, bike())
    await registry.close()
    connection = sqlite3.connect(tmp_path / "registry.db")
    assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    connection.close()


async def test_a_restart_grants_each_lease_one_ttl(tmp_path: Path) -> None:
    clock = Clock()
    registry, _ = make_registry(SqliteStore(tmp_path / "r.db"), clock)
    await registry.register(BIKE_1, bike())
    await registry.close()
    clock.now += 3600  # the control plane was down for an hour
    restarted, _ = make_registry(SqliteStore(tmp_path / "r.db"), clock)
    await restarted.load()
    assert [d.id for d in restarted.devices()] == ["bike-1"]
    clock.now += 10
    assert await restarted.expire() == ["bike-1"]
    await restarted.close()


def test_tokens_file_is_hashed_and_checked() -> None:
    text = f"""
tokens:
  - sha256: {token_digest("s3cret-bike-1")}
    device: bike-1
  - sha256: {token_digest("s3cret-bikes")}
    class: bike
  - sha256: {token_digest("s3cret-ops").upper()}
    operator: ops
"""
    tokens = TokenAuthenticator.from_text(text, "tokens.yaml")
    assert "s3cret" not in text
    assert tokens.principal_for("Bearer s3cret-bike-1") == BIKE_1
    assert tokens.principal_for("bearer s3cret-bikes") == BIKES
    assert tokens.principal_for("Bearer s3cret-ops") == OPERATOR
    assert tokens.principal_for("Bearer wrong") is None
    assert tokens.principal_for("Basic s3cret-bike-1") is None
    assert tokens.principal_for(None) is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        pytest.param("tokens:\n  - sha256: abc\n    device: bike-1\n", "64 hex digits", id="short-digest"),
        pytest.param(f"tokens:\n  - sha256: '{'0' * 64}'\n", "exactly one of", id="no-principal"),
        pytest.param(f"tokens:\n  - sha256: '{'0' * 64}'\n    device: 'a b'\n", "malformed device", id="bad-device"),
        pytest.param("tokens: 3\n", "tokens` list", id="not-a-list"),
    ],
)
def test_bad_tokens_files_are_refused(text: str, reason: str) -> None:
    with pytest.raises(TokenFileError, match=reason):
        TokenAuthenticator.from_text(text, "tokens.yaml")


async def test_concurrent_first_writes_share_one_writer(tmp_path: Path) -> None:
    import threading

    registry, _ = make_registry(SqliteStore(tmp_path / "r.db"))
    principals = [Principal(PrincipalKind.DEVICE, f"bike-{i}") for i in range(100)]
    await asyncio.gather(
        *(registry.register(p, bike(p.name, address=f"10.20.2.{i + 1}")) for i, p in enumerate(principals))
    )
    assert [t.name for t in threading.enumerate()].count("registry-store") == 1
    await registry.close()
    restarted, _ = make_registry(SqliteStore(tmp_path / "r.db"))
    await restarted.load()
    assert len(restarted) == 100
    await restarted.close()


async def test_registrations_wait_for_the_sites_to_load() -> None:
    registry = EdgeRegistry(MemoryStore(), lambda: None)
    with pytest.raises(RegistryError) as refused:
        await registry.register(BIKE_1, bike())
    assert refused.value.code is ErrorCode.UNAVAILABLE
    assert "not loaded yet" in refused.value.reason


async def test_events_are_counted_for_status_and_metrics_and_refusals_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    registry, _ = make_registry(clock=clock)
    registration = await registry.register(BIKE_1, bike())
    await registry.register(BIKE_1, bike())  # idempotent re-registration still counts as one request
    with caplog.at_level("WARNING"), pytest.raises(RegistryError):
        await registry.register(BIKE_1, bike(address="10.99.0.1"))  # outside the site's ranges
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1
    assert "bike-1" in refusals[0].getMessage()
    assert "10.99.0.1" in refusals[0].getMessage()
    await registry.deregister(BIKE_1, "bike-1", registration.lease_id)
    await registry.register(BIKES, bike("bike-2"))
    clock.now += 60
    assert await registry.expire() == ["bike-2"]
    assert dict(registry.status.events) == {
        "registrations": 3,
        "rejected_registrations": 1,
        "deregistrations": 1,
        "lease_expiries": 1,
    }


@pytest.mark.parametrize("seed", range(10))
async def test_the_sweep_drops_exactly_the_lapsed_leases_whatever_the_renewals(seed: int) -> None:
    """Random registrations (TTLs 1-60 s, so a re-registration may shorten a lease), renewals,
    deregistrations and clock steps: each sweep returns exactly the leases a full scan finds lapsed,
    and leaves the others."""
    rng = random.Random(seed)
    clock = Clock()
    registry, _ = make_registry(clock=clock)
    devices = [f"bike-{index}" for index in range(12)]
    leases: dict[str, str] = {}
    for _ in range(300):
        action, device_id = rng.random(), rng.choice(devices)
        current = registry.get(device_id)
        if action < 0.3:
            request = bike(device_id, address=f"10.20.1.{devices.index(device_id) + 2}", ttl_seconds=rng.randint(1, 60))
            lease = current.lease_id if current is not None else ""
            leases[device_id] = (await registry.register(BIKES, dataclasses.replace(request, lease_id=lease))).lease_id
        elif action < 0.6 and current is not None and current.expires_at > clock.now:
            await registry.heartbeat(BIKES, device_id, leases[device_id])
        elif action < 0.65 and current is not None:
            await registry.deregister(OPERATOR, device_id, "")
        else:
            clock.now += rng.choice([0.5, 1, 3, 10, 30])
            live = [registry.get(device.id) for device in registry.devices()]
            lapsed = sorted(row.device.id for row in live if row is not None and row.expires_at <= clock.now)
            assert await registry.expire() == lapsed
            left = [registry.get(device.id) for device in registry.devices()]
            assert all(row is not None and row.expires_at > clock.now for row in left)
