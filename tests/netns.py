"""A stand-in device on its own network: a network namespace joined to this host by a veth pair.

The registry refuses loopback device addresses (a device must never make a proxy route to the
host's own loopback), so a test device needs an address that is not loopback. Rather than use
this host's real interfaces, a test makes its own host: a namespace `mpdev-…` holding one end of
a veth pair at 198.18.N.2 (the benchmarking range, RFC 2544), the other end at 198.18.N.1 on this
side. Traffic to the device goes only over that pair. Needs root and iproute2 (`ip`), as on CI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass

_DEVICE_SERVER = """
import http.server, sys
name = sys.argv[1]
class Answer(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"{name} {self.path}\\n".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer((sys.argv[2], 0), Answer)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


@dataclass
class DeviceHost:
    """A namespace with one address, `address`, reachable from this host."""

    namespace: str
    host_side: str
    address: str
    processes: list[subprocess.Popen[str]]

    @property
    def host_address(self) -> str:
        """This host's end of the pair: an address of this host that is not loopback."""
        return self.address.rsplit(".", 1)[0] + ".1"

    def serve(self, name: str) -> int:
        """Starts an HTTP server in the namespace answering `<name> <path>`; returns its port."""
        process = subprocess.Popen(
            ["ip", "netns", "exec", self.namespace, sys.executable, "-c", _DEVICE_SERVER, name, self.address],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.processes.append(process)
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"the device server in {self.namespace} did not start")
        return int(line)

    def close(self) -> None:
        for process in self.processes:
            process.terminate()
            process.wait(10)
        subprocess.run(["ip", "netns", "delete", self.namespace], check=False, capture_output=True)
        subprocess.run(["ip", "link", "delete", self.host_side], check=False, capture_output=True)


def unavailable_reason() -> str | None:
    """Why a namespace cannot be made here, or None."""
    if shutil.which("ip") is None:
        return "no network namespace for the stand-in device: iproute2's `ip` is not installed"
    if os.geteuid() != 0:
        return "no network namespace for the stand-in device: making one needs root"
    return None


def make_device_host() -> DeviceHost:
    # Unique per process and call: pytest-xdist workers make theirs at the same time.
    tag = f"{os.getpid() % 10000}{int(time.monotonic() * 1000) % 1000:03d}"
    subnet = int(tag) % 250 + 1
    namespace, host_side, device_side = f"mpdev-{tag}", f"mph{tag}", f"mpd{tag}"
    host = DeviceHost(namespace, host_side, f"198.18.{subnet}.2", [])
    commands = [
        ["ip", "netns", "add", namespace],
        ["ip", "link", "add", host_side, "type", "veth", "peer", "name", device_side],
        ["ip", "link", "set", device_side, "netns", namespace],
        ["ip", "addr", "add", f"198.18.{subnet}.1/30", "dev", host_side],
        ["ip", "link", "set", host_side, "up"],
        ["ip", "netns", "exec", namespace, "ip", "addr", "add", f"{host.address}/30", "dev", device_side],
        ["ip", "netns", "exec", namespace, "ip", "link", "set", device_side, "up"],
        ["ip", "netns", "exec", namespace, "ip", "link", "set", "lo", "up"],
    ]
    try:
        for command in commands:
            subprocess.run(command, check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as error:
        host.close()
        raise RuntimeError(f"{' '.join(error.cmd)}: {error.stderr.strip()}") from error
    return host
