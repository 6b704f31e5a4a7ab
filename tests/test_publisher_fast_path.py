"""The endpoint fast path does work proportional to what changed, and gives what a full build gives."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from meshplane.model import Endpoint, Locality, Mesh, Protocol, ProxyGroup, Service, ServicePort
from meshplane.xds import publisher as publisher_module
from meshplane.xds.cache import SnapshotCache
from meshplane.xds.publisher import SnapshotPublisher
from meshplane.xds.snapshot import Snapshot
from meshplane.xds.types import TypeUrl

PORT = ServicePort("http", 8080, Protocol.HTTP1)
GROUPS = (ProxyGroup(), ProxyGroup(locality=Locality("r", "a")))


def service(index: int, port: int = 9000) -> Service:
    endpoints = (
        Endpoint(f"10.0.{index}.1", port, "http", locality=Locality("r", "a")),
        Endpoint(f"10.0.{index}.2", port, "http", locality=Locality("r", "b")),
    )
    return Service(f"svc-{index}", "default", (PORT,), endpoints)


def published(mesh: Mesh) -> dict[ProxyGroup, Snapshot]:
    cache = SnapshotCache()
    for group in GROUPS:
        cache.subscribe(group, asyncio.Event())
    SnapshotPublisher(cache).publish(mesh)
    found = {group: cache.snapshot(group) for group in GROUPS}
    assert all(found.values())
    return found  # type: ignore[return-value]


async def test_one_changed_service_is_translated_again_and_the_others_are_shared(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = Mesh.of([service(i) for i in range(5)])
    cache = SnapshotCache()
    for group in GROUPS:
        cache.subscribe(group, asyncio.Event())
    publisher = SnapshotPublisher(cache)
    publisher.publish(before)
    old = {group: cache.snapshot(group) for group in GROUPS}
    translated = []
    real = publisher_module.translate_service_endpoints

    def counting(changed: Service, group: ProxyGroup) -> object:
        translated.append((changed.name, group.locality))
        return real(changed, group)

    monkeypatch.setattr(publisher_module, "translate_service_endpoints", counting)
    after = dataclasses.replace(before, services=(*before.services[:2], service(2, port=9001), *before.services[3:]))
    publisher.publish(after)

    assert publisher.state.endpoints_only
    assert sorted(translated) == sorted(("svc-2", group.locality) for group in GROUPS)  # one per group
    full = published(after)
    for group in GROUPS:
        snapshot, previous = cache.snapshot(group), old[group]
        assert snapshot is not None
        assert previous is not None
        endpoints, earlier = snapshot.of_type(TypeUrl.ENDPOINT), previous.of_type(TypeUrl.ENDPOINT)
        # The same content as a full build of the new mesh, versions included.
        expected = full[group].of_type(TypeUrl.ENDPOINT)
        assert endpoints.version == expected.version
        assert list(endpoints.by_name) == list(expected.by_name)
        assert {n: r.sotw_entry for n, r in endpoints.by_name.items()} == {
            n: r.sotw_entry for n, r in expected.by_name.items()
        }
        # Unchanged assignments are the very same objects (bytes serialised once).
        changed = [name for name in endpoints.by_name if endpoints.by_name[name] is not earlier.by_name[name]]
        assert changed == ["svc-2.default:8080"]
        assert endpoints.changed_since(earlier) == frozenset(changed)
        assert snapshot.of_type(TypeUrl.CLUSTER) is previous.of_type(TypeUrl.CLUSTER)


async def test_a_change_beyond_endpoints_takes_the_full_path() -> None:
    cache = SnapshotCache()
    cache.subscribe(ProxyGroup(), asyncio.Event())
    publisher = SnapshotPublisher(cache)
    mesh = Mesh.of([service(i) for i in range(3)])
    publisher.publish(mesh)
    moved = dataclasses.replace(mesh.services[1], ports=(dataclasses.replace(PORT, port=8081),))
    publisher.publish(dataclasses.replace(mesh, services=(mesh.services[0], moved, mesh.services[2])))
    assert not publisher.state.endpoints_only
    snapshot = cache.snapshot(ProxyGroup())
    assert snapshot is not None
    assert "svc-1.default:8081" in snapshot.of_type(TypeUrl.ENDPOINT).by_name
