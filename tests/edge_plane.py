"""An in-process control plane, started and run until the block ends (`running_control_plane`);
with the edge registry on, all on 127.0.0.1 ports the OS picks, what the edge tests and benchmarks
run their gateways, devices and fleets against (`running_edge_plane`); and one on the example
services and a site, with a gateway's and a sidecar's groups built (`gym_plane`)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from meshplane.app import ControlPlane, Settings
from meshplane.discovery.registry.auth import token_digest
from meshplane.discovery.registry.registry import LeaseSettings
from meshplane.model import ProxyGroup, ProxyRole
from meshplane.registry_api.server import EdgeSettings

# Reload fast, stop fast: tests wait on conditions, so short intervals only shorten the waits.
QUICK = {"poll_interval": 0.2, "debounce_quiet": 0.02, "debounce_max": 0.2, "shutdown_grace": 0.5}


@contextlib.asynccontextmanager
async def running_control_plane(settings: Settings) -> AsyncIterator[ControlPlane]:
    """A control plane on `settings`, started (its ports bound) and running; on exit it is told to
    stop and its run is awaited."""
    plane = ControlPlane(settings)
    await plane.start()
    stop = asyncio.Event()
    task = asyncio.create_task(plane.run(stop))
    try:
        yield plane
    finally:
        stop.set()
        await task


@contextlib.asynccontextmanager
async def running_edge_plane(
    policy: Path, db: Path, tokens: Path, leases: LeaseSettings, **settings: Any
) -> AsyncIterator[ControlPlane]:
    """A started, running control plane serving `policy` with the registry on `db` (its tokens file
    `tokens`); `settings` are further `Settings` fields. Stopped, and its run awaited, on exit."""
    edge = EdgeSettings(db=str(db), address="127.0.0.1:0", http_address="127.0.0.1:0", tokens=tokens, leases=leases)
    async with running_control_plane(
        Settings(config=policy, xds_address="127.0.0.1:0", status_address="127.0.0.1:0", edge=edge, **settings)
    ) as plane:
        yield plane


EXAMPLES = Path(__file__).parent.parent / "examples"
# The edge gateway and sidecar groups of `gym_plane`.
GYM_GATEWAY = ProxyGroup(ProxyRole.EDGE_GATEWAY, outbound_port=15080, site="gym")
SIDECAR = ProxyGroup()
# The class token `gym_plane`'s registry takes: it registers bikes.
BIKES_TOKEN = "bikes"


@contextlib.asynccontextmanager
async def gym_plane(
    directory: Path, groups: tuple[ProxyGroup, ...] = (GYM_GATEWAY, SIDECAR)
) -> AsyncIterator[tuple[ControlPlane, Path, dict[ProxyGroup, asyncio.Event]]]:
    """A running control plane (`QUICK`) on the example services and one site, `gym`
    (198.18.0.0/24), its registry taking `BIKES_TOKEN`; `groups` are wanted as streams of them
    would want them, and built. Yields the plane, its policy directory, and each group's waker
    (cleared: set again when the group gets a new snapshot)."""
    policy = directory / "policy"
    policy.mkdir()
    shutil.copy(EXAMPLES / "services.yaml", policy / "services.yaml")
    (policy / "sites.yaml").write_text("sites:\n  - {id: gym, region: local, device_ranges: ['198.18.0.0/24']}\n")
    tokens = directory / "tokens.yaml"
    tokens.write_text(f"tokens:\n  - {{sha256: {token_digest(BIKES_TOKEN)}, class: bike}}\n")
    async with running_edge_plane(policy, directory / "registry.db", tokens, LeaseSettings(), **QUICK) as plane:
        wakers = {group: asyncio.Event() for group in groups}
        for group, waker in wakers.items():
            plane.cache.subscribe(group, waker)  # as a stream of that group does
        for waker in wakers.values():
            await asyncio.wait_for(waker.wait(), 30)  # built by the publisher's loop (a hang guard)
            waker.clear()
        yield plane, policy, wakers
