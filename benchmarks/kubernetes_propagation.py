"""From an EndpointSlice change on the API server to a real Envoy routing by it; and the control
plane's CPU time per endpoint change. At 100, 1,000 and 5,000 services (10 endpoints each).

Run: .venv/bin/python -m benchmarks.kubernetes_propagation [--sizes 100 1000 5000] [--runs 10] [--changes 30]

The fake API server (tests/k8s/fake_apiserver.py) runs in a child process, so the CPU time
measured here (`time.process_time()` of this process) is the control plane's alone: the watch,
the mapping, the merge, translation, snapshots and the xDS push to the connected Envoy.

- propagation: `svc-0`'s slice is switched between two local backends; timed until a request
  through Envoy is answered by the new one (Envoy polled every 5 ms). Includes the debounce
  window (`--debounce-quiet`, 100 ms by default, as `meshplane serve`).
- CPU per endpoint change: one endpoint of a different service changed at a time, each waited for
  until published (no Envoy polling meanwhile); CPU seconds of this process / number of changes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from meshplane.app import ControlPlane, Settings
from tests.envoy_harness import start_backend, start_envoy
from tests.k8s import objects as k
from tests.k8s.fake_apiserver import FakeApiServer, free_port
from tests.k8s.test_kubernetes_app import write_kubeconfig

ENDPOINTS_PER_SERVICE = 10


def service_slice(index: int, first_address: str = "", port: int = 8080) -> dict[str, Any]:
    addresses = [f"10.{index // 250 % 250}.{index % 250}.{j + 1}" for j in range(ENDPOINTS_PER_SERVICE)]
    if first_address:
        addresses = [first_address]  # svc-0: one local backend, so Envoy's answer shows which
    return k.endpoint_slice(
        f"svc-{index}-x", f"svc-{index}", "bench", [k.endpoint(a, zone=f"z{j % 3}") for j, a in enumerate(addresses)],
        ports=[("http", port)],
    )  # fmt: skip


def _serve(port: int, services: int, backend_port: int, commands: Any, ready: Any) -> None:
    """The child process: a fake API server with `services` services, changed on command."""

    async def main() -> None:
        server = FakeApiServer(port=port)
        for index in range(services):
            server.apply(k.service(f"svc-{index}", "bench", ports=[k.port("http", 80)]))
            server.apply(service_slice(index, "127.0.0.1" if index == 0 else "", backend_port if index == 0 else 8080))
        await server.start()
        loop = asyncio.get_running_loop()
        done = asyncio.Event()

        def listen() -> None:
            while (command := commands.get()) is not None:
                loop.call_soon_threadsafe(server.apply, command)
            loop.call_soon_threadsafe(done.set)

        threading.Thread(target=listen, daemon=True).start()
        ready.set()
        await done.wait()
        await server.stop()

    asyncio.run(main())


async def measure(services: int, runs: int, changes: int, debounce_quiet: float) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="meshplane-k8s-bench-"))
    a, b = await start_backend("a"), await start_backend("b")
    port = free_port()
    context = multiprocessing.get_context("spawn")
    commands, ready = context.Queue(), context.Event()
    child = context.Process(target=_serve, args=(port, services, a.port, commands, ready), daemon=True)
    child.start()
    await asyncio.to_thread(ready.wait, 300)
    kubeconfig = write_kubeconfig(work / "kubeconfig", f"http://127.0.0.1:{port}")
    plane = ControlPlane(
        Settings(
            kubernetes=True, kubeconfig=kubeconfig, xds_address="127.0.0.1:0", status_address="127.0.0.1:0",
            debounce_quiet=debounce_quiet,
        )
    )  # fmt: skip
    await plane.start()
    stop = asyncio.Event()
    serving = asyncio.create_task(plane.run(stop))
    envoy = await start_envoy(work / "envoy", plane.xds_port, node_id="bench", delta=True)
    result: dict[str, Any] = {"services": services, "endpoints": services * ENDPOINTS_PER_SERVICE}
    try:
        synced_at = time.perf_counter()

        async def answered_by(name: str) -> bool:
            status, body, _ = await envoy.request("svc-0.bench")
            return status == 200 and body.startswith(name)

        await envoy.eventually(lambda: answered_by("a"), "first config", deadline=600)
        result["initial_sync_to_envoy_seconds"] = round(time.perf_counter() - synced_at, 3)

        timings = []
        current = "a"
        for _ in range(runs):
            target = "b" if current == "a" else "a"
            started = time.perf_counter()
            commands.put(service_slice(0, "127.0.0.1", (b if target == "b" else a).port))
            while not await answered_by(target):  # noqa: ASYNC110 - polling Envoy is what is measured
                await asyncio.sleep(0.005)
            timings.append(time.perf_counter() - started)
            current = target
        result["propagation_ms"] = {
            "median": round(statistics.median(timings) * 1000, 1),
            "max": round(max(timings) * 1000, 1),
            "runs": [round(t * 1000, 1) for t in timings],
        }

        # CPU per endpoint change: one endpoint of one service at a time, each waited for.
        generation = plane.publisher.state.mesh_generation
        cpu_started, wall_started = time.process_time(), time.perf_counter()
        publish_seconds = []
        for change in range(changes):
            index = 1 + change % (services - 1)
            changed = service_slice(index)
            changed["endpoints"][0]["addresses"] = [f"10.254.{change // 250}.{change % 250 + 1}"]
            commands.put(changed)
            while plane.publisher.state.mesh_generation == generation:  # noqa: ASYNC110
                await asyncio.sleep(0.01)  # coarse: this process's own polling is counted too
            generation = plane.publisher.state.mesh_generation
            publish_seconds.append(plane.publisher.state.duration_seconds)
        cpu = time.process_time() - cpu_started
        result["cpu_ms_per_endpoint_change"] = round(cpu / changes * 1000, 2)
        result["publish_ms_median"] = round(statistics.median(publish_seconds) * 1000, 2)
        result["wall_ms_per_change"] = round((time.perf_counter() - wall_started) / changes * 1000, 1)
        result["endpoints_only_publications"] = plane.publisher.state.endpoints_only
    finally:
        await envoy.stop()
        stop.set()
        await serving
        commands.put(None)
        await a.close()
        await b.close()
        child.join(10)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--changes", type=int, default=30)
    parser.add_argument("--debounce-quiet", type=float, default=0.1)
    args = parser.parse_args()
    results = []
    for size in args.sizes:
        result = asyncio.run(measure(size, args.runs, args.changes, args.debounce_quiet))
        results.append(result)
        print(
            f"{size:>5} services: EndpointSlice → Envoy median {result['propagation_ms']['median']} ms "
            f"(max {result['propagation_ms']['max']} ms); control-plane CPU "
            f"{result['cpu_ms_per_endpoint_change']} ms per endpoint change "
            f"(publish {result['publish_ms_median']} ms); "
            f"first sync to Envoy {result['initial_sync_to_envoy_seconds']} s",
            flush=True,
        )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
