"""`meshplane simulate devices …`: a simulated fleet against a running control plane's edge registry.

    meshplane simulate devices --count 500 --site gym-berlin --registry meshplane:18001 \\
        [--address IP] [--backends] [--traffic http://gateway:15080/ --host web --rate 20] [--duration 60]
        [--certificates [--traffic-ca gateways-ca.pem]]   (a site whose gateway requires client certificates)

Registers the devices, renews their leases, optionally serves a stand-in backend per device and
sends traffic through the site's gateway, until Ctrl-C, SIGTERM or `--duration` (or at once when
every device was refused); then deregisters them all and prints a summary. With `--certificates`
each device registers with a CSR of its own key, sends its traffic (https) with the certificate
the registry issued, and renews it by registering again before half its lifetime. Progress goes to stderr:
a bar redrawn in place on a terminal, a plain line every few seconds otherwise. Exit status: 0 when
every device registered, 1 when any was refused (or the run stopped before all registered), 2 for
bad arguments.

Imports nothing heavy until the command runs (the CLI builds every parser at start): grpc and
aiohttp come in with `meshplane.simulate.fleet`.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from meshplane.flags import env_flag, env_switch

if TYPE_CHECKING:
    from meshplane.simulate.fleet import Fleet, FleetOptions, FleetStats

PROG = "meshplane simulate devices"


# This command's variables are MESHPLANE_SIMULATE_<FLAG> (meshplane/flags.py says why), so that
# MESHPLANE_TLS_CERT (the server's certificate) or MESHPLANE_SITE cannot leak into a simulation.
SCOPE = "simulate"


def add_simulate_command(commands: Any) -> None:
    simulate = commands.add_parser("simulate", help="simulate edge devices against a running control plane")
    kinds = simulate.add_subparsers(dest="simulated", required=True)
    devices = kinds.add_parser(
        "devices",
        help="register N devices, renew their leases, optionally serve and send traffic; deregister on exit",
        description="Registers the devices, renews their leases, optionally serves a stand-in backend per device"
        " and sends traffic through the site's gateway, until Ctrl-C, SIGTERM or --duration; then deregisters"
        " them all and prints a summary. Exit status: 0 every device registered, 1 some refused, 2 bad arguments.",
    )
    env_flag(devices, "--count", scope=SCOPE, type=int, help="devices to simulate (required)")
    env_flag(devices, "--site", scope=SCOPE, help="their site, from the policy files (required)")
    env_flag(devices, "--registry", scope=SCOPE, default="127.0.0.1:18001", help="the gRPC registry, host:port")
    env_flag(
        devices,
        "--address",
        scope=SCOPE,
        help="the IP every device registers, inside the site's device_ranges; default: this host's address"
        " towards the registry (never loopback: the registry refuses it)",
    )
    env_flag(
        devices, "--port-base", scope=SCOPE, type=int, default=20000, help="device i registers (and serves) port-base+i"
    )
    env_flag(devices, "--class", scope=SCOPE, dest="device_class", default="bike", help="device class")
    env_flag(devices, "--id-prefix", scope=SCOPE, default="sim", help="device ids are PREFIX-SITE-00000, …")
    env_flag(devices, "--firmware-version", scope=SCOPE, default="1.0.0", help="the version every device registers")
    devices.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="repeatable")
    env_flag(devices, "--ttl", scope=SCOPE, type=float, default=30.0, help="lease seconds requested")
    env_flag(
        devices,
        "--heartbeat-interval",
        scope=SCOPE,
        type=float,
        help="seconds between renewals (default: a third of the TTL)",
    )
    env_flag(
        devices, "--heartbeat-streams", scope=SCOPE, type=int, default=4, help="HeartbeatStreams shared by the fleet"
    )
    env_flag(devices, "--concurrency", scope=SCOPE, type=int, default=64, help="registrations (and requests) in flight")
    env_switch(devices, "--backends", scope=SCOPE, help="serve a stand-in HTTP backend on ADDRESS:port of each device")
    env_flag(
        devices,
        "--traffic",
        scope=SCOPE,
        metavar="URL",
        help="send device traffic here: the site gateway's device listener",
    )
    env_flag(devices, "--host", scope=SCOPE, help="with --traffic: the Host header, a cloud service's name")
    env_flag(
        devices, "--rate", scope=SCOPE, type=float, default=10.0, help="with --traffic: requests a second, fleet-wide"
    )
    env_flag(devices, "--duration", scope=SCOPE, type=float, help="stop (and deregister) after this many seconds")
    env_flag(
        devices,
        "--token",
        scope=SCOPE,
        secret=True,
        help="bearer token, e.g. a class token (else MESHPLANE_REGISTRY_TOKEN, as `meshplane devices`)",
    )
    env_switch(
        devices,
        "--certificates",
        scope=SCOPE,
        help="each device sends a CSR of its own key, uses the certificate issued for its traffic (https) and"
        " renews it before half its lifetime: for a site whose gateway requires client certificates",
    )
    env_flag(
        devices,
        "--traffic-ca",
        scope=SCOPE,
        type=Path,
        help="with --certificates: the CA of the gateway's certificate (default: the system's roots)",
    )
    env_flag(devices, "--tls-ca", scope=SCOPE, type=Path, help="the registry serves TLS: trust this CA")
    env_flag(devices, "--tls-cert", scope=SCOPE, type=Path, help="client certificate (mTLS), with --tls-key")
    env_flag(devices, "--tls-key", scope=SCOPE, type=Path, help="its private key")
    devices.add_argument("--output", "-o", default="table", choices=["table", "json"], help="summary [%(default)s]")


def simulate_command(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout  # looked up per call: tests and callers may have replaced them
    err = err or sys.stderr
    try:
        options, duration = fleet_options(args)
    except BadArguments as error:
        print(f"{PROG}: {error}", file=err)
        return 2
    from meshplane.simulate.fleet import Fleet

    progress = ProgressReporter(err)
    fleet = Fleet(options, on_progress=progress.update)
    stats = asyncio.run(_run(fleet, duration))
    progress.finish(stats)
    if args.output == "json":
        print(json.dumps(stats.as_dict(), indent=2), file=out)
    else:
        print(summary_table(stats), file=out)
    if stats.refused:
        print(f"{PROG}: {stats.refused_total} of {stats.count} devices refused:", file=err)
        for reason, count in stats.refused.most_common():
            print(f"  {count:>6}  {reason}", file=err)
        return 1
    if stats.registered < stats.count:
        print(f"{PROG}: stopped with {stats.count - stats.registered} devices not registered", file=err)
        return 1
    return 0


class BadArguments(Exception):
    """The arguments cannot make a fleet; the message says why (exit status 2)."""


def fleet_options(args: argparse.Namespace) -> tuple[FleetOptions, float | None]:
    """The fleet the parsed arguments describe, and the --duration; BadArguments when they cannot."""
    from meshplane.simulate.fleet import FleetOptions, registry_target

    if args.count is None or not args.site:
        raise BadArguments("--count and --site are required")
    if (args.traffic is None) != (args.host is None):
        raise BadArguments("--traffic URL and --host NAME go together")
    labels = {}
    for label in args.label:
        key, sep, value = label.partition("=")
        if not sep or not key:
            raise BadArguments(f"--label {label!r} is not KEY=VALUE")
        labels[key] = value
    if args.duration is not None and args.duration <= 0:
        raise BadArguments("--duration must be positive")
    address = args.address
    if address is None:
        try:
            host, port = registry_target(args.registry)
        except ValueError as error:
            raise BadArguments(f"--registry {args.registry!r} is not host:port") from error
        address = local_address_towards(host, port)
        if ipaddress.ip_address(address).is_loopback:
            raise BadArguments(
                f"this host reaches the registry {args.registry} over loopback, so the devices would register "
                f"{address}, which the registry refuses (a device may never name a loopback address); give "
                f"--address: an address inside site {args.site}'s device_ranges that its gateway can reach"
            )
    options = FleetOptions(
        registry=args.registry,
        site=args.site,
        count=args.count,
        address=address,
        port_base=args.port_base,
        device_class=args.device_class,
        id_prefix=args.id_prefix,
        token=args.token or os.environ.get("MESHPLANE_REGISTRY_TOKEN") or None,
        ttl_seconds=args.ttl,
        heartbeat_interval=args.heartbeat_interval,
        heartbeat_streams=args.heartbeat_streams,
        backends=args.backends,
        traffic_url=args.traffic,
        traffic_host=args.host,
        traffic_rate=args.rate,
        concurrency=args.concurrency,
        version=args.firmware_version,
        labels=labels,
        tls_ca=_readable(args.tls_ca, "--tls-ca"),
        tls_cert=_readable(args.tls_cert, "--tls-cert"),
        tls_key=_readable(args.tls_key, "--tls-key"),
        certificates=args.certificates,
        traffic_ca=_readable(args.traffic_ca, "--traffic-ca"),
    )
    problems = options.problems()
    if problems:
        raise BadArguments("; ".join(problems))
    return options, args.duration


def _readable(path: Path | None, flag: str) -> Path | None:
    """`path` if it can be read (checked now: a missing certificate is a bad argument, not a traceback later)."""
    if path is not None:
        try:
            with path.open("rb"):
                pass
        except OSError as error:
            raise BadArguments(f"{flag} {path}: {error.strerror}") from error
    return path


def local_address_towards(host: str, port: int) -> str:
    """The source address this host would use to reach host:port: connecting a UDP socket picks
    the route (and so the address) without sending anything."""
    try:
        family, kind, proto, _, target = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.connect(target)
            return str(probe.getsockname()[0])
    except OSError as error:
        raise BadArguments(f"cannot find a route to the registry {host}:{port} ({error}); give --address") from error


async def _run(fleet: Fleet, duration: float | None) -> FleetStats:
    """Runs `fleet` until SIGINT, SIGTERM or `duration`; the fleet then deregisters its devices."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)

    def on_signal() -> None:
        """The first signal stops and deregisters; a second one gives up deregistering (a registry
        that stopped answering would otherwise hold the exit for every device's call timeout)."""
        if stop.is_set():
            print(f"{PROG}: stopping without deregistering: the leases left expire within their TTL", file=sys.stderr)
            fleet.abandon()
        stop.set()

    for signum in signals:
        loop.add_signal_handler(signum, on_signal)
    timer = loop.call_later(duration, stop.set) if duration is not None else None

    async def stop_when_all_refused() -> None:
        await fleet.registered.wait()
        if fleet.stats.registered == 0:
            stop.set()  # nothing to renew, serve or send from: running on would only wait

    watcher = asyncio.create_task(stop_when_all_refused())
    try:
        return await fleet.run(stop)
    finally:
        watcher.cancel()
        if timer is not None:
            timer.cancel()
        for signum in signals:
            loop.remove_signal_handler(signum)


