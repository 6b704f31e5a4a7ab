"""Device policy at an edge gateway: what a registration costs at a governed site, and how soon the
gateway enforces the new device.

Run: .venv/bin/python -m benchmarks.device_policy [--sizes 100,1000,10000] [--repeat 20]
     [--user-sizes 1000] [--runs 20]

1. Component figure (the translator alone, in this process: no server, no wire). For N devices at
   one site (N in --sizes; three classes), without device policy and with it (two classes'
   allow-lists with paths and methods, a per-device rate limit, `default: deny`, a JWT provider,
   and route tables reached by their own hosts), --repeat registrations of one more device each:
   the edge gateway's translation (`translate(mesh, gateway group)`, memos warm as in the
   server), median and p99 ms, and the bytes of the device listener's RouteConfiguration, which
   every registration at the site re-sends whole (RDS; the listener does not change).
2. User path, through the `meshplane serve` process a user runs (as benchmarks/registration_path.py):
   a registry file with N devices at the governed site (N in --user-sizes), a policy directory
   making that site zero trust and letting bikes GET the api's /rides, a real edge-gateway Envoy,
   and a stand-in device in its own network namespace (tests/netns.py) whose address the site
   admits. Each of --runs: the previous probe device is deregistered and the namespace refused
   again (403: no live device, at a zero-trust site); then a new bike is registered at the
   namespace's address and timed from just before the Register call until the namespace's first
   request through the gateway to an allowed path is answered 200 (polled every 5 ms from inside
   the namespace; the gateway knows a device there by its peer address).

Prints a table and the figures as JSON, with the load average. The machine's cores are shared by
the server, Envoy and this client.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from aiohttp import web

from benchmarks.edge_registry import CLASS_TOKEN, write_sites
from benchmarks.registration_path import (
    load_average,
    quantile,
    serving,
    until_ready,
    write_fleet,
    write_tokens,
)
from meshplane.api.edge.v1 import registry_pb2 as pb
from meshplane.api.edge.v1 import registry_pb2_grpc
from meshplane.model import (
    Device,
    DeviceEndpoint,
    Endpoint,
    Mesh,
    ProxyGroup,
    ProxyRole,
    RouteMatch,
    RouteRule,
    RouteTable,
    Service,
    ServicePort,
    ServiceRef,
    Site,
    WeightedBackend,
)
from meshplane.model.device_policy import (
    DefaultAccess,
    DevicePolicy,
    DeviceRateLimit,
    JwtProvider,
    PathKind,
    PathRule,
    ServiceAccess,
)
from meshplane.xds import names
from meshplane.xds.translate import translate
from meshplane.xds.types import TypeUrl
from tests.envoy_harness import start_envoy
from tests.netns import DeviceHost, make_device_host
from tests.ports import free_port

SITE = "gym"
GATEWAY = ProxyGroup(ProxyRole.EDGE_GATEWAY, outbound_port=15080, site=SITE)
CLASSES = ("bike", "row", "tread")
SERVICES = 10
# A test-only P-256 public key: the provider's keys are inline, as a policy file's `jwks`.
JWKS = (
    '{"keys": [{"kty": "EC", "crv": "P-256", "x": "ofT9AD5TPRkzmpbXV9z3HMWXqj7CnXM1JzVFyUxGiLk", '
    '"y": "qv8VGejosCDSzMjUjuWwWQ260Coa6KhW_4_i5xTmf-U"}]}'
)


def ref(index: int) -> ServiceRef:
    return ServiceRef("cloud", f"svc-{index}")


def policies() -> list[DevicePolicy]:
    """Two restricted classes (one path- and method-limited), a rate limit, zero trust, a JWT."""
    return [
        DevicePolicy(
            "bikes",
            classes=("bike",),
            allow=(ServiceAccess(ref(0), (PathRule(PathKind.PREFIX, "/rides"),), ("GET",)), ServiceAccess(ref(1))),
            rate_limit=DeviceRateLimit(20, 1.0, 40),
        ),
        DevicePolicy("rows", classes=("row",), allow=(ServiceAccess(ref(2)),)),
        DevicePolicy("zero-trust", sites=(SITE,), default=DefaultAccess.DENY),
        DevicePolicy(
            "apps",
            jwt_providers=(JwtProvider("accounts", "https://accounts.example.com", ("app",), JWKS),),
            require_jwt=(ServiceAccess(ref(3)),),
        ),
    ]


def fleet_device(index: int) -> Device:
    return Device(
        f"dev-{index:06d}",
        CLASSES[index % len(CLASSES)],
        SITE,
        (DeviceEndpoint(f"10.{index // 62500}.{index // 250 % 250}.{index % 250 + 1}", 8080),),
    )


def component_mesh(devices: list[Device], governed: bool) -> Mesh:
    services = [
        Service(f"svc-{i}", "cloud", (ServicePort("http", 8080),), (Endpoint(f"10.200.0.{i + 1}", 8080, "http"),))
        for i in range(SERVICES)
    ]
    tables = [
        RouteTable(f"web-{i}", (RouteRule(RouteMatch(), (WeightedBackend(ref(i)),)),), hosts=(f"web-{i}.example.com",))
        for i in range(3)
    ]
    return Mesh.of(
        services,
        tables,
        sites=[Site(SITE, "eu-central", device_ranges=("10.0.0.0/8",))],
        devices=devices,
        device_policies=policies() if governed else [],
    )


def component_figures(size: int, governed: bool, repeat: int) -> dict[str, Any]:
    """--repeat registrations at a site of `size` devices: translation ms and RDS bytes."""
    devices = [fleet_device(index) for index in range(size)]
    translate(component_mesh(devices, governed), GATEWAY)  # the server's memos, warm
    timings: list[float] = []
    route_bytes = 0
    for run in range(repeat):
        mesh = component_mesh([*devices, fleet_device(size + run)], governed)
        started = time.perf_counter()
        translation = translate(mesh, GATEWAY)
        timings.append(time.perf_counter() - started)
        name = names.gateway_from_devices_route_name(GATEWAY.outbound_port)
        [route] = [config for config in translation.resources[TypeUrl.ROUTE] if getattr(config, "name") == name]  # noqa: B009
        route_bytes = route.ByteSize()
    return {
        "devices": size,
        "policy": governed,
        "translate_ms": {
            "median": round(statistics.median(timings) * 1000, 2),
            "p99": round(quantile(timings, 0.99) * 1000, 2),
        },
        "route_config_bytes": route_bytes,
    }


# Runs in the device's namespace: for each line read (an HTTP status), polls the gateway every 5 ms
# until a GET of an allowed path answers that status, and prints the monotonic time it did (the
# clock is the machine's, shared by every namespace).
_POLLER = """
import http.client, sys, time
host, port = sys.argv[1], int(sys.argv[2])
for line in sys.stdin:
    wanted, end = int(line), time.monotonic() + 120
    while True:
        try:
            connection = http.client.HTTPConnection(host, port, timeout=5)
            connection.request("GET", "/rides/1", headers={"host": "api"})
            status = connection.getresponse().status
            connection.close()
        except OSError:
            status = 0
        if status == wanted:
            print(time.monotonic(), flush=True)
            break
        if time.monotonic() > end:
            print(f"never {wanted}: last {status}", flush=True)
            break
        time.sleep(0.005)
