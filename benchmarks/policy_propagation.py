"""How long from a policy file change to a real Envoy serving it.

Run: .venv/bin/python -m benchmarks.policy_propagation [--runs 10] [--poll-interval 1.0]

Each run rewrites the policy directory so `web` points at the other of two backends, and times
until a request through Envoy's listener is answered by the new backend (polling Envoy every
5 ms). The time includes the file poll interval, the debounce window (100 ms quiet, default),
translation, the xDS push and Envoy applying it. Prints every run and the median, as JSON too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from meshplane.app import ControlPlane, Settings
from tests.envoy_harness import start_backend, start_envoy


def policy(port: int) -> str:
    return f"services:\n  - name: web\n    port: 8080\n    endpoints:\n      - {{address: 127.0.0.1, port: {port}}}\n"


async def measure(runs: int, poll_interval: float, delta: bool) -> list[float]:
    work = Path(tempfile.mkdtemp(prefix="meshplane-bench-"))
    (work / "policy").mkdir()
    a, b = await start_backend("a"), await start_backend("b")
    (work / "policy" / "web.yaml").write_text(policy(a.port))
    plane = ControlPlane(
        Settings(
            config=work / "policy", xds_address="127.0.0.1:0", status_address="127.0.0.1:0", poll_interval=poll_interval
        )
    )
    await plane.start()
    stop = asyncio.Event()
    serving = asyncio.create_task(plane.run(stop))
    envoy = await start_envoy(work / "envoy", plane.xds_port, node_id="bench", delta=delta)
    timings = []
    try:

        async def answered_by(name: str) -> bool:
            status, body, _ = await envoy.request("web")
            return status == 200 and body.startswith(name)

        await envoy.eventually(lambda: answered_by("a"), "first config")
        current = "a"
        for _ in range(runs):
            target = "b" if current == "a" else "a"
            port = b.port if target == "b" else a.port
            started = time.perf_counter()
            temporary = work / "policy" / "web.tmp"
            temporary.write_text(policy(port))
            temporary.rename(work / "policy" / "web.yaml")
            while not await answered_by(target):  # noqa: ASYNC110 - polling Envoy is what is measured
                await asyncio.sleep(0.005)
            timings.append(time.perf_counter() - started)
            current = target
    finally:
        await envoy.stop()
        stop.set()
        await serving
        await a.close()
        await b.close()
    return timings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--poll-interval", type=float, default=1.0)
    args = parser.parse_args()
    results = {}
    for delta in (True, False):
        timings = asyncio.run(measure(args.runs, args.poll_interval, delta))
        name = "delta" if delta else "sotw"
        results[name] = {
            "runs_ms": [round(t * 1000, 1) for t in timings],
            "median_ms": round(statistics.median(timings) * 1000, 1),
            "max_ms": round(max(timings) * 1000, 1),
        }
        print(f"{name}: median {results[name]['median_ms']} ms, runs {results[name]['runs_ms']}")
    print(json.dumps({"poll_interval_s": args.poll_interval, **results}))


if __name__ == "__main__":
    main()
