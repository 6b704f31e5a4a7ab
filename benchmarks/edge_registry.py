"""Edge registry throughput and latency with the default store (SQLite, WAL, synchronous=FULL),
and the time from a registration to a real gateway Envoy routing to the device.

Run: .venv/bin/python -m benchmarks.edge_registry [--sizes 10000,100000] [--concurrency 64]

For each fleet size N (devices spread over --sites sites):
1. registrations: N devices registered by --concurrency concurrent callers of the registry
   (validation, lease, durable group commit; no wire) — per-call latency p50/p99 and calls/s;
2. heartbeats: --heartbeats renewals at N registered devices, same concurrency;
3. over gRPC: --grpc re-registrations through the Registry service on 127.0.0.1 (one channel,
   --concurrency calls in flight; the Python client shares the machine's cores with the server);
4. registration → routing: a control plane loads the N devices from the store, a real
   edge-gateway Envoy serves one site; each of --routing-runs registrations of a new device is
   timed until a request through the gateway by that device's id reaches it (polled every 5 ms);
   beside the gateway a sidecar group is wanted (as a sidecar stream would), and each
   registration's publication is recorded: groups translated again (the sidecar must not be) and
   its duration.
Prints a table and the figures as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc

from meshplane.api.edge.v1 import registry_pb2 as pb
from meshplane.api.edge.v1 import registry_pb2_grpc
from meshplane.discovery.registry.auth import Principal, PrincipalKind, token_digest
from meshplane.discovery.registry.registry import EdgeRegistry, LeaseSettings, RegisterInput
from meshplane.discovery.registry.store import SqliteStore
from meshplane.model import ProxyGroup, Site
from meshplane.registry_api.server import EdgeRegistryServer, EdgeSettings
from meshplane.xds.translate.edge_gateway import DEVICE_HEADER
from tests.edge_plane import running_edge_plane
from tests.envoy_harness import start_envoy
from tests.netns import DeviceHost, make_device_host

CLASS_TOKEN = "bench-bikes"
BIKES = Principal(PrincipalKind.CLASS, "bike")


def sites(count: int, extra: str) -> dict[str, Site]:
    found = {
        f"site-{s:03d}": Site(f"site-{s:03d}", "eu-central", device_ranges=(f"10.{s}.0.0/16",)) for s in range(count)
    }
    first = found["site-000"]
    found["site-000"] = Site(first.id, first.region, device_ranges=(*first.device_ranges, f"{extra}/32"))
    return found


def device(index: int, site_count: int) -> RegisterInput:
    site, slot = index % site_count, index // site_count
    return RegisterInput(
        device_id=f"bike-{index:06d}",
        device_class="bike",
        site=f"site-{site:03d}",
        endpoints=((f"10.{site}.{slot // 250}.{slot % 250 + 1}", 8080),),
        version="3.2.1",
        labels={"row": str(slot % 10)},
        ttl_seconds=3600,
    )


def summary(latencies: list[float], elapsed: float) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "calls": len(ordered),
        "per_second": round(len(ordered) / elapsed),
        "p50_ms": round(ordered[len(ordered) // 2] * 1000, 2),
        "p99_ms": round(ordered[int(len(ordered) * 0.99)] * 1000, 2),
    }


async def concurrently(count: int, concurrency: int, call: Callable[[int], Awaitable[Any]]) -> dict[str, float]:
    latencies: list[float] = []
    numbers = iter(range(count))

    async def worker() -> None:
        for index in numbers:
            started = time.perf_counter()
            await call(index)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return summary(latencies, time.perf_counter() - started)


async def store_figures(
    db: Path, size: int, site_count: int, concurrency: int, heartbeats: int, extra: str
) -> dict[str, Any]:
    site_map = sites(site_count, extra)
    registry = EdgeRegistry(SqliteStore(db), lambda: site_map, leases=LeaseSettings(max_ttl=3600))
    await registry.load()
    leases: dict[int, str] = {}

    async def register(index: int) -> None:
        leases[index] = (await registry.register(BIKES, device(index, site_count))).lease_id

    registrations = await concurrently(size, concurrency, register)

    async def renew(index: int) -> None:
        target = (index * 7919) % size
        await registry.heartbeat(BIKES, f"bike-{target:06d}", leases[target])

    renewals = await concurrently(heartbeats, concurrency, renew)
    await registry.close()
    return {"registrations": registrations, "heartbeats": renewals}


async def grpc_figures(
    db: Path, tokens: Path, size: int, site_count: int, count: int, concurrency: int, extra: str
) -> dict[str, Any]:
    plane_sites = sites(site_count, extra)
    server = EdgeRegistryServer(
        EdgeSettings(db=str(db), address="127.0.0.1:0", http_address="127.0.0.1:0", tokens=tokens),
        lambda: plane_sites,
        lambda: None,
    )
    await server.start()
    metadata = (("authorization", f"Bearer {CLASS_TOKEN}"),)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = registry_pb2_grpc.RegistryStub(channel)

            async def register(index: int) -> None:
                request = device(index % size, site_count)
                current = server.registry.get(request.device_id)
                await stub.Register(
                    pb.RegisterRequest(
                        device_id=request.device_id,
                        device_class=request.device_class,
                        site=request.site,
                        endpoints=[pb.Endpoint(address=a, port=p) for a, p in request.endpoints],
                        version="3.2.2",
                        ttl_seconds=3600,
                        lease_id=current.lease_id if current else "",
                    ),
                    metadata=metadata,
                )

            return await concurrently(count, concurrency, register)
    finally:
        await server.shutdown(0.5)


async def routing_figures(
    work: Path, db: Path, tokens: Path, site_count: int, runs: int, device_host: DeviceHost
) -> tuple[list[float], list[dict[str, float]]]:
    address = device_host.address
    policy = write_sites(work / "policy", site_count, address)
    async with running_edge_plane(policy, db, tokens, LeaseSettings(max_ttl=3600)) as plane:
        # The stand-in device runs in its own network namespace (tests/netns.py): the registry refuses
        # loopback device addresses, and benchmark traffic stays on networks this run made.
        backend_port = await asyncio.to_thread(device_host.serve, "device")
        plane.cache.subscribe(ProxyGroup(), asyncio.Event())  # a sidecar's group, built by the publisher
        publishes: list[dict[str, float]] = []
        gateway = await start_envoy(
            work / "envoy",
            plane.xds_port,
            node_id="bench-gateway",
            template="edge-gateway.yaml",
            metadata={"role": "edge-gateway", "site": "site-000"},
        )
        to_devices = gateway.outbound_port + 1
        timings: list[float] = []
        try:
            async with (
                grpc.aio.insecure_channel(f"127.0.0.1:{plane.edge.port}") as channel,  # type: ignore[union-attr]
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
            ):
                stub = registry_pb2_grpc.RegistryStub(channel)
                await gateway.eventually(lambda: listening(session, to_devices), "the gateway listener", 120)
                for run in range(runs):
                    _, routed = await registration_to_routing(
                        stub, session, to_devices, f"probe-{run}", (address, backend_port)
                    )
                    timings.append(routed)
                    state = plane.publisher.state
                    publishes.append(
                        {
                            "groups": state.groups,
                            "rebuilt": plane.publisher.rebuilt,
                            "ms": round(state.duration_seconds * 1000, 1),
                        }
                    )
        finally:
            await gateway.stop()
    return timings, publishes


def write_sites(policy: Path, site_count: int, extra: str) -> Path:
    """A policy directory `policy` declaring `sites(site_count, extra)` (sites.yaml); returns it."""
    policy.mkdir(exist_ok=True)
    lines = ["sites:"]
    for site in sites(site_count, extra).values():
        ranges = ", ".join(f"'{r}'" for r in site.device_ranges)
        lines.append(f"  - {{id: {site.id}, region: {site.region}, device_ranges: [{ranges}]}}")
    (policy / "sites.yaml").write_text("\n".join(lines) + "\n")
    return policy


async def listening(session: aiohttp.ClientSession, port: int) -> bool:
    """Whether the gateway's device listener on `port` answers (404: no device named)."""
    try:
        async with session.get(f"http://127.0.0.1:{port}/") as response:
            return response.status == 404
    except aiohttp.ClientError:
        return False


