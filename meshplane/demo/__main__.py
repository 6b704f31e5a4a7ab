"""`make run`: a whole local mesh on 127.0.0.1, without Docker.

Starts the control plane (on examples/, with the edge registry on), the sample backends, an Envoy
sidecar (envoy-configs/sidecar.yaml) and an Envoy edge gateway (envoy-configs/edge-gateway.yaml, on
127.0.0.1 only), and a fleet of simulated bikes that
register at the gateway's site, heartbeat and send requests through the gateway. Once traffic has
gone through both Envoys it prints what happened, the dashboard's URL and commands to try, then
runs until Ctrl-C and stops everything it started. `--check` exits after the traffic checks.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from meshplane.demo.launcher import Demo, DemoError


async def main(check_only: bool, devices: int) -> int:
    demo = Demo(device_count=devices)
    demo.stop_on_signals()
    try:
        await demo.start()
        results = await demo.check()
        print(demo.report(results), flush=True)
        if not check_only:
            await demo.wait_for_stop()
        return 0
    except DemoError as error:
        print(f"meshplane demo: {error}", file=sys.stderr)
        return 1
    finally:
        await demo.close()
        print("meshplane demo: stopped; nothing left running.", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m meshplane.demo", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit after checking traffic flows")
    parser.add_argument("--devices", type=int, default=20, help="simulated bikes to register [%(default)s]")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(asyncio.run(main(args.check, args.devices)))
