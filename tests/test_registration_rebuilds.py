"""Through the composition root: a device registration reaches the edge gateway's group only.

`ControlPlane._rebuild` hands the publisher what the merge says changed (`MeshChanges`); with
gateway and sidecar groups served, a registration publishes a new gateway snapshot, translates no
other group, and leaves the sidecar's snapshot object and version as they were.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from meshplane.discovery.registry.auth import Principal, PrincipalKind
from meshplane.discovery.registry.registry import RegisterInput
from meshplane.xds.types import TypeUrl
from tests.edge_plane import GYM_GATEWAY, SIDECAR, gym_plane
from tests.test_publisher_dependencies import counted_translations

BIKES = Principal(PrincipalKind.CLASS, "bike")


async def test_a_registration_publishes_the_gateway_and_translates_no_sidecar(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with gym_plane(tmp_path) as (plane, _, wakers):
        assert plane.edge is not None
        before = {group: plane.cache.snapshot(group) for group in wakers}
        translated = counted_translations(monkeypatch)
        await plane.edge.registry.register(
            BIKES,
            RegisterInput(
                device_id="bike-1", device_class="bike", site="gym", endpoints=(("198.18.0.7", 8080),), ttl_seconds=60
            ),
        )
        await asyncio.wait_for(wakers[GYM_GATEWAY].wait(), 30)

        gateway = plane.cache.snapshot(GYM_GATEWAY)
        assert gateway is not None
        assert any("bike-1" in name for name in gateway.of_type(TypeUrl.CLUSTER).by_name)
        assert translated == [GYM_GATEWAY]
        sidecar, earlier = plane.cache.snapshot(SIDECAR), before[SIDECAR]
        assert sidecar is earlier
        assert sidecar is not None
        assert sidecar.version == earlier.version
        assert not wakers[SIDECAR].is_set()
