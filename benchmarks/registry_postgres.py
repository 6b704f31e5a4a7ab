"""Edge registry on PostgreSQL: throughput beside SQLite, and three real replicas' routing and failover.

Run: .venv/bin/python -m benchmarks.registry_postgres [--sizes 10000,100000] [--path-devices 100000]

Part 1, in process, no wire, for each --sizes fleet and each store (SQLite: one registry, a file
has one writer; PostgreSQL: three registries, each with its own store, pool and LISTEN connection,
following the database as three `meshplane serve` replicas would, callers spread round-robin):
1. registrations: the fleet registered by --concurrency concurrent callers (validation, lease,
   durable group commit);
2. heartbeats, flat out: --heartbeats renewals, same concurrency and spread (calls/s and p50/p99);
3. heartbeats, paced: every device renews once over --heartbeat-seconds (30 s) at the even rate
   that takes (100,000 devices: 3,333/s), each call started at its due time whatever is still in
   flight (open loop); latency counted from the due time, so a store falling behind shows in p99;
4. PostgreSQL: the time until every replica's view holds every device (the notifications);
5. PostgreSQL, paced heartbeats again on a new database with each replica's registry in a process
   of its own (its own event loop and garbage collector, as `meshplane serve` runs): each
   registers its third of the fleet, waits until it holds every device, collects its garbage
   once (steady state, not the burst's aftermath) and freezes its heap as a replica does after
   each full re-read (`registry/heap.py`; --no-gc-freeze: never, the before of that change),
   then renews its third at a third of the rate; p50/p99 per replica, and each one's full
   garbage-collector passes in the window; each one's event-loop lag (a probe: how late
   `asyncio.sleep(0.01)` wakes, stalls over 50 ms with when), each group commit's time and size,
   each full re-read's start and length, and the notifications it applied. The load generator
   runs on each replica's own loop (no wire), so the lag is the replica's and the caller's alike.
   --resync-interval sets the replicas' re-read interval (30 s, the default, lands 0-1 re-reads
   in the window). --only-processes runs this step alone (per --sizes).

Part 2, through real processes: one PostgreSQL holding --path-devices devices over --sites sites,
three `meshplane serve --registry-store …` replicas (default settings but ports), a real
edge-gateway Envoy for site-000 and a stand-in device in a network namespace (tests/netns.py; root
and `ip` needed):
6. registration at replica A → the gateway connected to replica C routing to the device:
   --runs registrations, --gap s apart, each timed until a request through the gateway with
   `x-meshplane-device` reaches it (polled every 5 ms); median, p90, p99 (nearest rank), max;
7. failover: a gateway whose bootstrap lists the three replicas; --failovers times, kill -9 of
   the replica it is connected to (Envoy's own connection count says which), a new device
   registered at a survivor right after, timed from the kill until the gateway, reconnected to a
   survivor, routes to it; the killed replica is started again on its ports before the next run.
8. (run first, on the fleet as filled) heartbeats through the replicas' gRPC API, the user's path:
   every device renews once per --heartbeat-seconds, --heartbeat-rounds times (2: a minute, two
   or more full re-reads at every replica), at the even rate that takes, device i at replica
   i % 3, authenticated with the fleet's class token; latency is from each due time to the
   answer. By default over --heartbeat-streams (16) HeartbeatStreams a replica from this client,
   each carrying one renewal at a time, as a gateway or the device simulator relaying a fleet's
   renewals sends them (a renewal due while its stream is busy waits, and the wait counts), with
   this client's own event-loop lag. --heartbeat-streams 0 makes each renewal a unary call of its
   own, started at its due time whatever is in flight (open loop), as devices renewing each on
   their own make them, from `benchmarks/heartbeatload` (Go: one Python client cannot start
   3,333 unary calls a second on 2 cores), over 8 connections a replica, with its own schedule
   lag and CPU. p50, p99 per replica, the calls over 50 ms by second of the window, and each
   replica's CPU milliseconds per renewal it answered, PostgreSQL's per renewal (/proc). --only-path-heartbeats runs
   part 2 up to this step alone (no root, no Envoy); --skip-path-heartbeats leaves it out.

PostgreSQL is a private server (tests/postgres.py) on this machine, fsync on: every acknowledged
call is durable. Every process (PostgreSQL, the replicas, Envoy, this client) shares the
machine's cores. Prints tables and every figure as JSON with the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import multiprocessing
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc

from benchmarks.edge_registry import BIKES, CLASS_TOKEN, listening, registration_to_routing, write_sites
from benchmarks.edge_registry import device as fleet_device
from benchmarks.edge_registry import sites as fleet_sites
from benchmarks.heartbeat_load import build_heartbeat_load, run_heartbeat_load
from benchmarks.registration_path import load_average, quantile, write_tokens
from benchmarks.scale import proc_cpu_seconds
from meshplane.api.edge.v1 import registry_pb2 as pb
from meshplane.api.edge.v1 import registry_pb2_grpc
from meshplane.discovery.registry import heap
from meshplane.discovery.registry.auth import Principal, PrincipalKind
from meshplane.discovery.registry.registry import EdgeRegistry, LeaseSettings, RegisterInput
from meshplane.discovery.registry.store import RegistrationStore, SqliteStore
from meshplane.discovery.registry.store_postgres import PostgresSettings, PostgresStore
from meshplane.model import GatewayAddress, Site
from tests.envoy_harness import REPO, Envoy, start_envoy
from tests.meshplane_env import without_meshplane_variables
from tests.netns import DeviceHost, make_device_host
from tests.ports import free_port
from tests.postgres import PASSWORD, PostgresServer, running_postgres

SITES = {"gym": Site("gym", "eu-central", "a", (GatewayAddress("10.20.0.2", 15080),), ("10.0.0.0/8",))}
LEASES = LeaseSettings(default_ttl=600, min_ttl=1, max_ttl=3600, check_interval=1.0)
REPLICAS = 3
HEARTBEAT_PERIOD = 30.0  # the seconds in which every device renews once (the fleet figure)


def device(index: int) -> RegisterInput:
    address = f"10.{index // 65536 % 256}.{index // 256 % 256}.{index % 256 or 1}"
    return RegisterInput(f"bike-{index:06d}", "bike", "gym", ((address, 8080),), "1.0.0", {"row": "a"}, 600)


def percentiles(latencies: list[float], calls: int, elapsed: float) -> dict[str, float | int]:
    cuts = statistics.quantiles(latencies, n=100)
    return {
        "calls": calls,
        "seconds": round(elapsed, 3),
        "per_second": round(calls / elapsed),
        "p50_ms": round(cuts[49] * 1000, 2),
        "p99_ms": round(cuts[98] * 1000, 2),
    }


async def timed(calls: int, concurrency: int, call: Callable[[int], Awaitable[object]]) -> dict[str, float | int]:
    """Runs `call(0..calls-1)` with `concurrency` in flight; calls/s and latency percentiles (ms)."""
    latencies: list[float] = []
    counter = iter(range(calls))

    async def worker() -> None:
        for index in counter:
            start = time.perf_counter()
            await call(index)
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return percentiles(latencies, calls, time.perf_counter() - start)


async def paced(calls: int, rate: float, call: Callable[[int], Awaitable[object]]) -> dict[str, float | int]:
    """Starts `call(i)` at `start + i / rate` (open loop: never waits for earlier calls); latency is
    from each call's due time to its answer, so lateness in starting it counts too. Adds the rate
    the calls were started at and the most in flight at once."""
    latencies: list[float] = []
    in_flight = peak = 0
    pending: set[asyncio.Task[None]] = set()

    async def one(index: int, due: float) -> None:
        nonlocal in_flight
        try:
            await call(index)
        finally:
            in_flight -= 1
        latencies.append(time.perf_counter() - due)

    start = time.perf_counter()
    for index in range(calls):
        due = start + index / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        in_flight += 1
        peak = max(peak, in_flight)
        task = asyncio.create_task(one(index, due))
        pending.add(task)
        task.add_done_callback(pending.discard)
    started_for = time.perf_counter() - start
    await asyncio.gather(*pending)
    figures = percentiles(latencies, calls, time.perf_counter() - start)
    figures["target_per_second"] = round(rate)
    figures["started_per_second"] = round(calls / started_for)
    figures["peak_in_flight"] = peak
    return figures


async def measure(
    registries: Sequence[EdgeRegistry], devices: int, heartbeats: int, concurrency: int, period: float
) -> dict[str, Any]:
    leases: dict[int, str] = {}

    async def register(index: int) -> None:
        registry = registries[index % len(registries)]
        registered = await registry.register(Principal(PrincipalKind.DEVICE, f"bike-{index:06d}"), device(index))
        leases[index] = registered.lease_id

    async def heartbeat(call: int) -> None:
        index = call % devices
        registry = registries[index % len(registries)]  # a device renews where it registered
        await registry.heartbeat(
            Principal(PrincipalKind.DEVICE, f"bike-{index:06d}"), f"bike-{index:06d}", leases[index]
        )

    return {
        "registrations": await timed(devices, concurrency, register),
        "heartbeats": await timed(heartbeats, concurrency, heartbeat),
        "heartbeats_paced": await paced(devices, devices / period, heartbeat),
    }


@contextlib.asynccontextmanager
async def following(stores: Sequence[RegistrationStore]) -> AsyncIterator[list[EdgeRegistry]]:
    registries = [EdgeRegistry(store, lambda: SITES, leases=LEASES) for store in stores]
    for registry in registries:
        await registry.load()
    tasks = [asyncio.create_task(registry.run()) for registry in registries]
    try:
        yield registries
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for registry in registries:
            await registry.close()


async def in_process(
    server: PostgresServer, devices: int, heartbeats: int, concurrency: int, period: float, freeze: bool
) -> dict[str, Any]:
    """Part 1 at one fleet size: SQLite, then three registries on a new PostgreSQL database."""
    figures: dict[str, Any] = {"devices": devices, "load_average_start": load_average()}
    directory = Path(tempfile.mkdtemp(prefix="meshplane-bench-"))
    try:
        async with following([SqliteStore(directory / "registry.db")]) as registries:
            figures["sqlite_1_process"] = await measure(registries, devices, heartbeats, concurrency, period)
    finally:
        shutil.rmtree(directory, ignore_errors=True)

    url = server.url(server.create_database())
    stores = [PostgresStore(PostgresSettings(url, pool_size=4)) for _ in range(REPLICAS)]
    async with following(stores) as registries:
        postgres = await measure(registries, devices, heartbeats, concurrency, period)
        start = time.perf_counter()
        end = start + 120
        while any(len(registry) < devices for registry in registries):
            assert time.perf_counter() < end, [len(registry) for registry in registries]
            await asyncio.sleep(0.01)  # polling a condition
        postgres["every_replica_holds_every_device_after_s"] = round(time.perf_counter() - start, 3)
        postgres["commits"] = sum(store.commits for store in stores)
    figures["postgresql_3_replicas"] = postgres
    figures["postgresql_3_processes_heartbeats_paced"] = await heartbeats_in_processes(
        server.url(server.create_database()), devices, period, freeze
    )
    figures["load_average_end"] = load_average()
    return figures


class LoopProbe:
    """How late `asyncio.sleep(0.01)` wakes on this process's loop, all through a window: the lag
    distribution and every stall over `STALL` s, with when it began (s into the window)."""

    STALL = 0.05

    def __init__(self) -> None:
        self.lags: list[float] = []
        self.stalls: list[tuple[float, float]] = []
        self.start = time.perf_counter()

    async def _run(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.01)
            lag = time.perf_counter() - before - 0.01
            self.lags.append(lag)
            if lag > self.STALL:
                self.stalls.append((round(before - self.start, 2), round(lag * 1000, 1)))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        self.start = time.perf_counter()
        task = asyncio.create_task(self._run())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def figures(self) -> dict[str, Any]:
        cuts = statistics.quantiles(self.lags, n=100) if len(self.lags) > 1 else [0.0] * 99
        return {
            "lag_p99_ms": round(cuts[98] * 1000, 1),
            "lag_max_ms": round(max(self.lags, default=0.0) * 1000, 1),
            "stalls_over_50ms": self.stalls[:20],
        }


class StoreTimings:
    """Times each group commit and each full re-read of one `PostgresStore` (wraps its methods on
    the instance), and counts the notifications it applies."""

    def __init__(self, store: PostgresStore) -> None:
        self.commits: list[tuple[float, int]] = []
        self.resyncs: list[tuple[float, float]] = []
        self.notices = 0
        self.start = time.perf_counter()
        commit, resync, notice = store._commit, store._resync, store._apply_notice

        async def timed_commit(jobs: Any) -> Any:
            began = time.perf_counter()
            try:
                return await commit(jobs)
            finally:
                self.commits.append((time.perf_counter() - began, sum(len(job.changes) for job in jobs)))

        async def timed_resync(view: Any) -> None:
            began = time.perf_counter()
            try:
                await resync(view)
            finally:
                self.resyncs.append((round(began - self.start, 2), round((time.perf_counter() - began) * 1000, 1)))

        async def counted_notice(view: Any, payload: str) -> None:
            self.notices += 1
            await notice(view, payload)

        store._commit = timed_commit  # type: ignore[method-assign]
        store._resync = timed_resync  # type: ignore[method-assign]
        store._apply_notice = counted_notice  # type: ignore[method-assign]

    def figures(self) -> dict[str, Any]:
        seconds = sorted(s for s, _ in self.commits)
        cuts = statistics.quantiles(seconds, n=100) if len(seconds) > 1 else [0.0] * 99
        return {
            "commits": len(seconds),
            "changes_per_commit_mean": round(sum(n for _, n in self.commits) / max(len(self.commits), 1), 1),
            "commit_p50_ms": round(cuts[49] * 1000, 1),
            "commit_p99_ms": round(cuts[98] * 1000, 1),
            "commit_max_ms": round(max(seconds, default=0.0) * 1000, 1),
            "resyncs_at_s_ms": self.resyncs,
            "notifications": self.notices,
        }


def heartbeat_replica(
    url: str, mine: int, devices: int, period: float, freeze: bool, barrier: Any, answer: Any, resync: float = 30.0
) -> None:
    """One replica's registry in a process of its own, as `meshplane serve` runs it: registers the
    devices `index % REPLICAS == mine`, waits until it holds every device (the others' too, by
    notification) and every replica is there, then renews its devices once each over `period` s
    at the even rate (paced, open loop). Sends back its latencies (s) and its garbage collector's
    full passes (count, longest s). `freeze` False: the registry never freezes its heap."""
    os.environ["PGPASSWORD"] = PASSWORD
    if not freeze:
        heap.settle = lambda: None  # the before of the comparison: the collector scans everything
    pauses: list[float] = []
    started: list[float] = []

    def collected(phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            started[:] = [time.perf_counter()]
        elif started:
            pauses.append(time.perf_counter() - started[0])

    async def run() -> None:
        store = PostgresStore(PostgresSettings(url, pool_size=4, resync_interval=resync))
        async with following([store]) as (registry,):
            own = list(range(mine, devices, REPLICAS))
            leases: dict[int, str] = {}

            async def register(call: int) -> None:
                index = own[call]
                principal = Principal(PrincipalKind.DEVICE, f"bike-{index:06d}")
                leases[index] = (await registry.register(principal, device(index))).lease_id

            await timed(len(own), 64 // REPLICAS, register)
            end = time.monotonic() + 300
            while len(registry) < devices:
                assert time.monotonic() < end, len(registry)
                await asyncio.sleep(0.05)  # polling a condition: every replica's devices notified
            # Steady state, not the registration burst's aftermath: its garbage is collected now,
            # before the window, as a replica that has served for a while has long done.
            gc.collect()
            heap.settle()  # where a replica that has served for a while stands: after a re-read
            await asyncio.to_thread(barrier.wait)

            async def heartbeat(call: int) -> None:
                index = own[call]
                await registry.heartbeat(
                    Principal(PrincipalKind.DEVICE, f"bike-{index:06d}"), f"bike-{index:06d}", leases[index]
                )

            pauses.clear()
            probe = LoopProbe()
            timings = StoreTimings(store)
            async with probe.running():
                figures = await paced(len(own), len(own) / period, heartbeat)
            answer.send(
                {
                    "figures": figures,
                    "gc_full_passes": len(pauses),
                    "gc_longest_s": max(pauses, default=0.0),
                    "loop": probe.figures(),
                    "store": timings.figures(),
                }
            )

    gc.callbacks.append(collected)
    asyncio.run(run())


async def heartbeats_in_processes(
    url: str, devices: int, period: float, freeze: bool = True, resync: float = 30.0
) -> dict[str, Any]:
    """Paced heartbeats on PostgreSQL with each of the three replicas' registries in its own
    process (its own event loop and garbage collector, as in production): each replica's latency
    percentiles, counted from each call's due time, and the worst replica's p99."""
    context = multiprocessing.get_context("spawn")  # fresh interpreters: no copy of this one's heap
    barrier = context.Barrier(REPLICAS)
    pipes = [context.Pipe(duplex=False) for _ in range(REPLICAS)]
    processes = [
        context.Process(
            target=heartbeat_replica, args=(url, mine, devices, period, freeze, barrier, pipes[mine][1], resync)
        )
        for mine in range(REPLICAS)
    ]
    for process in processes:
        process.start()
    try:
        answers = [await asyncio.to_thread(receiver.recv) for receiver, _ in pipes]
    finally:
        for process in processes:
            await asyncio.to_thread(process.join, 600)
            if process.exitcode is None:
                process.kill()
    replicas = [answer["figures"] for answer in answers]
    calls = sum(int(figures["calls"]) for figures in replicas)
    return {
        "gc_freeze": freeze,
        "calls": calls,
        "target_per_second": round(devices / period),
        "per_second": round(calls / max(float(figures["seconds"]) for figures in replicas)),
        "p50_ms_per_replica": [figures["p50_ms"] for figures in replicas],
        "p99_ms_per_replica": [figures["p99_ms"] for figures in replicas],
        "p99_ms_worst_replica": max(float(figures["p99_ms"]) for figures in replicas),
        "gc_full_passes_per_replica": [answer["gc_full_passes"] for answer in answers],
        "gc_longest_ms": round(max(answer["gc_longest_s"] for answer in answers) * 1000, 1),
        "loop_per_replica": [answer["loop"] for answer in answers],
        "store_per_replica": [answer["store"] for answer in answers],
    }


# --- part 2: real replicas ---------------------------------------------------------------------


@dataclass
class Replica:
    """One `meshplane serve` on the shared database, on ports it keeps across restarts."""

    name: str
    command: list[str]
    xds_port: int
    status_port: int
    registry_port: int
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as sink:
            self.process = subprocess.Popen(
                self.command, stdout=sink, stderr=subprocess.STDOUT, cwd=REPO, env=replica_environment()
            )

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    async def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(self.process.wait, 30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            await asyncio.to_thread(self.process.wait)

    async def ready(self, session: aiohttp.ClientSession, deadline: float) -> None:
        """Returns once `/readyz` answers 200; fails at once if the process exited, or after `deadline` s."""
        end = time.monotonic() + deadline
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"replica {self.name} exited:\n{self.log.read_text(errors='replace')[-3000:]}")
            try:
                async with session.get(f"http://127.0.0.1:{self.status_port}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass  # not listening yet
            if time.monotonic() > end:
                raise RuntimeError(f"replica {self.name} not ready after {deadline} s")
            await asyncio.sleep(0.05)


def replica_environment() -> dict[str, str]:
    """No MESHPLANE_* variable of this shell, and no PGPASSWORD: the password comes from its file."""
    return {key: value for key, value in without_meshplane_variables().items() if key != "PGPASSWORD"}


def replica(name: str, work: Path, url: str, policy: Path, tokens: Path, password: Path, resync: float) -> Replica:
    xds, status, registry, http = (free_port() for _ in range(4))
    command = [sys.executable, "-m", "meshplane", "serve", "--config", str(policy)]
    command += ["--registry-store", url, "--registry-store-password-file", str(password)]
    command += ["--registry-store-resync", str(resync)]
    command += ["--registry-tokens", str(tokens), "--xds-address", f"127.0.0.1:{xds}"]
    command += ["--status-address", f"127.0.0.1:{status}", "--registry-address", f"127.0.0.1:{registry}"]
    command += ["--registry-http-address", f"127.0.0.1:{http}"]
    return Replica(name, command, xds, status, registry, work / f"replica-{name}.log")


async def fill(url: str, size: int, site_count: int, extra: str) -> tuple[float, list[str]]:
    """Registers `size` fleet devices (`benchmarks.edge_registry.device`, leases of an hour) into the
    database at `url` through one registry; returns the seconds it took and each device's lease id."""
    site_map = fleet_sites(site_count, extra)
    registry = EdgeRegistry(
        PostgresStore(PostgresSettings(url, pool_size=4)), lambda: site_map, leases=LeaseSettings(max_ttl=3600)
    )
    await registry.load()
    leases = [""] * size

    async def register(index: int) -> None:
        leases[index] = (await registry.register(BIKES, fleet_device(index, site_count))).lease_id

    started = time.perf_counter()
    try:
        await timed(size, 64, register)
    finally:
        await registry.close()
    return time.perf_counter() - started, leases


