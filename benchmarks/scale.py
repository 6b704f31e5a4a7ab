"""meshplane beside go-control-plane, same machine, same run, same clients: the performance targets' scenarios.

Run: .venv/bin/python -m benchmarks.scale [--only NAME ...] [--quick] [--json FILE] [--markdown FILE]

Servers: `benchmarks.meshplane_server` and go-control-plane's `gcpbench` (built by
the baseline's build.sh: `BASELINE` below), each serving N EDS clusters x M endpoints to every
node. Clients: `gcpload` (SotW ADS, from the baseline) and `deltaload` (Delta ADS, its twin,
built by benchmarks/build_go_client.sh); both are Go and serve both servers alike. Every scenario
starts a fresh server, so peak RSS (VmHWM) is that scenario's; CPU seconds are the server's
(utime + stime from /proc) during the measured part only.

Scenarios (`--only` takes these names):
- `sync-N`: N SotW streams connect at once; time until every stream holds the full config.
- `delta-sync-N`: the same over Delta ADS (`deltaload`: wildcard CDS, then EDS by name), the same
  content, so its figures sit beside `sync-N`'s: what Delta costs over SotW on each server.
- `update-all`: every endpoint's port changes (SIGUSR1 on both); published → last stream has it (SotW).
- `one-endpoint-delta`: one endpoint changes (meshplane SIGUSR2); published → last Delta stream has
  it. gcpbench can only change every endpoint, so its figure is its SIGUSR1 over Delta.
- `churn`: for `--churn-seconds`, every second 10 % of the services get new endpoints (meshplane
  SIGHUP; gcpbench SIGUSR1, which changes all: the nearest it has); CPU seconds and the p99/worst
  time for an update to reach the last stream.
- `idle-N`: N idle SotW streams holding the config: RSS and RSS per stream, then one update that
  must reach all of them.

Everything listens on 127.0.0.1; every client run is bounded in streams and in time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BASELINE = Path(os.environ.get("GCP_BASELINE_DIR", ROOT.parent / "shared" / "baselines" / "go-control-plane"))
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PUBLISHED = re.compile(r"published at unix_ms (\d+)")


def build_tools() -> dict[str, Path]:
    """The baseline's binaries and deltaload (built on first use; instant afterwards)."""
    built = subprocess.run([str(BASELINE / "build.sh")], check=True, capture_output=True, text=True)
    cache = Path(built.stdout.strip())
    built = subprocess.run([str(HERE / "build_go_client.sh"), "deltaload"], check=True, capture_output=True, text=True)
    deltaload = built.stdout.strip()
    return {
        "gcpbench": cache / "bin" / "gcpbench",
        "gcpload": cache / "bin" / "gcpload",
        "deltaload": Path(deltaload),
        "version": Path(cache / "VERSION"),
    }


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def proc_memory_kib(pid: int) -> dict[str, int]:
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0])
    return found


@dataclass
class Server:
    """One xDS server process under test."""

    kind: str  # "meshplane" or "go-control-plane"
    process: subprocess.Popen[bytes]
    log_path: Path
    baseline_rss_kib: int = 0
    _log_offset: int = 0

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu(self) -> float:
        return proc_cpu_seconds(self.pid)

    def memory(self) -> dict[str, int]:
        return proc_memory_kib(self.pid)

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def published_since(self, count: int, timeout: float) -> list[int]:
        """Waits for `count` new `published at unix_ms T` lines; returns their T."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_path.read_text()[self._log_offset :]
            found = [int(m) for m in PUBLISHED.findall(text)]
            if len(found) >= count or time.monotonic() > deadline:
                if found:
                    self._log_offset += text.rfind("published at") + 1
                return found
            time.sleep(0.02)


def stop(process: subprocess.Popen[Any]) -> None:
    """Ends `process`: SIGTERM, up to 10 s to exit, then SIGKILL; returns once it has exited."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def running_server(kind: str, tools: dict[str, Path], port: int, clusters: int, endpoints: int) -> Iterator[Server]:
    log = Path(tempfile.mkstemp(prefix=f"bench-{kind}-", suffix=".log")[1])
    address = f"127.0.0.1:{port}"
    if kind == "meshplane":
        command = [sys.executable, "-m", "benchmarks.meshplane_server", "--addr", address]
        command += ["--clusters", str(clusters), "--endpoints", str(endpoints)]
    else:
        command = [str(tools["gcpbench"]), "-addr", address, "-clusters", str(clusters), "-endpoints", str(endpoints)]
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT)
    server = Server(kind, process, log)
    try:
        deadline = time.monotonic() + 60
        while "listening on" not in log.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{kind} did not start: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        time.sleep(0.2)
        server.baseline_rss_kib = server.memory()["VmRSS"]
        yield server
    finally:
        stop(process)
        log.unlink(missing_ok=True)


