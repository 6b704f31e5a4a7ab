"""What change tracking costs at 10,000 proxies: the size of `/changes`, the time to build it, and
the memory the control plane keeps per generation.

Run: .venv/bin/python -m benchmarks.changes_memory [--proxies 10000] [--groups 300] [--affected 30]

A component figure, in process, no wire: a `ChangeLog` with the default window (100 generations)
and a `StreamRegistry` holding `--proxies` SotW ADS streams, spread over `--groups` proxy groups
(one per zone, as a fleet of a few hundred localities would be). Every stream is sent and ACKs
CDS, EDS, LDS and RDS at the first generation; each later generation gives `--affected` groups
(in turn) a new EDS version, and every stream of those groups is sent it and ACKs it, through the
registry's `sent`/`acked` as the server calls them, so each generation's ACK figures are filled.

Figures:
- `kept_bytes_per_generation`: traced memory (tracemalloc) after the window filled, less before
  the second generation, over the generations recorded: what one kept generation costs with its
  version maps, ACK figures and the streams' bookkeeping of it;
- `growth_bytes_per_generation`: the traced memory's growth per generation once the window is
  full (`--generations` past it): what is kept for good, which should be nothing;
- `changes_bytes_default`, `changes_bytes_max`: the `/changes` JSON at the default limit (20) and
  the largest (100), as the endpoint serialises it;
- `build_ms_default`, `build_ms_max`, `build_ms_one`: wall time to build `/changes` (document and
  JSON) at each limit and one `/changes/G` of the newest generation, median of `--repeat`, with
  tracemalloc off;
- `ack_us`: wall time of one `acked` call with the convergence bookkeeping, averaged over the ACKs
  of the generations past the window (tracemalloc off for them too).
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
import tracemalloc
from typing import Any

from meshplane.model import Locality, ProxyGroup
from meshplane.status.changes import DEFAULT_LIMIT, MAX_LIMIT, changes_document, one_generation
from meshplane.xds.cache import SnapshotCache
from meshplane.xds.publication import KEPT_GENERATIONS, Cause, ChangeLog, Generation, Instant
from meshplane.xds.server.tracking import StreamKind, StreamRegistry, StreamTrack
from meshplane.xds.types import TypeUrl

TYPES = (TypeUrl.CLUSTER, TypeUrl.ENDPOINT, TypeUrl.LISTENER, TypeUrl.ROUTE)


class Fleet:
    """The log, the registry and the streams, with each group's current version per type."""

    def __init__(self, proxies: int, groups: int, keep: int) -> None:
        self.log = ChangeLog(keep)
        self.registry = StreamRegistry(changes=self.log)
        self.groups = [ProxyGroup(locality=Locality("region", f"zone-{i:04d}")) for i in range(groups)]
        self.versions = {group: {str(t): f"{t.short}-1-{i}" for t in TypeUrl} for i, group in enumerate(self.groups)}
        self.streams: dict[ProxyGroup, list[StreamTrack]] = {group: [] for group in self.groups}
        for i in range(proxies):
            group = self.groups[i % groups]
            track = self.registry.open(StreamKind.SOTW_ADS, f"proxy-{i:05d}", "app", group, "envoy/1.40", "10.0.0.1:1")
            self.streams[group].append(track)
        self.number = 0
        self.acks = 0

    def generation(self, affected: list[ProxyGroup], types: tuple[TypeUrl, ...]) -> None:
        """Records the next generation (new `types` versions for `affected`); its streams take it."""
        self.number += 1
        for group in affected:
            for type_url in types:
                self.versions[group][str(type_url)] = f"{type_url.short}-{self.number}-{group.locality.zone}"
        generation = Generation(
            self.number,
            time.time(),
            Cause(("kubernetes",)),
            ("endpoints",),
            ("default/web",),
            1,
            {group: self.versions[group][str(TypeUrl.ENDPOINT)] for group in affected},
            Instant.now(),
        )
        self.log.record(generation, {group: dict(self.versions[group]) for group in affected})
        for group in affected:
            for track in self.streams[group]:
                for type_url in types:
                    version = self.versions[group][str(type_url)]
                    self.registry.sent(track, type_url, version, f"n{self.number}", ())
                    self.registry.acked(track, type_url, version)
                    self.acks += 1


