"""`make run`'s launcher, as a user runs it: it serves traffic through both Envoys and the dashboard,
and Ctrl-C leaves no process behind and no port taken."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from meshplane.demo.launcher import DEMO_PORTS, GATEWAY, REGISTRY_HTTP_PORT, SIDECAR, SITE, STATUS_URL
from tests.envoy_harness import REPO

READY_LINE = "Ctrl-C stops everything."
START_DEADLINE = 120.0
DEVICES = 5


def port_is_free(port: int) -> bool:
    """Nothing listens there. (A bind test would trip on the demo's own TIME_WAIT connections.)"""
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (children, their children, …), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found: set[int] = set()
    pending = [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.add(child)
            pending.append(child)
    return found


def alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped by its new parent, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def listening_beyond_loopback(ports: tuple[int, ...]) -> list[str]:
    """Sockets listening on `ports` on an address other than 127.0.0.1 (from /proc/net/tcp, tcp6)."""
    found = []
    # ::1 and ::ffff:127.0.0.1 (gRPC binds 127.0.0.1 that way) in /proc's byte order.
    loopbacks = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port = local.split(":")
            if state == "0A" and int(port, 16) in ports and address not in loopbacks:  # 0A: LISTEN
                found.append(f"{table}: {address}:{int(port, 16)}")
    return found


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, response.read().decode()


def read_until_ready(process: subprocess.Popen[str], errors: Path) -> str:
    """The demo's stdout up to its ready line (a thread keeps draining the rest); fails with its
    output if it exits or stalls."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    end = time.monotonic() + START_DEADLINE
    while time.monotonic() < end:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        if line is None:
            break
        seen.append(line)
        if READY_LINE in line:
            return "".join(seen)
    process.kill()
    process.wait()
    pytest.fail(
        f"the demo did not become ready:\n{''.join(seen)}\n{errors.read_text()[-3000:]}\n"
        f"sockets on the demo's ports:\n{sockets_on(DEMO_PORTS)}"
    )


def sockets_on(ports: tuple[int, ...]) -> str:
    """`ss`'s lines (with processes) for every socket on `ports`: who holds a port the demo wanted."""
    shown = subprocess.run(["ss", "-tanp"], capture_output=True, text=True, timeout=30, check=False).stdout
    wanted = {f":{port}" for port in ports}
    return "\n".join(line for line in shown.splitlines() if any(f"{w} " in line for w in wanted))


def port_is_bindable(port: int) -> bool:
    """The demo could listen there now: as it binds (SO_REUSEADDR, which TIME_WAIT does not block),
    so a connection of an earlier demo still closing on that port (FIN_WAIT_2: its peer has not
    closed yet), which `port_is_free` cannot see, counts as taken."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def start_demo(tmp_path: Path) -> tuple[subprocess.Popen[str], Path]:
    """`python -m meshplane.demo` as `make run` starts it; returns it and the file of its stderr."""
    busy = [port for port in DEMO_PORTS if not port_is_free(port)]
    if busy:
        pytest.fail(f"the demo's ports are taken (is `make run` running?): {busy}")
    # An earlier demo's connections on its ports may still be closing (the kernel ends them within
    # tcp_fin_timeout, 60 s by default): wait until the ports can be bound again.
    deadline = time.monotonic() + 90
    while not all(port_is_bindable(port) for port in DEMO_PORTS):
        if time.monotonic() > deadline:
            pytest.fail(f"the demo's ports cannot be bound: {[p for p in DEMO_PORTS if not port_is_bindable(p)]}")
        time.sleep(0.1)
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    errors = tmp_path / "stderr"
    with errors.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "meshplane.demo", "--devices", str(DEVICES)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=REPO,
            env=environment,
        )
    return process, errors


def envoys_of(processes: set[int]) -> list[int]:
    """The Envoys among `processes` (the demo starts them with bootstraps in its meshplane-demo-* workdir)."""
    return [
        pid
        for pid in processes
        if "meshplane-demo-" in command_line(pid) and Path(command_line(pid).split()[0]).name == "envoy"
    ]


@pytest.mark.xdist_group("envoy")
def test_make_run_serves_both_envoys_and_the_dashboard_and_ctrl_c_leaves_nothing(tmp_path: Path) -> None:
    process, errors = start_demo(tmp_path)
    try:
        output = read_until_ready(process, errors)
        started = descendants(process.pid)
        assert len(envoys_of(started)) == 2, [command_line(pid) for pid in started]
        assert listening_beyond_loopback(DEMO_PORTS) == []  # nothing reachable from the network

        # What the launcher says it checked…
        assert "sidecar → web: answered by ['web-1', 'web-2']" in output
        assert "sidecar → api with x-canary: always → api-canary" in output
        assert "gRPC through the sidecar: hello demo from greeter-1" in output
        assert "device → edge gateway → web: answered by web-" in output
        assert f"Dashboard: {STATUS_URL}/" in output

        # …and what a user sees trying it: traffic through both Envoys, the dashboard, the proxies, the bikes.
        status, body = http_get(f"{SIDECAR.outbound_url}/", {"Host": "web"})
        assert (status, body[: len("hello from web-")]) == (200, "hello from web-"), body
        status, body = http_get(f"{GATEWAY.outbound_url}/users", {"Host": "api", "x-canary": "always"})
        assert (status, body[: len("hello from api-canary")]) == (200, "hello from api-canary"), body
        status, page = http_get(f"{STATUS_URL}/")
        assert status == 200
        assert "<html" in page.lower()
        document = json.loads(http_get(f"{STATUS_URL}/status")[1])
        assert sorted((proxy["node"], proxy["role"]) for proxy in document["proxies"]) == [
            ("edge-gateway-demo", "edge-gateway"),
            ("sidecar-demo", "sidecar"),
        ]
        token = re.search(r"MESHPLANE_REGISTRY_TOKEN=(\w+)", output)
        assert token is not None, output
        registry = f"http://127.0.0.1:{REGISTRY_HTTP_PORT}/v1/devices?site={SITE}"
        devices = json.loads(http_get(registry, {"Authorization": f"Bearer {token.group(1)}"})[1])
        assert len(devices["devices"]) == DEVICES, devices

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0, errors.read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert [pid for pid in started if alive(pid)] == []
    assert [port for port in DEMO_PORTS if not port_is_free(port)] == []


@pytest.mark.xdist_group("envoy")
def test_a_killed_demo_leaves_no_envoy_behind(tmp_path: Path) -> None:
    """kill -9 gives the demo no chance to stop its Envoys: they die with it (parent-death signal)."""
    process, errors = start_demo(tmp_path)
    try:
        read_until_ready(process, errors)
        envoys = envoys_of(descendants(process.pid))
        assert len(envoys) == 2
    finally:
        process.kill()
        process.wait()
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in envoys) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [command_line(pid) for pid in envoys if alive(pid)] == []
    while not all(port_is_free(port) for port in DEMO_PORTS) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [port for port in DEMO_PORTS if not port_is_free(port)] == []
