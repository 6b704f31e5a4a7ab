"""A Kubernetes write as a cluster makes it, to the last of N proxies holding it: the real
`meshplane serve --kubernetes` process watching a real kube-apiserver on a real etcd, and Delta
streams of the Go load client holding the full config.

Run: .venv/bin/python -m benchmarks.kubernetes_write [--services 1000] [--endpoints 10] [--streams 1000]
     [--writes 10] [--gap 2] [--json FILE] [--server-root DIR]

The API server is the test suite's (Kubernetes 1.20, built by `make kube-apiserver`; started by
tests/k8s/real_apiserver.py with its watch cache on, as a cluster's is). Through its REST API, one
namespace gets `--services` Services, each with one EndpointSlice of `--endpoints` endpoints
(`discovery.k8s.io/v1beta1`: 1.20 serves no v1, and meshplane falls back to v1beta1); then
`meshplane serve --kubernetes` (default debounce) starts on it, with a kubeconfig, and `--streams`
Delta streams (`deltaload`, built as `benchmarks.scale` builds it) sync.

Each write replaces the address of one endpoint of one EndpointSlice (another Service each time)
by a PUT of the slice, `--writes` times, `--gap` seconds apart. Figures, median and p90 of the writes:
- `write_to_last_ms`: from just before the PUT to the moment the last stream holds the new
  endpoints, as the client records it: the API server's write to etcd, its watch event, meshplane's
  watch and mapping, the debounce, translation and the push are all in it (`write_to_first_ms`: the
  first stream);
- `apiserver_write_ms`: the PUT's own round trip, the part the API server adds before anything of
  meshplane's runs.

go-control-plane has no Kubernetes source, so there is no baseline to run beside it. Everything
listens on 127.0.0.1; the machine's cores are shared by the API server, etcd, meshplane and the
client: report the load average (printed with the figures) and compare runs of one sitting.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kubernetes_asyncio.client import ApiClient

from benchmarks.policy_edit import first_sync, load_average, serving_with
from benchmarks.registration_path import quantile
from benchmarks.scale import build_tools
from tests.k8s import objects as k
from tests.k8s.real_apiserver import ADMIN_TOKEN, KUBE_MISSING, binaries, call_ok, start_cluster

ROOT = Path(__file__).resolve().parent.parent
NAMESPACE = "bench"
SLICES = f"/apis/discovery.k8s.io/v1beta1/namespaces/{NAMESPACE}/endpointslices"
SERVICES = f"/api/v1/namespaces/{NAMESPACE}/services"
CONCURRENT_CREATES = 16  # the set-up's requests in flight: enough to keep the API server busy


def service_name(index: int) -> str:
    return f"svc-{index:05d}"


def service(index: int) -> dict[str, Any]:
    body = k.service(service_name(index), NAMESPACE, ports=[k.port("http", 80, target=8080)])
    del body["spec"]["clusterIP"]  # the API server allocates one
    return body


def endpoint_slice(index: int, endpoints: int) -> dict[str, Any]:
    addresses = [f"10.{index // 250 % 250}.{index % 250}.{number + 1}" for number in range(endpoints)]
    return k.endpoint_slice(
        f"{service_name(index)}-1",
        service_name(index),
        NAMESPACE,
        [k.endpoint(address) for address in addresses],
        ports=[("http", 8080)],
        api_version="discovery.k8s.io/v1beta1",
    )


def written_address(write: int) -> str:
    """The address write number `write` gives its endpoint: 10.255.x.y, which no generated one uses."""
    return f"10.255.{write // 250 % 250}.{write % 250 + 1}"


async def populate(client: ApiClient, services: int, endpoints: int) -> list[dict[str, Any]]:
    """The namespace, its Services and their EndpointSlices, created; returns the slices as the
    API server holds them, by service index."""
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
    await call_ok(client, "POST", "/api/v1/namespaces", namespace)
    limit = asyncio.Semaphore(CONCURRENT_CREATES)

    async def create(index: int) -> dict[str, Any]:
        async with limit:
            await call_ok(client, "POST", SERVICES, service(index))
            created: dict[str, Any] = await call_ok(client, "POST", SLICES, endpoint_slice(index, endpoints))
            return created

    return list(await asyncio.gather(*(create(index) for index in range(services))))


@contextlib.contextmanager
def serving(root: Path, kubeconfig: Path, xds_port: int, status_port: int) -> Iterator[subprocess.Popen[bytes]]:
    """`meshplane serve --kubernetes` of the checkout at `root` on the benchmark's namespace, as a user
    runs it (default debounce); ended by SIGTERM."""
    sources = ["--kubernetes", "--kubeconfig", str(kubeconfig), "--namespace", NAMESPACE]
    with serving_with(root, sources, xds_port, status_port) as process:
        yield process


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 1),
        "p90": round(quantile(values, 0.9), 1),
        "max": round(max(values), 1),
    }


async def measure(
    root: Path,
    deltaload: Path,
    services: int,
    endpoints: int,
    streams: int,
    writes: int,
    gap: float,
    settle: float,
    port: int,
) -> dict[str, Any]:
    """`writes` writes of one endpoint, `gap` seconds apart; each timed to the last of `streams`."""
    found = binaries()
    if found is None:
        raise SystemExit(f"benchmarks.kubernetes_write: {KUBE_MISSING}")
    with tempfile.TemporaryDirectory(prefix="bench-k8s-write-") as work:
        avoid = frozenset((port, port + 1))
        cluster = await asyncio.to_thread(start_cluster, Path(work) / "kube", *found, uncached=False, avoid=avoid)
        try:
            apiserver = cluster.cached
            assert apiserver is not None
            client = apiserver.client()
            try:
                started = time.perf_counter()
                slices = await populate(client, services, endpoints)
                populate_s = time.perf_counter() - started
                kubeconfig = apiserver.kubeconfig(Path(work) / "kubeconfig", ADMIN_TOKEN)
                watch = settle + writes * gap + 8.0 + streams / 200
                written: list[float] = []  # unix ms just before each PUT
                put_ms: list[float] = []
                with serving(root, kubeconfig, port, port + 1) as server:
                    load_client, _ = await asyncio.to_thread(first_sync, server, deltaload, port, streams, watch, 300)
                    await asyncio.sleep(settle)
                    load = load_average()
                    for write in range(writes):
                        index = write * services // writes % services
                        body = copy.deepcopy(slices[index])
                        body["endpoints"][0]["addresses"] = [written_address(write)]
                        path = f"{SLICES}/{body['metadata']['name']}"
                        written.append(time.time() * 1000)
                        before = time.perf_counter()
                        slices[index] = await call_ok(client, "PUT", path, body)
                        put_ms.append((time.perf_counter() - before) * 1000)
                        await asyncio.sleep(gap)
                    await asyncio.to_thread(load_client.finish, watch + 120)
            finally:
                await client.close()
        finally:
            await asyncio.to_thread(cluster.stop)
    done = load_client.event("done")
    load_client.first_error()  # removes its log
    reached = []  # per update that follows a write: (write, streams, first ms, last ms)
    for update in load_client.updates():
        before_update = [number for number, at in enumerate(written) if at <= update["first_unix_ms"] + 5]
        if before_update:
            number = before_update[-1]
            first = update["first_unix_ms"] - written[number]
            reached.append((number, update["streams"], first, first + update["last_ms"]))
    result: dict[str, Any] = {
        "services": services,
        "endpoints": services * endpoints,
        "streams": streams,
        "writes": writes,
        "load_average": load,
        "populate_s": round(populate_s, 1),
        "updates": len(reached),
        "writes_reached": len({number for number, _, _, _ in reached}),
        "errors": done.get("errors"),
        "apiserver_write_ms": summary(put_ms),
    }
    if reached:
        result["reached_streams"] = min(count for _, count, _, _ in reached)
        result["write_to_first_ms"] = summary([first for _, _, first, _ in reached])
        result["write_to_last_ms"] = summary([last for _, _, _, last in reached])
    return result


def table(row: dict[str, Any]) -> str:
    lines = ["| figure | median | p90 | max |", "| --- | ---: | ---: | ---: |"]
    for figure in ("write_to_last_ms", "write_to_first_ms", "apiserver_write_ms"):
        if figure in row:
            values = row[figure]
            lines.append(f"| {figure} | {values['median']} | {values['p90']} | {values['max']} |")
    return "\n".join(lines) + f"\n\nload average (1, 5, 15 min): {row['load_average']}"


def valid(row: dict[str, Any]) -> bool:
    """Every write reached every stream, as exactly one update, and no stream failed."""
    return bool(
        row["errors"] == 0
        and row["updates"] == row["writes"]
        and row["writes_reached"] == row["writes"]
        and row.get("reached_streams") == row["streams"]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--writes", type=int, default=10, help="writes timed; figures are their median and p90")
    parser.add_argument("--gap", type=float, default=2.0, help="seconds between writes: past the last one's push")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds between the streams' sync and the writes")
    parser.add_argument("--port", type=int, default=18650, help="xDS port; the status port is the next")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--server-root", type=Path, default=ROOT, help="run meshplane from this checkout")
    args = parser.parse_args(argv)
    deltaload = build_tools()["deltaload"]
    row = asyncio.run(
        measure(
            args.server_root,
            deltaload,
            args.services,
            args.endpoints,
            args.streams,
            args.writes,
            args.gap,
            args.settle,
            args.port,
        )
    )
    print(json.dumps(row), flush=True)
    print(table(row))
    if args.json:
        args.json.write_text(json.dumps(row, indent=1))
    if not valid(row):
        print("NOT VALID: a write did not reach every stream exactly once, or a stream failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
