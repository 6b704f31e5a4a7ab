"""What access logs and tracing cost a proxy: requests a second through one sidecar Envoy, telemetry on vs off.

Run: .venv/bin/python -m benchmarks.telemetry_overhead [--runs 6] [--seconds 5] [--connections 8]

An in-process control plane (the real pipeline, as `meshplane serve` wires it: policy files →
publisher → xDS server) configures one real sidecar Envoy in front of a minimal HTTP backend.
Runs alternate between two policies: `off` (no telemetry) and `on` (an access log of every request
to an OpenTelemetry collector, and 100 % tracing to it; the collector is the tests' OTLP receiver,
in a process of its own). Before each run the Envoy is seen holding that run's listener (its config dump
names the tracer, or does not). Each run keeps `--connections` keep-alive HTTP/1.1 connections busy
for `--seconds` with a minimal client (asyncio streams, no HTTP library, so the client costs little
beside Envoy on a small machine). Prints every run, the median requests/s of each policy, and the
ratio on/off, and Envoy's own CPU time per request (from /proc: the figure the collector's
and the client's share of the cores does not blur); then one JSON line. All processes share the
machine's cores: compare ratios, not absolute figures, across machines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from meshplane.app import ControlPlane, Settings
from tests.envoy_harness import Envoy, start_envoy

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"
REQUEST = b"GET /bench HTTP/1.1\r\nHost: web\r\n\r\n"


class _Backend(asyncio.Protocol):
    """Answers every request with a fixed 200 (requests are small and come one at a time per connection)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) != -1:
            self.buffer = self.buffer[end + 4 :]
            self.transport.write(RESPONSE)


def policy(backend_port: int, collector_port: int, telemetry: bool) -> str:
    text = (
        "services:\n"
        f"  - name: web\n    port: 8080\n    endpoints: [{{address: 127.0.0.1, port: {backend_port}}}]\n"
        "  - name: otel\n    namespace: observability\n    ports: [{name: otlp, port: 4317, protocol: grpc}]\n"
        f"    endpoints: [{{address: 127.0.0.1, port: {collector_port}}}]\n"
    )
    if telemetry:
        text += (
            "telemetry:\n"
            "  collectors: [{name: otel, service: observability/otel}]\n"
            "  access_logs: [{to: collector, collector: otel}]\n"
            "  tracing: [{collector: otel, sampling: 100}]\n"
        )
    return text


async def _connection(port: int, until: float) -> int:
    """Requests answered on one keep-alive connection until `until`."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    done = 0
    try:
        while time.perf_counter() < until:
            writer.write(REQUEST)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"unexpected answer: {head[:80]!r}")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
            await reader.readexactly(length)
            done += 1
    finally:
        writer.close()
    return done


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far (fields 14 and 15 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _run(envoy: Envoy, seconds: float, connections: int) -> tuple[float, float]:
    """Requests a second, and Envoy's CPU microseconds per request, over one run."""
    cpu_before = _cpu_seconds(envoy.process.pid)
    started = time.perf_counter()
    counts = await asyncio.gather(*(_connection(envoy.outbound_port, started + seconds) for _ in range(connections)))
    elapsed = time.perf_counter() - started
    requests = sum(counts)
    return requests / elapsed, 1e6 * (_cpu_seconds(envoy.process.pid) - cpu_before) / max(1, requests)


async def _holding(envoy: Envoy, telemetry: bool) -> None:
    async def check() -> bool:
        dump = await envoy.admin("/config_dump?resource=dynamic_listeners")
        routed = (await envoy.request("web", "/bench"))[0] == 200
        return routed and (("envoy.tracers.opentelemetry" in dump) == telemetry)

    await envoy.eventually(check, f"the listener with telemetry {'on' if telemetry else 'off'}")


async def measure(runs: int, seconds: float, connections: int) -> dict[str, list[float]]:
    work = Path(tempfile.mkdtemp(prefix="meshplane-telemetry-bench-"))
    (work / "policy").mkdir()
    loop = asyncio.get_running_loop()
    backend = await loop.create_server(_Backend, "127.0.0.1", 0)
    backend_port = backend.sockets[0].getsockname()[1]
    receiver = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.otlp_receiver", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    assert receiver.stdin is not None
    assert receiver.stdout is not None
    collector_port = int(await receiver.stdout.readline())
    policy_file = work / "policy" / "mesh.yaml"
    policy_file.write_text(policy(backend_port, collector_port, telemetry=False))
    plane = ControlPlane(
        Settings(config=work / "policy", xds_address="127.0.0.1:0", status_address="127.0.0.1:0", poll_interval=1.0)
    )
    await plane.start()
    stop = asyncio.Event()
    serving = asyncio.create_task(plane.run(stop))
    envoy = await start_envoy(work / "envoy", plane.xds_port, node_id="telemetry-bench")
    results: dict[str, list[float]] = {"off": [], "on": [], "off_cpu_us": [], "on_cpu_us": []}
    try:
        for index in range(runs * 2):
            telemetry = index % 2 == 1
            temporary = policy_file.with_suffix(".tmp")
            temporary.write_text(policy(backend_port, collector_port, telemetry))
            temporary.rename(policy_file)
            await _holding(envoy, telemetry)
            rate, cpu = await _run(envoy, seconds, connections)
            name = "on" if telemetry else "off"
            results[name].append(rate)
            results[f"{name}_cpu_us"].append(cpu)
            print(
                f"run {index + 1}: telemetry {name}: {rate:,.0f} requests/s, Envoy {cpu:.1f} µs CPU a request",
                flush=True,
            )
    finally:
        await envoy.stop()
        stop.set()
        await serving
        receiver.stdin.close()
        spans, records = (await receiver.stdout.read()).split()
        await receiver.wait()
        backend.close()
    print(f"the collector received {int(spans):,} spans and {int(records):,} log records")
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=6, help="runs of each policy (alternating)")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    results = asyncio.run(measure(args.runs, args.seconds, args.connections))
    off, on = statistics.median(results["off"]), statistics.median(results["on"])
    off_cpu, on_cpu = statistics.median(results["off_cpu_us"]), statistics.median(results["on_cpu_us"])
    print(f"median requests/s: off {off:,.0f}, on {on:,.0f}; on/off {on / off:.3f}")
    print(f"median Envoy CPU a request: off {off_cpu:.1f} µs, on {on_cpu:.1f} µs; on/off {on_cpu / off_cpu:.2f}")
    print(
        json.dumps(
            {
                "seconds": args.seconds,
                "connections": args.connections,
                "off_rps": [round(r) for r in results["off"]],
                "on_rps": [round(r) for r in results["on"]],
                "median_off_rps": round(off),
                "median_on_rps": round(on),
                "ratio_on_off": round(on / off, 3),
                "median_envoy_cpu_us_off": round(off_cpu, 1),
                "median_envoy_cpu_us_on": round(on_cpu, 1),
                "envoy_cpu_ratio_on_off": round(on_cpu / off_cpu, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