async def connected_to(gateway: Envoy, replicas: Sequence[Replica], deadline: float = 60) -> Replica:
    """The one replica the gateway's `meshplane` cluster holds a connection to (Envoy's cx_active)."""
    end = time.monotonic() + deadline
    last = ""
    while True:
        last = await gateway.admin("/clusters")
        active = {
            int(port)
            for port, count in re.findall(r"^meshplane::127\.0\.0\.1:(\d+)::cx_active::(\d+)$", last, re.MULTILINE)
            if int(count) > 0
        }
        holding = [r for r in replicas if r.xds_port in active]
        if len(holding) == 1 and holding[0].process is not None and holding[0].process.poll() is None:
            return holding[0]
        if time.monotonic() > end:
            raise RuntimeError(f"no single connected replica after {deadline} s; last seen:\n{last}")
        await asyncio.sleep(0.05)


def every_replica(ports: Sequence[int]) -> Callable[[dict[str, Any]], None]:
    """A bootstrap patch: the `meshplane` cluster lists every replica's xDS port, so Envoy
    reconnects to another when the one it holds dies."""

    def patch(config: dict[str, Any]) -> None:
        (cluster,) = [c for c in config["static_resources"]["clusters"] if c["name"] == "meshplane"]
        cluster["load_assignment"]["endpoints"] = [
            {
                "lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
                    for port in ports
                ]
            }
        ]

    return patch


