"""A minimal gRPC service for demos and tests: `/meshplane.demo.Greeter/SayHello`.

Messages are raw UTF-8 bytes (no .proto needed): the request is a name, the reply
`hello <name> from <backend>`. Clients call it with `channel.unary_unary(SAY_HELLO)`.
"""

from __future__ import annotations

from typing import Any

import grpc

SERVICE = "meshplane.demo.Greeter"
SAY_HELLO = f"/{SERVICE}/SayHello"


def greeter_handler(backend_name: str) -> grpc.GenericRpcHandler[bytes, bytes]:
    def say_hello(request: bytes, context: Any) -> bytes:
        return f"hello {request.decode(errors='replace')} from {backend_name}".encode()

    return grpc.method_handlers_generic_handler(SERVICE, {"SayHello": grpc.unary_unary_rpc_method_handler(say_hello)})


async def start_greeter(backend_name: str, address: str = "127.0.0.1:0") -> tuple[grpc.aio.Server, int]:
    """A running greeter on `address`; returns the server and its port."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((greeter_handler(backend_name),))
    port = server.add_insecure_port(address)
    await server.start()
    return server, port
