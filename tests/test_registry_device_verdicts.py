"""The registry's devices in the mesh, kept incrementally by the merge (`DeviceAdmission`): a merge
re-checks against the sites only the devices the registry reports as changed
(`EdgeRegistry.take_changes`, a change set carried as data), and every device only when the sites
change; what is admitted is always what a full check of every live device would admit.

The seam: `DeviceAdmission.checks` counts devices checked against the sites.
"""

from __future__ import annotations

import dataclasses

import pytest

from meshplane.discovery.device_admission import DeviceAdmission
from meshplane.discovery.registry.auth import Principal, PrincipalKind
from meshplane.discovery.registry.registry import EdgeRegistry, LeaseSettings, RegisterInput
from meshplane.discovery.registry.store import MemoryStore
from meshplane.model import Device, Mesh, Site
from meshplane.model.changes import DeviceChanges
from meshplane.model.mesh import device_order

BERLIN = Site("gym-berlin", "eu-central", device_ranges=("10.20.0.0/16",))
MUNICH = Site("gym-munich", "eu-central", device_ranges=("10.30.0.0/16",))
SITES = (BERLIN, MUNICH)
BIKES = Principal(PrincipalKind.CLASS, "bike")
FLEET = 40  # devices registered before each test's first rebuild, half per site


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def bike(index: int, site: Site = BERLIN, host: int | None = None, version: str = "1") -> RegisterInput:
    prefix = site.device_ranges[0].rsplit(".", 2)[0]  # "10.20"
    return RegisterInput(
        device_id=f"bike-{index:03d}",
        device_class="bike",
        site=site.id,
        endpoints=((f"{prefix}.1.{host if host is not None else index % 250 + 1}", 8080),),
        version=version,
        ttl_seconds=30,
    )


async def register(registry: EdgeRegistry, request: RegisterInput) -> None:
    """Registers `request`, with the lease of the device's live registration if it has one."""
    current = registry.get(request.device_id)
    lease_id = current.lease_id if current is not None else ""
    await registry.register(BIKES, dataclasses.replace(request, lease_id=lease_id))


class Merging:
    """A registry and the merge's admission of its devices, driven as merges drive them."""

    def __init__(self, registry: EdgeRegistry) -> None:
        self.registry = registry
        self.admission = DeviceAdmission()

    @property
    def checks(self) -> int:
        return self.admission.checks

    def devices_for(self, mesh: Mesh) -> tuple[Device, ...]:
        """The devices a merge with `mesh`'s sites admits (taking the registry's changes, as merges do)."""
        devices, _ = self.admission.admit(mesh.sites, self.registry, self.registry.take_changes())
        return devices

    def left_out(self) -> dict[str, tuple[str, ...]]:
        return {device: tuple(map(str, problems)) for device, problems in self.admission.left_out().items()}


async def serving(sites: tuple[Site, ...] = SITES, clock: Clock | None = None) -> Merging:
    """A registry with FLEET devices, and its first merge done."""
    by_id = {site.id: site for site in sites}
    registry = (
        EdgeRegistry(MemoryStore(), lambda: by_id, leases=LeaseSettings(), clock=clock)
        if clock is not None  # leases on a fake clock
        else EdgeRegistry(MemoryStore(), lambda: by_id)
    )
    server = Merging(registry)
    await server.registry.load()
    for index in range(FLEET):
        await register(server.registry, bike(index, SITES[index % 2]))
    assert len(server.devices_for(Mesh(sites=sites))) == FLEET
    assert server.checks == FLEET  # the first rebuild checks every device
    return server


def full_check(server: Merging, mesh: Mesh) -> tuple[Device, ...]:
    """What checking every live device from scratch admits: the incremental result must equal it."""
    sites = {site.id: site for site in mesh.sites}
    return tuple(
        sorted((device for device in server.registry.devices() if not device.problems(sites)), key=device_order)
    )


def no_full_list() -> tuple[Device, ...]:
    raise AssertionError("a rebuild after a registration read every device")


async def test_a_registration_rechecks_that_device_only(monkeypatch: pytest.MonkeyPatch) -> None:
    server = await serving()
    mesh = Mesh(sites=SITES)
    monkeypatch.setattr(server.registry, "devices", no_full_list)

    await register(server.registry, bike(500))
    devices = server.devices_for(mesh)

    assert server.checks == FLEET + 1
    assert sorted(device.id for device in devices) == sorted([f"bike-{i:03d}" for i in range(FLEET)] + ["bike-500"])
    monkeypatch.undo()
    assert devices == full_check(server, mesh)


async def test_renewals_and_same_registrations_recheck_nothing_and_keep_the_tuple() -> None:
    server = await serving()
    mesh = Mesh(sites=SITES)
    before = server.devices_for(mesh)
    registration = server.registry.get("bike-001")
    assert registration is not None

    await server.registry.heartbeat(BIKES, "bike-001", registration.lease_id)
    await register(server.registry, bike(1, MUNICH))  # exactly as it registered

    assert server.devices_for(mesh) is before  # the same object: the mesh comparison is free
    assert server.checks == FLEET


