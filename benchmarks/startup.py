"""`meshplane serve` starting up: time to ready and memory before any stream, as a user runs it.

Run: .venv/bin/python -m benchmarks.startup [--services 1000] [--endpoints 10] [--files 10] [--runs 3]
     [--idle 2] [--port 18660] [--json FILE] [--server-root DIR]

Figures (medians over `--runs` fresh processes, each on the same generated policy directory:
`--services` services x `--endpoints` endpoints in `--files` files, written by
`benchmarks.policy_edit`'s generator):
- `start_to_ready_ms`: from just before the process is spawned to the first `GET /readyz` answered
  200 (interpreter start, imports, the policy load, validation, the first translation and
  publication, binding both ports). `/readyz` is polled every 5 ms, so the figure is at most 5 ms late.
- `rss_ready_mib` / `rss_idle_mib`: the server's `VmRSS` when it became ready, and `--idle` seconds
  later with no stream connected (what the process holds idle); `hwm_idle_mib`: its `VmHWM` then
  (the peak of the start).
- `import_app_ms` / `import_rss_mib`: `import meshplane.app` alone in a fresh interpreter (no
  `-X importtime`): its wall time and the interpreter's `VmRSS` after it.
- `import_offenders`: from `python -X importtime -c "import meshplane.app"`: each top-level package
  imported (third-party or standard) with its cumulative import time, the heaviest first, and the
  meshplane modules with the most self time.
- `phases_cpu_ms`: where a start's CPU goes, in a fresh interpreter of the checkout (no server, no
  stream): `import meshplane.app`; the policy load (`load`: reading, parsing, validation); the
  merge; the first translation of one proxy group with its serialisation (`translate`, what the
  first stream waits for). CPU (`time.process_time()`, every thread), not wall: it holds up when
  other work shares the cores. Medians of `--runs`; None with the probe's error where the
  checkout's pieces differ (`--server-root` of an older tree).

Everything listens on 127.0.0.1. The two cores are shared with whatever else runs: the load
average is printed with the figures; compare runs of one sitting.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.policy_edit import load_average, serving, write_policy_directory

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
FIGURES = ("start_to_ready_ms", "rss_ready_mib", "rss_idle_mib", "hwm_idle_mib", "import_app_ms", "import_rss_mib")
_IMPORT_PROBE = (
    "import time; started = time.perf_counter(); import meshplane.app; took = time.perf_counter() - started\n"
    "rss = next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith('VmRSS:'))\n"
    "print(took * 1000, rss * 1024)"
)


def memory(pid: int) -> dict[str, int]:
    """`VmRSS` and `VmHWM` of process `pid`, in bytes."""
    found = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                found[name] = int(value.split()[0]) * 1024
    return found


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False  # not listening yet, or 503 while a source has not synced


def measure_start(root: Path, policy: Path, port: int, idle: float, timeout: float = 120) -> dict[str, Any]:
    """One fresh `meshplane serve` on `policy`: spawn → `/readyz` 200, and its memory then and after
    `idle` seconds without a stream."""
    started = time.perf_counter()
    with serving(root, policy, port, port + 1) as server:
        while not _ready(port + 1):
            if server.poll() is not None:
                raise RuntimeError(f"meshplane serve exited ({server.returncode}) before it was ready")
            if time.perf_counter() - started > timeout:
                raise RuntimeError(f"meshplane serve was not ready within {timeout} s")
            time.sleep(0.005)
        ready_s = time.perf_counter() - started
        at_ready = memory(server.pid)
        time.sleep(idle)
        at_idle = memory(server.pid)
    return {
        "start_to_ready_ms": round(ready_s * 1000, 1),
        "rss_ready_mib": round(at_ready["VmRSS"] / MIB, 1),
        "rss_idle_mib": round(at_idle["VmRSS"] / MIB, 1),
        "hwm_idle_mib": round(at_idle["VmHWM"] / MIB, 1),
    }


# Run in the checkout under test; prints one JSON object of CPU milliseconds per phase.
_PHASES_PROBE = """
import asyncio, json, sys, time
from pathlib import Path
cpu = time.process_time
started = cpu()
import meshplane.app
from meshplane.discovery.inventory import Contents, Inventory
from meshplane.discovery.policy_files import PolicyFileSource
from meshplane.model import ProxyGroup
from meshplane.xds.cache import SnapshotCache
from meshplane.xds.publisher import SnapshotPublisher
phases = {"import": cpu() - started}

async def main():
    source = PolicyFileSource(Path(sys.argv[1]))
    started = cpu()
    await source.load()
    phases["load"] = cpu() - started
    started = cpu()
    merged = Inventory().merge(Contents(files=source.mesh, changes=source.take_changes()))
    phases["merge"] = cpu() - started
    cache = SnapshotCache()
    publisher = SnapshotPublisher(cache)
    cache.subscribe(ProxyGroup(), asyncio.Event())
    started = cpu()
    publisher.publish(merged.mesh, merged.changes)
    phases["translate"] = cpu() - started

