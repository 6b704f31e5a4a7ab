"""The registry's gRPC port bounds what a slow or greedy client can hold, through raw sockets and a
real gRPC client to a real server on 127.0.0.1, with small bounds set by the same settings the
`serve` flags fill (and once through `meshplane serve` itself):

- a TCP connection that never completes the HTTP/2 handshake, and a connection that carries no
  call, are closed by the server (each test waits for the close: a blocking recv returning b"");
- a call whose request message never arrives is ended DEADLINE_EXCEEDED with the reason;
- one client address holds at most `--registry-grpc-max-calls-per-client` calls open at once,
  counted from the call's headers (so calls still waiting for their request count too); the next
  is refused RESOURCE_EXHAUSTED with the reason, and a freed slot is usable again.
"""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

import meshplane.grpc_limits
import meshplane.registry_api.options
import meshplane.registry_api.server
from meshplane.api.edge.v1 import registry_pb2 as pb
from meshplane.api.edge.v1 import registry_pb2_grpc
from meshplane.grpc_limits import ConnectionLimits
from tests.edge_http_server import (
    BIKE_TOKEN,
    OPS_TOKEN,
    RunningRegistry,
    registry_in_thread,
    tokens_file,
    wait_closed_by_server,
)
from tests.http2_frames import EMPTY_SETTINGS, GOAWAY, PREFACE, frame_types
from tests.meshplane_env import without_meshplane_variables
from tests.serve_process import serve

TIMEOUT = 0.5  # the read and idle timeouts the server runs with here: the waits end on the event itself
LIMIT = 3
REGISTER = "/meshplane.edge.v1.Registry/Register"


def bike(token: str = BIKE_TOKEN) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RunningRegistry]:
    with registry_in_thread(tmp_path, grpc_read_timeout=TIMEOUT, grpc_idle_timeout=TIMEOUT) as running:
        yield running


@pytest.mark.timeout(60)
def test_a_connection_that_never_handshakes_is_closed(registry: RunningRegistry) -> None:
    with socket.create_connection(("127.0.0.1", registry.port), timeout=30) as sock:
        wait_closed_by_server(sock)


@pytest.mark.timeout(60)
def test_a_connection_that_carries_no_call_is_closed(registry: RunningRegistry) -> None:
    with socket.create_connection(("127.0.0.1", registry.port), timeout=30) as sock:
        sock.sendall(PREFACE + EMPTY_SETTINGS)
        received = wait_closed_by_server(sock)
    assert GOAWAY in frame_types(received), received


def never_sent(release: threading.Event) -> Iterator[pb.RegisterRequest]:
    """A request stream that sends nothing until `release` is set (by the test, once done)."""
    release.wait()
    yield from ()


@pytest.mark.timeout(60)
def test_a_call_whose_request_never_arrives_is_ended(registry: RunningRegistry) -> None:
    release = threading.Event()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{registry.port}") as channel:
            # A client that opens Register and never sends its request: the same frames a unary call
            # makes, minus the message (a unary stub cannot leave it out).
            register = channel.stream_unary(
                REGISTER,
                request_serializer=pb.RegisterRequest.SerializeToString,
                response_deserializer=pb.RegisterResponse.FromString,
            )
            with pytest.raises(grpc.RpcError) as ended:
                register(never_sent(release), metadata=bike())
    finally:
        release.set()
    assert ended.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert ended.value.details() == "the request message did not arrive within 0.5 s"


def test_a_unary_call_is_still_served(registry: RunningRegistry) -> None:
    """The calls served as client-streaming ones answer as before: a result, and a refusal's code."""
    with grpc.insecure_channel(f"127.0.0.1:{registry.port}") as channel:
        stub = registry_pb2_grpc.RegistryStub(channel)
        endpoint = pb.Endpoint(address="10.20.1.5", port=8080)
        request = pb.RegisterRequest(device_id="bike-1", device_class="bike", site="gym-berlin", endpoints=[endpoint])
        assert stub.Register(request, metadata=bike(), timeout=30).lease_id
        with pytest.raises(grpc.RpcError) as refused:
            stub.Get(pb.GetRequest(device_id="bike-2"), metadata=bike(), timeout=30)
        assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED


