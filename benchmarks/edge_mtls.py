"""What device mTLS at the edge gateway costs, through real Envoys and the real registry.

Run: .venv/bin/python -m benchmarks.edge_mtls [--seconds 5] [--runs 3] [--concurrency 8]
                                              [--registrations 300] [--expiry-runs 5]

One control plane with the registry's CA (tests/test_edge_zero_trust.py's set-up) and two
edge-gateway Envoys on 127.0.0.1: site `gym` with `tls` (client certificates required, identity
checked per request) and site `other` without TLS. The cloud service is a local aiohttp echo.
1. requests/s through one gateway, mTLS against plain, each with a new connection per request
   and with kept-alive connections (`--concurrency` clients), the four runs alternating
   `--runs` times; the ratio mTLS/plain per connection mode (medians). The clients are Python
   (asyncio, the `ssl` module) on the same cores as Envoy and the control plane: a full TLS
   handshake costs the client about as much as the gateway, so the new-connection figures bound
   the gateway's cost from above.
2. registrations/s over gRPC with a CSR (the CA signs a P-256 key) and without one, the CSRs made
   beforehand (the device's work is not counted).
3. lease end → identity refused: a device on a kept-alive connection is re-registered with a
   1-second lease and not renewed; the time from the lease's end (the registry's `expires_at`) to
   the first request answered 403 on that connection, polled every 10 ms. The registry sweeps
   every `--lease-check-interval` seconds (the production default, 1 s).
Prints a table, then the figures as JSON, with the load average before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from meshplane.api.edge.v1 import registry_pb2 as pb
from tests.certificates import csr_for
from tests.test_edge_zero_trust import METADATA, Connection, Edge, once, reaches_cloud, running_zero_trust

DEVICE_ADDRESS = "198.19.0.2"  # registered only: nothing contacts it


async def requests_per_second(
    port: int, context: ssl.SSLContext | None, *, kept_alive: bool, seconds: float, concurrency: int
) -> float:
    """Requests answered 200 a second by `concurrency` clients for `seconds`."""
    done = 0
    end = time.monotonic() + seconds

    async def client() -> None:
        nonlocal done
        if kept_alive:
            connection = await Connection.open(port, context)
            try:
                while time.monotonic() < end:
                    status, _, _ = await connection.get("/rides")
                    done += status == 200
            finally:
                await connection.close()
            return
        while time.monotonic() < end:
            answer = await once(port, context, "/rides")
            done += isinstance(answer, tuple) and answer[0] == 200

    started = time.monotonic()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return done / (time.monotonic() - started)


async def throughput(edge: Edge, args: argparse.Namespace) -> dict[str, Any]:
    bike = await edge.register("bench-bike")
    assert bike is not None
    assert edge.plain_gateway is not None
    await reaches_cloud(edge, bike)
    mtls = edge.context(bike)
    modes: dict[str, tuple[int, ssl.SSLContext | None, bool]] = {
        "mtls_new_connection": (edge.from_devices, mtls, False),
        "plain_new_connection": (edge.plain_gateway.outbound_port, None, False),
        "mtls_kept_alive": (edge.from_devices, mtls, True),
        "plain_kept_alive": (edge.plain_gateway.outbound_port, None, True),
    }
    runs: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(args.runs):  # alternating: each run of every mode shares the machine's moment
        for mode, (port, context, kept_alive) in modes.items():
            rate = await requests_per_second(
                port, context, kept_alive=kept_alive, seconds=args.seconds, concurrency=args.concurrency
            )
            runs[mode].append(round(rate, 1))
    medians = {mode: statistics.median(rates) for mode, rates in runs.items()}
    return {
        "runs": runs,
        "median": medians,
        "ratio_new_connection": round(medians["mtls_new_connection"] / medians["plain_new_connection"], 3),
        "ratio_kept_alive": round(medians["mtls_kept_alive"] / medians["plain_kept_alive"], 3),
    }


async def registrations(edge: Edge, count: int, concurrency: int) -> dict[str, Any]:
    """Registrations a second, with a CSR each and without."""
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(count)]
    csrs = [csr_for(key) for key in keys]
    figures: dict[str, Any] = {}
    for kind in ("with_csr", "without_csr"):
        queue = list(range(count))
        latencies: list[float] = []

        async def worker(kind: str = kind, queue: list[int] = queue, latencies: list[float] = latencies) -> None:
            while queue:
                i = queue.pop()
                start = time.perf_counter()
                await edge.stub.Register(
                    pb.RegisterRequest(
                        device_id=f"reg-{kind}-{i}",
                        device_class="bike",
                        site="gym",
                        endpoints=[pb.Endpoint(address=DEVICE_ADDRESS, port=8443)],
                        ttl_seconds=600,
                        csr=csrs[i] if kind == "with_csr" else "",
                    ),
                    metadata=METADATA,
                )
                latencies.append((time.perf_counter() - start) * 1000)

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - started
        latencies.sort()
        figures[kind] = {
            "calls": count,
            "per_second": round(count / elapsed, 1),
            "p50_ms": round(latencies[len(latencies) // 2], 2),
            "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 2),
        }
    return figures


async def poll(check: Callable[[], Awaitable[bool]], deadline: float = 60.0) -> None:
    end = time.monotonic() + deadline
    while not await check():
        if time.monotonic() > end:
            raise AssertionError("timed out")


async def expiry_to_refusal(edge: Edge, runs: int) -> dict[str, Any]:
    delays: list[float] = []
    for run in range(runs):
        device = f"expiring-{run}"
        pair = await edge.register(device)
        assert pair is not None
        await reaches_cloud(edge, pair)
        connection = await Connection.open(edge.from_devices, edge.context(pair))
        try:
            await edge.register(device, ttl=1, csr=False)
            lease_end = edge.expiries[device]

            async def refused(connection: Connection = connection) -> bool:
                status, _, _ = await connection.get("/rides")
                if status == 403:
                    return True
                await asyncio.sleep(0.01)
                return False

            await poll(refused)
            delays.append(round((time.time() - lease_end) * 1000, 1))
        finally:
            await connection.close()
    return {"runs_ms": delays, "median_ms": statistics.median(delays), "max_ms": max(delays)}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="edge-mtls-") as directory:
        async with running_zero_trust(
            Path(directory), DEVICE_ADDRESS, lease_check_interval=args.lease_check_interval, plain_site=True
        ) as edge:
            figures = {
                "throughput": await throughput(edge, args),
                "registrations": await registrations(edge, args.registrations, args.concurrency),
                "lease_end_to_refusal": await expiry_to_refusal(edge, args.expiry_runs),
            }
    figures["load_average"] = {"before": load_before, "after": os.getloadavg()}
    figures["settings"] = vars(args)
    return figures


def table(figures: dict[str, Any]) -> str:
    rows = ["| figure | value |", "| --- | --- |"]
    for mode, rate in figures["throughput"]["median"].items():
        rows.append(f"| requests/s, {mode.replace('_', ' ')} (median) | {rate:,.0f} |")
    rows.append(f"| mTLS / plain, new connection per request | {figures['throughput']['ratio_new_connection']} |")
    rows.append(f"| mTLS / plain, kept-alive | {figures['throughput']['ratio_kept_alive']} |")
    for kind, numbers in figures["registrations"].items():
        rows.append(
            f"| registrations/s {kind.replace('_', ' ')} (p50 / p99) | {numbers['per_second']:,} "
            f"({numbers['p50_ms']} / {numbers['p99_ms']} ms) |"
        )
    expiry = figures["lease_end_to_refusal"]
    rows.append(
        f"| lease end → refused on an open connection (median / max) | {expiry['median_ms']} / {expiry['max_ms']} ms |"
    )
    before, after = figures["load_average"]["before"], figures["load_average"]["after"]
    rows.append(f"| load average (1 min) before / after | {before[0]:.2f} / {after[0]:.2f} |")
    return "\n".join(rows)


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each throughput run")
    parser.add_argument("--runs", type=int, default=3, help="alternating runs of the four throughput modes")
    parser.add_argument("--concurrency", type=int, default=8, help="clients (and registrations in flight)")
    parser.add_argument("--registrations", type=int, default=300, help="registrations of each kind")
    parser.add_argument("--expiry-runs", type=int, default=5, help="lease expiries measured")
    parser.add_argument("--lease-check-interval", type=float, default=1.0, help="the registry's sweep (s)")
    return parser.parse_args()


if __name__ == "__main__":
    results = asyncio.run(main(arguments()))
    print(table(results))
    print(json.dumps(results, indent=2))
