"""meshplane's twin of go-control-plane's `gcpbench`: N EDS services x M endpoints for every node.

Run: .venv/bin/python -m benchmarks.meshplane_server --clusters 1000 --endpoints 10 [--addr 127.0.0.1:18000]

The mesh is built directly in the model (no policy files) and goes through the real pipeline:
`SnapshotPublisher` → `SnapshotCache` → the gRPC xDS server (`XdsServices`), as `meshplane serve`
wires them. Signals, logged to stderr the way gcpbench logs them (`published at unix_ms T`):

- SIGUSR1: every endpoint's port changes (gcpbench's update);
- SIGUSR2: one endpoint's port changes (the first service's first endpoint);
- SIGHUP: `--churn-percent` % of the services (the next ones, round-robin) get new endpoint ports.

Every change reuses the `Service` objects it does not change, as a source does, so the
publisher's endpoint fast path sees what changed by identity.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys
import time

from meshplane.model import Endpoint, Mesh, Protocol, ProxyGroup, Service, ServicePort
from meshplane.xds.cache import SnapshotCache
from meshplane.xds.publisher import SnapshotPublisher
from meshplane.xds.server.service import XdsServices, create_server
from meshplane.xds.server.tracking import StreamRegistry

log = logging.getLogger("meshplane.bench")

NAMESPACE = "bench"
PORT = ServicePort("http", 8080, Protocol.HTTP1)


def service_name(index: int) -> str:
    return f"cluster-{index:05d}"  # zero-padded: services sort in index order


def endpoints(index: int, count: int, port: int) -> tuple[Endpoint, ...]:
    """gcpbench's addresses: 10.<i>>8>.<i&255>.<j%250+1>, one port for all."""
    return tuple(
        Endpoint(f"10.{(index >> 8) & 255}.{index & 255}.{j % 250 + 1}", port, PORT.name) for j in range(count)
    )


def initial_mesh(clusters: int, per_cluster: int) -> Mesh:
    services = [Service(service_name(i), NAMESPACE, (PORT,), endpoints(i, per_cluster, 8001)) for i in range(clusters)]
    return Mesh.of(services)


class MeshChanges:
    """Successive meshes; each new one shares every Service it leaves unchanged with the last."""

    def __init__(self, clusters: int, per_cluster: int) -> None:
        self.per_cluster = per_cluster
        self.mesh = initial_mesh(clusters, per_cluster)
        self.generation = 1
        self._cursor = 0

    def _port(self) -> int:
        return 8000 + self.generation % 1000

    def _replaced(self, indexes: list[int]) -> Mesh:
        services = list(self.mesh.services)
        for i in indexes:
            services[i] = dataclasses.replace(services[i], endpoints=endpoints(i, self.per_cluster, self._port()))
        # Mesh.of would sort again; the order is unchanged, so keep the tuple as sources keep it.
        return dataclasses.replace(self.mesh, services=tuple(services))

    def every_endpoint(self) -> Mesh:
        self.generation += 1
        self.mesh = self._replaced(list(range(len(self.mesh.services))))
        return self.mesh

    def one_endpoint(self) -> Mesh:
        self.generation += 1
        services = list(self.mesh.services)
        first = services[0]
        moved = dataclasses.replace(first.endpoints[0], port=self._port())
        services[0] = dataclasses.replace(first, endpoints=(moved, *first.endpoints[1:]))
        self.mesh = dataclasses.replace(self.mesh, services=tuple(services))
        return self.mesh

    def churn(self, percent: float) -> Mesh:
        """`percent` % of the services, round-robin, get new endpoint ports."""
        self.generation += 1
        total = len(self.mesh.services)
        count = max(1, round(total * percent / 100))
        indexes = [(self._cursor + k) % total for k in range(count)]
        self._cursor = (self._cursor + count) % total
        self.mesh = self._replaced(indexes)
        return self.mesh


async def serve(args: argparse.Namespace) -> None:
    cache = SnapshotCache()
    registry = StreamRegistry()
    publisher = SnapshotPublisher(cache)
    changes = MeshChanges(args.clusters, args.endpoints)
    started = time.perf_counter()
    # gcpbench sets its one snapshot before serving; meshplane builds a group's snapshot when its
    # first stream comes. Holding the sidecar group open builds it now, so both start alike.
    cache.subscribe(ProxyGroup(), asyncio.Event())
    publisher.publish(changes.mesh)
    log.info(
        "mesh built: %d clusters x %d endpoints in %.1f ms",
        args.clusters,
        args.endpoints,
        (time.perf_counter() - started) * 1000,
    )
    # One load client on one address opens every stream: the per-client limit (1,000 by default,
    # as `meshplane serve` has it) would refuse the rest, so it is off, as
    # `--max-streams-per-client 0` turns it off. gcpbench has no such limit.
    services = XdsServices(
        cache,
        registry,
        send_budget=int(args.send_budget_mib * 1024 * 1024),
        send_hold=args.send_hold,
        max_streams_per_client=0,
    )
    server, port = create_server(services, args.addr)
    await server.start()
    log.info("ADS listening on 127.0.0.1:%d (pid %d)", port, os.getpid())

    def publish(kind: str, build: object) -> None:
        published_ms = time.time() * 1000
        cpu = time.process_time()
        mesh = build()  # type: ignore[operator]
        built = time.process_time()
        publisher.publish(mesh)
        log.info(
            "snapshot v%d (%s) published at unix_ms %d, mesh change %.2f ms cpu, publish %.2f ms cpu",
            changes.generation,
            kind,
            published_ms,
            (built - cpu) * 1000,
            (time.process_time() - built) * 1000,
        )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, publish, "every endpoint", changes.every_endpoint)
    loop.add_signal_handler(signal.SIGUSR2, publish, "one endpoint", changes.one_endpoint)
    churn = f"churn {args.churn_percent}%"
    loop.add_signal_handler(signal.SIGHUP, publish, churn, lambda: changes.churn(args.churn_percent))
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop(1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--addr", default="127.0.0.1:18000", help="listen address (keep it on loopback)")
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--endpoints", type=int, default=10, help="endpoints per cluster")
    parser.add_argument("--churn-percent", type=float, default=10.0, help="share of services SIGHUP changes")
    parser.add_argument("--send-hold", type=float, default=10.0, help="seconds a stalled send keeps its budget")
    parser.add_argument("--send-budget-mib", type=float, default=64, help="response bytes in flight (the send gate)")
    args = parser.parse_args(argv)
    if not args.addr.startswith("127.0.0.1:"):
        parser.error("keep the benchmark server on 127.0.0.1")
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s", datefmt="%Y/%m/%d %H:%M:%S"
    )
    # Per-stream open/close lines would dominate the log (and the CPU) at thousands of streams.
    logging.getLogger("meshplane.xds.server").setLevel(logging.WARNING)
    logging.getLogger("meshplane.xds.publisher").setLevel(logging.WARNING)
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