async def routes_to(session: aiohttp.ClientSession, port: int, device_id: str) -> bool:
    """Whether a request through the gateway's device listener on `port` by `device_id` reaches it."""
    try:
        async with session.get(f"http://127.0.0.1:{port}/", headers={DEVICE_HEADER: device_id}) as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


async def registration_to_routing(
    stub: registry_pb2_grpc.RegistryAsyncStub,
    session: aiohttp.ClientSession,
    port: int,
    device_id: str,
    endpoint: tuple[str, int],
    deadline: float = 120,
) -> tuple[float, float]:
    """Registers `device_id` (class bike, site-000, at `endpoint`) and polls the gateway's device
    listener on `port` every 5 ms until a request by that id reaches it. Returns the seconds from
    just before the call to its answer, and to the first request that reached the device. Fails
    after `deadline` seconds."""
    started = time.perf_counter()
    await stub.Register(
        pb.RegisterRequest(
            device_id=device_id,
            device_class="bike",
            site="site-000",
            endpoints=[pb.Endpoint(address=endpoint[0], port=endpoint[1])],
            ttl_seconds=3600,
        ),
        metadata=(("authorization", f"Bearer {CLASS_TOKEN}"),),
        timeout=deadline,
    )
    answered = time.perf_counter() - started
    while not await routes_to(session, port, device_id):
        if time.perf_counter() - started > deadline:
            raise AssertionError(f"{device_id} never became routable")
        await asyncio.sleep(0.005)
    return answered, time.perf_counter() - started


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--sites", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--heartbeats", type=int, default=20000)
    parser.add_argument("--grpc", type=int, default=5000)
    parser.add_argument("--routing-runs", type=int, default=5)
    args = parser.parse_args()
    device_host = await asyncio.to_thread(make_device_host)
    try:
        await run_sizes(args, device_host)
    finally:
        await asyncio.to_thread(device_host.close)