def distribution(seconds: list[float]) -> dict[str, Any]:
    return {
        "runs": [round(s * 1000, 1) for s in seconds],
        "median": round(statistics.median(seconds) * 1000, 1),
        "p90": round(quantile(seconds, 0.9) * 1000, 1),
        "p99": round(quantile(seconds, 0.99) * 1000, 1),
        "max": round(max(seconds) * 1000, 1),
    }


# Step 8's gRPC connections to each replica for the devices' unary calls.
CONNECTIONS = 8


async def heartbeats_through_replicas(
    group: Sequence[Replica], leases: Sequence[str], period: float, rounds: int, streams: int
) -> dict[str, Any]:
    """Step 8 (see the module docstring): every device renews once per `period` s, `rounds` times,
    through the replicas' gRPC API, device i at replica i % 3; latency from the due time to the
    answer. With `streams` 0, each renewal is a unary Heartbeat call of its own started at its due
    time, as devices each renewing on their own make them (open loop, `benchmarks/heartbeatload`,
    Go: one Python client cannot start 3,333 a second on two cores); otherwise on one of `streams`
    HeartbeatStreams per replica from this client, each carrying one renewal at a time, as a
    gateway relaying its devices' renewals would (a renewal due while its stream is busy waits,
    counted). Each replica's CPU seconds, and PostgreSQL's, per renewal answered, from /proc."""
    before = cpu_seconds(group)
    if streams:
        figures = await streamed_heartbeats(group, leases, period, rounds, streams)
    else:
        figures = await unary_heartbeats(group, leases, period, rounds)
    after = cpu_seconds(group)
    # Renewals answered: "calls" in this client's figures, "count" in heartbeatload's.
    answered = {name: int(row.get("count", row.get("calls", 0))) for name, row in figures["per_replica"].items()}
    answered["postgresql"] = sum(answered.values())  # the database serves every replica's
    figures["cpu_ms_per_renewal"] = {  # each replica's per renewal it answered
        name: round((after[name] - before[name]) / max(answered[name], 1) * 1000, 3) for name in before
    }
    return figures


