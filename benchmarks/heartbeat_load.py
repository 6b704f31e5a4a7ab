"""Open-loop unary Heartbeat load on the registry's gRPC API, from `benchmarks/heartbeatload` (Go).

What it measures: every device of a registered fleet renews its lease once per `period` with a
unary `meshplane.edge.v1.Registry/Heartbeat` call, the calls spread evenly over the period and
round-robin over the replicas (device i at target i % len(targets), over one of `connections`
gRPC connections there), each started at its due time whatever is still in flight. Latency runs
from the due time to the answer, so a server falling behind shows in the tail instead of slowing
the load down; the generator's own schedule lag (send time - due time) and CPU seconds show that
it kept pace. Per target: p50/p90/p99/max, the calls over 50 ms by second of the window, the 10
slowest, and the failures by status code and message.

Why Go: 100,000 devices renewing every 30 s is 3,333 calls a second. One Python asyncio client
could not start that many unary calls a second on this 2-core machine (its event loop fell seconds
behind, so it measured itself); the Go client does it with a small share of one core. It is built
by `benchmarks/build_go_client.sh heartbeatload` from the Debian-packaged Go toolchain and grpc-go
the go-control-plane baseline's build script unpacks (nothing else is downloaded).

    binary = build_heartbeat_load()
    figures = await run_heartbeat_load(binary, ["127.0.0.1:18001"], [("bike-000000", lease)],
                                       period=30, token="bench-bikes")
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def build_heartbeat_load() -> Path:
    """Builds `heartbeatload` (on first use; instant while main.go is unchanged); returns the binary."""
    built = subprocess.run(
        [str(HERE / "build_go_client.sh"), "heartbeatload"], capture_output=True, text=True, check=False
    )
    if built.returncode != 0:
        raise RuntimeError(f"building heartbeatload failed ({built.returncode}):\n{built.stderr[-3000:]}")
    return Path(built.stdout.strip())


async def run_heartbeat_load(
    binary: Path,
    targets: Sequence[str],
    devices: Sequence[tuple[str, str]],
    *,
    period: float,
    rounds: int = 1,
    connections: int = 8,
    token: str,
) -> dict[str, Any]:
    """Renews every `(device_id, lease_id)` once per `period` seconds for `rounds` periods through
    `targets` (host:port of each replica's registry gRPC API) with the bearer `token`; returns the
    generator's JSON report (keys in the module docstring; `per_target` keyed by address, in order).
    Failed calls do not raise (they are counted in each target's `failed`); a generator that could
    not run (bad input, connections never READY) raises RuntimeError with its stderr."""
    if not targets or not devices:
        raise ValueError("run_heartbeat_load needs at least one target and one device")
    for device_id, lease_id in devices:
        if not device_id or not lease_id or any(c in device_id + lease_id for c in "\t\r\n"):
            raise ValueError(f"device {device_id!r} / lease {lease_id!r} cannot be written as one line")
    with tempfile.TemporaryDirectory(prefix="heartbeatload-") as work:
        listing = Path(work) / "devices.tsv"
        listing.write_text("".join(f"{device_id}\t{lease_id}\n" for device_id, lease_id in devices))
        command = [str(binary), "-targets", ",".join(targets), "-devices", str(listing)]
        # A Go duration takes no exponent (str(1e-05) would not parse): milliseconds to the microsecond.
        command += ["-period", f"{period * 1000:.3f}ms", "-rounds", str(rounds)]
        command += ["-connections", str(connections), "-token", token]
        process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        try:
            stdout, stderr = await process.communicate()
        finally:
            if process.returncode is None:  # cancelled: do not leave the generator running
                process.kill()
                await process.wait()
    if process.returncode != 0:
        raise RuntimeError(f"heartbeatload exited {process.returncode}:\n{stderr.decode(errors='replace')[-3000:]}")
    report: dict[str, Any] = json.loads(stdout)
    return report
