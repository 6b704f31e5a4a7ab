"""meshplane's own API as a cluster runs it: a TrafficPolicy written to the API server, to the
Envoy serving it and to the status on the object, through the real `meshplane serve --kubernetes
--meshplane-api` process watching a real kube-apiserver; and the start-up to the first full config.

Run: .venv/bin/python -m benchmarks.meshplane_api [--services 5000] [--objects 2000] [--writes 20]
     [--gap 0.5] [--json FILE] [--server-root DIR] [--py-spy FILE]

The API server is the test suite's (tests/k8s/real_apiserver.py, watch cache on) with meshplane's
CRDs (deploy/kubernetes/crds/). One namespace gets `--services` Services (port 80), each with one
v1beta1 EndpointSlice whose endpoint is an HTTP server on 127.0.0.1, and `--objects` objects of
meshplane's kinds, a mix as a team's configuration holds them: half TrafficPolicies (policy i on
Service i), 35% MeshRoutes (each on a Service of its own, a header rule and a default rule), a few
EdgeSites (one per 500 objects, at most 4, ranges apart) and ExternalServices for the rest. One
real Envoy, bootstrapped as a sidecar (tests/envoy_harness.py), gets every service.

Figures:
- `start_to_full_config_ms`: from starting `meshplane serve` (the Envoy started right after it) to
  the Envoy holding every cluster (`--services` + the ExternalServices, its `active_clusters`
  stat): the lists, parsing, the first merge, translation and the push are in it;
- `write_to_envoy_ms` (median, p99, max over `--writes`): from just before the PATCH that sets a
  TrafficPolicy's `connect_timeout` to a new value to the moment the Envoy's config_dump shows
  that value on the target's cluster (the API server's write and watch, parsing off the event
  loop, the default debounce, the merge, translation, the push and Envoy applying it); the
  config_dump is asked for that one cluster (`name_regex`) every `POLL_S`;
- `write_to_status_ms`: from the same moment to the first watch event of the object carrying a
  condition whose `observedGeneration` is the written generation (meshplane's status write);
  `write_to_programmed_ms` to `Programmed` True for it (the Envoy's ACK seen by meshplane);
  `each_write_ms` lists every write's three figures, in order;
- `analyze_s`: `meshplane analyze --kubernetes` of the whole set as a user runs it (wall time,
  the interpreter's start included), before meshplane serves; `analyze_exit` its exit status
  (0: the set is clean, as it is built to be);
- `server_cpu_ms_per_write`: the meshplane process's CPU (user + system, /proc) over the writes,
  per write; the writes are `--gap` seconds apart (the status writes of one settle before the next).

`--py-spy FILE` records the server with py-spy over the timed writes, as collapsed stacks (as
`benchmarks.gateway_api` does); the sampling costs the server a little CPU, so take the figures
from a run without it.

Everything listens on 127.0.0.x; the API server, etcd, meshplane, the Envoy and this client share
the machine's cores: report the load average (printed with the figures) and compare runs of one
sitting.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import yaml
from kubernetes_asyncio.client import ApiClient

from benchmarks.gateway_api import cached_apiserver, echo_servers, py_spy, summary
from benchmarks.policy_edit import load_average, serving_with
from benchmarks.scale import proc_cpu_seconds
from meshplane.discovery.kubernetes_watching import Resource, watch_events
from meshplane.discovery.meshplane_api.kinds import API_VERSION, GROUP, KINDS, VERSION, kind_named
from tests.envoy_harness import Envoy, start_envoy
from tests.k8s import objects as k
from tests.k8s.real_apiserver import (
    ADMIN_TOKEN,
    CRDS,
    KUBE_MISSING,
    MERGE_PATCH,
    binaries,
    call_ok,
    wait_established,
)
from tests.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
CRD_FOLDER = ROOT / "deploy" / "kubernetes" / "crds"
NAMESPACE = "bench"
SERVICES = f"/api/v1/namespaces/{NAMESPACE}/services"
SLICES = f"/apis/discovery.k8s.io/v1beta1/namespaces/{NAMESPACE}/endpointslices"
CONCURRENT_CREATES = 16  # the set-up's requests in flight: enough to keep the API server busy
SERVICE_PORT = 80
EXTERNAL_PORT = 8080
POLL_S = 0.005  # between two config_dump reads of the Envoy while waiting for a write
DEADLINE_S = 120.0  # for any one write to be seen


def service_name(index: int) -> str:
    return f"svc-{index:05d}"


def cluster_name(name: str, port: int) -> str:
    """The Envoy cluster of one service port (meshplane.xds.names.cluster_name's contract)."""
    return f"{name}.{NAMESPACE}:{port}"


def path_of(kind: str, name: str = "") -> str:
    found = kind_named(kind)
    assert found is not None, kind
    where = f"/namespaces/{NAMESPACE}" if found.namespaced else ""
    return f"/apis/{GROUP}/{VERSION}{where}/{found.plural}" + (f"/{name}" if name else "")


def ours(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    found = kind_named(kind)
    assert found is not None, kind
    metadata = {"name": name, **({"namespace": NAMESPACE} if found.namespaced else {})}
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": metadata, "spec": spec}


def mix(services: int, objects: int) -> dict[str, int]:
    """How many objects of each kind `objects` holds (see the module docstring)."""
    policies = objects // 2
    routes = min(objects * 35 // 100, services - min(policies, services))
    sites = max(1, min(4, objects // 500))
    return {
        "TrafficPolicy": policies,
        "MeshRoute": routes,
        "EdgeSite": sites,
        "ExternalService": objects - policies - routes - sites,
    }


def timeout_ms(write: int) -> int:
    """A connect_timeout no write used before: 101 ms on, never a whole second."""
    return 101 + write % 899


def policy_objects(services: int, counts: dict[str, int]) -> list[dict[str, Any]]:
    """Every object of meshplane's kinds the set-up creates."""
    found = []
    for index in range(counts["TrafficPolicy"]):
        target = {"group": "", "kind": "Service", "name": service_name(index % services)}
        spec = {"target_refs": [target], "connect_timeout": "1s", "load_balancing": "least_request"}
        found.append(ours("TrafficPolicy", f"tp-{index:05d}", spec))
    for index in range(counts["MeshRoute"]):
        name = service_name(counts["TrafficPolicy"] + index)
        rules = [
            {
                "match": {"headers": [{"name": "x-bench", "exact": str(index)}]},
                "to": [f"{NAMESPACE}/{name}"],
                "timeout": "2s",
            },
            {"to": [f"{NAMESPACE}/{name}"]},
        ]
        found.append(ours("MeshRoute", f"mr-{index:05d}", {"service": f"{NAMESPACE}/{name}", "rules": rules}))
    for index in range(counts["ExternalService"]):
        address = f"192.0.{2 + index // 250}.{1 + index % 250}"
        external: dict[str, Any] = {"port": EXTERNAL_PORT, "endpoints": [{"address": address}]}
        found.append(ours("ExternalService", f"ext-{index:05d}", external))
    for index in range(counts["EdgeSite"]):
        spec = {"region": "eu", "gateways": ["10.9.0.2:15080"], "device_ranges": [f"10.{100 + index}.0.0/16"]}
        found.append(ours("EdgeSite", f"bench-site-{index}", spec))
    return found


def our_crds() -> list[dict[str, Any]]:
    found = []
    for path in sorted(CRD_FOLDER.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if isinstance(document, dict) and document.get("kind") == "CustomResourceDefinition":
                found.append(document)
    return found


async def populate(client: ApiClient, services: int, counts: dict[str, int], echo_port: int) -> None:
    """Our CRDs, the namespace, every Service and EndpointSlice, and every object of ours, created."""
    crds = our_crds()
    if len(crds) != len(KINDS):
        raise SystemExit(f"benchmarks.meshplane_api: {CRD_FOLDER} holds {len(crds)} CRDs, not {len(KINDS)}")
    for crd in crds:
        await call_ok(client, "POST", CRDS, crd)
    await wait_established(client, [crd["metadata"]["name"] for crd in crds], deadline=120.0)
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
    await call_ok(client, "POST", "/api/v1/namespaces", namespace)
    limit = asyncio.Semaphore(CONCURRENT_CREATES)

    async def create(path: str, body: dict[str, Any]) -> None:
        async with limit:
            await call_ok(client, "POST", path, body)

    def service(index: int) -> dict[str, Any]:
        body = k.service(service_name(index), NAMESPACE, ports=[k.port("http", SERVICE_PORT, target=8080)])
        del body["spec"]["clusterIP"]  # the API server allocates one
        return body

    def endpoint_slice(index: int) -> dict[str, Any]:
        name = service_name(index)
        return k.endpoint_slice(
            f"{name}-1", name, NAMESPACE, [k.endpoint("127.0.0.1")], ports=[("http", echo_port)],
            api_version="discovery.k8s.io/v1beta1",
        )  # fmt: skip

    await asyncio.gather(*(create(SERVICES, service(index)) for index in range(services)))
    await asyncio.gather(*(create(SLICES, endpoint_slice(index)) for index in range(services)))
    await asyncio.gather(*(create(path_of(obj["kind"]), obj) for obj in policy_objects(services, counts)))


async def cluster_count(envoy: Envoy) -> int:
    value = await envoy.stat("cluster_manager.active_clusters")
    return int(value) if isinstance(value, int) else 0


async def connect_timeout_of(envoy: Envoy, cluster: str) -> str | None:
    """The connect_timeout of `cluster` as the Envoy's config_dump shows it (that cluster alone)."""
    regex = cluster.replace(".", r"\.")
    dump = json.loads(await envoy.admin(f"/config_dump?resource=dynamic_active_clusters&name_regex=^{regex}$"))
    for entry in dump.get("configs", ()):
        found = entry.get("cluster", {})
        if found.get("name") == cluster:
            return str(found.get("connect_timeout"))
    return None


async def until_seen(envoy: Envoy, cluster: str, wanted: str) -> float:
    """The perf_counter time at which the Envoy first shows `wanted` on `cluster`."""
    end = time.perf_counter() + DEADLINE_S
    while True:
        seen = await connect_timeout_of(envoy, cluster)
        if seen == wanted:
            return time.perf_counter()
        if time.perf_counter() > end:
            raise RuntimeError(f"{cluster}: connect_timeout {wanted} not served in {DEADLINE_S} s; last {seen}")
        await asyncio.sleep(POLL_S)


async def status_events(client: ApiClient, name: str, version: str) -> AsyncIterator[dict[str, Any]]:
    """The TrafficPolicy `name` as each watch event after `version` brings it."""
    found = kind_named("TrafficPolicy")
    assert found is not None
    resource = Resource("TrafficPolicy", f"/apis/{GROUP}/{VERSION}", found.plural)
    async for event in watch_events(
        client, resource, version, NAMESPACE, field_selector=f"metadata.name={name}", timeout_seconds=120
    ):
        if event.get("type") in ("ADDED", "MODIFIED"):
            yield event["object"]


async def until_status(client: ApiClient, name: str, version: str, generation: int) -> tuple[float, float]:
    """The perf_counter times at which the object's status first carried a condition of
    `generation`, and `Programmed` True for it."""
    written = None
    async with asyncio.timeout(DEADLINE_S):
        async for obj in status_events(client, name, version):
            conditions = (obj.get("status") or {}).get("conditions") or []
            now = time.perf_counter()
            mine = [c for c in conditions if c.get("observedGeneration") == generation]
            if mine and written is None:
                written = now
            if any(c.get("type") == "Programmed" and c.get("status") == "True" for c in mine):
                assert written is not None
                return written, now
    raise RuntimeError(f"TrafficPolicy {name}: the watch ended before generation {generation} was Programmed")


async def timed_writes(
    client: ApiClient,
    envoy: Envoy,
    server_pid: int,
    services: int,
    policies: int,
    writes: int,
    gap: float,
    profile: Path | None = None,
) -> dict[str, Any]:
    """`writes` connect_timeout changes, each to a different TrafficPolicy (round robin), timed to
    the Envoy, to the status write and to Programmed (the server's py-spy samples into `profile`)."""
    timings: dict[str, list[float]] = {"envoy": [], "status": [], "programmed": []}
    cpu_before = proc_cpu_seconds(server_pid)
    with py_spy(server_pid, profile):
        await _writes(client, envoy, services, policies, writes, gap, timings)
    cpu_s = proc_cpu_seconds(server_pid) - cpu_before
    return {
        "writes_seen": len(timings["envoy"]),
        "write_to_envoy_ms": summary(timings["envoy"]),
        "write_to_status_ms": summary(timings["status"]),
        "write_to_programmed_ms": summary(timings["programmed"]),
        "server_cpu_ms_per_write": round(cpu_s / max(1, writes) * 1000, 1),
        "each_write_ms": {name: [round(value, 1) for value in values] for name, values in timings.items()},
    }


async def _writes(
    client: ApiClient,
    envoy: Envoy,
    services: int,
    policies: int,
    writes: int,
    gap: float,
    timings: dict[str, list[float]],
) -> None:
    """The timed writes, their figures (ms) appended to `timings`' `envoy`, `status` and `programmed`."""
    for write in range(writes):
        index = write % policies
        name = f"tp-{index:05d}"
        milliseconds = timeout_ms(write)
        cluster = cluster_name(service_name(index % services), SERVICE_PORT)
        started = time.perf_counter()
        patched = await call_ok(
            client, "PATCH", path_of("TrafficPolicy", name), {"spec": {"connect_timeout": f"{milliseconds}ms"}},
            MERGE_PATCH,
        )  # fmt: skip
        meta = patched["metadata"]
        seen, (written, programmed) = await asyncio.gather(
            until_seen(envoy, cluster, f"{milliseconds / 1000:.3f}s"),
            until_status(client, name, meta["resourceVersion"], int(meta["generation"])),
        )
        timings["envoy"].append((seen - started) * 1000)
        timings["status"].append((written - started) * 1000)
        timings["programmed"].append((programmed - started) * 1000)
        await asyncio.sleep(gap)  # the next write starts from a quiet server: a spacing, not a wait


async def measure(
    root: Path, services: int, objects: int, writes: int, gap: float, profile: Path | None = None
) -> dict[str, Any]:
    found = binaries()
    if found is None:
        raise SystemExit(f"benchmarks.meshplane_api: {KUBE_MISSING}")
    counts = mix(services, objects)
    if services < 2 or counts["TrafficPolicy"] < 1 or min(counts.values()) < 0:
        raise SystemExit("benchmarks.meshplane_api: needs two services and two objects at least")
    row: dict[str, Any] = {"services": services, "objects": objects, "mix": counts, "writes": writes}
    with tempfile.TemporaryDirectory(prefix="bench-meshplane-api-") as work_name:
        work = Path(work_name)
        async with cached_apiserver(work / "kube", found) as (apiserver, client), echo_servers() as echo_ports:
            started = time.perf_counter()
            await populate(client, services, counts, echo_ports[0])
            row["populate_s"] = round(time.perf_counter() - started, 1)
            kubeconfig = apiserver.kubeconfig(work / "kubeconfig", ADMIN_TOKEN)
            row.update(await asyncio.to_thread(analyze_once, root, kubeconfig))
            xds_port, status_port = free_port(), free_port()
            sources = ["--kubernetes", "--kubeconfig", str(kubeconfig), "--meshplane-api"]
            row["load_average_start"] = load_average()
            started = time.perf_counter()
            with serving_with(root, sources, xds_port, status_port) as server:
                # The Envoy connects once the server listens: else gRPC's reconnect backoff
                # (a second and more) would be in the figure.
                await _listening(server, xds_port)
                envoy = await start_envoy(work / "envoy", xds_port, node_id="bench-sidecar")
                try:
                    wanted = services + counts["ExternalService"] + _static_clusters(work / "envoy")
                    await envoy.eventually(lambda: _at_least(envoy, wanted), f"{wanted} clusters", deadline=600)
                    row["start_to_full_config_ms"] = round((time.perf_counter() - started) * 1000, 1)
                    row["load_average"] = load_average()
                    row.update(
                        await timed_writes(
                            client,
                            envoy,
                            server.pid,
                            services,
                            counts["TrafficPolicy"],
                            writes,
                            gap,
                            profile,
                        )
                    )
                finally:
                    await envoy.stop()
    return row


def analyze_once(root: Path, kubeconfig: Path) -> dict[str, Any]:
    """`meshplane analyze --kubernetes` of the whole set, as a user runs it: its wall time
    (`analyze_s`, the interpreter's start included) and exit status (`analyze_exit`: 0, the set
    is clean)."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "meshplane", "analyze", "--kubernetes", "--kubeconfig", str(kubeconfig)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        print(
            f"meshplane analyze exited {done.returncode}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}", file=sys.stderr
        )
    return {"analyze_s": round(elapsed, 2), "analyze_exit": done.returncode}


async def _listening(server: subprocess.Popen[bytes], port: int) -> None:
    """Returns once `port` on 127.0.0.1 accepts connections; fails if the server exited first."""
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"meshplane serve exited with {server.returncode} before listening")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        await asyncio.sleep(0.01)


def _static_clusters(envoy_dir: Path) -> int:
    bootstrap = yaml.safe_load((envoy_dir / "bench-sidecar.yaml").read_text())
    return len(((bootstrap.get("static_resources") or {}).get("clusters")) or ())


async def _at_least(envoy: Envoy, wanted: int) -> int | None:
    count = await cluster_count(envoy)
    return count if count >= wanted else None


def table(row: dict[str, Any]) -> str:
    lines = ["| figure | median | p99 | max |", "| --- | ---: | ---: | ---: |"]
    for figure in ("write_to_envoy_ms", "write_to_status_ms", "write_to_programmed_ms"):
        values = row.get(figure) or {}
        if values:
            lines.append(f"| {figure} | {values['median']} | {values['p99']} | {values['max']} |")
    lines += [
        "",
        f"{row['services']} Services, {row['objects']} objects of ours {row['mix']}",
        f"process start → the Envoy holds the whole config: {row['start_to_full_config_ms']} ms",
        f"meshplane analyze --kubernetes of the whole set: {row['analyze_s']} s (exit {row['analyze_exit']})",
        f"server CPU per write: {row['server_cpu_ms_per_write']} ms",
        f"load average (1, 5, 15 min): at the writes {row['load_average']}, at the start {row['load_average_start']}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, default=5000)
    parser.add_argument("--objects", type=int, default=2000, help="objects of meshplane's kinds")
    parser.add_argument("--writes", type=int, default=20, help="TrafficPolicy writes timed")
    parser.add_argument("--gap", type=float, default=0.5, help="seconds between one write seen and the next")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--server-root", type=Path, default=ROOT, help="run meshplane from this checkout")
    parser.add_argument("--py-spy", type=Path, help="record the server over the writes into this file")
    args = parser.parse_args(argv)
    row = asyncio.run(measure(args.server_root, args.services, args.objects, args.writes, args.gap, args.py_spy))
    print(json.dumps(row), flush=True)
    print(table(row))
    if args.json:
        args.json.write_text(json.dumps(row, indent=1))
    if row["writes_seen"] != args.writes or row["analyze_exit"] != 0:
        print("NOT VALID: a write was not seen, or analyze found the set not clean", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
