"""Policy files as a user runs them: the real `meshplane serve` process, a generated policy directory,
Delta streams of the Go load client, and one endpoint edited the way an editor saves a file.

Run: .venv/bin/python -m benchmarks.policy_edit [--services 1000] [--endpoints 10] [--streams 1000]
     [--edits 5]
     [--only edit-10-files edit-1-file validate-5000 start-5000] [--json FILE] [--server-root DIR]

Scenarios (`--only` takes these names):
- `edit-10-files`: `--services` services x `--endpoints` endpoints in 10 files; `--streams` Delta
  streams (`deltaload`, built as `benchmarks.scale` builds it) hold the full config; one endpoint's
  port is changed in one file (written beside it, then renamed over it), `--edits` times 3 s apart.
  Figure: from just before the write to the moment the last stream holds the new endpoint, as the
  client records it (inotify, reading, parsing, validation, the default debounce, translation and
  the push are all in it); the median edit (`last_ms`) and the worst (`worst_last_ms`); the server's
  CPU (user + system) per edit (`server_cpu_ms_per_edit`, the streams' idle upkeep included).
- `edit-1-file`: the same with every service in one file (1,000 services: about 490 KB).
- `validate-N` (N = `--large-services`, 5,000 by default, in 5 files): `meshplane validate`'s wall
  time as a user runs it (interpreter start included) and its CPU (`validate_command_cpu_ms`), and
  the load itself in-process.
- `start-N`: the same directory; from starting `meshplane serve` to one Delta stream holding every
  cluster and endpoint, and the server's CPU by then (`start_server_cpu_ms`).

CPU figures hold up better than wall times when other work shares the cores.

Everything listens on 127.0.0.1. The machine's cores are shared by client and server: report the
load average (printed with the figures) and compare runs of one sitting.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.scale import Client, build_tools, proc_cpu_seconds, start_client, stop

ROOT = Path(__file__).resolve().parent.parent
EDITED_PORT = 9999  # the edited endpoint's new port; no generated endpoint uses it
_ENDPOINT_LINE = re.compile(r"(- \{address: [0-9.]+, port: )(\d+)(\})")


def service_yaml(index: int, endpoints: int) -> str:
    """One generated service: a port and `endpoints` endpoints (about 500 bytes with 10)."""
    lines = [
        f"  - name: svc-{index:05d}",
        f"    namespace: team-{index % 20:02d}",
        "    port: 8080",
        "    endpoints:",
    ]
    for endpoint in range(endpoints):
        address = f"10.{index // 250 % 250}.{index % 250}.{endpoint + 1}"
        lines.append(f"      - {{address: {address}, port: {8000 + endpoint}}}")
    return "\n".join(lines) + "\n"


def route_yaml(index: int) -> str:
    """A route attached to service `index`: a header canary rule and a retried default."""
    ref = f"team-{index % 20:02d}/svc-{index:05d}"
    return (
        f"  - name: route-{index:05d}\n"
        f"    service: {ref}\n"
        "    rules:\n"
        "      - match: {path: {prefix: /v1/}, headers: [{name: x-canary, exact: always}]}\n"
        f"        to: [{{service: {ref}, weight: 100}}]\n"
        "        timeout: 3s\n"
        f"      - to: [{ref}]\n"
        "        retries: {on: [5xx, reset], attempts: 2, per_try_timeout: 500ms}\n"
    )


def write_policy_directory(root: Path, services: int, endpoints: int, files: int) -> list[Path]:
    """`services` services (every tenth with a route) spread evenly over `files` files in `root`.
    Returns the files, sorted; the first endpoint of the first service is in the first file."""
    root.mkdir(parents=True, exist_ok=True)
    written = []
    per_file = -(-services // files)
    for number in range(files):
        indices = range(number * per_file, min(services, (number + 1) * per_file))
        parts = ["services:\n", *(service_yaml(index, endpoints) for index in indices)] if indices else []
        routed = [index for index in indices if index % 10 == 0]
        if routed:
            parts += ["routes:\n", *(route_yaml(index) for index in routed)]
        path = root / f"services-{number:02d}.yaml"
        path.write_text("".join(parts) or "# no services left for this file\n")
        written.append(path)
    return written


def edit_one_endpoint(path: Path, port: int = EDITED_PORT) -> None:
    """Changes the port of the file's first endpoint, as editors save: a new file renamed over it."""
    text = path.read_text()
    edited, count = _ENDPOINT_LINE.subn(lambda m: f"{m[1]}{port}{m[3]}", text, count=1)
    if count != 1:
        raise ValueError(f"{path}: no endpoint line to edit")
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(edited)
    temporary.rename(path)


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


@contextlib.contextmanager
def serving(root: Path, config: Path, xds_port: int, status_port: int) -> Iterator[subprocess.Popen[bytes]]:
    """`meshplane serve` of the checkout at `root` on the policy files at `config`, as a user runs
    it (default poll interval and debounce); ended by SIGTERM."""
    with serving_with(root, ["--config", str(config)], xds_port, status_port) as process:
        yield process