def cpu_seconds(group: Sequence[Replica]) -> dict[str, float]:
    """CPU seconds so far (user + system) of each replica's process and of every PostgreSQL process
    on this machine (the benchmark's own server is the only one)."""
    seconds = {member.name: proc_cpu_seconds(member.process.pid) for member in group if member.process}
    postgres = 0.0
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError):
            if entry.name.isdigit() and (entry / "comm").read_text().strip() == "postgres":
                postgres += proc_cpu_seconds(int(entry.name))
    return {**seconds, "postgresql": postgres}


async def streamed_heartbeats(
    group: Sequence[Replica], leases: Sequence[str], period: float, rounds: int, streams: int
) -> dict[str, Any]:
    """Step 8 over `streams` HeartbeatStreams a replica from this client (see `heartbeats_through_replicas`)."""
    devices = len(leases)
    latencies: list[list[float]] = [[] for _ in group]
    slow: list[list[tuple[float, float]]] = [[] for _ in group]  # (due s into the window, ms) over 50 ms
    start = time.perf_counter()
    metadata = (("authorization", f"Bearer {CLASS_TOKEN}"),)
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{member.registry_port}") for member in group]
    stubs = [registry_pb2_grpc.RegistryStub(channel) for channel in channels]
    queues: list[list[asyncio.Queue[tuple[int, float] | None]]] = [
        [asyncio.Queue() for _ in range(streams)] for _ in group
    ]

    async def relay(replica: int, queue: asyncio.Queue[tuple[int, float] | None]) -> None:
        call = stubs[replica].HeartbeatStream(metadata=metadata)  # one channel a replica
        while (item := await queue.get()) is not None:
            index, due = item
            await call.write(pb.HeartbeatRequest(device_id=fleet_device_id(index), lease_id=leases[index]))
            if await call.read() is grpc.aio.EOF:
                raise RuntimeError(f"replica {group[replica].name} ended a heartbeat stream: {await call.code()}")
            latencies[replica].append(time.perf_counter() - due)
            if latencies[replica][-1] > 0.05:
                slow[replica].append((round(due - start, 2), round(latencies[replica][-1] * 1000, 1)))
        await call.done_writing()

    workers = [asyncio.create_task(relay(r, queue)) for r, row in enumerate(queues) for queue in row]
    try:
        for channel in channels:
            await channel.channel_ready()
        probe = LoopProbe()
        async with probe.running():
            start = time.perf_counter()
            for call in range(devices * rounds):
                index = call % devices
                due = start + call * period / devices
                if (delay := due - time.perf_counter()) > 0:
                    await asyncio.sleep(delay)
                queues[index % len(group)][index // len(group) % streams].put_nowait((index, due))
            started_for = time.perf_counter() - start
            for row in queues:
                for queue in row:
                    queue.put_nowait(None)
            await asyncio.gather(*workers)
            elapsed = time.perf_counter() - start
    finally:
        for channel in channels:
            await channel.close()
    replicas = {
        member.name: {
            **percentiles(latencies[r], len(latencies[r]), elapsed),
            "over_50ms": len(slow[r]),
            "slowest_over_50ms_at_s_ms": sorted(slow[r], key=lambda call: -call[1])[:10],
            "over_50ms_per_second_of_window": {
                second: sum(1 for due, _ in slow[r] if int(due) == second)
                for second in sorted({int(due) for due, _ in slow[r]})
            },
        }
        for r, member in enumerate(group)
    }
    return {
        "devices": devices,
        "rounds": rounds,
        "calls": f"{streams} HeartbeatStreams a replica, from one Python client",
        "target_per_second": round(devices / period),
        "started_per_second": round(devices * rounds / started_for),
        "per_replica": replicas,
        "p50_ms": percentiles([s for row in latencies for s in row], devices, elapsed)["p50_ms"],
        "p99_ms_worst_replica": max(float(figures["p99_ms"]) for figures in replicas.values()),
        "client_loop": probe.figures(),
    }


def fleet_device_id(index: int) -> str:
    return f"bike-{index:06d}"


async def unary_heartbeats(
    group: Sequence[Replica], leases: Sequence[str], period: float, rounds: int
) -> dict[str, Any]:
    """Step 8 with a unary call per renewal, from `benchmarks/heartbeatload` (its figures, per replica)."""
    targets = [f"127.0.0.1:{member.registry_port}" for member in group]
    report = await run_heartbeat_load(
        await asyncio.to_thread(build_heartbeat_load),
        targets,
        [(fleet_device_id(index), lease) for index, lease in enumerate(leases)],
        period=period,
        rounds=rounds,
        connections=CONNECTIONS,
        token=CLASS_TOKEN,
    )
    per_target = report.pop("per_target")
    replicas = {member.name: per_target[target] for member, target in zip(group, targets, strict=True)}
    return {
        **report,
        "calls": f"a unary Heartbeat call each, {CONNECTIONS} connections a replica (heartbeatload, Go)",
        "per_replica": replicas,
        "p50_ms": report["all"]["p50_ms"],
        "p99_ms_worst_replica": max(float(figures["p99_ms"]) for figures in replicas.values()),
    }


async def through_replicas(
    server: PostgresServer,
    device_host: DeviceHost | None,
    size: int,
    site_count: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Part 2 (see the module docstring); steps 6 and 7 only with a `device_host`."""
    work = Path(tempfile.mkdtemp(prefix="meshplane-bench-replicas-"))
    # Without a stand-in device, an address no fleet device has stands in its site range.
    address = device_host.address if device_host else "10.255.255.1"
    url = server.url(server.create_database())
    group: list[Replica] = []
    envoys: list[Envoy] = []
    figures: dict[str, Any] = {"devices": size, "sites": site_count}
    try:
        filled, leases = await fill(url, size, site_count, address)
        figures["fill_seconds"] = round(filled, 1)
        policy = write_sites(work / "policy", site_count, address)
        tokens = write_tokens(work / "tokens.yaml")
        password = work / "password"
        password.write_text(PASSWORD + "\n")
        group = [replica(name, work, url, policy, tokens, password, args.resync_interval) for name in "abc"]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            started = time.perf_counter()
            for member in group:
                member.start()
            for member in group:
                await member.ready(session, 600)
            figures["three_replicas_start_to_ready_ms"] = round((time.perf_counter() - started) * 1000, 1)
            a, _, c = group

            # 8 (first: the fleet's steady state, before the other steps add devices and restarts).
            if not args.skip_path_heartbeats:
                figures["load_average_heartbeats"] = load_average()
                figures["heartbeats_through_replicas"] = await heartbeats_through_replicas(
                    group, leases, args.heartbeat_seconds, args.heartbeat_rounds, args.heartbeat_streams
                )
                figures["load_average_heartbeats_end"] = load_average()
            if device_host is None:
                return figures
            runs, gap, failovers = args.runs, args.gap, args.failovers
            backend_port = await asyncio.to_thread(device_host.serve, "replicas-device")

            # 6. registration at A → the gateway on C routing to it.
            gateway = await start_envoy(
                work / "envoy-c",
                c.xds_port,
                node_id="bench-gateway-c",
                template="edge-gateway.yaml",
                metadata={"role": "edge-gateway", "site": "site-000"},
            )
            envoys.append(gateway)
            to_devices = gateway.outbound_port + 1
            await gateway.eventually(lambda: listening(session, to_devices), "the gateway listener", 120)
            figures["load_average_path"] = load_average()
            calls: list[float] = []
            timings: list[float] = []
            async with grpc.aio.insecure_channel(f"127.0.0.1:{a.registry_port}") as channel:
                stub = registry_pb2_grpc.RegistryStub(channel)
                for run in range(runs):
                    await asyncio.sleep(gap)  # pacing: each registration comes after a quiet spell
                    answered, routed = await registration_to_routing(
                        stub, session, to_devices, f"across-{run}", (address, backend_port)
                    )
                    calls.append(answered)
                    timings.append(routed)
            figures["registration_at_a_to_gateway_on_c_ms"] = distribution(timings)
            figures["register_call_ms"] = distribution(calls)
            await gateway.stop()
            envoys.remove(gateway)

            # 7. failover: kill -9 the replica the gateway holds, register after the kill at a survivor.
            gateway = await start_envoy(
                work / "envoy-all",
                c.xds_port,
                node_id="bench-gateway-all",
                template="edge-gateway.yaml",
                metadata={"role": "edge-gateway", "site": "site-000"},
                patch=every_replica([member.xds_port for member in group]),
            )
            envoys.append(gateway)
            to_devices = gateway.outbound_port + 1
            await gateway.eventually(lambda: listening(session, to_devices), "the gateway listener", 120)
            figures["load_average_failover"] = load_average()
            outages: list[float] = []
            acknowledged: list[float] = []
            moves: list[str] = []
            for run in range(failovers):
                await asyncio.sleep(gap)
                victim = await connected_to(gateway, group)
                survivor = next(member for member in group if member is not victim)
                async with grpc.aio.insecure_channel(f"127.0.0.1:{survivor.registry_port}") as channel:
                    await channel.channel_ready()  # connected before the clock starts
                    stub = registry_pb2_grpc.RegistryStub(channel)
                    killed = time.perf_counter()
                    victim.kill()
                    answered, routed = await registration_to_routing(
                        stub, session, to_devices, f"after-kill-{run}", (address, backend_port)
                    )
                # registration_to_routing's clock starts just before its call, right after the kill.
                registering = time.perf_counter() - routed - killed
                outages.append(registering + routed)
                acknowledged.append(registering + answered)
                now = await connected_to(gateway, group)
                moves.append(f"{victim.name}→{now.name}")
                victim.start()  # back on its ports for the next run
                await victim.ready(session, 600)
            figures["failover_kill_to_routing_ms"] = distribution(outages)
            figures["failover_kill_to_register_ack_ms"] = distribution(acknowledged)
            figures["failover_moves"] = moves
            figures["gateway_xds_reconnects"] = await gateway.stat("cluster.meshplane.upstream_cx_total")
    finally:
        for envoy in envoys:
            await envoy.stop()
        for member in group:
            await member.stop()
        shutil.rmtree(work, ignore_errors=True)
    return figures


async def run(args: argparse.Namespace) -> dict[str, Any]:
    figures: dict[str, Any] = {"cores": os.cpu_count()}
    os.environ["PGPASSWORD"] = PASSWORD  # the in-process stores' password; the replicas read a file
    with running_postgres() as server:
        if args.only_processes:
            for size in (int(s) for s in args.sizes.split(",")):
                figures[f"processes_{size}"] = {
                    "load_average_start": load_average(),
                    **await heartbeats_in_processes(
                        server.url(server.create_database()),
                        size,
                        args.heartbeat_seconds,
                        args.gc_freeze,
                        args.resync_interval,
                    ),
                    "resync_interval_s": args.resync_interval,
                    "load_average_end": load_average(),
                }
            return figures
        if not (args.skip_in_process or args.only_path_heartbeats):
            for size in (int(s) for s in args.sizes.split(",")):
                figures[f"in_process_{size}"] = await in_process(
                    server, size, args.heartbeats, args.concurrency, args.heartbeat_seconds, args.gc_freeze
                )
        if args.only_path_heartbeats:
            figures["replicas"] = await through_replicas(server, None, args.path_devices, args.sites, args)
        elif args.path_devices:
            device_host = await asyncio.to_thread(make_device_host)
            try:
                figures["replicas"] = await through_replicas(server, device_host, args.path_devices, args.sites, args)
            finally:
                await asyncio.to_thread(device_host.close)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="10000,100000", help="fleet sizes of part 1")
    parser.add_argument("--heartbeats", type=int, default=20_000, help="flat-out renewals per size")
    parser.add_argument("--heartbeat-seconds", type=float, default=HEARTBEAT_PERIOD)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--skip-in-process", action="store_true", help="part 2 only")
    parser.add_argument("--path-devices", type=int, default=100_000, help="part 2's fleet; 0: skip part 2")
    parser.add_argument("--sites", type=int, default=100)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--gap", type=float, default=1.0, help="seconds between one run's end and the next")
    parser.add_argument("--failovers", type=int, default=5)
    parser.add_argument("--no-gc-freeze", dest="gc_freeze", action="store_false", help="step 5's before")
    parser.add_argument("--only-processes", action="store_true", help="step 5 alone, per --sizes")
    parser.add_argument(
        "--heartbeat-streams",
        type=int,
        default=16,
        help="step 8: HeartbeatStreams a replica from this client, one renewal at a time on each; 0: a unary"
        " call per renewal instead (heartbeatload, Go)",
    )
    parser.add_argument("--heartbeat-rounds", type=int, default=2, help="step 8: renewals per device")
    parser.add_argument("--skip-path-heartbeats", action="store_true", help="part 2 without step 8")
    parser.add_argument(
        "--only-path-heartbeats", action="store_true", help="part 2 up to step 8 alone (no root, no Envoy)"
    )
    parser.add_argument(
        "--resync-interval",
        type=float,
        default=30.0,
        help="steps 5 and 8: the replicas' full re-read interval (s; 10: about three re-reads a replica in"
        " step 5's window)",
    )
    args = parser.parse_args()
    figures = asyncio.run(run(args))
    print(f"{'size':>7} {'store':<22} {'what':<17} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for key, sized in figures.items():
        if not key.startswith("in_process_"):
            continue
        for store in ("sqlite_1_process", "postgresql_3_replicas"):
            for what in ("registrations", "heartbeats", "heartbeats_paced"):
                row = sized[store][what]
                print(
                    f"{sized['devices']:>7} {store:<22} {what:<17} {row['per_second']:>9}"
                    f" {row['p50_ms']:>8} {row['p99_ms']:>8}"
                )
        spread = sized["postgresql_3_processes_heartbeats_paced"]
        print(
            f"{sized['devices']:>7} {'postgresql_3_processes':<22} {'heartbeats_paced':<17} {spread['per_second']:>9}"
            f" {max(spread['p50_ms_per_replica']):>8} {spread['p99_ms_worst_replica']:>8}"
        )
    if "heartbeats_through_replicas" in figures.get("replicas", {}):
        beats = figures["replicas"]["heartbeats_through_replicas"]
        print(
            f"heartbeats through 3 replicas' gRPC API ({beats['devices']} devices, {beats['started_per_second']}/s):"
            f" p50 {beats['p50_ms']} ms, worst replica's p99 {beats['p99_ms_worst_replica']} ms"
        )
    if "failover_kill_to_routing_ms" in figures.get("replicas", {}):
        path, failover = figures["replicas"], figures["replicas"]["failover_kill_to_routing_ms"]
        across = path["registration_at_a_to_gateway_on_c_ms"]
        print(
            f"registration at A → gateway on C routing ({path['devices']} devices): median {across['median']} ms,"
            f" p90 {across['p90']} ms, p99 {across['p99']} ms, max {across['max']} ms"
        )
        print(
            f"failover, kill -9 → routing to a device registered after it: median {failover['median']} ms,"
            f" max {failover['max']} ms ({path['failover_moves']})"
        )
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
