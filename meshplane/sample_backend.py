"""A sample HTTP backend: it answers every request with its name.

`python -m meshplane.sample_backend --name web-1 --port 9101` serves until SIGINT/SIGTERM. Each answer
is `hello from <name> (<METHOD> <path>)` with an `x-backend: <name>` header, so a client can see
which endpoint a proxy picked.

Used by the demo (`make run`), docker-compose's sample services, the device simulator's stand-in
backends (`meshplane.simulate.fleet`) and tests. It sits beside them rather than inside the demo so
that the simulator, which the demo imports, never imports the demo back. Imports nothing of ours;
the control plane's own packages never import it (an import-linter contract).
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from aiohttp import web


async def start_http_backend(name: str, port: int, host: str = "127.0.0.1") -> web.AppRunner:
    """A running backend on host:port; stop it with `await runner.cleanup()`. Raises OSError (and
    leaves nothing open) when it cannot listen there."""

    async def answer(request: web.Request) -> web.Response:
        return web.Response(text=f"hello from {name} ({request.method} {request.path})\n", headers={"x-backend": name})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()  # a port taken must not leak the runner
        raise
    return runner


async def _serve(name: str, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    runner = await start_http_backend(name, port, host)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m meshplane.sample_backend", description=__doc__)
    parser.add_argument("--name", required=True, help="the name every answer carries")
    parser.add_argument("--host", default="127.0.0.1", help="listen address [%(default)s]")
    parser.add_argument("--port", type=int, required=True, help="listen port")
    args = parser.parse_args()
    asyncio.run(_serve(args.name, args.host, args.port))


if __name__ == "__main__":
    main()