asyncio.run(main())
print(json.dumps({name: round(seconds * 1000, 1) for name, seconds in phases.items()}))
"""


def measure_phases(root: Path, policy: Path) -> dict[str, float] | str:
    """CPU ms of each phase of a start (`_PHASES_PROBE`) in a fresh interpreter of the checkout at
    `root`, or the probe's last error line."""
    run = subprocess.run(
        [sys.executable, "-c", _PHASES_PROBE, str(policy)], cwd=root, capture_output=True, text=True, check=False
    )
    if run.returncode != 0:
        return (run.stderr.strip().splitlines() or ["no output"])[-1]
    phases: dict[str, float] = json.loads(run.stdout)
    return phases


def measure_import(root: Path) -> dict[str, float]:
    """`import meshplane.app` in a fresh interpreter: wall ms and the interpreter's RSS after it."""
    run = subprocess.run([sys.executable, "-c", _IMPORT_PROBE], cwd=root, capture_output=True, text=True, check=True)
    took_ms, rss = run.stdout.split()
    return {"import_app_ms": round(float(took_ms), 1), "import_rss_mib": round(int(rss) / MIB, 1)}


def import_offenders(root: Path, top: int = 10) -> dict[str, Any]:
    """The heaviest imports of `meshplane.app` by `-X importtime`: top-level packages (the first,
    outermost import of each, cumulative µs → ms) and meshplane modules by self time."""
    run = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import meshplane.app"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    packages: dict[str, int] = {}
    own: dict[str, int] = {}
    modules = 0
    for line in run.stderr.splitlines():
        fields = line.removeprefix("import time:").split("|")
        if len(fields) != 3 or not fields[0].strip().isdigit():
            continue  # the header
        modules += 1
        self_us, cumulative_us, name = int(fields[0]), int(fields[1]), fields[2].strip()
        package = name.split(".")[0]
        if package == "meshplane":
            own[name] = self_us
        elif name == package:
            # importtime prints a module after everything it imported, so the last line naming a
            # package's root is its outermost import, whose cumulative time holds the others.
            packages[package] = max(packages.get(package, 0), cumulative_us)
    heaviest = sorted(packages.items(), key=lambda item: -item[1])[:top]
    slowest = sorted(own.items(), key=lambda item: -item[1])[:top]
    return {
        "modules_imported": modules,
        "packages_ms": {name: round(us / 1000, 1) for name, us in heaviest},
        "meshplane_self_ms": {name: round(us / 1000, 1) for name, us in slowest},
    }


def table(row: dict[str, Any]) -> str:
    lines = ["| figure | value | load average (1, 5, 15 min) |", "| --- | ---: | --- |"]
    for figure in FIGURES:
        lines.append(f"| {figure} | {row[figure]} | {row['load_average']} |")
    for name, ms in (row["phases_cpu_ms"] or {}).items():
        lines.append(f"| start phase {name} (CPU ms) | {ms} | |")
    offenders = row["import_offenders"]
    for name, ms in offenders["packages_ms"].items():
        lines.append(f"| import {name} (cumulative ms) | {ms} | |")
    for name, ms in offenders["meshplane_self_ms"].items():
        lines.append(f"| import {name} (self ms) | {ms} | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3, help="fresh processes; figures are medians")
    parser.add_argument("--idle", type=float, default=2.0, help="seconds idle after ready before RSS is read")
    parser.add_argument("--port", type=int, default=18660, help="xDS port; the status port is the next")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--server-root", type=Path, default=ROOT, help="run meshplane from this checkout")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as work:
        policy = Path(work) / "policy"
        write_policy_directory(policy, args.services, args.endpoints, args.files)
        load = load_average()
        starts = [measure_start(args.server_root, policy, args.port, args.idle) for _ in range(args.runs)]
        phases = [measure_phases(args.server_root, policy) for _ in range(args.runs)]
    imports = [measure_import(args.server_root) for _ in range(args.runs)]
    row: dict[str, Any] = {
        "scenario": f"startup-{args.services}",
        "services": args.services,
        "endpoints": args.services * args.endpoints,
        "files": args.files,
        "runs": args.runs,
        "load_average": load,
    }
    for figure in starts[0]:
        row[figure] = statistics.median(start[figure] for start in starts)
    for figure in imports[0]:
        row[figure] = statistics.median(run[figure] for run in imports)
    measured = [run for run in phases if isinstance(run, dict)]
    row["phases_cpu_ms"] = (
        {name: statistics.median(run[name] for run in measured) for name in measured[0]} if measured else None
    )
    if not measured:
        row["phases_error"] = phases[0]
    row["import_offenders"] = import_offenders(args.server_root)
    row["load_average_after"] = load_average()
    print(json.dumps(row), flush=True)
    print(table(row))
    if args.json:
        args.json.write_text(json.dumps({"rows": [row]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
