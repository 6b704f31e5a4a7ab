"""The registry's gRPC service and its JSON mirror, in-process on 127.0.0.1:0: every RPC, the
credentials rules, and the status code and reason of each kind of refusal."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import pytest

from meshplane.api.edge.v1 import registry_pb2 as pb
from meshplane.api.edge.v1 import registry_pb2_grpc
from meshplane.discovery.registry.auth import token_digest
from meshplane.discovery.registry.registry import LeaseSettings
from meshplane.model import GatewayAddress, Site
from meshplane.registry_api.server import EdgeRegistryServer, EdgeSettings

SITES = {
    "gym-berlin": Site("gym-berlin", "eu-central", "a", (GatewayAddress("10.20.0.2", 15080),), ("10.20.0.0/16",)),
    "gym-munich": Site("gym-munich", "eu-central", "b", (), ("10.30.0.0/16",)),
}
TOKENS = {"bike-1": "token-bike-1", "bike-2": "token-bike-2", "ops": "token-ops", "bikes": "token-bikes"}


def tokens_file(path: Path) -> Path:
    path.write_text(
        f"""tokens:
  - {{sha256: {token_digest(TOKENS["bike-1"])}, device: bike-1}}
  - {{sha256: {token_digest(TOKENS["bike-2"])}, device: bike-2}}
  - {{sha256: {token_digest(TOKENS["bikes"])}, class: bike}}
  - {{sha256: {token_digest(TOKENS["ops"])}, operator: ops}}
