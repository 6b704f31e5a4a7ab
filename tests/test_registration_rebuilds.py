"""Through the composition root: a device registration reaches the edge gateway's group only.

`ControlPlane._rebuild` hands the publisher what the merge says changed (`MeshChanges`); with
gateway and sidecar groups served, a registration publishes a new gateway snapshot, translates no
other group, and leaves the sidecar's snapshot object and version as they were.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from meshplane.discovery.registry.auth import Principal, PrincipalKind, token_digest
from meshplane.discovery.registry.registry import LeaseSettings, RegisterInput
from meshplane.model import ProxyGroup, ProxyRole
from meshplane.xds.types import TypeUrl
from tests.edge_plane import QUICK, running_edge_plane
from tests.test_publisher_dependencies import counted_translations

EXAMPLES = Path(__file__).parent.parent / "examples"
GATEWAY = ProxyGroup(ProxyRole.EDGE_GATEWAY, outbound_port=15080, site="gym")
SIDECAR = ProxyGroup()
BIKES = Principal(PrincipalKind.CLASS, "bike")


async def test_a_registration_publishes_the_gateway_and_translates_no_sidecar(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = tmp_path / "policy"
    policy.mkdir()
    shutil.copy(EXAMPLES / "services.yaml", policy / "services.yaml")
    (policy / "sites.yaml").write_text("sites:\n  - {id: gym, region: local, device_ranges: ['198.18.0.0/24']}\n")
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(f"tokens:\n  - {{sha256: {token_digest('bikes')}, class: bike}}\n")
    async with running_edge_plane(policy, tmp_path / "registry.db", tokens, LeaseSettings(), **QUICK) as plane:
        assert plane.edge is not None
        wakers = {group: asyncio.Event() for group in (GATEWAY, SIDECAR)}
        for group, waker in wakers.items():
            plane.cache.subscribe(group, waker)  # as a stream of that group does
        for waker in wakers.values():
            await asyncio.wait_for(waker.wait(), 30)  # built by the publisher's loop (a hang guard)
            waker.clear()
        before = {group: plane.cache.snapshot(group) for group in wakers}
        translated = counted_translations(monkeypatch)
        await plane.edge.registry.register(
            BIKES,
            RegisterInput(
                device_id="bike-1", device_class="bike", site="gym", endpoints=(("198.18.0.7", 8080),), ttl_seconds=60
            ),
        )
        await asyncio.wait_for(wakers[GATEWAY].wait(), 30)

        gateway = plane.cache.snapshot(GATEWAY)
        assert gateway is not None
        assert any("bike-1" in name for name in gateway.of_type(TypeUrl.CLUSTER).by_name)
        assert translated == [GATEWAY]
        sidecar, earlier = plane.cache.snapshot(SIDECAR), before[SIDECAR]
        assert sidecar is earlier
        assert sidecar is not None
        assert sidecar.version == earlier.version
        assert not wakers[SIDECAR].is_set()