def calls_refused(stub: registry_pb2_grpc.RegistryStub) -> bool:
    """Whether a Get (of an unregistered device, by an operator: NOT_FOUND when served) is refused."""
    with pytest.raises(grpc.RpcError) as answer:
        stub.Get(pb.GetRequest(device_id="nobody"), metadata=bike(OPS_TOKEN), timeout=30)
    if answer.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED:
        assert answer.value.details() == f"too many calls open from 127.0.0.1: at most {LIMIT} at once; retry later"
        return True
    assert answer.value.code() is grpc.StatusCode.NOT_FOUND, answer.value
    return False


@pytest.mark.timeout(60)
def test_calls_per_client_address_are_bounded(tmp_path: Path) -> None:
    # A read timeout far beyond the test, so only the per-client bound can refuse.
    with (
        registry_in_thread(tmp_path, grpc_read_timeout=3600, grpc_max_calls_per_client=LIMIT) as registry,
        grpc.insecure_channel(f"127.0.0.1:{registry.port}") as channel,
    ):
        stub = registry_pb2_grpc.RegistryStub(channel)
        assert not calls_refused(stub)
        register = channel.stream_unary(
            REGISTER,
            request_serializer=pb.RegisterRequest.SerializeToString,
            response_deserializer=pb.RegisterResponse.FromString,
        )
        release = threading.Event()
        made: list[Any] = []  # every stuck call made, for the cleanup
        try:
            # LIMIT clients that never send their request: they hold their slots from the call's
            # headers, until the read timeout ends them (here: never).
            stuck: list[Any] = [register.future(never_sent(release), metadata=bike()) for _ in range(LIMIT)]
            made += stuck
            # The stuck calls reach the server in their own time: retry until the bound refuses. A
            # probe that took a slot before the last stuck call arrived makes that stuck call the
            # refused one (it ends): replace any that ended, so LIMIT of them hold their slots.
            while not calls_refused(stub):
                for index, call in enumerate(stuck):
                    if call.done():
                        stuck[index] = register.future(never_sent(release), metadata=bike())
                        made.append(stuck[index])
            stuck[0].cancel()
            # A freed slot is usable again: retry on the condition (a refusal means not yet freed).
            while calls_refused(stub):
                pass
        finally:
            release.set()
            for call in made:
                call.cancel()


@pytest.mark.timeout(60)
def test_open_streams_count_against_their_client(tmp_path: Path) -> None:
    with (
        registry_in_thread(tmp_path, grpc_max_calls_per_client=LIMIT) as registry,
        grpc.insecure_channel(f"127.0.0.1:{registry.port}") as channel,
    ):
        stub = registry_pb2_grpc.RegistryStub(channel)
        endpoint = pb.Endpoint(address="10.20.1.5", port=8080)
        registered = stub.Register(
            pb.RegisterRequest(device_id="bike-1", device_class="bike", site="gym-berlin", endpoints=[endpoint]),
            metadata=bike(),
            timeout=30,
        )
        heartbeat = pb.HeartbeatRequest(device_id="bike-1", lease_id=registered.lease_id)
        release = threading.Event()
        streams = []
        try:
            for _ in range(LIMIT):
                # Each stream answers one heartbeat (so the server has counted it) and stays open.
                stream = stub.HeartbeatStream(beats(heartbeat, release), metadata=bike())
                next(iter(stream))
                streams.append(stream)
            assert calls_refused(stub)
        finally:
            release.set()
            for stream in streams:
                stream.cancel()  # type: ignore[no-untyped-call]
        # Ended streams free their slots: retry on the condition (a refusal means not yet).
        while calls_refused(stub):
            pass


def beats(heartbeat: pb.HeartbeatRequest, release: threading.Event) -> Iterator[pb.HeartbeatRequest]:
    """One heartbeat, then a stream kept open (nothing more sent) until `release` is set."""
    yield heartbeat
    release.wait()


