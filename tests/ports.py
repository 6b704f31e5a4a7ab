"""Ports for test servers that bind later than the test picks them (Envoy listeners, subprocesses).

Binding port 0 and closing the socket leaves a window in which the kernel may hand the same port
to anyone else asking for an ephemeral one (32768-60999 here: every outgoing connection and every
`:0` bind of every test). So these ports come from above that range, each xdist worker from its own
slice, in turn within the worker, skipping any that are taken: two tests of a run never get the
same port, and nothing the kernel assigns can take one meanwhile.

Several test runs on one machine (engineers' runs beside CI) each claim a slot first
(tests/conftest.py, by a lock file held for the run), and each slot has its own worker slices, so
concurrent runs do not hand out each other's ports either.
"""

from __future__ import annotations

import itertools
import os
import socket

FIRST = 61000  # above net.ipv4.ip_local_port_range's default top (60999)
SLOTS = 4  # concurrent test runs on one machine, each with its own ports
WORKERS = 4  # xdist workers per run, each with its own slice
SLICE = 280  # ports per (slot, worker): 4 x 4 x 280 fit below 65535
SLOT_VARIABLE = "MESHPLANE_TEST_PORT_SLOT"


def _worker() -> int:
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(name.removeprefix("gw")) % WORKERS if name.startswith("gw") else 0


def _ephemeral_top() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ranges:
            return int(ranges.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 60999


def _slot() -> int:
    try:
        return int(os.environ.get(SLOT_VARIABLE, "0")) % SLOTS
    except ValueError:
        return 0


def claim(slot: int) -> None:
    """Hands out ports from `slot`'s slices from now on (the run's slot, claimed in conftest)."""
    global _START, _TURN
    _START = FIRST + (slot * WORKERS + _worker()) * SLICE
    # Even offsets only: port + 1 is never handed out, so it stays free for an edge gateway's second listener.
    _TURN = itertools.cycle(range(_START, _START + SLICE - 1, 2))


_START = 0
_TURN: itertools.cycle[int]
claim(_slot())


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port on 127.0.0.1 no other test of this run is given, free now, its successor too."""
    if _ephemeral_top() >= FIRST:  # a machine whose kernel hands out these ports too: fall back
        return _ephemeral_pair()
    for _ in range(SLICE):
        port = next(_TURN)
        if _bindable(port) and _bindable(port + 1):
            return port
    raise RuntimeError(f"no two consecutive free ports in {_START}-{_START + SLICE - 1}")


def _ephemeral_pair() -> int:
    for _ in range(100):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            if port < 65535 and _bindable(port + 1):
                return port
    raise RuntimeError("no two consecutive free ports found")