"""


class Poller:
    """The `_POLLER` process in a device's namespace."""

    def __init__(self, device_host: DeviceHost, gateway_port: int) -> None:
        command = ["ip", "netns", "exec", device_host.namespace, sys.executable, "-c", _POLLER]
        command += [device_host.host_address, str(gateway_port)]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    async def until(self, status: int) -> float:
        """The monotonic time the namespace's request was first answered `status`."""
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(f"{status}\n")
        self.process.stdin.flush()
        line = await asyncio.to_thread(self.process.stdout.readline)
        if line.startswith("never") or not line:
            raise RuntimeError(f"the device's requests were never answered {status} ({line.strip() or 'poller ended'})")
        return float(line)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def write_policy(policy: Path, cloud_port: int) -> None:
    """The cloud service `api` and the device policy of site-000 (the registry fleet's site)."""
    (policy / "device-policy.yaml").write_text(
        f"""services:
  - {{name: api, port: 8080, endpoints: [{{address: 127.0.0.1, port: {cloud_port}}}]}}
device_policies:
  - name: zero-trust
    sites: [site-000]
    default: deny
  - name: bikes
    classes: [bike]
    allow: [{{service: api, paths: [{{prefix: /rides}}], methods: [GET]}}]
    rate_limit: {{requests: 100, interval: 1s, burst: 200}}
"""
    )


