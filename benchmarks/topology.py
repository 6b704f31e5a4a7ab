"""What one `/topology` request costs on the event loop, built and cached.

Run: .venv/bin/python -m benchmarks.topology [--services 10000] [--routes 2000] [--groups 50]
     [--proxies 1000] [--devices 100000] [--repeat 20]

A component figure, in process, no wire: a `Mesh` of `--services` services (100 a namespace, one
port and three endpoints each) and `--routes` route tables (each attached to a service, one rule
splitting 90/10 with its neighbour, and a 5 % mirror), one edge site with `--devices` registered
devices and one declared gateway address; a `StreamRegistry` holding `--proxies` proxies, one ADS
stream each, over `--groups` proxy groups (all sidecars but one edge-gateway group listening at the
site's gateway and one device group at the site), each stream sent and ACKing CDS, EDS, LDS and RDS.

Figures (wall time, median of `--repeat`, what the endpoint does before it answers):
- `cold_ms`: a request that builds the document: `CachedTopology.body` on a cache that holds
  nothing (the document, its JSON, and the streams' version);
- `cached_ms`: a request of an unchanged mesh with unchanged streams: the same call again, which
  answers the bytes it built (the streams' version is all it computes);
- `bytes`, `nodes`, `edges`, `more_nodes`, `more_edges`: the document's size and what it shows.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from meshplane.model import (
    Device,
    DeviceEndpoint,
    Endpoint,
    Locality,
    Mesh,
    Mirror,
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
from meshplane.model.sites import GatewayAddress
from meshplane.status.topology import CachedTopology
from meshplane.xds.server.tracking import StreamKind, StreamRegistry
from meshplane.xds.types import TypeUrl

SITE = "gym"
GATEWAY = GatewayAddress("10.0.0.1", 15080)
TYPES = (TypeUrl.CLUSTER, TypeUrl.ENDPOINT, TypeUrl.LISTENER, TypeUrl.ROUTE)


def mesh(services: int, routes: int, devices: int) -> Mesh:
    found = [
        Service(
            f"svc-{index:05d}",
            f"ns-{index // 100:03d}",
            (ServicePort("http", 8080),),
            tuple(Endpoint(f"10.1.{index % 250}.{n + 1}", 8080, "http") for n in range(3)),
        )
        for index in range(services)
    ]
    refs = [ServiceRef(service.namespace, service.name) for service in found]
    tables = [
        RouteTable(
            f"route-{index:05d}",
            (
                RouteRule(
                    RouteMatch(),
                    (
                        WeightedBackend(refs[index % services], weight=90),
                        WeightedBackend(refs[(index + 1) % services], weight=10),
                    ),
                    mirrors=(Mirror(refs[(index + 2) % services], percent=5.0),),
                ),
            ),
            service=refs[index % services],
        )
        for index in range(routes)
    ]
    fleet = [
        Device(f"bike-{n:06d}", "bike", SITE, (DeviceEndpoint(f"198.18.{n // 250 % 256}.{n % 250 + 1}", 80),))
        for n in range(devices)
    ]
    site = Site(SITE, "local", gateways=(GATEWAY,), device_ranges=("198.18.0.0/16",))
    return Mesh.of(found, tables, sites=[site], devices=fleet)


def registry(proxies: int, groups: int) -> StreamRegistry:
    kinds = [
        ProxyGroup(ProxyRole.EDGE_GATEWAY, outbound_port=GATEWAY.port, site=SITE),
        ProxyGroup(ProxyRole.DEVICE, site=SITE),
        *(ProxyGroup(locality=Locality("region", f"zone-{n:03d}")) for n in range(max(0, groups - 2))),
    ][:groups]
    found = StreamRegistry()
    for index in range(proxies):
        track = found.open(
            StreamKind.SOTW_ADS, f"proxy-{index:05d}", "app", kinds[index % len(kinds)], "envoy/1.40", "10.0.0.1:1"
        )
        for type_url in TYPES:
            found.sent(track, type_url, "v1", "1", ())
            found.acked(track, type_url, "v1")
    return found


def median_ms(call: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 3)


def run(services: int, routes: int, groups: int, proxies: int, devices: int, repeat: int) -> dict[str, Any]:
    current, streams = mesh(services, routes, devices), registry(proxies, groups)
    cold = median_ms(lambda: CachedTopology().body(current, streams), repeat)
    cache = CachedTopology()
    body = cache.body(current, streams)
    cached = median_ms(lambda: cache.body(current, streams), repeat)
    assert cache.body(current, streams) is body, "an unchanged mesh and registry must answer the same bytes"
    document = json.loads(body)
    return {
        "services": services,
        "routes": routes,
        "groups": groups,
        "proxies": proxies,
        "devices": devices,
        "cold_ms": cold,
        "cached_ms": cached,
        "bytes": len(body),
        "nodes": len(document["nodes"]),
        "edges": len(document["edges"]),
        "more_nodes": document["more"]["nodes"],
        "more_edges": document["more"]["edges"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--routes", type=int, default=2_000)
    parser.add_argument("--groups", type=int, default=50)
    parser.add_argument("--proxies", type=int, default=1_000)
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=20)
    arguments = parser.parse_args()
    if arguments.services < 3 or arguments.groups < 1 or arguments.proxies < arguments.groups:
        parser.error("--services must be at least 3, --groups at least 1, --proxies at least --groups")
    figures = run(
        arguments.services, arguments.routes, arguments.groups, arguments.proxies, arguments.devices, arguments.repeat
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