@dataclass
class Client:
    """A gcpload/deltaload run, read line by line as it goes."""

    process: subprocess.Popen[str]
    log_path: Path
    events: list[dict[str, Any]] = field(default_factory=list)
    synced: threading.Event = field(default_factory=threading.Event)

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with contextlib.suppress(json.JSONDecodeError):
                event = json.loads(line)
                self.events.append(event)
                if event.get("event") == "synced":
                    self.synced.set()
        self.synced.set()

    def wait_synced(self, timeout: float) -> dict[str, Any]:
        self.synced.wait(timeout)
        return self.event("synced")

    def finish(self, timeout: float) -> None:
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def first_error(self) -> str:
        """The client's first logged stream error (gcpload/deltaload log one per failed stream)."""
        text = self.log_path.read_text(errors="replace")
        self.log_path.unlink(missing_ok=True)
        return next((line[20:220] for line in text.splitlines() if "stream" in line), "")

    def event(self, name: str) -> dict[str, Any]:
        return next((e for e in self.events if e.get("event") == name), {})

    def updates(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == "update"]


def start_client(binary: Path, port: int, streams: int, watch: float = 0.0) -> Client:
    command = [str(binary), "-addr", f"127.0.0.1:{port}", "-streams", str(streams)]
    if watch:
        command += ["-watch", f"{watch}s"]
    log = Path(tempfile.mkstemp(prefix="bench-client-", suffix=".log")[1])
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=sink, text=True)
    client = Client(process, log)
    threading.Thread(target=client._pump, daemon=True).start()
    return client


def ms(value: float) -> float:
    return round(value, 1)


def sync(
    server: Server, tools: dict[str, Path], port: int, streams: int, client_name: str = "gcpload"
) -> dict[str, Any]:
    cpu = server.cpu()
    client = start_client(tools[client_name], port, streams)
    client.finish(600)
    synced = client.event("synced")
    memory = server.memory()
    held = max(0, memory["VmHWM"] - server.baseline_rss_kib)
    return {
        "streams": synced.get("streams", 0),
        "failed": synced.get("failed", streams),
        "wall_ms": synced.get("wall_ms"),
        "p50_ms": synced.get("p50_ms"),
        "p99_ms": synced.get("p99_ms"),
        "cpu_s": round(server.cpu() - cpu, 2),
        "peak_rss_mib": round(memory["VmHWM"] / 1024, 1),
        "rss_per_stream_kib": round(held / max(1, streams), 1),
        "errors": client.event("done").get("errors"),
        "first_error": client.first_error(),
    }


def propagation(
    server: Server,
    tools: dict[str, Path],
    port: int,
    streams: int,
    client_name: str,
    signum: int,
    changes: int = 1,
    settle: float = 10.0,
) -> dict[str, Any]:
    """Streams sync, then `changes` signals one second apart; time from each publication to arrival."""
    watch = settle + changes * 1.0 + streams / 200
    client = start_client(tools[client_name], port, streams, watch=watch)
    synced = client.wait_synced(600)
    time.sleep(min(1.0, settle))
    cpu = server.cpu()
    published: list[int] = []
    started = time.monotonic()
    for index in range(changes):
        server.signal(signum)
        published += server.published_since(1, 10)
        time.sleep(max(0.0, started + index + 1 - time.monotonic()))
    client.finish(watch + 120)
    cpu_used = server.cpu() - cpu
    updates = sorted(client.updates(), key=lambda u: u["first_unix_ms"])
    reached = []  # per update: published -> p50, p99, last stream (ms)
    for update in updates:
        before = [t for t in published if t <= update["first_unix_ms"] + 5]
        if not before:
            continue
        origin = max(before)
        first = update["first_unix_ms"] - origin
        reached.append(
            {
                "streams": update["streams"],
                "p50": first + update["p50_ms"],
                "p99": first + update["p99_ms"],
                "last": first + update["last_ms"],
            }
        )
    complete = [r for r in reached if r["streams"] >= synced.get("streams", streams)]
    memory = server.memory()
    result: dict[str, Any] = {
        "streams": synced.get("streams", 0),
        "changes": changes,
        "updates_seen": len(reached),
        "updates_reaching_all": len(complete),
        "cpu_s": round(cpu_used, 2),
        "peak_rss_mib": round(memory["VmHWM"] / 1024, 1),
        "errors": client.event("done").get("errors"),
        "first_error": client.first_error(),
    }
    if reached:
        result["p50_ms"] = ms(sorted(r["p50"] for r in reached)[len(reached) // 2])
        result["p99_ms"] = ms(max(r["p99"] for r in reached) if changes == 1 else _p99([r["p99"] for r in reached]))
        result["last_ms"] = ms(max(r["last"] for r in reached))
        result["wall_ms"] = result["last_ms"] if changes == 1 else ms(_p99([r["last"] for r in reached]))
    return result


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(0.99 * len(ordered)) - 1))]


