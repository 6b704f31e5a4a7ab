"""Control-plane CPU to translate a mesh into a snapshot, whole and on the endpoint fast path.

Run: .venv/bin/python -m benchmarks.translation [--services 5000] [--endpoints 10] [--repeat 5]

Builds the mesh of `benchmarks.meshplane_server` (services x endpoints, one port each), subscribes
one sidecar group, and measures with `time.process_time()` (CPU, not wall):
- `full_ms`: the first publish — every resource translated, serialised and versioned;
- `one_endpoint_ms`: a publish after one endpoint of one service changed;
- `churn_10pct_ms`: a publish after 10 % of the services got new endpoints.
Prints one JSON line with the median of `--repeat` runs of each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

from benchmarks.meshplane_server import MeshChanges
from meshplane.model import Mesh, ProxyGroup
from meshplane.xds.cache import SnapshotCache
from meshplane.xds.publisher import SnapshotPublisher


def publish_cpu_ms(publisher: SnapshotPublisher, mesh: Mesh) -> float:
    started = time.process_time()
    publisher.publish(mesh)
    return (time.process_time() - started) * 1000


def measure(services: int, endpoints: int, repeat: int) -> dict[str, float]:
    full: list[float] = []
    one: list[float] = []
    churn: list[float] = []
    for _ in range(repeat):
        cache = SnapshotCache()
        publisher = SnapshotPublisher(cache)
        changes = MeshChanges(services, endpoints)
        cache.subscribe(ProxyGroup(), asyncio.Event())  # a stream's group: publishing builds its snapshot
        full.append(publish_cpu_ms(publisher, changes.mesh))
        one.append(publish_cpu_ms(publisher, changes.one_endpoint()))
        assert publisher.state.endpoints_only
        churn.append(publish_cpu_ms(publisher, changes.churn(10)))
        assert publisher.state.endpoints_only
    return {
        "services": services,
        "endpoints": services * endpoints,
        "full_ms": round(statistics.median(full), 2),
        "one_endpoint_ms": round(statistics.median(one), 3),
        "churn_10pct_ms": round(statistics.median(churn), 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, default=5000)
    parser.add_argument("--endpoints", type=int, default=10, help="endpoints per service")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.services, args.endpoints, args.repeat)))


if __name__ == "__main__":
    main()
