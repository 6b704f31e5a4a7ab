"""gRPC echo stand-ins for the conformance suite's echo-basic Deployments in gRPC mode.

Owns the gRPC server of one stood-in Deployment whose echo-basic runs with `GRPC_ECHO_SERVER`
(upstream's grpc-infra-backend-v1..v3): a grpc.aio server on the stand-in's own loopback address,
plaintext HTTP/2 (the Services name appProtocol `kubernetes.io/h2c`), serving upstream's service
`gateway_api_conformance.echo_basic.grpcecho.GrpcEcho` (tests/conformance/protos/grpcecho.proto,
code generated into tests/conformance/grpcecho/). Echo and EchoTwo answer, as echo-basic does, with
`assertions`: the fully qualified method, every request metadata entry, and the `context` of the
Deployment (namespace, pod; `ingress` and `service_name` empty, as the manifests set neither
INGRESS_NAME nor SERVICE_NAME). EchoThree answers UNIMPLEMENTED, as upstream leaves it. Every call
is kept (tests/conformance/echo.py's `Received`, the path being the fully qualified method).

Not in the answer: the `:authority` (grpcio's server API does not expose the pseudo-header, so
`authority` is empty and `headers` lack it; upstream's GRPCRoute tests read neither), and TLS
assertions (no TLS port is served).
Must not: bind anything but its own loopback address, or answer anything upstream's would not.
"""

from __future__ import annotations

import grpc

from tests.conformance.echo import EchoBackend, EchoFleet, Identity, Received
from tests.conformance.grpcecho import grpcecho_pb2, grpcecho_pb2_grpc

SERVICE = "gateway_api_conformance.echo_basic.grpcecho.GrpcEcho"
MAX_MESSAGE_BYTES = 64 << 10  # EchoRequest is empty; anything larger is not the suite's client


def full_method(method: str) -> str:
    """`/<package>.GrpcEcho/<method>`, as echo-basic names the method it serves."""
    return f"/{SERVICE}/{method}"


def metadata_text(value: str | bytes) -> str:
    """A metadata value as text: binary (`-bin`) values are bytes in grpcio, strings in Go."""
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


class GrpcEchoServicer(grpcecho_pb2_grpc.GrpcEchoServicer):
    """Echo and EchoTwo answer with the assertions; EchoThree is left unimplemented."""

    def __init__(self, backend: EchoBackend) -> None:
        self.backend = backend

    def _answer(self, method: str, context: grpc.aio.ServicerContext) -> grpcecho_pb2.EchoResponse:
        metadata = [(entry.key, metadata_text(entry.value)) for entry in context.invocation_metadata() or ()]
        backend = self.backend
        backend.count += 1
        backend.received.append(Received("POST", full_method(method), "", tuple(metadata), backend.count))
        identity = backend.identity
        return grpcecho_pb2.EchoResponse(
            assertions=grpcecho_pb2.Assertions(
                fully_qualified_method=full_method(method),
                headers=[grpcecho_pb2.Header(key=key, value=value) for key, value in metadata],
                authority="",
                context=grpcecho_pb2.Context(namespace=identity.namespace, pod=identity.pod),
            )
        )

    async def Echo(self, request: grpcecho_pb2.EchoRequest, context: grpc.aio.ServicerContext) -> object:
        return self._answer("Echo", context)

    async def EchoTwo(self, request: grpcecho_pb2.EchoRequest, context: grpc.aio.ServicerContext) -> object:
        return self._answer("EchoTwo", context)

    async def EchoThree(self, request: grpcecho_pb2.EchoRequest, context: grpc.aio.ServicerContext) -> object:
        # grpc-go's generated Unimplemented server answers this way for a method nobody wrote.
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "method EchoThree not implemented")


async def start_grpc_echo(fleet: EchoFleet, identity: Identity, address: str, port: int) -> EchoBackend:
    """Serves `identity`'s gRPC echo on `address`:`port` (a free port: tests/ports.py) until the
    fleet stops; the backend joins the fleet's backends as an HTTP stand-in does."""
    backend = EchoBackend(identity, address, port)
    # grpcio binds with SO_REUSEPORT by default, which would let a second server share a taken port
    # silently; without it, a port someone holds fails the bind, as the HTTP stand-ins' does.
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES), ("grpc.so_reuseport", 0)])
    grpcecho_pb2_grpc.add_GrpcEchoServicer_to_server(GrpcEchoServicer(backend), server)
    if server.add_insecure_port(f"{address}:{port}") != port:
        raise OSError(f"the gRPC echo could not bind {address}:{port}")
    await server.start()

    async def stop() -> None:
        await server.stop(grace=1.0)

    fleet.adopt(backend, stop)
    return backend
