"""The Gateway API as a cluster runs it: an HTTPRoute written to the API server, to the last
gateway Envoy serving it, through the real `meshplane serve --kubernetes --gateway-api` process
watching a real kube-apiserver, and real gateway Envoys answering real requests.

Run: .venv/bin/python -m benchmarks.gateway_api [--services 5000] [--gateways 10] [--routes 1000]
     [--changes 30] [--gap 1] [--json FILE] [--server-root DIR] [--py-spy FILE]

The API server is the test suite's (tests/k8s/real_apiserver.py, watch cache on) with the Gateway
API v1.6.1 standard CRDs (tests/k8s/gateway_api_crds.py). Through its REST API, one namespace gets
`--services` Services (port 80), each with one v1beta1 EndpointSlice whose one endpoint is one of
`ECHOES` HTTP servers on 127.0.0.1 (service i → echo i mod 4, so neighbouring services answer with
different names); the GatewayClass `meshplane` (meshplane's default controller name); `--gateways`
Gateways, one HTTP listener on port 80 each; `--routes` HTTPRoutes, route r attached to Gateway
r mod `--gateways`, with the hostname `r-<r>.bench.example`, a PathPrefix `/app` and one backendRef.
The first `min(--gateways, --routes)` routes, the ones changed, attach to every Gateway, so that a
change has `--gateways` Envoys to reach. Each Gateway gets a real Envoy bootstrapped by
`meshplane bootstrap gateway --gateway bench/gw-NN --listen-address 127.0.0.(101+N) --port-offset …`.

Figures:
- `start_to_programmed_ms`: from starting `meshplane serve` (the Envoys started right after it)
  to every Gateway's `Programmed` condition True on the API server (the process start, the lists
  and watches, the first merge, the Envoys taking their listeners and the status writes are in it);
- `change_to_last_ms` (median, p99, max over `--changes`): from just before the PATCH that moves a
  route's backendRef to the neighbouring Service to the moment a real request through the last of
  the Envoys serving the route (all `--gateways` of them) answers from the new backend (the API
  server's write and watch, meshplane's parsing, the default debounce, resolution, translation, the
  push and Envoy applying it are all in it); `change_to_first_ms` the first Envoy; each Envoy is
  polled every `POLL_S`, which bounds the figures' resolution. Changes alternate between the
  changed routes and, per route, between its two backends; `--gap` seconds apart;
- `server_cpu_ms_per_change`: the meshplane process's CPU (user + system, /proc) over the changes,
  per change, and `net` of it: less its idle CPU over as long, measured just before;
- `rebuilds_per_change` and `rebuild_ms`: the full rebuilds (publications) the server ran over the
  changes, per change, and their mean duration (merge excluded: translate, serialise, check,
  publish), read from its `/metrics` before and after; a change costs one rebuild when nothing
  else (its own status writes coming back on the watch) causes another;
- `translate_whole_set_cold` (the first run) and `translate_whole_set_ms` (the median of
  `--translate-runs`): a component figure, in process: the objects as the API server holds them
  parsed (`parse_ms`), resolved (`resolve_ms`) and translated for every Gateway's group
  (`translate_ms`); each run parses anew, so no run reuses another's translation;
- `publish_route_change`: a component figure, in process, of the server's work for one change
  once the objects are parsed: a publisher holding every Gateway's group (at the locality the
  Envoys' bootstraps give), then `--changes` backendRef moves (at most 20), each resolved into a
  new mesh of the same Service objects (`resolve_ms`) and published (`publish_ms`: translate,
  serialise, check, for every group): the medians. The in-process figures run this checkout's
  code, whatever `--server-root` says.

`--py-spy FILE` records the server with py-spy (`.venv/bin/py-spy`, sampling at 200 Hz) over the
timed changes, as collapsed stacks (`--format raw`, one `stack count` line each) to sum by frame;
the sampling costs the server a little CPU, so take the figures from a run without it.

Everything listens on 127.0.0.x; the API server, etcd, meshplane, the Envoys, the echo servers and
this client share the machine's cores: report the load average (printed with the figures) and
compare runs of one sitting.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from kubernetes_asyncio.client import ApiClient

from benchmarks.policy_edit import load_average, serving_with
from benchmarks.registration_path import quantile
from benchmarks.scale import proc_cpu_seconds
from meshplane.bootstrap.render import DEFAULT_REGION, DEFAULT_ZONE
from meshplane.discovery.gateway_api.fields import Parsed
from meshplane.discovery.gateway_api.gateway_classes import DEFAULT_CONTROLLER_NAME, parse_gateway_class
from meshplane.discovery.gateway_api.gateways import parse_gateway
from meshplane.discovery.gateway_api.http_routes import parse_http_route
from meshplane.discovery.gateway_api.objects import GatewayApiObjects
from meshplane.discovery.gateway_api.resolve import resolve
from meshplane.discovery.kubernetes_mapping import map_service
from meshplane.model import Locality, Mesh, ProxyGroup, ProxyRole
from meshplane.model.changes import MeshChanges
from meshplane.xds.cache import SnapshotCache
from meshplane.xds.publisher import SnapshotPublisher
from meshplane.xds.translate import translate
from meshplane.xds.types import TypeUrl
from tests.envoy_harness import envoy_binary
from tests.k8s import objects as k
from tests.k8s.gateway_api_crds import GATEWAY_API_MISSING, GROUP, apply_standard_crds
from tests.k8s.real_apiserver import (
    ADMIN_TOKEN,
    KUBE_MISSING,
    MERGE_PATCH,
    RealApiServer,
    binaries,
    call,
    call_ok,
    start_cluster,
)
from tests.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
NAMESPACE = "bench"
CLASS = "meshplane"
V1 = f"/apis/{GROUP}/v1"
SERVICES = f"/api/v1/namespaces/{NAMESPACE}/services"
SLICES = f"/apis/discovery.k8s.io/v1beta1/namespaces/{NAMESPACE}/endpointslices"
GATEWAYS = f"{V1}/namespaces/{NAMESPACE}/gateways"
ROUTES = f"{V1}/namespaces/{NAMESPACE}/httproutes"
CONCURRENT_CREATES = 16  # the set-up's requests in flight: enough to keep the API server busy
ECHOES = 4  # backends; service i answers as echo i mod ECHOES
LISTENER_PORT = 80
FIRST_ADDRESS = 101  # 127.0.0.101 on: the gateway Envoys (the conformance harness uses 200 on)
POLL_S = 0.005  # between two requests to one Envoy while waiting for a change
PY_SPY = ROOT / ".venv" / "bin" / "py-spy"
PY_SPY_RATE = 200  # samples a second
# `meshplane_rebuilds_total{kind="full"} 12.0` and the like, in /metrics' text format.
_METRIC_LINE = re.compile(r'^(meshplane_rebuild(?:s_total|_duration_seconds_sum))\{kind="full"\} (\S+)$', re.M)
PATH = "/app"


def service_name(index: int) -> str:
    return f"svc-{index:05d}"


def gateway_name(index: int) -> str:
    return f"gw-{index:02d}"


def route_name(index: int) -> str:
    return f"r-{index:04d}"


def hostname(route: int) -> str:
    return f"{route_name(route)}.bench.example"


def backend_of(route: int, services: int, moved: bool = False) -> int:
    """The service index route `route` sends to: its own, or the next one once `moved`."""
    base = route * 5 % services
    return (base + 1) % services if moved else base


def echo_of(service: int) -> str:
    return f"echo-{service % ECHOES}"


def service(index: int) -> dict[str, Any]:
    body = k.service(service_name(index), NAMESPACE, ports=[k.port("http", LISTENER_PORT, target=8080)])
    del body["spec"]["clusterIP"]  # the API server allocates one
    return body


def endpoint_slice(index: int, echo_ports: list[int]) -> dict[str, Any]:
    return k.endpoint_slice(
        f"{service_name(index)}-1",
        service_name(index),
        NAMESPACE,
        [k.endpoint("127.0.0.1")],
        ports=[("http", echo_ports[index % ECHOES])],
        api_version="discovery.k8s.io/v1beta1",
    )


def gateway_class() -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": "GatewayClass",
        "metadata": {"name": CLASS},
        "spec": {"controllerName": DEFAULT_CONTROLLER_NAME},
    }


def gateway(index: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": "Gateway",
        "metadata": {"namespace": NAMESPACE, "name": gateway_name(index)},
        "spec": {
            "gatewayClassName": CLASS,
            "listeners": [{"name": "http", "port": LISTENER_PORT, "protocol": "HTTP"}],
        },
    }


def route_rules(backend: int) -> list[dict[str, Any]]:
    match = {"path": {"type": "PathPrefix", "value": PATH}}
    return [{"matches": [match], "backendRefs": [{"name": service_name(backend), "port": LISTENER_PORT}]}]


def parents_of(route: int, gateways: int) -> list[int]:
    """The Gateways route `route` attaches to: every one for a changed route, else one."""
    return list(range(gateways)) if route < gateways else [route % gateways]


def http_route(route: int, services: int, gateways: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": "HTTPRoute",
        "metadata": {"namespace": NAMESPACE, "name": route_name(route)},
        "spec": {
            "parentRefs": [{"name": gateway_name(index)} for index in parents_of(route, gateways)],
            "hostnames": [hostname(route)],
            "rules": route_rules(backend_of(route, services)),
        },
    }


@dataclass
class Created:
    """The objects as the API server holds them after the set-up."""

    services: list[dict[str, Any]]
    slices: list[dict[str, Any]]
    gateway_class: dict[str, Any]
    gateways: list[dict[str, Any]]
    routes: list[dict[str, Any]]


async def populate(client: ApiClient, services: int, gateways: int, routes: int, echo_ports: list[int]) -> Created:
    """The CRDs, the namespace, every Service and EndpointSlice, the GatewayClass, the Gateways and
    the HTTPRoutes, created."""
    await apply_standard_crds(client)
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
    await call_ok(client, "POST", "/api/v1/namespaces", namespace)
    limit = asyncio.Semaphore(CONCURRENT_CREATES)

    async def create(path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with limit:
            created: dict[str, Any] = await call_ok(client, "POST", path, body)
            return created

    made_services = await asyncio.gather(*(create(SERVICES, service(index)) for index in range(services)))
    made_slices = await asyncio.gather(
        *(create(SLICES, endpoint_slice(index, echo_ports)) for index in range(services))
    )
    made_class = await create(f"{V1}/gatewayclasses", gateway_class())
    made_gateways = await asyncio.gather(*(create(GATEWAYS, gateway(index)) for index in range(gateways)))
    made_routes = await asyncio.gather(
        *(create(ROUTES, http_route(index, services, gateways)) for index in range(routes))
    )
    return Created(list(made_services), list(made_slices), made_class, list(made_gateways), list(made_routes))


# --- the component figure: resolve + translate of the whole set, in process ---


def _keyed(parsed: list[Parsed[Any]], objects: list[dict[str, Any]]) -> dict[tuple[str, str], Parsed[Any]]:
    return {
        (obj["metadata"].get("namespace", ""), obj["metadata"]["name"]): one
        for obj, one in zip(objects, parsed, strict=True)
    }


def translate_whole_set(created: Created, groups: list[ProxyGroup]) -> dict[str, float]:
    """Parses, resolves and translates the objects for every group: the wall ms of each step
    (`parse_ms`, `resolve_ms`, `translate_ms`), their `total_ms`, and the number of route
    configurations built (`route_configurations`, a check that the set was served)."""
    started = time.perf_counter()
    mapped = [map_service(obj, [slice_]).service for obj, slice_ in zip(created.services, created.slices, strict=True)]
    services = {found.ref: found for found in mapped if found is not None}
    objects = GatewayApiObjects(
        gateway_classes=_keyed([parse_gateway_class(created.gateway_class)], [created.gateway_class]),
        gateways=_keyed([parse_gateway(obj) for obj in created.gateways], created.gateways),
        http_routes=_keyed([parse_http_route(obj) for obj in created.routes], created.routes),
    )
    parsed = time.perf_counter()
    resolution = resolve(objects, DEFAULT_CONTROLLER_NAME, services, frozenset())
    mesh = Mesh.of(list(services.values()), gateways=resolution.gateways)
    resolved = time.perf_counter()
    built = sum(len(translate(mesh, group).resources[TypeUrl.ROUTE]) for group in groups)
    translated = time.perf_counter()
    return {
        "parse_ms": round((parsed - started) * 1000, 1),
        "resolve_ms": round((resolved - parsed) * 1000, 1),
        "translate_ms": round((translated - resolved) * 1000, 1),
        "total_ms": round((translated - started) * 1000, 1),
        "route_configurations": built,
    }


def publish_route_changes(
    created: Created, groups: list[ProxyGroup], changes: int, changed_routes: int
) -> dict[str, float]:
    """The `publish_route_change` figure (see the module's docstring): the medians of
    `resolve_ms` and `publish_ms` over `changes` route moves, and the groups each publication
    translated again (`rebuilt`)."""
    mapped = [map_service(obj, [slice_]).service for obj, slice_ in zip(created.services, created.slices, strict=True)]
    services = {found.ref: found for found in mapped if found is not None}
    ordered = list(services.values())
    gateway_classes = _keyed([parse_gateway_class(created.gateway_class)], [created.gateway_class])
    gateways = _keyed([parse_gateway(obj) for obj in created.gateways], created.gateways)
    routes = _keyed([parse_http_route(obj) for obj in created.routes], created.routes)

    def mesh_of() -> Mesh:
        objects = GatewayApiObjects(gateway_classes=gateway_classes, gateways=gateways, http_routes=dict(routes))
        resolution = resolve(objects, DEFAULT_CONTROLLER_NAME, services, frozenset())
        return Mesh.of(ordered, gateways=resolution.gateways)

    cache = SnapshotCache()
    publisher = SnapshotPublisher(cache)
    for group in groups:  # as the Envoys' streams subscribe, at the bootstraps' locality
        cache.subscribe(dataclasses.replace(group, locality=Locality(DEFAULT_REGION, DEFAULT_ZONE)), asyncio.Event())
    publisher.publish(mesh_of())
    resolve_ms: list[float] = []
    publish_ms: list[float] = []
    moved = [False] * changed_routes
    for change in range(changes):
        route = change % changed_routes
        moved[route] = not moved[route]
        obj = json.loads(json.dumps(created.routes[route]))
        obj["spec"]["rules"] = route_rules(backend_of(route, len(created.services), moved[route]))
        obj["metadata"]["generation"] = obj["metadata"].get("generation", 1) + change + 1
        routes[(NAMESPACE, route_name(route))] = parse_http_route(obj)
        started = time.perf_counter()
        mesh = mesh_of()
        resolved = time.perf_counter()
        publisher.publish(mesh, MeshChanges(gateways=True))
        resolve_ms.append((resolved - started) * 1000)
        publish_ms.append((time.perf_counter() - resolved) * 1000)
    return {
        "resolve_ms": round(statistics.median(resolve_ms), 1),
        "publish_ms": round(statistics.median(publish_ms), 1),
        "rebuilt": publisher.rebuilt,
    }


# --- backends and Envoys ---


@contextlib.asynccontextmanager
async def cached_apiserver(work: Path, found: tuple[Path, Path]) -> AsyncIterator[tuple[RealApiServer, ApiClient]]:
    """etcd and one API server with its watch cache under `work`, and a client of it: both
    closed and stopped on the way out."""
    cluster = await asyncio.to_thread(start_cluster, work, *found, uncached=False)
    try:
        apiserver = cluster.cached
        assert apiserver is not None
        client = apiserver.client()
        try:
            yield apiserver, client
        finally:
            await client.close()
    finally:
        await asyncio.to_thread(cluster.stop)


@contextlib.asynccontextmanager
async def echo_servers() -> AsyncIterator[list[int]]:
    """`ECHOES` HTTP servers on 127.0.0.1 answering every request with their name; their ports."""
    runners = []
    ports = []
    try:
        for number in range(ECHOES):
            name = f"echo-{number}".encode()

            async def answer(request: web.Request, name: bytes = name) -> web.Response:
                return web.Response(body=name)

            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", answer)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            runners.append(runner)
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            ports.append(runner.addresses[0][1])
        yield ports
    finally:
        for runner in runners:
            await runner.cleanup()


@dataclass
class GatewayEnvoy:
    gateway: str
    address: str
    offset: int
    bootstrap: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address}:{LISTENER_PORT + self.offset}{PATH}"


def bootstrap_envoys(root: Path, work: Path, gateways: int, xds_port: int) -> list[GatewayEnvoy]:
    """One bootstrap per Gateway, written by `meshplane bootstrap gateway` as a user runs it."""
    envoys = []
    commands = []
    for index in range(gateways):
        name = f"{NAMESPACE}/{gateway_name(index)}"
        envoy = GatewayEnvoy(
            name, f"127.0.0.{FIRST_ADDRESS + index}", free_port() - LISTENER_PORT,
            work / f"envoy-{index}.yaml", work / f"envoy-{index}.log",
        )  # fmt: skip
        envoys.append(envoy)
        commands.append([
            sys.executable, "-m", "meshplane", "bootstrap", "gateway",
            "--gateway", name, "--listen-address", envoy.address, "--port-offset", str(envoy.offset),
            "--xds-server", f"127.0.0.1:{xds_port}", "--node-id", f"bench-{gateway_name(index)}",
            "--admin-address", "127.0.0.1:0", "-o", str(envoy.bootstrap),
        ])  # fmt: skip
    running = [subprocess.Popen(command, cwd=root, stderr=subprocess.PIPE) for command in commands]
    for command, process in zip(commands, running, strict=True):
        _, error = process.communicate(timeout=120)
        if process.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}): {error.decode()[-2000:]}")
    return envoys


@contextlib.contextmanager
def running_envoys(envoys: list[GatewayEnvoy]) -> Iterator[list[GatewayEnvoy]]:
    try:
        for envoy in envoys:
            with envoy.log.open("wb") as sink:
                envoy.process = subprocess.Popen(
                    [envoy_binary(), "-c", str(envoy.bootstrap), "--disable-hot-restart", "--log-level", "warn"],
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                )
        yield envoys
    finally:
        for envoy in envoys:
            if envoy.process is not None and envoy.process.poll() is None:
                envoy.process.terminate()
        for envoy in envoys:
            if envoy.process is not None:
                try:
                    envoy.process.wait(10)
                except subprocess.TimeoutExpired:
                    envoy.process.kill()
                    envoy.process.wait()


async def answer_of(session: aiohttp.ClientSession, envoy: GatewayEnvoy, route: int) -> str:
    """What a request for route `route` through `envoy` answers: the backend's name, or the
    status or error when no backend answered."""
    try:
        async with session.get(envoy.url, headers={"host": hostname(route)}) as response:
            body = await response.text()
            return body if response.status == 200 else f"status {response.status}"
    except (aiohttp.ClientError, TimeoutError) as error:
        return f"{type(error).__name__}: {error}"


async def served_by_all(
    session: aiohttp.ClientSession, envoys: list[GatewayEnvoy], route: int, wanted: str, deadline: float
) -> list[float]:
    """The perf_counter time at which each Envoy first answered `wanted` for `route`, polling each
    every `POLL_S`; fails after `deadline` seconds naming what each last answered."""
    end = time.perf_counter() + deadline
    last: dict[str, str] = {}

    async def one(envoy: GatewayEnvoy) -> float:
        while True:
            seen = await answer_of(session, envoy, route)
            if seen == wanted:
                return time.perf_counter()
            last[envoy.gateway] = seen
            if time.perf_counter() > end:
                raise RuntimeError(f"route {route_name(route)} not answered by {wanted} in {deadline} s: {last}")
            await asyncio.sleep(POLL_S)

    return list(await asyncio.gather(*(one(envoy) for envoy in envoys)))


async def programmed(client: ApiClient) -> tuple[int, list[str]]:
    """How many Gateways have `Programmed` True, and the others' names."""
    _, found = await call(client, "GET", GATEWAYS)
    ready, others = 0, []
    for item in (found or {}).get("items") or ():
        conditions = {c["type"]: c for c in (item.get("status") or {}).get("conditions") or ()}
        if conditions.get("Programmed", {}).get("status") == "True":
            ready += 1
        else:
            others.append(item["metadata"]["name"])
    return ready, others


async def until_programmed(client: ApiClient, envoys: list[GatewayEnvoy], deadline: float) -> None:
    """Returns once every Gateway is `Programmed`; fails after `deadline` seconds naming those that
    are not, or at once when an Envoy exited (its log's end shown)."""
    end = time.perf_counter() + deadline
    while True:
        ready, others = await programmed(client)
        if ready == len(envoys):
            return
        for envoy in envoys:
            if envoy.process is not None and envoy.process.poll() is not None:
                raise RuntimeError(f"the Envoy of {envoy.gateway} exited: {envoy.log.read_text()[-2000:]}")
        if time.perf_counter() > end:
            raise RuntimeError(f"{ready} of {len(envoys)} Gateways Programmed in {deadline} s; not: {others}")
        await asyncio.sleep(0.05)


def summary(values: list[float]) -> dict[str, float]:
    """Median, p99 and max of `values` in one decimal ({} for none)."""
    if not values:
        return {}
    return {
        "median": round(statistics.median(values), 1),
        "p99": round(quantile(values, 0.99), 1),
        "max": round(max(values), 1),
    }


async def rebuild_counts(session: aiohttp.ClientSession, status_port: int) -> tuple[float, float]:
    """The server's full rebuilds so far and their summed duration (s), from its `/metrics`."""
    async with session.get(f"http://127.0.0.1:{status_port}/metrics") as response:
        text = await response.text()
    found = dict(_METRIC_LINE.findall(text))
    return float(found["meshplane_rebuilds_total"]), float(found["meshplane_rebuild_duration_seconds_sum"])


@contextlib.contextmanager
def py_spy(pid: int, output: Path | None) -> Iterator[None]:
    """py-spy recording process `pid` (collapsed stacks into `output`) while the block runs;
    nothing when `output` is None."""
    if output is None:
        yield
        return
    command = [str(PY_SPY), "record", "--pid", str(pid), "--rate", str(PY_SPY_RATE), "--format", "raw"]
    recorder = subprocess.Popen([*command, "--output", str(output), "--nonblocking"], stderr=subprocess.PIPE)
    try:
        yield
    finally:
        recorder.send_signal(2)  # SIGINT: py-spy writes what it sampled and exits
        _, error = recorder.communicate(timeout=60)
        if not output.exists():
            print(f"py-spy wrote nothing: {error.decode()[-1000:]}", file=sys.stderr)


async def measure(
    root: Path,
    services: int,
    gateways: int,
    routes: int,
    changes: int,
    gap: float,
    translate_runs: int,
    profile: Path | None = None,
) -> dict[str, Any]:
    found = binaries()
    if found is None:
        raise SystemExit(f"benchmarks.gateway_api: {KUBE_MISSING}")
    if GATEWAY_API_MISSING is not None:
        raise SystemExit(f"benchmarks.gateway_api: {GATEWAY_API_MISSING}")
    if routes < 1 or gateways < 1 or services < 2:
        raise SystemExit("benchmarks.gateway_api: needs a route, a Gateway and two services")
    changed_routes = min(gateways, routes)
    row: dict[str, Any] = {"services": services, "gateways": gateways, "routes": routes, "changes": changes}
    with tempfile.TemporaryDirectory(prefix="bench-gateway-api-") as work_name:
        work = Path(work_name)
        async with cached_apiserver(work / "kube", found) as (apiserver, client), echo_servers() as echo_ports:
            started = time.perf_counter()
            created = await populate(client, services, gateways, routes, echo_ports)
            row["populate_s"] = round(time.perf_counter() - started, 1)
            # Chosen now, not before the set-up: a port found free is taken by nobody else
            # only for a while on a machine shared with other work.
            xds_port, status_port = free_port(), free_port()
            envoys = await asyncio.to_thread(bootstrap_envoys, root, work, gateways, xds_port)
            groups = [
                ProxyGroup(ProxyRole.GATEWAY, gateway=e.gateway, listen_address=e.address, port_offset=e.offset)
                for e in envoys
            ]
            runs = [translate_whole_set(created, groups) for _ in range(max(1, translate_runs))]
            row["translate_whole_set_cold"] = runs[0]
            row["translate_whole_set_ms"] = {
                step: round(statistics.median(run[step] for run in runs), 1)
                for step in ("parse_ms", "resolve_ms", "translate_ms", "total_ms")
            }
            in_process = max(1, min(changes, 20))
            row["publish_route_change"] = publish_route_changes(created, groups, in_process, changed_routes)
            kubeconfig = apiserver.kubeconfig(work / "kubeconfig", ADMIN_TOKEN)
            sources = ["--kubernetes", "--kubeconfig", str(kubeconfig), "--gateway-api"]
            row["load_average_start"] = load_average()
            started = time.perf_counter()
            with serving_with(root, sources, xds_port, status_port) as server, running_envoys(envoys):
                await until_programmed(client, envoys, 300)
                row["start_to_programmed_ms"] = round((time.perf_counter() - started) * 1000, 1)
                row.update(
                    await measure_changes(
                        client, server, status_port, envoys, services, changed_routes, changes, gap, profile
                    )
                )
    return row


async def measure_changes(
    client: ApiClient,
    server: subprocess.Popen[bytes],
    status_port: int,
    envoys: list[GatewayEnvoy],
    services: int,
    changed_routes: int,
    changes: int,
    gap: float,
    profile: Path | None = None,
) -> dict[str, Any]:
    """`changes` backendRef moves, each timed to the first and the last Envoy answering from the
    new backend; with the server's CPU and rebuilds over them (and its py-spy samples into `profile`)."""
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for route in range(changed_routes):  # every changed route served everywhere before timing
            await served_by_all(session, envoys, route, echo_of(backend_of(route, services)), 300)
        idle_s = max(3.0, min(10.0, changes * gap))
        before = proc_cpu_seconds(server.pid)
        await asyncio.sleep(idle_s)  # the idle CPU, to subtract: a window, not a wait on anything
        idle_cpu_s = (proc_cpu_seconds(server.pid) - before) / idle_s
        load = load_average()
        timings: dict[str, list[float]] = {"first": [], "last": [], "patch": []}
        rebuilds_before, rebuild_s_before = await rebuild_counts(session, status_port)
        loop_started = time.perf_counter()
        cpu_before = proc_cpu_seconds(server.pid)
        with py_spy(server.pid, profile):
            await _changes(client, session, envoys, services, changed_routes, changes, gap, timings)
        loop_s = time.perf_counter() - loop_started
        cpu_s = proc_cpu_seconds(server.pid) - cpu_before
        # The last change's own status write may still be coming back: read until the count holds
        # still for a change's spacing (at most 10 reads), so each change's rebuilds are all counted.
        counts = await rebuild_counts(session, status_port)
        for _ in range(10):
            later = await _after(session, status_port, gap)
            if later == counts:
                break
            counts = later
        rebuilds, rebuild_s = counts[0] - rebuilds_before, counts[1] - rebuild_s_before
    to_first, to_last, patch_ms = timings["first"], timings["last"], timings["patch"]
    per_change = cpu_s / max(1, changes) * 1000
    return {
        "load_average": load,
        "changes_seen": len(to_last),
        "envoys": len(envoys),
        "change_to_last_ms": summary(to_last) if to_last else {},
        "change_to_first_ms": summary(to_first) if to_first else {},
        "apiserver_patch_ms": summary(patch_ms) if patch_ms else {},
        "server_cpu_ms_per_change": round(per_change, 1),
        "server_cpu_ms_per_change_net": round(per_change - idle_cpu_s * loop_s / max(1, changes) * 1000, 1),
        "server_idle_cpu_percent": round(idle_cpu_s * 100, 1),
        "rebuilds_per_change": round(rebuilds / max(1, changes), 2),
        "rebuild_ms": round(rebuild_s / rebuilds * 1000, 1) if rebuilds else 0.0,
    }


async def _after(session: aiohttp.ClientSession, status_port: int, seconds: float) -> tuple[float, float]:
    await asyncio.sleep(seconds)  # a spacing between two reads of a counter, not a wait on anything
    return await rebuild_counts(session, status_port)


async def _changes(
    client: ApiClient,
    session: aiohttp.ClientSession,
    envoys: list[GatewayEnvoy],
    services: int,
    changed_routes: int,
    changes: int,
    gap: float,
    timings: dict[str, list[float]],
) -> None:
    """The timed changes, their figures (ms) appended to `timings`' `first`, `last` and `patch`."""
    moved = [False] * changed_routes
    for change in range(changes):
        route = change % changed_routes
        moved[route] = not moved[route]
        backend = backend_of(route, services, moved[route])
        body = {"spec": {"rules": route_rules(backend)}}
        written = time.perf_counter()
        await call_ok(client, "PATCH", f"{ROUTES}/{route_name(route)}", body, MERGE_PATCH)
        timings["patch"].append((time.perf_counter() - written) * 1000)
        seen = await served_by_all(session, envoys, route, echo_of(backend), 60)
        timings["first"].append((min(seen) - written) * 1000)
        timings["last"].append((max(seen) - written) * 1000)
        await asyncio.sleep(gap)  # the next change starts from a quiet server: a spacing, not a wait


def table(row: dict[str, Any]) -> str:
    lines = ["| figure | median | p99 | max |", "| --- | ---: | ---: | ---: |"]
    for figure in ("change_to_last_ms", "change_to_first_ms", "apiserver_patch_ms"):
        values = row.get(figure) or {}
        if values:
            lines.append(f"| {figure} | {values['median']} | {values['p99']} | {values['max']} |")
    cold, warm = row["translate_whole_set_cold"], row["translate_whole_set_ms"]
    lines += [
        "",
        f"server CPU per change: {row['server_cpu_ms_per_change']} ms "
        f"({row['server_cpu_ms_per_change_net']} ms less idle; idle {row['server_idle_cpu_percent']} %)",
        f"full rebuilds per change: {row['rebuilds_per_change']}, {row['rebuild_ms']} ms each",
        f"whole set, {row['gateways']} Gateways, cold: parse {cold['parse_ms']} ms, resolve {cold['resolve_ms']} ms, "
        f"translate {cold['translate_ms']} ms "
        f"(resolve + translate {cold['resolve_ms'] + cold['translate_ms']:.1f} ms); "
        f"median of runs: total {warm['total_ms']} ms",
        f"in process, a route change: resolve {row['publish_route_change']['resolve_ms']} ms, publish "
        f"{row['publish_route_change']['publish_ms']} ms ({row['publish_route_change']['rebuilt']} groups)",
        f"process start → all {row['gateways']} Gateways Programmed: {row['start_to_programmed_ms']} ms",
        f"load average (1, 5, 15 min): at the changes {row['load_average']}, at the start {row['load_average_start']}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, default=5000)
    parser.add_argument("--gateways", type=int, default=10)
    parser.add_argument("--routes", type=int, default=1000)
    parser.add_argument("--changes", type=int, default=30, help="route changes timed")
    parser.add_argument("--gap", type=float, default=1.0, help="seconds between one change seen and the next")
    parser.add_argument("--translate-runs", type=int, default=3, help="runs of the in-process translation")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--server-root", type=Path, default=ROOT, help="run meshplane from this checkout")
    parser.add_argument("--py-spy", type=Path, help="record the server over the changes into this file")
    args = parser.parse_args(argv)
    row = asyncio.run(
        measure(
            args.server_root,
            args.services,
            args.gateways,
            args.routes,
            args.changes,
            args.gap,
            args.translate_runs,
            args.py_spy,
        )
    )
    print(json.dumps(row), flush=True)
    print(table(row))
    if args.json:
        args.json.write_text(json.dumps(row, indent=1))
    if row["changes_seen"] != args.changes:
        print("NOT VALID: a change was not seen by every Envoy", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