def test_the_cli_defaults_equal_the_servers() -> None:
    options, limits = meshplane.registry_api.options, meshplane.grpc_limits
    assert options.DEFAULT_GRPC_READ_TIMEOUT == limits.DEFAULT_REQUEST_TIMEOUT == limits.DEFAULT_HANDSHAKE_TIMEOUT
    assert options.DEFAULT_GRPC_IDLE_TIMEOUT == limits.DEFAULT_IDLE_TIMEOUT
    assert options.DEFAULT_GRPC_MAX_CALLS_PER_CLIENT == limits.DEFAULT_MAX_CALLS_PER_CLIENT
    settings = meshplane.registry_api.server.EdgeSettings(db=":memory:")
    assert (settings.grpc_read_timeout, settings.grpc_idle_timeout) == (
        ConnectionLimits().handshake_timeout,
        ConnectionLimits().idle_timeout,
    )


def slow_json_body(port: int) -> bytes:
    """What the JSON port answers a body announced and never sent, up to its close."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(
            f"POST /v1/register HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer {BIKE_TOKEN}\r\n"
            "Content-Length: 100\r\n\r\n{".encode()
        )
        return wait_closed_by_server(sock)


@pytest.mark.timeout(120)
async def test_serve_flags_bound_both_registry_ports(tmp_path: Path) -> None:
    """`meshplane serve` hands the read-timeout flags to the servers: a stuck gRPC call and a
    JSON body that never arrives are each ended within the 0.5 s asked for."""
    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "sites.yaml").write_text(
        "sites:\n  - id: gym-berlin\n    region: eu-central\n    device_ranges: ['10.20.0.0/16']\n"
    )
    async with serve(
        # Ports the OS picks (later flags win): this test reads neither the xDS nor the status port.
        *("--xds-address", "127.0.0.1:0", "--status-address", "127.0.0.1:0"),
        *("--config", str(tmp_path / "policy"), "--registry-db", ":memory:"),
        *("--registry-address", "127.0.0.1:0", "--registry-http-address", "127.0.0.1:0"),
        *("--registry-tokens", str(tokens_file(tmp_path / "tokens.yaml"))),
        *("--registry-grpc-read-timeout", "0.5", "--registry-http-read-timeout", "0.5"),
    ) as served:
        line = served.lines[await served.wait_for_line(lambda line: "edge registry: gRPC on port" in line)]
        ports = re.search(r"gRPC on port (\d+), JSON on port (\d+)", line)
        assert ports is not None, line
        running = RunningRegistry(int(ports.group(1)), int(ports.group(2)))
        # Blocking clients, off the event loop that reads serve's log.
        await asyncio.to_thread(test_a_call_whose_request_never_arrives_is_ended, running)
        assert b"did not arrive within 0.5 s" in await asyncio.to_thread(slow_json_body, running.http_port)


@pytest.mark.parametrize(
    ("flag", "value", "reason"),
    [
        ("--registry-grpc-read-timeout", "0", "must be a positive number of seconds"),
        ("--registry-grpc-idle-timeout", "-1", "must be a positive number of seconds"),
        ("--registry-grpc-idle-timeout", "nan", "must be a positive number of seconds"),
        ("--registry-http-read-timeout", "inf", "must be a positive number of seconds"),
        ("--registry-grpc-max-calls-per-client", "-5", "must be 0 (unlimited) or more"),
        ("--registry-http-max-connections-per-client", "-1", "must be 0 (unlimited) or more"),
    ],
)
def test_serve_refuses_a_bound_that_bounds_nothing(flag: str, value: str, reason: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "meshplane", "serve", "--registry-db", ":memory:", f"{flag}={value}"],
        capture_output=True,
        text=True,
        timeout=60,
        env=without_meshplane_variables(),
    )
    assert result.returncode == 2, result
    assert flag in result.stderr, result.stderr
    assert reason in result.stderr, result.stderr