# --- progress -------------------------------------------------------------------------------------


def progress_line(stats: FleetStats, width: int = 24) -> str:
    """One line of progress: a bar of devices done (registered or refused), then the counts."""
    done = min(stats.registered + stats.refused_total, stats.count)
    filled = width * done // max(stats.count, 1)
    # Registrations a second while registering; once done, the rate they were done at.
    seconds = stats.registration_seconds if stats.registration_seconds is not None else stats.elapsed
    rate = stats.registered / seconds if seconds > 0 else 0.0
    parts = [
        f"[{'#' * filled}{'-' * (width - filled)}] {stats.registered}/{stats.count} registered",
        f"{stats.refused_total} refused",
    ]
    if stats.retried:  # e.g. the registry's rate limit: says why registration slowed down
        parts.append(f"{sum(stats.retried.values())} retried")
    parts.append(f"heartbeats {stats.heartbeats_ok} ok {stats.heartbeats_failed_total} failed")
    if stats.requests_ok or stats.requests_failed:
        parts.append(f"requests {stats.requests_ok} ok {stats.requests_failed_total} failed")
    if stats.reregistered:
        parts.append(f"{stats.reregistered} re-registered")
    parts.append(f"{rate:.0f} reg/s  {stats.elapsed:.0f}s")
    return "  ".join(parts)


