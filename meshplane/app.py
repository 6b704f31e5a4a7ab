"""The composition root: the one place where sources, the xDS pipeline and the status endpoint meet.

Wiring: policy-file source → (debounced) publisher → snapshot cache → gRPC xDS server; the status
endpoint reads the source's status, the publisher's state, the cache and the stream registry.
Nothing is published before the source's first good load, so a restarting control plane never
pushes an empty configuration to live proxies.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web

from meshplane.debounce import Debouncer
from meshplane.discovery.policy_files import PolicyFileSource
from meshplane.status.http import StatusInputs, status_app
from meshplane.xds.cache import SnapshotCache
from meshplane.xds.publisher import SnapshotPublisher
from meshplane.xds.server.service import XdsServices, create_server
from meshplane.xds.server.tracking import StreamRegistry

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Settings:
    config: Path
    xds_address: str = "0.0.0.0:18000"
    status_address: str = "0.0.0.0:9900"
    poll_interval: float = 1.0
    debounce_quiet: float = 0.1
    debounce_max: float = 1.0
    shutdown_grace: float = 5.0


def split_address(address: str) -> tuple[str, int]:
    """`host:port` (IPv6 as `[::1]:port`) → (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address {address!r} must be host:port")
    return host.strip("[]") or "0.0.0.0", int(port)


class ControlPlane:
    """One running meshplane. `start()` binds the ports; `run()` serves until `stop` is set."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cache = SnapshotCache()
        self.registry = StreamRegistry()
        self.publisher = SnapshotPublisher(self.cache)
        self.debouncer = Debouncer(self._rebuild, quiet=settings.debounce_quiet, max_delay=settings.debounce_max)
        self.policy = PolicyFileSource(
            settings.config, poll_interval=settings.poll_interval, on_change=self._on_source_change
        )
        self.xds_port = 0
        self.status_port = 0
        self._grpc: grpc.aio.Server | None = None
        self._services: XdsServices | None = None
        self._http: web.AppRunner | None = None

    def _on_source_change(self) -> None:
        with contextlib.suppress(RuntimeError):  # no running loop: a load before start(); start() publishes
            self.debouncer.poke()

    def _rebuild(self) -> None:
        mesh = self.policy.mesh
        if mesh is not None:
            self.publisher.publish(mesh)

    def _sources(self) -> list[dict[str, Any]]:
        return [dataclasses.asdict(self.policy.status)]

    async def start(self) -> None:
        await self.policy.load()
        self._rebuild()
        if self.policy.mesh is None:
            log.warning("policy files are not valid yet; serving nothing until they are: %s", self.policy.status.errors)
        self._services = XdsServices(self.cache, self.registry)
        self._grpc, self.xds_port = create_server(self._services, self.settings.xds_address)
        await self._grpc.start()
        inputs = StatusInputs(
            sources=self._sources, publish_state=lambda: self.publisher.state, cache=self.cache, registry=self.registry
        )
        self._http = web.AppRunner(status_app(inputs), access_log=None)
        await self._http.setup()
        host, port = split_address(self.settings.status_address)
        site = web.TCPSite(self._http, host, port)
        await site.start()
        self.status_port = self._http.addresses[0][1]
        log.info("xDS on port %d, status on port %d", self.xds_port, self.status_port)

    async def run(self, stop: asyncio.Event) -> None:
        """Serves until `stop` is set, then shuts down gracefully (streams get `shutdown_grace` seconds)."""
        try:
            if self._grpc is None:
                await self.start()
            async with asyncio.TaskGroup() as group:
                loops = [group.create_task(self.policy.run()), group.create_task(self.debouncer.run())]
                await stop.wait()
                for task in loops:
                    task.cancel()
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        if self._grpc is not None:
            # Refuse new streams, end open ones with OK (proxies reconnect elsewhere at once and keep
            # serving their config meanwhile), and give responses in flight the grace period.
            stop = asyncio.create_task(self._grpc.stop(self.settings.shutdown_grace))
            await asyncio.sleep(0)  # let stop() refuse new RPCs before the open streams end
            if self._services is not None:
                self._services.close_streams()
            await stop
            self._grpc = None
        if self._http is not None:
            await self._http.cleanup()
            self._http = None


async def serve(settings: Settings) -> None:
    """Runs a control plane until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await ControlPlane(settings).run(stop)