"""
    )
    return path


def auth(who: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {TOKENS[who]}"),)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[EdgeRegistryServer]:
    settings = EdgeSettings(
        db=str(tmp_path / "registry.db"),
        address="127.0.0.1:0",
        http_address="127.0.0.1:0",
        tokens=tokens_file(tmp_path / "tokens.yaml"),
        leases=LeaseSettings(default_ttl=30, min_ttl=1, check_interval=0.1),
    )
    edge = EdgeRegistryServer(settings, lambda: SITES, on_change=lambda: None)
    await edge.start()
    try:
        yield edge
    finally:
        await edge.shutdown(0.1)


@pytest.fixture
async def stub(server: EdgeRegistryServer) -> AsyncIterator[registry_pb2_grpc.RegistryStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield registry_pb2_grpc.RegistryStub(channel)


def bike(device_id: str = "bike-1", address: str = "10.20.1.5", **fields: object) -> pb.RegisterRequest:
    request = pb.RegisterRequest(
        device_id=device_id,
        device_class="bike",
        site="gym-berlin",
        endpoints=[pb.Endpoint(address=address, port=8080)],
        version="3.2.1",
        labels={"row": "a"},
    )
    for key, value in fields.items():
        if key == "labels":
            request.labels.clear()
            request.labels.update(value)  # type: ignore[arg-type]
        else:
            setattr(request, key, value)
    return request


async def test_register_get_renew_list_deregister(stub: registry_pb2_grpc.RegistryStub) -> None:
    registered = await stub.Register(bike(), metadata=auth("bike-1"))
    assert registered.lease_id
    assert registered.ttl_seconds == 30
    again = await stub.Register(bike(), metadata=auth("bike-1"))
    assert again.lease_id == registered.lease_id

    device = await stub.Get(pb.GetRequest(device_id="bike-1"), metadata=auth("bike-1"))
    assert (device.site, device.version, dict(device.labels)) == ("gym-berlin", "3.2.1", {"row": "a"})
    assert [(e.address, e.port) for e in device.endpoints] == [("10.20.1.5", 8080)]

    renewed = await stub.Heartbeat(
        pb.HeartbeatRequest(device_id="bike-1", lease_id=registered.lease_id), metadata=auth("bike-1")
    )
    assert renewed.expires_at.ToSeconds() >= registered.expires_at.ToSeconds()

    call = stub.HeartbeatStream(metadata=auth("bike-1"))
    for _ in range(3):
        await call.write(pb.HeartbeatRequest(device_id="bike-1", lease_id=registered.lease_id))
        answer = await call.read()
        assert answer.ttl_seconds == 30
    await call.done_writing()

    await stub.Register(bike("bike-2", "10.20.1.6", labels={"row": "b"}), metadata=auth("bike-2"))
    everything = await stub.List(pb.ListRequest(), metadata=auth("ops"))
    assert [d.device_id for d in everything.devices] == ["bike-1", "bike-2"]
    row_b = await stub.List(pb.ListRequest(labels={"row": "b"}), metadata=auth("ops"))
    assert [d.device_id for d in row_b.devices] == ["bike-2"]
    munich = await stub.List(pb.ListRequest(site="gym-munich"), metadata=auth("ops"))
    assert list(munich.devices) == []
    treads = await stub.List(pb.ListRequest(device_class="tread"), metadata=auth("ops"))
    assert list(treads.devices) == []

    await stub.Deregister(
        pb.DeregisterRequest(device_id="bike-1", lease_id=registered.lease_id), metadata=auth("bike-1")
    )
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await stub.Get(pb.GetRequest(device_id="bike-1"), metadata=auth("ops"))
    assert gone.value.code() is grpc.StatusCode.NOT_FOUND


async def test_watch_streams_current_devices_then_changes(stub: registry_pb2_grpc.RegistryStub) -> None:
    await stub.Register(bike(), metadata=auth("bike-1"))
    watch = stub.Watch(pb.WatchRequest(site="gym-berlin"), metadata=auth("ops"))
    first = await watch.read()
    assert (first.kind, first.device.device_id) == (pb.WatchEvent.ADDED, "bike-1")
    registered = await stub.Register(bike("bike-2", "10.20.1.6"), metadata=auth("bike-2"))
    await stub.Deregister(
        pb.DeregisterRequest(device_id="bike-2", lease_id=registered.lease_id), metadata=auth("bike-2")
    )
    events = [await watch.read() for _ in range(2)]
    assert [(e.kind, e.device.device_id) for e in events] == [
        (pb.WatchEvent.ADDED, "bike-2"),
        (pb.WatchEvent.REMOVED, "bike-2"),
    ]
    watch.cancel()


REFUSED = [
    pytest.param(
        bike(),
        (("authorization", "Bearer nope"),),
        grpc.StatusCode.UNAUTHENTICATED,
        "unknown credentials",
        id="bad-token",
    ),
    pytest.param(bike(), (), grpc.StatusCode.UNAUTHENTICATED, "missing or unknown credentials", id="no-token"),
    pytest.param(
        bike("bike-2", "10.20.1.6"),
        auth("bike-1"),
        grpc.StatusCode.PERMISSION_DENIED,
        "cannot act on device bike-2",
        id="another-device",
    ),
    pytest.param(
        bike(address="10.99.0.1"),
        auth("bike-1"),
        grpc.StatusCode.PERMISSION_DENIED,
        "outside the ranges of site gym-berlin",
        id="wrong-site-range",
    ),
    pytest.param(
        bike(address="169.254.169.254"),
        auth("bike-1"),
        grpc.StatusCode.PERMISSION_DENIED,
        "metadata",
        id="metadata-address",
    ),
    pytest.param(
        bike(address="not-an-ip"),
        auth("bike-1"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "is not an IP address",
        id="bad-address",
    ),
    pytest.param(bike("bike 1"), auth("bike-1"), grpc.StatusCode.INVALID_ARGUMENT, "is malformed", id="malformed-id"),
    pytest.param(
        bike(labels={"big": "x" * 300}),
        auth("bike-1"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "at most 253",
        id="oversized-label",
    ),
    pytest.param(
        bike(site="nowhere"), auth("bike-1"), grpc.StatusCode.INVALID_ARGUMENT, "not a known site", id="unknown-site"
    ),
    pytest.param(
        bike(),
        auth("ops"),
        grpc.StatusCode.PERMISSION_DENIED,
        "operator token cannot register",
        id="operator-registers",
    ),
]


@pytest.mark.parametrize(("request_", "metadata", "code", "reason"), REFUSED)
async def test_refusals_carry_status_and_reason(
    stub: registry_pb2_grpc.RegistryStub,
    request_: pb.RegisterRequest,
    metadata: tuple[tuple[str, str], ...],
    code: grpc.StatusCode,
    reason: str,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Register(request_, metadata=metadata)
    assert refused.value.code() is code
    assert reason in (refused.value.details() or "")


async def test_oversized_messages_are_refused(stub: registry_pb2_grpc.RegistryStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Register(bike(version="x" * 100_000), metadata=auth("bike-1"))
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_devices_read_only_themselves_and_list_needs_an_operator(stub: registry_pb2_grpc.RegistryStub) -> None:
    await stub.Register(bike("bike-2", "10.20.1.6"), metadata=auth("bike-2"))
    with pytest.raises(grpc.aio.AioRpcError) as other:
        await stub.Get(pb.GetRequest(device_id="bike-2"), metadata=auth("bike-1"))
    assert other.value.code() is grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as listing:
        await stub.List(pb.ListRequest(), metadata=auth("bike-1"))
    assert listing.value.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_json_mirror(server: EdgeRegistryServer) -> None:
    base = f"http://127.0.0.1:{server.http_port}"
    bike_1 = {"Authorization": f"Bearer {TOKENS['bike-1']}"}
    ops = {"Authorization": f"Bearer {TOKENS['ops']}"}
    body = {
        "device_id": "bike-1",
        "device_class": "bike",
        "site": "gym-berlin",
        "endpoints": [{"address": "10.20.1.5", "port": 8080}],
        "labels": {"row": "a"},
    }
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base}/v1/register", json=body, headers=bike_1) as response:
            assert response.status == 200
            lease = (await response.json())["lease_id"]
        async with session.post(
            f"{base}/v1/heartbeat", json={"device_id": "bike-1", "lease_id": lease}, headers=bike_1
        ) as response:
            assert response.status == 200
        async with session.get(f"{base}/v1/devices", params={"label": "row=a"}, headers=ops) as response:
            assert [d["device_id"] for d in (await response.json())["devices"]] == ["bike-1"]
        async with session.get(f"{base}/v1/devices/bike-1", headers=bike_1) as response:
            assert (await response.json())["site"] == "gym-berlin"
        bad = {**body, "endpoints": [{"address": "127.0.0.1", "port": 8080}]}
        async with session.post(f"{base}/v1/register", json=bad, headers=bike_1) as response:
            assert response.status == 403
            error = await response.json()
            assert error["code"] == "PERMISSION_DENIED"
            assert "loopback" in error["message"]
        async with session.post(f"{base}/v1/register", json=body) as response:
            assert response.status == 401
        async with session.post(f"{base}/v1/register", data="{not json", headers=bike_1) as response:
            assert response.status == 400
        async with session.post(
            f"{base}/v1/deregister", json={"device_id": "bike-1", "lease_id": lease}, headers=bike_1
        ) as response:
            assert response.status == 200
        async with session.get(f"{base}/v1/devices/bike-1", headers=ops) as response:
            assert response.status == 404


async def test_json_watch_streams_events_as_lines(
    server: EdgeRegistryServer, stub: registry_pb2_grpc.RegistryStub
) -> None:
    base = f"http://127.0.0.1:{server.http_port}"
    await stub.Register(bike(), metadata=auth("bike-1"))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        async with session.get(f"{base}/v1/watch", headers={"Authorization": f"Bearer {TOKENS['bike-1']}"}) as response:
            assert response.status == 403, "watching needs an operator token"
        async with session.get(
            f"{base}/v1/watch", params={"site": "gym-berlin"}, headers={"Authorization": f"Bearer {TOKENS['ops']}"}
        ) as response:
            assert response.status == 200
            first = json.loads(await response.content.readline())
            assert (first["kind"], first["device"]["device_id"]) == ("ADDED", "bike-1")
            await stub.Register(bike("bike-2", "10.20.1.6"), metadata=auth("bike-2"))
            second = json.loads(await response.content.readline())
            assert (second["kind"], second["device"]["device_id"]) == ("ADDED", "bike-2")


async def test_devices_command_lists_and_gets(
    server: EdgeRegistryServer, stub: registry_pb2_grpc.RegistryStub, capsys: pytest.CaptureFixture[str]
) -> None:
    from meshplane.cli import main

    await stub.Register(bike(), metadata=auth("bike-1"))
    registry = ["devices", "--registry", f"http://127.0.0.1:{server.http_port}", "--token", TOKENS["ops"]]
    assert await asyncio.to_thread(main, [*registry, "list", "--site", "gym-berlin", "--label", "row=a"]) == 0
    listed = capsys.readouterr().out
    assert "bike-1" in listed
    assert "10.20.1.5:8080" in listed
    assert await asyncio.to_thread(main, [*registry, "-o", "json", "get", "bike-1"]) == 0
    assert json.loads(capsys.readouterr().out)["site"] == "gym-berlin"
    assert await asyncio.to_thread(main, [*registry, "get", "nope"]) == 1
    assert "404" in capsys.readouterr().err
