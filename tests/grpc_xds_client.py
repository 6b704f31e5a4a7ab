"""Run as a process: calls the greeter through grpcio's own xDS client.

Usage: GRPC_XDS_BOOTSTRAP=bootstrap.json python tests/grpc_xds_client.py TARGET NAME [UNTIL]
Calls `TARGET` (e.g. xds:///greeter:50051) once and prints the reply; with UNTIL, keeps calling
(one call every 50 ms, for at most 30 s) until a reply contains UNTIL, printing each new reply.
grpcio resolves the target with LDS → RDS → CDS → EDS from the server named in the bootstrap: a
client independent of ours and of Envoy. Exits 1 if UNTIL never appears.
"""

from __future__ import annotations

import sys
import time

import grpc

SAY_HELLO = "/meshplane.demo.Greeter/SayHello"


def main() -> int:
    target, name = sys.argv[1], sys.argv[2]
    until = sys.argv[3] if len(sys.argv) > 3 else None
    deadline = time.monotonic() + 30
    last = ""
    with grpc.insecure_channel(target) as channel:
        say_hello = channel.unary_unary(SAY_HELLO)
        while True:
            reply = say_hello(name.encode(), timeout=10, wait_for_ready=True).decode()
            if reply != last:
                print(reply, flush=True)
                last = reply
            if until is None or until in reply:
                return 0
            if time.monotonic() > deadline:
                return 1
            time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main())
