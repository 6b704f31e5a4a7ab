"""The publisher: model → snapshots per group, the endpoint fast path, and the consistency gate."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from meshplane.model import Endpoint, Locality, Mesh, Protocol, ProxyGroup, ProxyRole, Service, ServicePort
from meshplane.xds import publisher as publisher_module
from meshplane.xds.cache import SnapshotCache
from meshplane.xds.publisher import SnapshotPublisher
from meshplane.xds.snapshot import Snapshot
from meshplane.xds.types import TypeUrl


def mesh(*ports: int, zone_of: dict[int, str] | None = None, timeout: float = 1.0) -> Mesh:
    zones = zone_of or {}
    endpoints = tuple(
        Endpoint("10.0.0.1", port, "http", locality=Locality("r", zones.get(port, "a"))) for port in ports
    )
    web = Service("web", "default", (ServicePort("http", 8080, Protocol.HTTP1),), endpoints)
    web = dataclasses.replace(web, policy=dataclasses.replace(web.policy, connect_timeout=timeout))
    return Mesh.of([web])


SIDECAR = ProxyGroup(ProxyRole.SIDECAR)
SIDECAR_A = ProxyGroup(ProxyRole.SIDECAR, Locality("r", "a"))
SIDECAR_B = ProxyGroup(ProxyRole.SIDECAR, Locality("r", "b"))


def subscribed(
    publisher: SnapshotPublisher, cache: SnapshotCache, *groups: ProxyGroup
) -> dict[ProxyGroup, asyncio.Event]:
    """Streams subscribe to `groups`, and the publisher builds them (one pass of its loop)."""
    wakers = {group: asyncio.Event() for group in groups}
    for group, waker in wakers.items():
        cache.subscribe(group, waker)
    publisher.build_wanted()
    return wakers


async def test_a_new_group_gets_its_snapshot_when_its_first_stream_subscribes() -> None:
    cache = SnapshotCache()
    publisher = SnapshotPublisher(cache)
    publisher.publish(mesh(1))
    waker = asyncio.Event()
    building = asyncio.create_task(publisher.run())
    cache.subscribe(SIDECAR, waker)
    assert cache.snapshot(SIDECAR) is None  # built by the publisher's loop, not inside subscribe
    await asyncio.wait_for(waker.wait(), 10)  # a hang guard, not a timing
    building.cancel()
    snapshot = cache.snapshot(SIDECAR)
    assert snapshot is not None
    assert list(snapshot.of_type(TypeUrl.CLUSTER).by_name) == ["web.default:8080"]


async def test_unchanged_mesh_publishes_nothing() -> None:
    cache = SnapshotCache()
    publisher = SnapshotPublisher(cache)
    publisher.publish(mesh(1))
    wakers = subscribed(publisher, cache, SIDECAR)
    wakers[SIDECAR].clear()
    publisher.publish(mesh(1))
    assert not wakers[SIDECAR].is_set()


async def test_endpoint_only_change_translates_endpoints_only_and_shares_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = SnapshotCache()
    publisher = SnapshotPublisher(cache)
    publisher.publish(mesh(1, 2))
    subscribed(publisher, cache, SIDECAR_A, SIDECAR_B)
    before = {group: cache.snapshot(group) for group in (SIDECAR_A, SIDECAR_B)}
    full_translations = []
    real_translate = publisher_module.translate

    def counting(*args: object) -> object:
        full_translations.append(args)
        return real_translate(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(publisher_module, "translate", counting)
    publisher.publish(mesh(1, 3))
    assert full_translations == []
    assert publisher.state.endpoints_only
    for group, old in before.items():
        new = cache.snapshot(group)
        assert old is not None
        assert new is not None
        assert new.of_type(TypeUrl.ENDPOINT).version != old.of_type(TypeUrl.ENDPOINT).version
        for type_url in (TypeUrl.CLUSTER, TypeUrl.LISTENER, TypeUrl.ROUTE, TypeUrl.SECRET):
            assert new.of_type(type_url) is old.of_type(type_url)  # shared, not rebuilt
    # A change beyond endpoints translates again, once per (role, port), not per locality.
    publisher.publish(mesh(1, 3, timeout=2.0))
    assert len(full_translations) == 1
    assert not publisher.state.endpoints_only


async def test_groups_of_one_role_share_clusters_and_differ_in_endpoint_priorities() -> None:
    cache = SnapshotCache()
    publisher = SnapshotPublisher(cache)
    publisher.publish(mesh(1, 2, zone_of={1: "a", 2: "b"}))
    subscribed(publisher, cache, SIDECAR_A, SIDECAR_B)
    a, b = cache.snapshot(SIDECAR_A), cache.snapshot(SIDECAR_B)
    assert a is not None
    assert b is not None
    assert a.of_type(TypeUrl.CLUSTER) is b.of_type(TypeUrl.CLUSTER)
    assert a.of_type(TypeUrl.ENDPOINT).version != b.of_type(TypeUrl.ENDPOINT).version


async def test_inconsistent_snapshot_is_not_published_and_the_last_good_one_stays(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = SnapshotCache()
    publisher = SnapshotPublisher(cache)
    publisher.publish(mesh(1))
    subscribed(publisher, cache, SIDECAR)
    good = cache.snapshot(SIDECAR)
    real_of = Snapshot.of

    def dropping_endpoints(messages: object, earlier: Snapshot | None = None, shared: object = ()) -> Snapshot:
        kept = {t: m for t, m in messages.items() if t is not TypeUrl.ENDPOINT}  # type: ignore[attr-defined]
        return real_of(kept, earlier, shared)  # type: ignore[arg-type]

    monkeypatch.setattr(publisher_module.Snapshot, "of", staticmethod(dropping_endpoints))
    publisher.publish(mesh(1, timeout=3.0))
    assert cache.snapshot(SIDECAR) is good
    assert publisher.state.problems
    assert "wants endpoints" in publisher.state.problems[0]


async def test_translation_failure_keeps_the_last_good_snapshot(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = SnapshotCache()
    publisher = SnapshotPublisher(cache)
    publisher.publish(mesh(1))
    subscribed(publisher, cache, SIDECAR)
    good = cache.snapshot(SIDECAR)

    def broken(*args: object) -> object:
        raise RuntimeError("translator bug")

    monkeypatch.setattr(publisher_module, "translate", broken)
    publisher.publish(mesh(1, timeout=4.0))
    assert cache.snapshot(SIDECAR) is good
    assert "translator bug" in publisher.state.problems[0]


async def test_cache_forgets_a_group_when_its_last_stream_leaves() -> None:
    cache = SnapshotCache()
    SnapshotPublisher(cache).publish(mesh(1))
    one = cache.subscribe(SIDECAR, asyncio.Event())
    two = cache.subscribe(SIDECAR, asyncio.Event())
    one.close()
    assert cache.groups() == [SIDECAR]
    two.close()
    two.close()  # closing twice is harmless
    assert cache.groups() == []
    assert cache.snapshot(SIDECAR) is None