def idle(server: Server, tools: dict[str, Path], port: int, streams: int, settle: float = 10.0) -> dict[str, Any]:
    client = start_client(tools["gcpload"], port, streams, watch=2 * settle + streams / 50)
    synced = client.wait_synced(900)
    time.sleep(min(2.0, settle))
    memory = server.memory()
    held = max(0, memory["VmRSS"] - server.baseline_rss_kib)
    cpu = server.cpu()
    server.signal(signal.SIGUSR1)
    published = server.published_since(1, 10)
    client.finish(2 * settle + streams / 50 + 300)
    update = next(iter(client.updates()), {})
    result: dict[str, Any] = {
        "streams": synced.get("streams", 0),
        "sync_wall_ms": synced.get("wall_ms"),
        "rss_mib": round(memory["VmRSS"] / 1024, 1),
        "peak_rss_mib": round(server.memory()["VmHWM"] / 1024, 1),
        "rss_per_stream_kib": round(held / max(1, streams), 1),
        "update_reached": update.get("streams", 0),
        "update_cpu_s": round(server.cpu() - cpu, 2),
        "errors": client.event("done").get("errors"),
        "first_error": client.first_error(),
    }
    if update and published:
        result["update_last_ms"] = ms(update["first_unix_ms"] - published[0] + update["last_ms"])
    return result


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    clusters: int
    endpoints: int


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    c, e = args.clusters, args.endpoints
    found = [Scenario(f"sync-{n}", f"initial sync, {n} streams (SotW)", c, e) for n in args.sync_streams]
    found += [Scenario(f"delta-sync-{n}", f"initial sync, {n} streams (Delta)", c, e) for n in args.delta_sync_streams]
    found += [
        Scenario("update-all", f"every endpoint changed, {args.update_streams} streams (SotW)", c, e),
        Scenario("one-endpoint-delta", f"one endpoint changed, {args.update_streams} streams (Delta)", c, e),
        Scenario("churn", f"10% churn every 1 s for {args.churn_seconds} s, {args.churn_streams} streams (SotW)", c, e),
        Scenario(
            f"idle-{args.idle_streams}",
            f"{args.idle_streams} idle streams (SotW; gcp: {min(args.idle_streams, args.idle_streams_gcp)})",
            c,
            e,
        ),
    ]
    return [s for s in found if not args.only or s.name in args.only]


def run_one(scenario: Scenario, kind: str, tools: dict[str, Path], args: argparse.Namespace) -> dict[str, Any]:
    port = args.port if kind == "meshplane" else args.port + 1
    with running_server(kind, tools, port, scenario.clusters, scenario.endpoints) as server:
        if scenario.name.startswith("sync-"):
            return sync(server, tools, port, int(scenario.name.split("-")[1]))
        if scenario.name.startswith("delta-sync-"):
            return sync(server, tools, port, int(scenario.name.split("-")[2]), "deltaload")
        if scenario.name == "update-all":
            return propagation(server, tools, port, args.update_streams, "gcpload", signal.SIGUSR1, settle=args.settle)
        if scenario.name == "one-endpoint-delta":
            signum = signal.SIGUSR2 if kind == "meshplane" else signal.SIGUSR1
            return propagation(server, tools, port, args.update_streams, "deltaload", signum, settle=args.settle)
        if scenario.name == "churn":
            signum = signal.SIGHUP if kind == "meshplane" else signal.SIGUSR1
            return propagation(
                server, tools, port, args.churn_streams, "gcpload", signum, args.churn_seconds, args.settle
            )
        streams = args.idle_streams if kind == "meshplane" else min(args.idle_streams, args.idle_streams_gcp)
        return idle(server, tools, port, streams, args.settle)