class ProgressReporter:
    """Draws `progress_line` on `stream`: on a terminal redrawn in place at most every 0.1 s, else
    a plain line every 5 s (logs and CI keep every line; a bar there would be one endless line)."""

    def __init__(
        self,
        stream: TextIO,
        *,
        tty: bool | None = None,
        every: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        columns: Callable[[], int] = lambda: shutil.get_terminal_size((100, 24)).columns,
    ) -> None:
        self.stream = stream
        self.columns = columns  # the terminal's width, asked at each redraw (it may be resized)
        self.tty = stream.isatty() if tty is None else tty
        self.every = every if every is not None else (0.1 if self.tty else 5.0)
        self.clock = clock
        self._last: float | None = None

    def update(self, stats: FleetStats) -> None:
        now = self.clock()
        if self._last is not None and now - self._last < self.every:
            return
        self._last = now
        self._draw(stats)

    def finish(self, stats: FleetStats) -> None:
        self._draw(stats)
        if self.tty:
            self.stream.write("\n")
        self.stream.flush()

    def _draw(self, stats: FleetStats) -> None:
        line = progress_line(stats)
        if self.tty:
            # Cut to the terminal's width: a wrapped line cannot be redrawn in place.
            self.stream.write("\r" + line[: max(self.columns() - 1, 10)] + "\x1b[K")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def summary_table(stats: FleetStats) -> str:
    rows = [
        ("devices", f"{stats.count}"),
        ("registered", f"{stats.registered}"),
        ("refused", f"{stats.refused_total}"),
        ("re-registered", f"{stats.reregistered} (after a lapsed lease)"),
        ("retried", f"{sum(stats.retried.values())} (transient refusals)"),
        ("heartbeats", f"{stats.heartbeats_ok} ok, {stats.heartbeats_failed_total} failed"),
        ("requests", f"{stats.requests_ok} ok, {stats.requests_failed_total} failed"),
        *(
            [
                (
                    "certificates",
                    f"{stats.certificates_issued} issued, {stats.certificates_renewed} renewed,"
                    f" {sum(stats.renewals_failed.values())} renewals failed",
                )
            ]
            if stats.certificates_issued
            else []
        ),
        ("deregistered", f"{stats.deregistered} ({sum(stats.deregister_failed.values())} failed)"),
        *([("abandoned", f"{stats.abandoned} (leases left to expire)")] if stats.abandoned else []),
        ("elapsed", f"{stats.elapsed:.1f} s"),
    ]
    lines = [f"{name:<14} {value}" for name, value in rows]
    for title, counter in (
        ("refused", stats.refused),
        ("retried", stats.retried),
        ("heartbeats failed", stats.heartbeats_failed),
        ("requests failed", stats.requests_failed),
        ("deregister failed", stats.deregister_failed),
        ("renewals failed", stats.renewals_failed),
    ):
        if counter:
            lines.append(f"{title}:")
            lines += [f"  {count:>6}  {reason}" for reason, count in counter.most_common()]
    return "\n".join(lines)
