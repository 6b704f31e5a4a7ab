"""A registration → the edge gateway routing to it, through the `meshplane serve` process a user runs.

Run: .venv/bin/python -m benchmarks.registration_path [--sizes 10000,100000] [--sites 100] [--runs 20]

For each fleet size N:
1. a SQLite registry file holding N devices spread over --sites sites (written by the registry
   itself, `benchmarks.edge_registry`'s fleet; leases of an hour, longer than the run), a policy
   directory declaring those sites, and a registry tokens file whose entry `meshplane devices
   hash-token` printed;
2. `meshplane serve --config DIR --registry-db FILE --registry-tokens TOKENS` on 127.0.0.1 ports,
   with every other setting at its default (the 100 ms debounce among them); process start →
   `GET /readyz` 200 is recorded (`start_to_ready_ms`: the N devices loaded and the first publication);
3. a real edge-gateway Envoy for site-000 (the bootstrap template `envoy-configs/edge-gateway.yaml`)
   and a stand-in device in its own network namespace (tests/netns.py), at an address site-000 admits;
4. --runs registrations of a new device over the registry's gRPC API, --gap seconds apart (lone
   registrations, as a fleet's arrivals are: the debounce rebuilds a change after a quiet spell at
   once); each is timed from just before the call until a request through the gateway with
   `x-meshplane-device: <id>` reaches that device (polled every 5 ms). Beside it, the server's own
   view from `/metrics`: the rebuilds during the run and their summed duration.

Prints a table and the figures as JSON, with the load average at the start of each size's runs.
The machine's cores are shared by the server, Envoy and this client.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.edge_registry import (
    BIKES,
    CLASS_TOKEN,
    concurrently,
    device,
    listening,
    registration_to_routing,
    sites,
    write_sites,
)
from meshplane.api.edge.v1 import registry_pb2_grpc
from meshplane.discovery.registry.registry import EdgeRegistry, LeaseSettings
from meshplane.discovery.registry.store import SqliteStore
from tests.envoy_harness import REPO, start_envoy
from tests.meshplane_env import without_meshplane_variables
from tests.netns import DeviceHost, make_device_host
from tests.ports import free_port

REBUILD_SECONDS = "meshplane_rebuild_duration_seconds"


async def write_fleet(db: Path, size: int, site_count: int, extra: str) -> float:
    """Registers `size` devices (`benchmarks.edge_registry.device`) into a new registry file `db`,
    through the registry with its default store; returns the seconds it took."""
    site_map = sites(site_count, extra)
    registry = EdgeRegistry(SqliteStore(db), lambda: site_map, leases=LeaseSettings(max_ttl=3600))
    await registry.load()
    started = time.perf_counter()
    try:
        await concurrently(size, 64, lambda index: registry.register(BIKES, device(index, site_count)))
    finally:
        await registry.close()
    return time.perf_counter() - started


def write_tokens(path: Path) -> Path:
    """The registry tokens file a user writes: `meshplane devices hash-token`'s line for the bench
    token, and the class it may register."""
    hashed = subprocess.run(
        [sys.executable, "-m", "meshplane", "devices", "hash-token"],
        input=CLASS_TOKEN,
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env=without_meshplane_variables(),
    ).stdout
    path.write_text(f"tokens:\n{hashed.rstrip()}\n    class: bike\n")
    return path


@dataclass
class Served:
    """One running `meshplane serve` and where it listens."""

    process: subprocess.Popen[bytes]
    log: Path
    xds_port: int
    status_port: int
    registry_port: int

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@contextlib.asynccontextmanager
async def serving(work: Path, policy: Path, db: Path, tokens: Path) -> AsyncIterator[Served]:
    """`meshplane serve` on `policy`, `db` and `tokens` with 127.0.0.1 ports (no MESHPLANE_* variable
    of this shell); yields it started, ends it with SIGTERM (then SIGKILL) whatever happens."""
    ports = [free_port() for _ in range(4)]
    command = [sys.executable, "-m", "meshplane", "serve", "--config", str(policy)]
    command += ["--registry-db", str(db), "--registry-tokens", str(tokens)]
    for flag, port in zip(
        ("--xds-address", "--status-address", "--registry-address", "--registry-http-address"), ports, strict=True
    ):
        command += [flag, f"127.0.0.1:{port}"]
    log = work / "serve.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, cwd=REPO, env=without_meshplane_variables()
        )
    try:
        yield Served(process, log, ports[0], ports[1], ports[2])
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(process.wait, 30)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait)


async def until_ready(served: Served, session: aiohttp.ClientSession, deadline: float) -> None:
    """Returns once the server's `/readyz` answers 200; fails at once if it exited, or after `deadline` s."""
    end = time.monotonic() + deadline
    while True:
        if served.process.poll() is not None:
            raise RuntimeError(f"meshplane serve exited ({served.process.returncode}):\n{served.log_tail()}")
        try:
            async with session.get(f"http://127.0.0.1:{served.status_port}/readyz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass  # not listening yet
        if time.monotonic() > end:
            raise RuntimeError(f"meshplane serve not ready after {deadline} s:\n{served.log_tail()}")
        await asyncio.sleep(0.05)


async def rebuilds(served: Served, session: aiohttp.ClientSession) -> tuple[float, float]:
    """The server's rebuilds so far and their summed seconds, every kind, from `/metrics`."""
    async with session.get(f"http://127.0.0.1:{served.status_port}/metrics") as response:
        text = await response.text()
    count = total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name == REBUILD_SECONDS:
            for sample in family.samples:
                if sample.name == f"{REBUILD_SECONDS}_count":
                    count += sample.value
                elif sample.name == f"{REBUILD_SECONDS}_sum":
                    total += sample.value
    return count, total


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def quantile(values: list[float], fraction: float) -> float:
    """The nearest-rank quantile of `values`."""
    return sorted(values)[max(0, math.ceil(len(values) * fraction) - 1)]


async def measure(
    work: Path, size: int, site_count: int, runs: int, gap: float, device_host: DeviceHost
) -> dict[str, Any]:
    """Every figure of one fleet size (see the module docstring)."""
    address = device_host.address
    db = work / "registry.db"
    fill_seconds = await write_fleet(db, size, site_count, address)
    policy = write_sites(work / "policy", site_count, address)
    tokens = write_tokens(work / "tokens.yaml")
    backend_port = await asyncio.to_thread(device_host.serve, f"device-{size}")
    calls: list[float] = []
    timings: list[float] = []
    server_view: list[dict[str, float]] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        load_at_start = load_average()
        started = time.perf_counter()
        async with serving(work, policy, db, tokens) as served:
            await until_ready(served, session, 600)
            start_to_ready = time.perf_counter() - started
            gateway = await start_envoy(
                work / "envoy",
                served.xds_port,
                node_id="bench-gateway",
                template="edge-gateway.yaml",
                metadata={"role": "edge-gateway", "site": "site-000"},
            )
            try:
                to_devices = gateway.outbound_port + 1
                await gateway.eventually(lambda: listening(session, to_devices), "the gateway listener", 120)
                load_at_runs = load_average()
                async with grpc.aio.insecure_channel(f"127.0.0.1:{served.registry_port}") as channel:
                    stub = registry_pb2_grpc.RegistryStub(channel)
                    for run in range(runs):
                        await asyncio.sleep(gap)  # pacing: each registration comes after a quiet spell
                        before = await rebuilds(served, session)
                        answered, routed = await registration_to_routing(
                            stub, session, to_devices, f"probe-{run}", (address, backend_port)
                        )
                        calls.append(answered)
                        timings.append(routed)
                        after = await rebuilds(served, session)
                        server_view.append({"rebuilds": after[0] - before[0], "seconds": after[1] - before[1]})
            finally:
                await gateway.stop()
    return {
        "devices": size,
        "sites": site_count,
        "gateway_site_devices": len(range(0, size, site_count)) + runs,
        "load_average_start": load_at_start,
        "load_average_runs": load_at_runs,
        "fill_seconds": round(fill_seconds, 1),
        "start_to_ready_ms": round(start_to_ready * 1000, 1),
        "registration_to_routing_ms": {
            "runs": [round(t * 1000, 1) for t in timings],
            "median": round(statistics.median(timings) * 1000, 1),
            "p90": round(quantile(timings, 0.9) * 1000, 1),
            "max": round(max(timings) * 1000, 1),
        },
        "register_call_ms": {
            "median": round(statistics.median(calls) * 1000, 1),
            "p90": round(quantile(calls, 0.9) * 1000, 1),
        },
        "server_rebuilds": {
            "per_run": [round(view["rebuilds"]) for view in server_view],
            "median_ms": round(statistics.median(view["seconds"] for view in server_view) * 1000, 1),
            "p90_ms": round(quantile([view["seconds"] for view in server_view], 0.9) * 1000, 1),
        },
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--sites", type=int, default=100)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--gap", type=float, default=1.0, help="seconds between one run's end and the next")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    device_host = await asyncio.to_thread(make_device_host)
    try:
        for size in (int(s) for s in args.sizes.split(",")):
            work = Path(tempfile.mkdtemp(prefix="meshplane-registration-path-"))
            try:
                figures = await measure(work, size, args.sites, args.runs, args.gap, device_host)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            results[str(size)] = figures
            routing, server = figures["registration_to_routing_ms"], figures["server_rebuilds"]
            print(f"--- {size} devices over {args.sites} sites (load {figures['load_average_runs']})")
            print(f"meshplane serve start → ready: {figures['start_to_ready_ms']} ms")
            print(
                f"registration → gateway routing: median {routing['median']} ms, p90 {routing['p90']} ms,"
                f" max {routing['max']} ms ({len(routing['runs'])} runs)"
            )
            call = figures["register_call_ms"]
            print(
                f"of which the Register call (its durable commit included): median"
                f" {call['median']} ms, p90 {call['p90']} ms"
            )
            print(
                f"the server's rebuilds per registration: median {server['median_ms']} ms,"
                f" p90 {server['p90_ms']} ms (rebuilds a run: {server['per_run']})"
            )
    finally:
        await asyncio.to_thread(device_host.close)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