FIGURES = (
    "wall_ms",
    "p50_ms",
    "p99_ms",
    "last_ms",
    "cpu_s",
    "update_cpu_s",
    "peak_rss_mib",
    "rss_mib",
    "rss_per_stream_kib",
    "update_last_ms",
    "sync_wall_ms",
)


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over `runs` (counts and notes from the last run); {} without runs."""
    if not runs:
        return {}
    merged = dict(runs[-1], runs=len(runs))
    for figure in FIGURES:
        values = sorted(run[figure] for run in runs if isinstance(run.get(figure), int | float))
        if values:
            merged[figure] = (
                values[(len(values) - 1) // 2]
                if len(values) % 2
                else sum(values[len(values) // 2 - 1 : len(values) // 2 + 1]) / 2
            )
    return merged


def ratio(mine: Any, theirs: Any) -> str:
    if isinstance(mine, int | float) and isinstance(theirs, int | float) and theirs:
        return f"{mine / theirs:.2f}"
    return "-"


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| scenario | figure | meshplane | go-control-plane | ratio (meshplane / gcp) |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for row in rows:
        mine, theirs = row["meshplane"], row["go-control-plane"]
        for figure in FIGURES:
            if figure in mine or figure in theirs:
                a, b = mine.get(figure, "-"), theirs.get(figure, "-")
                lines.append(f"| {row['title']} | {figure} | {a} | {b} | {ratio(a, b)} |")
        notes = [
            "-"
            if not data  # that server was not run (--servers)
            else f"{kind}: {data['streams']} streams synced"
            + (f", {data['updates_reaching_all']}/{data['changes']} updates reached all" if "changes" in data else "")
            + (f", update reached {data['update_reached']}" if "update_reached" in data else "")
            + (f", {data['errors']} errors" if data.get("errors") else "")
            for kind, data in (("meshplane", mine), ("go-control-plane", theirs))
        ]
        lines.append(f"| {row['title']} | (check) | {notes[0]} | {notes[1]} | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=[], help="scenario names (default: all)")
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--sync-streams", type=int, nargs="*", default=[1, 100, 1000, 5000])
    parser.add_argument("--delta-sync-streams", type=int, nargs="*", default=[1000])
    parser.add_argument("--update-streams", type=int, default=1000)
    parser.add_argument("--churn-streams", type=int, default=100)
    parser.add_argument("--churn-seconds", type=int, default=60)
    parser.add_argument("--idle-streams", type=int, default=10000)
    parser.add_argument(
        "--idle-streams-gcp",
        type=int,
        default=2000,
        help="cap for go-control-plane's idle run: it needs ~1.3 GB per 1,000 streams while syncing",
    )
    parser.add_argument("--servers", nargs="*", default=["meshplane", "go-control-plane"])
    parser.add_argument("--port", type=int, default=18600, help="meshplane's port; gcpbench gets the next")
    parser.add_argument("--repeat", type=int, default=1, help="runs per scenario and server; figures are medians")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds clients keep watching after a change")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: 5 clusters x 2, a few streams")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--markdown", type=Path, help="write the table here")
    args = parser.parse_args(argv)
    if args.quick:
        args.clusters, args.endpoints, args.sync_streams, args.delta_sync_streams = 5, 2, [1, 3], [3]
        args.update_streams, args.churn_streams, args.churn_seconds, args.idle_streams = 3, 2, 2, 4
        args.settle, args.idle_streams_gcp = 3.0, 4
    tools = build_tools()
    rows = []
    for scenario in scenarios(args):
        row: dict[str, Any] = {"scenario": scenario.name, "title": scenario.title}
        runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in ("meshplane", "go-control-plane")}
        for repeat in range(args.repeat):
            # Alternate who goes first, so slow drifts in the machine's load fall on both alike.
            order = ("meshplane", "go-control-plane") if repeat % 2 == 0 else ("go-control-plane", "meshplane")
            for kind in order:
                if kind in args.servers:
                    runs[kind].append(run_one(scenario, kind, tools, args))
                    print(json.dumps({"scenario": scenario.name, "server": kind, **runs[kind][-1]}), flush=True)
        for kind, results in runs.items():
            row[kind] = median_of(results)
        rows.append(row)
    table = markdown(rows)
    print(table)
    if args.json:
        args.json.write_text(json.dumps({"version": tools["version"].read_text().strip(), "rows": rows}, indent=1))
    if args.markdown:
        args.markdown.write_text(table + "\n")
    # A figure measured with refused or failed streams is not the figure it claims: say so, and fail.
    failed = [
        f"{row['scenario']} ({kind}): {row[kind].get('errors')} errors, {row[kind].get('failed')} failed streams"
        for row in rows
        for kind in ("meshplane", "go-control-plane")
        if row.get(kind) and (row[kind].get("errors") or row[kind].get("failed"))
    ]
    for line in failed:
        print(f"NOT VALID: {line}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
