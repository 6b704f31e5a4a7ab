"""A simulated fleet (meshplane.simulate.fleet) against a control plane with a real gateway Envoy.

Run: .venv/bin/python -m benchmarks.edge_fleet [--sizes 1000,10000] [--concurrency 64]

What a real client sees, wire included (the Fleet and the control plane share this machine's
cores). For each fleet size N, all devices of one site:
1. registration: a Fleet registers N devices over gRPC (--concurrency in flight, one channel) —
   devices a second, from the fleet's start until every device holds a lease;
2. propagation: from the fleet's start until the site's edge-gateway Envoy holds a `device/<id>`
   cluster for each of the N devices (its `cluster_manager.active_clusters` gauge, polled every
   50 ms), and the part of it after the last registration;
3. deregistration: from `stop` until the fleet has deregistered all N, and until the gateway holds
   none of their clusters;
4. heartbeats: a second fleet of N renewing as fast as its --heartbeat-streams HeartbeatStreams
   go (interval 1 ms) for --heartbeat-seconds — renewals a second.
The devices register an address in 198.19.0.0/16 (RFC 2544) that nothing contacts: the gateway
only gets config for them. Prints a table and the figures as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from meshplane.discovery.registry.auth import token_digest
from meshplane.discovery.registry.registry import LeaseSettings
from meshplane.simulate.fleet import Fleet, FleetOptions
from tests.edge_plane import running_edge_plane
from tests.envoy_harness import Envoy, start_envoy

CLASS_TOKEN = "bench-fleet-bikes"
ADDRESS = "198.19.0.2"
POLL = 0.05


async def wait_for(check: Any, what: str, deadline: float = 600.0) -> float:
    """Polls the async `check` every 50 ms; returns the monotonic time it first held."""
    end = time.monotonic() + deadline
    while not await check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(POLL)
    return time.monotonic()


async def device_clusters(gateway: Envoy) -> int:
    """Clusters the gateway holds beyond its static `meshplane` one: here, one per device."""
    return int(await gateway.stat("cluster_manager.active_clusters") or 0) - 1


def fleet_options(registry: str, size: int, args: argparse.Namespace, **changes: Any) -> FleetOptions:
    return FleetOptions(
        registry=registry,
        site="gym",
        count=size,
        address=ADDRESS,
        port_base=10000,
        token=CLASS_TOKEN,
        ttl_seconds=3600,
        concurrency=args.concurrency,
        heartbeat_streams=args.heartbeat_streams,
        **changes,
    )


async def figures(work: Path, size: int, args: argparse.Namespace) -> dict[str, Any]:
    policy = work / "policy"
    policy.mkdir()
    (policy / "sites.yaml").write_text("sites:\n  - {id: gym, region: local, device_ranges: ['198.19.0.0/16']}\n")
    tokens = work / "tokens.yaml"
    tokens.write_text(f"tokens:\n  - {{sha256: {token_digest(CLASS_TOKEN)}, class: bike}}\n")
    async with running_edge_plane(policy, work / "registry.db", tokens, LeaseSettings(max_ttl=3600)) as plane:
        assert plane.edge is not None
        registry = f"127.0.0.1:{plane.edge.port}"
        gateway = await start_envoy(
            work / "envoy",
            plane.xds_port,
            node_id="bench-gateway",
            template="edge-gateway.yaml",
            metadata={"role": "edge-gateway", "site": "gym"},
        )
        try:
            await gateway.eventually(lambda: _has_stat(gateway), "the gateway's cluster manager", 120)

            async def all_clusters() -> bool:
                return await device_clusters(gateway) >= size

            async def no_clusters() -> bool:
                return await device_clusters(gateway) <= 0

            stop = asyncio.Event()
            fleet = Fleet(fleet_options(registry, size, args))
            started = time.monotonic()
            run = asyncio.create_task(fleet.run(stop))
            await fleet.registered.wait()
            registered = time.monotonic()
            routed = await wait_for(all_clusters, f"{size} device clusters on the gateway")
            stopping = time.monotonic()
            stop.set()
            stats = await run
            deregistered = time.monotonic()
            gone = await wait_for(no_clusters, "the gateway dropping every device cluster")
            if stats.refused:
                raise AssertionError(f"refused: {dict(stats.refused)}")

            beat_stop = asyncio.Event()
            beating = Fleet(fleet_options(registry, size, args, id_prefix="beat", heartbeat_interval=0.001))
            beat_run = asyncio.create_task(beating.run(beat_stop))
            await beating.registered.wait()
            first, since = beating.stats.heartbeats_ok, time.monotonic()
            await asyncio.sleep(args.heartbeat_seconds)
            renewals, window = beating.stats.heartbeats_ok - first, time.monotonic() - since
            beat_stop.set()
            beat_stats = await beat_run
            if beat_stats.heartbeats_failed:
                raise AssertionError(f"heartbeats failed: {dict(beat_stats.heartbeats_failed)}")
        finally:
            await gateway.stop()
    return {
        "registrations": {"devices": stats.registered, "per_second": round(size / (registered - started))},
        "registration_to_gateway_ms": {
            "from_start": round((routed - started) * 1000, 1),
            "after_last_registration": round((routed - registered) * 1000, 1),
        },
        "deregistration_ms": {
            "all_deregistered": round((deregistered - stopping) * 1000, 1),
            "gateway_empty": round((gone - stopping) * 1000, 1),
        },
        "heartbeats": {"renewals": renewals, "per_second": round(renewals / window), "streams": args.heartbeat_streams},
    }


async def _has_stat(gateway: Envoy) -> bool:
    return await gateway.stat("cluster_manager.active_clusters") is not None


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--heartbeat-streams", type=int, default=4)
    parser.add_argument("--heartbeat-seconds", type=float, default=5.0)
    args = parser.parse_args()
    results: dict[str, Any] = {}
    for size in (int(s) for s in args.sizes.split(",")):
        work = Path(tempfile.mkdtemp(prefix="meshplane-edge-fleet-"))
        try:
            found = results[str(size)] = await figures(work, size, args)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(f"--- {size} devices, one site, through meshplane.simulate.fleet")
        print(f"registrations        {found['registrations']['per_second']:>8}/s")
        propagation = found["registration_to_gateway_ms"]
        print(
            f"on the gateway       {propagation['from_start']:>8} ms from the start"
            f" ({propagation['after_last_registration']} ms after the last registration)"
        )
        leaving = found["deregistration_ms"]
        print(f"deregistered         {leaving['all_deregistered']:>8} ms; gateway empty {leaving['gateway_empty']} ms")
        print(f"heartbeats           {found['heartbeats']['per_second']:>8}/s over {args.heartbeat_streams} streams")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
