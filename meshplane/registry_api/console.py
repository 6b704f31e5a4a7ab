"""`meshplane devices …`: the edge registry from a terminal, through its JSON mirror.

    meshplane devices list [--site S] [--class C] [--label k=v]…   (operator token)
    meshplane devices get DEVICE_ID                               (and its last issued certificate)
    meshplane devices hash-token < token                          (prints a tokens-file line)

The token comes from `--token` or `MESHPLANE_REGISTRY_TOKEN`; the registry from `--registry`
(default http://127.0.0.1:18002). Imports nothing heavy until a command runs.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, TextIO


def add_devices_command(commands: Any) -> None:
    devices = commands.add_parser("devices", help="list and inspect edge device registrations")
    devices.add_argument(
        "--registry",
        default=os.environ.get("MESHPLANE_REGISTRY_URL", "http://127.0.0.1:18002"),
        help="the registry's JSON mirror [%(default)s]",
    )
    devices.add_argument("--token", default=None, help="bearer token [MESHPLANE_REGISTRY_TOKEN]")
    devices.add_argument("--output", "-o", default="table", choices=["table", "json"])
    actions = devices.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="registered devices (an operator token)")
    listing.add_argument("--site", default="")
    listing.add_argument("--class", dest="device_class", default="")
    listing.add_argument("--label", action="append", default=[], help="key=value; repeatable")
    get = actions.add_parser("get", help="one device")
    get.add_argument("device_id")
    actions.add_parser("hash-token", help="read a token on stdin, print its tokens-file sha256 line")


def devices_command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout  # looked up per call: tests and callers may have replaced it
    if args.action == "hash-token":
        token = sys.stdin.read().strip()
        if not token:
            print("meshplane devices hash-token: no token on stdin", file=sys.stderr)
            return 2
        print(f"  - sha256: {hashlib.sha256(token.encode()).hexdigest()}", file=out)
        return 0
    token = args.token or os.environ.get("MESHPLANE_REGISTRY_TOKEN", "")
    if args.action == "list":
        query = [("site", args.site), ("device_class", args.device_class)] + [("label", x) for x in args.label]
        path = "/v1/devices?" + urllib.parse.urlencode([(k, v) for k, v in query if v])
    else:
        path = "/v1/devices/" + urllib.parse.quote(args.device_id, safe="")
    request = urllib.request.Request(args.registry.rstrip("/") + path, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as error:
        try:
            detail = json.loads(error.read()).get("message", "")
        except ValueError:
            detail = ""
        print(f"meshplane devices: {error.code} {detail}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as error:
        print(f"meshplane devices: cannot reach {args.registry}: {error}", file=sys.stderr)
        return 1
    devices = answer.get("devices", []) if args.action == "list" else [answer]
    if args.output == "json":
        print(json.dumps(answer, indent=2), file=out)
        return 0
    print(devices_table(devices), file=out)
    if args.action == "get" and (certificate := certificate_line(answer)):
        print(certificate, file=out)
    return 0


DEVICE_COLUMNS = ("DEVICE", "CLASS", "SITE", "VERSION", "EXPIRES", "ENDPOINTS")


def devices_table(devices: list[dict[str, Any]]) -> str:
    """The `devices list` table: one row a device, every column as wide as its widest cell plus two
    spaces (nothing is cut: a long device id widens its column), the last column unpadded.
    EXPIRES is the lease's end in UTC to the second."""
    rows = [DEVICE_COLUMNS] + [
        (
            str(device.get("device_id", "")),
            str(device.get("device_class", "")),
            str(device.get("site", "")),
            str(device.get("version", "")),
            _to_the_second(str(device.get("expires_at", ""))),
            ",".join(f"{e.get('address')}:{e.get('port')}" for e in device.get("endpoints", [])),
        )
        for device in devices
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(DEVICE_COLUMNS) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]]) for row in rows
    )


def certificate_line(device: dict[str, Any]) -> str:
    """`devices get`'s line on the certificate last issued to the device, empty when none was:
    `CERTIFICATE  serial <hex>  not after <UTC>  expires in <time>|EXPIRED  SAN <uri>` (the time
    left by this machine's clock; left out when the not-after cannot be read)."""
    certificate = device.get("certificate")
    if not isinstance(certificate, dict):
        return ""
    not_after = _to_the_second(str(certificate.get("not_after", "")))
    serial, san = certificate.get("serial", ""), certificate.get("uri_san", "")
    return f"CERTIFICATE  serial {serial}  not after {not_after}{_time_left(not_after)}  SAN {san}"


def _time_left(not_after: str, now: float | None = None) -> str:
    try:
        end = datetime.datetime.fromisoformat(not_after).timestamp()
    except ValueError:
        return ""
    left = end - (time.time() if now is None else now)
    if left <= 0:
        return "  EXPIRED"
    for unit, seconds in (("d", 86400), ("h", 3600), ("min", 60)):
        if left >= 2 * seconds:
            return f"  expires in {round(left / seconds)} {unit}"
    return f"  expires in {round(left)} s"


def _to_the_second(timestamp: str) -> str:
    """`2026-01-02T03:04:05.678901234Z` (a protobuf Timestamp in JSON) → `2026-01-02T03:04:05Z`."""
    return re.sub(r"\.\d+Z$", "Z", timestamp)
