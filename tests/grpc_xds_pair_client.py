"""Run as a process: calls one target through grpcio's xDS client until two replies are seen, around a change.

Usage: GRPC_XDS_BOOTSTRAP=bootstrap.json python tests/grpc_xds_pair_client.py TARGET NAME BEFORE AFTER SECOND
Calls TARGET (an xds:/// target whose route splits between two clusters) every 20 ms until
replies containing BEFORE and SECOND have both been seen, and prints `ready`; then waits for a
line on stdin (the caller's change is made); then calls until a reply contains AFTER, and from
then on until one contains SECOND, printing each of those two. One channel, so one ADS stream
carries both clusters' endpoints: a response carrying only the first's must leave the second's
in place. Gives up after 30 s per phase (exit 1).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import grpc

SAY_HELLO = "/meshplane.demo.Greeter/SayHello"


def call_until(call: Callable[[], str], wanted: str) -> str | None:
    deadline = time.monotonic() + 30
    while wanted not in (reply := call()):
        if time.monotonic() > deadline:
            return None
        time.sleep(0.02)
    return reply


def main() -> int:
    target, name, before, after, second = sys.argv[1:6]
    with grpc.insecure_channel(target) as channel:
        say_hello = channel.unary_unary(SAY_HELLO, request_serializer=None, response_deserializer=None)

        def call() -> str:
            return str(say_hello(name.encode(), timeout=10, wait_for_ready=True).decode())

        if call_until(call, before) is None or call_until(call, second) is None:
            return 1
        print("ready", flush=True)
        sys.stdin.readline()
        for wanted in (after, second):
            reply = call_until(call, wanted)
            if reply is None:
                return 1
            print(reply, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
