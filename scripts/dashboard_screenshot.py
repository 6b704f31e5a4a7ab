"""`make screenshot`: docs/images/dashboard.png, the dashboard of the `make run` demo.

Starts the demo (the control plane on examples/, its backends, a sidecar Envoy, an edge-gateway
Envoy and a fleet of simulated bikes, all on 127.0.0.1: meshplane/demo), waits until traffic has
gone through both Envoys, lets headless Chromium (`make chromium`) draw `/` and save a screenshot,
then stops everything it started. Uses the demo's fixed ports, so `make run` must not be running.
Not part of `make test`: it rewrites a committed file.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
from pathlib import Path

from meshplane.demo.launcher import STATUS_URL, Demo, DemoError

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
# The flags tests/test_dashboard.py runs Chromium with: no sandbox (CI runs as root), no GPU, and
# nothing that talks to the network on its own.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-default-apps",
    "--disable-extensions",
    "--hide-scrollbars",
)


async def screenshot(url: str, output: Path, width: int, height: int) -> None:
    """Saves a PNG of `url` as Chromium draws it once the page's script has run (virtual time:
    the page's fetches complete and it draws before the picture is taken, however slow the machine)."""
    with tempfile.TemporaryDirectory(prefix="meshplane-chromium-") as profile:
        process = await asyncio.create_subprocess_exec(
            CHROMIUM,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "--virtual-time-budget=5000",
            f"--window-size={width},{height}",
            f"--screenshot={output}",
            url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(process.communicate(), 120)
    if process.returncode != 0 or not await asyncio.to_thread(output.exists):
        raise DemoError(f"chromium could not take the screenshot ({process.returncode}): {err.decode()[-2000:]}")


async def main(output: Path, width: int, height: int, devices: int) -> int:
    if not shutil.which(CHROMIUM):
        print(f"dashboard_screenshot: {CHROMIUM} is missing: run `make chromium`", file=sys.stderr)
        return 1
    demo = Demo(device_count=devices)
    try:
        await demo.start()
        await demo.check()
        output.parent.mkdir(parents=True, exist_ok=True)
        await screenshot(f"{STATUS_URL}/", output, width, height)
    except DemoError as error:
        print(f"dashboard_screenshot: {error}", file=sys.stderr)
        return 1
    finally:
        await demo.close()
    print(f"dashboard_screenshot: wrote {output.relative_to(REPO) if output.is_relative_to(REPO) else output}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "images" / "dashboard.png")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1100)
    parser.add_argument("--devices", type=int, default=20, help="simulated bikes [%(default)s]")
    arguments = parser.parse_args()
    sys.exit(asyncio.run(main(arguments.output.resolve(), arguments.width, arguments.height, arguments.devices)))