def _traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def _median_ms(build: Any, repeat: int) -> tuple[float, int]:
    """Median wall ms of `build()` (which returns the JSON bytes) and the bytes' length."""
    times, size = [], 0
    for _ in range(repeat):
        started = time.perf_counter()
        size = len(build())
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 2), size


def measure(
    proxies: int = 10_000,
    groups: int = 300,
    affected: int = 30,
    keep: int = KEPT_GENERATIONS,
    past: int = 100,
    repeat: int = 5,
) -> dict[str, Any]:
    # Opening the streams and the first generation (every type) come before anything is counted,
    # traced too: what later generations replace of theirs (a stream's nonce, its ACK time) must
    # count as freed, or each replacement would look like growth.
    tracemalloc.start()
    fleet = Fleet(proxies, groups, keep)
    fleet.generation(fleet.groups, TYPES)
    cache = SnapshotCache()  # empty: every version here is a type's own, none needs a selection check

    def next_affected() -> list[ProxyGroup]:
        start = (fleet.number * affected) % groups
        return [fleet.groups[(start + i) % groups] for i in range(affected)]

    before = _traced()
    while fleet.number < keep:
        fleet.generation(next_affected(), (TypeUrl.ENDPOINT,))
    full = _traced()
    for _ in range(past // 2):
        fleet.generation(next_affected(), (TypeUrl.ENDPOINT,))
    after = _traced()
    tracemalloc.stop()
    recorded_in_window = keep - 1

    # The other half past the window, timed per ACK with tracemalloc off.
    acks_before = fleet.acks
    started = time.perf_counter()
    for _ in range(past - past // 2):
        fleet.generation(next_affected(), (TypeUrl.ENDPOINT,))
    per_ack_us = (time.perf_counter() - started) / max(1, fleet.acks - acks_before) * 1e6

    def listing(limit: int) -> bytes:
        return json.dumps(changes_document(fleet.log, fleet.registry, cache, limit)).encode()

    def newest() -> bytes:
        assert fleet.log.newest is not None
        return json.dumps(one_generation(fleet.log, fleet.registry, cache, fleet.log.newest)).encode()

    build_default, bytes_default = _median_ms(lambda: listing(DEFAULT_LIMIT), repeat)
    build_max, bytes_max = _median_ms(lambda: listing(MAX_LIMIT), repeat)
    build_one, bytes_one = _median_ms(newest, repeat)
    document = changes_document(fleet.log, fleet.registry, cache, MAX_LIMIT)
    newest_entry = document["generations"][0]
    return {
        "proxies": proxies,
        "groups": groups,
        "affected_groups": affected,
        "kept": keep,
        "generations": fleet.number,
        "kept_generations": len(document["generations"]),
        "newest_acks": newest_entry["acks"],
        "newest_proxies": newest_entry["proxies"]["total"],
        "kept_bytes_per_generation": round((full - before) / recorded_in_window),
        "growth_bytes_per_generation": round((after - full) / max(1, past // 2)),
        "changes_bytes_default": bytes_default,
        "changes_bytes_max": bytes_max,
        "changes_bytes_one": bytes_one,
        "build_ms_default": build_default,
        "build_ms_max": build_max,
        "build_ms_one": build_one,
        "ack_us": round(per_ack_us, 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--proxies", type=int, default=10_000)
    parser.add_argument("--groups", type=int, default=300, help="proxy groups (one per zone)")
    parser.add_argument("--affected", type=int, default=30, help="groups each generation changes")
    parser.add_argument("--keep", type=int, default=KEPT_GENERATIONS, help="the change log's window")
    parser.add_argument("--past", type=int, default=100, help="generations recorded once the window is full")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=argparse.FileType("w"), help="also write the JSON line here")
    args = parser.parse_args(argv)
    if not 0 < args.affected <= args.groups or args.proxies < args.groups or args.keep < 2 or args.past < 2:
        parser.error("need 0 < --affected <= --groups <= --proxies, --keep >= 2 and --past >= 2")
    line = json.dumps(measure(args.proxies, args.groups, args.affected, args.keep, args.past, args.repeat))
    print(line)
    if args.json is not None:
        args.json.write(line + "\n")


if __name__ == "__main__":
    main()