async def test_a_changed_registration_rechecks_it_and_replaces_it() -> None:
    server = await serving()
    mesh = Mesh(sites=SITES)

    await register(server.registry, bike(4, BERLIN, version="2"))
    devices = server.devices_for(mesh)

    assert server.checks == FLEET + 1
    assert {device.id: device.version for device in devices}["bike-004"] == "2"
    assert devices == full_check(server, mesh)


async def test_deregistrations_and_expiries_leave_without_a_check(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    server = await serving(clock=clock)  # every lease runs 30 s from now
    mesh = Mesh(sites=SITES)
    monkeypatch.setattr(server.registry, "devices", no_full_list)

    await server.registry.deregister(Principal(PrincipalKind.OPERATOR, "ops"), "bike-002", "")
    after_deregistration = server.devices_for(mesh)
    clock.now += 10
    for index in range(FLEET):
        registration = server.registry.get(f"bike-{index:03d}")
        if registration is not None and index != 7:  # bike-007 is not renewed
            await server.registry.heartbeat(BIKES, registration.device.id, registration.lease_id)
    clock.now += 21
    assert await server.registry.expire() == ["bike-007"]
    after_expiry = server.devices_for(mesh)

    assert "bike-002" not in {device.id for device in after_deregistration}
    assert "bike-007" not in {device.id for device in after_expiry}
    assert len(after_expiry) == FLEET - 2
    assert server.checks == FLEET  # a device leaving needs no check
    monkeypatch.undo()
    assert after_expiry == full_check(server, mesh)


async def test_a_sites_change_rechecks_every_device() -> None:
    server = await serving()
    moved = (BERLIN, Site(MUNICH.id, MUNICH.region, zone="b", device_ranges=MUNICH.device_ranges))

    devices = server.devices_for(Mesh(sites=moved))

    assert server.checks == 2 * FLEET
    assert devices == full_check(server, Mesh(sites=moved))


async def test_a_device_whose_site_narrows_is_dropped_with_its_reason() -> None:
    server = await serving()
    await register(server.registry, bike(300, BERLIN, host=200))  # 10.20.1.200
    server.devices_for(Mesh(sites=SITES))
    narrowed = Site(BERLIN.id, BERLIN.region, device_ranges=("10.20.1.0/25",))  # .0 to .127
    mesh = Mesh(sites=(narrowed, MUNICH))

    devices = server.devices_for(mesh)

    assert "bike-300" not in {device.id for device in devices}
    assert server.left_out() == {
        "bike-300": ("device bike-300: address 10.20.1.200 is outside the ranges of site gym-berlin",)
    }
    assert devices == full_check(server, mesh)
    # Widened again: every device is checked again and bike-300 is back.
    assert "bike-300" in {device.id for device in server.devices_for(Mesh(sites=SITES))}
    assert server.left_out() == {}


async def test_a_left_out_device_that_registers_again_inside_the_ranges_comes_back() -> None:
    server = await serving()
    narrowed = Site(BERLIN.id, BERLIN.region, device_ranges=("10.20.1.0/25",))
    mesh = Mesh(sites=(narrowed, MUNICH))
    await register(server.registry, bike(300, BERLIN, host=200))  # 10.20.1.200, outside
    assert "bike-300" not in {device.id for device in server.devices_for(mesh)}
    checks = server.checks

    await register(server.registry, bike(300, BERLIN, host=100))  # 10.20.1.100, inside
    devices = server.devices_for(mesh)

    assert server.checks == checks + 1
    assert "bike-300" in {device.id for device in devices}
    assert server.left_out() == {}
    assert devices == full_check(server, mesh)


async def test_take_changes_names_the_devices_changed_since_the_last_take() -> None:
    clock = Clock()
    registry = EdgeRegistry(MemoryStore(), lambda: {site.id: site for site in SITES}, clock=clock)
    await registry.load()
    assert registry.take_changes() == DeviceChanges(everything=True)  # a load: not known one by one
    assert registry.take_changes().none

    first = await registry.register(BIKES, bike(1))
    await registry.register(BIKES, bike(2))
    await registry.heartbeat(BIKES, "bike-001", first.lease_id)
    await register(registry, bike(2))  # the same registration again
    assert registry.take_changes() == DeviceChanges(ids=frozenset({"bike-001", "bike-002"}))

    await registry.heartbeat(BIKES, "bike-001", first.lease_id)
    assert registry.take_changes().none

    await register(registry, bike(2, MUNICH))  # moved
    await registry.deregister(BIKES, "bike-001", first.lease_id)
    assert registry.take_changes() == DeviceChanges(ids=frozenset({"bike-001", "bike-002"}))

    clock.now += 31
    assert await registry.expire() == ["bike-002"]
    assert registry.take_changes() == DeviceChanges(ids=frozenset({"bike-002"}))
