"""Run as a process: calls the greeter through grpcio's own xDS client.

Usage: GRPC_XDS_BOOTSTRAP=bootstrap.json python tests/grpc_xds_client.py xds:///greeter:50051 NAME [CALLS]
Prints one reply per line. grpcio resolves the target with LDS → RDS → CDS → EDS from the server
named in the bootstrap; it is a client independent of ours and of Envoy.
"""

from __future__ import annotations

import sys

import grpc

SAY_HELLO = "/meshplane.demo.Greeter/SayHello"


def main() -> int:
    target, name = sys.argv[1], sys.argv[2]
    calls = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        say_hello = channel.unary_unary(SAY_HELLO)
        for _ in range(calls):
            reply = say_hello(name.encode(), timeout=10, wait_for_ready=True)
            print(reply.decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
