"""An in-process control plane, started and run until the block ends (`running_control_plane`);
with the edge registry on, all on 127.0.0.1 ports the OS picks, what the edge tests and benchmarks
run their gateways, devices and fleets against (`running_edge_plane`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from meshplane.app import ControlPlane, Settings
from meshplane.discovery.registry.registry import LeaseSettings
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