@contextlib.asynccontextmanager
async def cloud() -> AsyncIterator[int]:
    """The api's stand-in on 127.0.0.1: answers every GET 200; yields its port."""

    async def answer(request: web.Request) -> web.Response:
        return web.Response(text=request.path)

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield port
    finally:
        await runner.cleanup()


async def user_path(work: Path, size: int, runs: int, device_host: DeviceHost) -> dict[str, Any]:
    """Every user-path figure of one site size (see the module docstring)."""
    address = device_host.address
    db = work / "registry.db"
    await write_fleet(db, size, 1, address)
    policy = write_sites(work / "policy", 1, address)
    tokens = write_tokens(work / "tokens.yaml")
    timings: list[float] = []
    async with cloud() as cloud_port, aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        write_policy(policy, cloud_port)
        async with serving(work, policy, db, tokens) as served:
            await until_ready(served, session, 600)
            gateway = await start_envoy(
                work / "envoy",
                served.xds_port,
                node_id="bench-policy-gateway",
                template="edge-gateway.yaml",
                metadata={"role": "edge-gateway", "site": "site-000"},
            )
            poller = Poller(device_host, gateway.outbound_port)
            try:
                await poller.until(403)  # the namespace is no device yet: refused at a zero-trust site
                load_at_runs = load_average()
                async with grpc.aio.insecure_channel(f"127.0.0.1:{served.registry_port}") as channel:
                    stub = registry_pb2_grpc.RegistryStub(channel)
                    auth = (("authorization", f"Bearer {CLASS_TOKEN}"),)
                    for run in range(runs):
                        started = time.monotonic()
                        answer = await stub.Register(
                            pb.RegisterRequest(
                                device_id=f"probe-{run}",
                                device_class="bike",
                                site="site-000",
                                endpoints=[pb.Endpoint(address=address, port=8080)],
                                ttl_seconds=3600,
                            ),
                            metadata=auth,
                        )
                        timings.append(await poller.until(200) - started)
                        await stub.Deregister(
                            pb.DeregisterRequest(device_id=f"probe-{run}", lease_id=answer.lease_id), metadata=auth
                        )
                        await poller.until(403)
            finally:
                poller.close()
                await gateway.stop()
    return {
        "devices_at_site": size + 1,
        "load_average_runs": load_at_runs,
        "registration_to_enforced_ms": {
            "runs": [round(t * 1000, 1) for t in timings],
            "median": round(statistics.median(timings) * 1000, 1),
            "p99": round(quantile(timings, 0.99) * 1000, 1),
        },
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000", help="devices per site, component figure")
    parser.add_argument("--repeat", type=int, default=20, help="registrations per size, component figure")
    parser.add_argument("--user-sizes", default="1000", help="devices at the site, user path ('' to skip)")
    parser.add_argument("--runs", type=int, default=20, help="registrations per size, user path")
    args = parser.parse_args()
    results: dict[str, Any] = {"load_average_start": load_average(), "component": [], "user_path": {}}
    print(f"--- component: the gateway's translation per registration (load {results['load_average_start']})")
    for size in (int(s) for s in args.sizes.split(",")):
        for governed in (False, True):
            figures = component_figures(size, governed, args.repeat)
            results["component"].append(figures)
            ms = figures["translate_ms"]
            print(
                f"{size:>6} devices, {'with' if governed else 'without'} policy: translate median {ms['median']} ms,"
                f" p99 {ms['p99']} ms; route config {figures['route_config_bytes']:,} bytes"
            )
    user_sizes = [int(s) for s in args.user_sizes.split(",") if s]
    if user_sizes:
        device_host = await asyncio.to_thread(make_device_host)
        try:
            for size in user_sizes:
                work = Path(tempfile.mkdtemp(prefix="meshplane-device-policy-"))
                try:
                    figures = await user_path(work, size, args.runs, device_host)
                finally:
                    shutil.rmtree(work, ignore_errors=True)
                results["user_path"][str(size)] = figures
                timing = figures["registration_to_enforced_ms"]
                print(
                    f"--- user path, {size} devices at a zero-trust site (load {figures['load_average_runs']}):"
                    f" registration → first allowed request 200: median {timing['median']} ms, p99 {timing['p99']} ms"
                    f" ({len(timing['runs'])} runs)"
                )
        finally:
            await asyncio.to_thread(device_host.close)
    results["load_average_end"] = load_average()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