@contextlib.contextmanager
def serving_with(root: Path, sources: list[str], xds_port: int, status_port: int) -> Iterator[subprocess.Popen[bytes]]:
    """`meshplane serve SOURCES…` of the checkout at `root`, on 127.0.0.1, with defaults elsewhere
    (debounce included) but for the per-client stream limit (one load client opens every stream);
    ended by SIGTERM, its log shown when it ended otherwise."""
    command = [sys.executable, "-m", "meshplane", "serve", *sources]
    command += ["--xds-address", f"127.0.0.1:{xds_port}", "--status-address", f"127.0.0.1:{status_port}"]
    command += ["--max-streams-per-client", "0", "--log-level", "warning"]
    log = Path(tempfile.mkstemp(prefix="bench-serve-", suffix=".log")[1])
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, cwd=root)
    try:
        yield process
    finally:
        stop(process)
        if process.returncode not in (0, -signal.SIGTERM):
            print(log.read_text()[-3000:], file=sys.stderr)
        log.unlink(missing_ok=True)


def _accepts(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def first_sync(
    server: subprocess.Popen[bytes], binary: Path, port: int, streams: int, watch: float, timeout: float
) -> tuple[Client, float]:
    """A client whose `streams` all hold the full config, and the unix time (s) its run started.
    Waits until the server listens; fails at once if it exited (e.g. its port was taken)."""
    deadline = time.monotonic() + timeout
    while not _accepts(port):  # else gRPC's reconnect back-off (1 s) would be in the figure
        if server.poll() is not None:
            raise RuntimeError(f"meshplane serve exited ({server.returncode}) before listening on {port}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on port {port}")
        time.sleep(0.01)
    if server.poll() is not None:  # what listens is not ours
        raise RuntimeError(f"meshplane serve exited ({server.returncode}); port {port} is another's")
    while True:
        started = time.time()
        client = start_client(binary, port, streams, watch=watch)
        synced = client.wait_synced(timeout)
        if synced.get("streams") == streams:
            return client, started
        client.finish(5)
        client.first_error()  # removes its log
        if time.monotonic() > deadline:
            raise RuntimeError(f"streams did not sync: {synced}")
        time.sleep(0.05)


EDIT_GAP_S = 3.0  # between edits: past the previous edit's racy re-read (2 s) and its push


def measure_edit(
    root: Path,
    deltaload: Path,
    services: int,
    endpoints: int,
    files: int,
    streams: int,
    port: int,
    settle: float,
    edits: int,
) -> dict[str, Any]:
    """`edits` edits of one endpoint, `EDIT_GAP_S` apart; each → the last of `streams` Delta streams
    holds it (ms). Figures: the median and the worst edit, with context."""
    with tempfile.TemporaryDirectory(prefix="bench-policy-") as work:
        written = write_policy_directory(Path(work) / "policy", services, endpoints, files)
        size = written[0].stat().st_size
        watch = settle + edits * EDIT_GAP_S + 8.0 + streams / 200
        edited: list[float] = []  # unix ms of each edit
        with serving(root, Path(work) / "policy", port, port + 1) as server:
            client, _ = first_sync(server, deltaload, port, streams, watch, timeout=300)
            time.sleep(settle)  # past the start's racy window: the edits' own re-reads are what is measured
            load = load_average()
            cpu_before = proc_cpu_seconds(server.pid)
            for edit in range(edits):
                edited.append(time.time() * 1000)
                edit_one_endpoint(written[0], port=EDITED_PORT - edit)
                time.sleep(EDIT_GAP_S)
            server_cpu_per_edit = (proc_cpu_seconds(server.pid) - cpu_before) / edits
            client.finish(watch + 120)
        done = client.event("done")
        client.first_error()
        reached = []  # per edit: (streams, first ms, last ms)
        for update in client.updates():
            before = [at for at in edited if at <= update["first_unix_ms"] + 5]
            if before:
                at = max(before)
                first = update["first_unix_ms"] - at
                reached.append((update["streams"], first, first + update["last_ms"]))
        result: dict[str, Any] = {
            "services": services,
            "endpoints": services * endpoints,
            "files": files,
            "edited_file_kib": round(size / 1024, 1),
            "streams": streams,
            "edits": edits,
            "load_average": load,
            "updates": len(reached),
            "errors": done.get("errors"),
            "server_cpu_ms_per_edit": round(server_cpu_per_edit * 1000, 1),
        }
        if reached:
            result["reached_streams"] = min(count for count, _, _ in reached)
            result["first_ms"] = round(statistics.median(first for _, first, _ in reached), 1)
            result["last_ms"] = round(statistics.median(last for _, _, last in reached), 1)
            result["worst_last_ms"] = round(max(last for _, _, last in reached), 1)
        return result


def measure_start(root: Path, deltaload: Path, services: int, endpoints: int, files: int, port: int) -> dict[str, Any]:
    """`meshplane serve` started → one Delta stream holds every cluster and endpoint (ms)."""
    with tempfile.TemporaryDirectory(prefix="bench-policy-") as work:
        write_policy_directory(Path(work) / "policy", services, endpoints, files)
        load = load_average()
        started = time.time()
        with serving(root, Path(work) / "policy", port, port + 1) as server:
            client, client_started = first_sync(server, deltaload, port, 1, 0, timeout=300)
            server_cpu = proc_cpu_seconds(server.pid)
            client.finish(30)
            synced = client.event("synced")
            client.first_error()
        return {
            "services": services,
            "endpoints": services * endpoints,
            "files": files,
            "load_average": load,
            "start_to_full_config_ms": round((client_started + synced["wall_ms"] / 1000 - started) * 1000, 1),
            "start_server_cpu_ms": round(server_cpu * 1000, 1),
        }


def measure_validate(root: Path, services: int, endpoints: int, files: int) -> dict[str, Any]:
    """`meshplane validate` of the checkout at `root` as a user runs it, and (this checkout's) load
    in this process, without the interpreter's start."""
    from meshplane.discovery.policy_files import validate_policy

    with tempfile.TemporaryDirectory(prefix="bench-policy-") as work:
        policy = Path(work) / "policy"
        write_policy_directory(policy, services, endpoints, files)
        load = load_average()
        children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        run = subprocess.run(
            [sys.executable, "-m", "meshplane", "validate", "--config", str(policy)],
            cwd=root,
            capture_output=True,
            text=True,
            check=False,
        )
        command_s = time.perf_counter() - started
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        command_cpu_s = sum(
            getattr(children, field) - getattr(children_before, field) for field in ("ru_utime", "ru_stime")
        )
        started = time.perf_counter()
        errors = asyncio.run(validate_policy(policy))
        in_process_s = time.perf_counter() - started
        return {
            "services": services,
            "endpoints": services * endpoints,
            "files": files,
            "load_average": load,
            "valid": run.returncode == 0 and not errors,
            "validate_command_ms": round(command_s * 1000, 1),
            "validate_command_cpu_ms": round(command_cpu_s * 1000, 1),
            "load_in_process_ms": round(in_process_s * 1000, 1),
        }


FIGURES = (
    "last_ms",
    "worst_last_ms",
    "first_ms",
    "server_cpu_ms_per_edit",
    "validate_command_ms",
    "validate_command_cpu_ms",
    "load_in_process_ms",
    "start_to_full_config_ms",
    "start_server_cpu_ms",
)


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| scenario | figure | value | load average (1, 5, 15 min) |", "| --- | --- | ---: | --- |"]
    for row in rows:
        for figure in FIGURES:
            if figure in row:
                lines.append(f"| {row['scenario']} | {figure} | {row[figure]} | {row['load_average']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--large-services", type=int, default=5000, help="services of validate-N and start-N")
    parser.add_argument("--only", nargs="*", default=[], help="scenario names (default: all)")
    parser.add_argument("--port", type=int, default=18640, help="xDS port; the status port is the next")
    parser.add_argument("--edits", type=int, default=5, help="edits per edit scenario; figures are medians")
    parser.add_argument("--settle", type=float, default=2.5, help="seconds between the streams' sync and the edit")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--server-root", type=Path, default=ROOT, help="run meshplane from this checkout")
    args = parser.parse_args(argv)
    large = args.large_services
    names = ["edit-10-files", "edit-1-file", f"validate-{large}", f"start-{large}"]
    chosen = [name for name in names if not args.only or name in args.only]
    deltaload = build_tools()["deltaload"] if any(not name.startswith("validate") for name in chosen) else None
    rows = []
    for name in chosen:
        if name.startswith("edit"):
            assert deltaload is not None
            files = 10 if name == "edit-10-files" else 1
            figures = measure_edit(
                args.server_root,
                deltaload,
                args.services,
                args.endpoints,
                files,
                args.streams,
                args.port,
                args.settle,
                args.edits,
            )
        elif name.startswith("validate"):
            figures = measure_validate(args.server_root, large, args.endpoints, 5)
        else:
            assert deltaload is not None
            figures = measure_start(args.server_root, deltaload, large, args.endpoints, 5, args.port)
        rows.append({"scenario": name, **figures})
        print(json.dumps(rows[-1]), flush=True)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows}, indent=1))
    failed = [
        row["scenario"]
        for row in rows
        if row.get("errors")
        or row.get("valid") is False
        or ("edits" in row and (row.get("reached_streams") != row["streams"] or row["updates"] != row["edits"]))
    ]
    for scenario in failed:
        print(f"NOT VALID: {scenario}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