async def run_sizes(args: argparse.Namespace, device_host: DeviceHost) -> None:
    address = device_host.address
    results: dict[str, Any] = {}
    for size in (int(s) for s in args.sizes.split(",")):
        work = Path(tempfile.mkdtemp(prefix="meshplane-edge-bench-"))
        db = work / "registry.db"
        tokens = work / "tokens.yaml"
        tokens.write_text(f"tokens:\n  - {{sha256: {token_digest(CLASS_TOKEN)}, class: bike}}\n")
        try:
            figures: dict[str, Any] = await store_figures(
                db, size, args.sites, args.concurrency, args.heartbeats, address
            )
            figures["grpc_registrations"] = await grpc_figures(
                db, tokens, size, args.sites, args.grpc, args.concurrency, address
            )
            timings, publishes = await routing_figures(work, db, tokens, args.sites, args.routing_runs, device_host)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        figures["registration_to_routing_ms"] = {
            "runs": [round(t * 1000, 1) for t in timings],
            "median": round(statistics.median(timings) * 1000, 1),
        }
        figures["registration_publish"] = {
            "groups": max(p["groups"] for p in publishes),
            "groups_rebuilt_max": max(p["rebuilt"] for p in publishes),
            "median_ms": statistics.median(p["ms"] for p in publishes),
        }
        results[str(size)] = figures
        print(f"--- {size} devices over {args.sites} sites")
        for name in ("registrations", "heartbeats", "grpc_registrations"):
            f = figures[name]
            rate, p50, p99 = f["per_second"], f["p50_ms"], f["p99_ms"]
            print(f"{name:20s} {rate:>8}/s  p50 {p50:>7} ms  p99 {p99:>7} ms  ({f['calls']} calls)")
        routing = figures["registration_to_routing_ms"]
        print(f"registration → gateway routing: median {routing['median']} ms, runs {routing['runs']}")
        publish = figures["registration_publish"]
        print(
            f"its publication: median {publish['median_ms']} ms, at most {publish['groups_rebuilt_max']} of"
            f" {publish['groups']} groups translated again"
        )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
