"""Register calls are rate limited per principal (token bucket, fake clock: no sleeps), over gRPC
and JSON alike; another principal, and heartbeats, are unaffected; time refills the bucket."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import pytest

from meshplane.api.edge.v1 import registry_pb2 as pb
from meshplane.api.edge.v1 import registry_pb2_grpc
from meshplane.discovery.registry.auth import token_digest
from meshplane.model import GatewayAddress, Site
from meshplane.registry_api.server import EdgeRegistryServer, EdgeSettings
from meshplane.registry_api.service import RateLimiter

SITES = {"gym-berlin": Site("gym-berlin", "eu-central", "a", (GatewayAddress("10.20.0.2", 15080),), ("10.20.0.0/16",))}
TOKENS = {"bike-1": "token-bike-1", "bike-2": "token-bike-2"}
RATE, BURST = 2.0, 3


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def server(tmp_path: Path, clock: FakeClock) -> AsyncIterator[EdgeRegistryServer]:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(
        "tokens:\n"
        + "".join(f"  - {{sha256: {token_digest(token)}, device: {device}}}\n" for device, token in TOKENS.items())
    )
    settings = EdgeSettings(
        db=":memory:",
        address="127.0.0.1:0",
        http_address="127.0.0.1:0",
        tokens=tokens,
        register_rate=RATE,
        register_burst=BURST,
    )
    edge = EdgeRegistryServer(settings, lambda: SITES, on_change=lambda: None)
    edge.register_limit.clock = clock
    await edge.start()
    try:
        yield edge
    finally:
        await edge.shutdown(0.1)


def auth(who: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {TOKENS[who]}"),)


def bike(device_id: str) -> pb.RegisterRequest:
    return pb.RegisterRequest(
        device_id=device_id,
        device_class="bike",
        site="gym-berlin",
        endpoints=[pb.Endpoint(address="10.20.1.5", port=8080)],
    )


async def test_grpc_burst_beyond_the_bucket_is_refused_for_that_principal_only(
    server: EdgeRegistryServer, clock: FakeClock
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = registry_pb2_grpc.RegistryStub(channel)
        leases = [(await stub.Register(bike("bike-1"), metadata=auth("bike-1"))).lease_id for _ in range(BURST)]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Register(bike("bike-1"), metadata=auth("bike-1"))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = refused.value.details() or ""
        assert "too many Register calls from device:bike-1" in details
        assert f"{RATE:g} a second" in details
        assert f"bursts of {BURST}" in details
        assert server.registry.events["rate_limited_registrations"] == 1

        # Another principal registers fine; the limited one still heartbeats (not rate limited).
        await stub.Register(bike("bike-2"), metadata=auth("bike-2"))
        for _ in range(BURST * 3):
            await stub.Heartbeat(pb.HeartbeatRequest(device_id="bike-1", lease_id=leases[-1]), metadata=auth("bike-1"))

        # Half a second at 2/s is one call's worth; the next is refused again.
        clock.now += 1 / RATE
        await stub.Register(bike("bike-1"), metadata=auth("bike-1"))
        with pytest.raises(grpc.aio.AioRpcError) as again:
            await stub.Register(bike("bike-1"), metadata=auth("bike-1"))
        assert again.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        # A long quiet refills the bucket to its burst, never beyond.
        clock.now += 3600
        for _ in range(BURST):
            await stub.Register(bike("bike-1"), metadata=auth("bike-1"))
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Register(bike("bike-1"), metadata=auth("bike-1"))


async def test_json_shares_the_bucket_and_answers_429(server: EdgeRegistryServer, clock: FakeClock) -> None:
    base = f"http://127.0.0.1:{server.http_port}"
    body = {"device_id": "bike-1", "device_class": "bike", "site": "gym-berlin",
            "endpoints": [{"address": "10.20.1.5", "port": 8080}]}  # fmt: skip
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        await registry_pb2_grpc.RegistryStub(channel).Register(bike("bike-1"), metadata=auth("bike-1"))
    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": f"Bearer {TOKENS['bike-1']}"}
        for _ in range(BURST - 1):
            async with session.post(f"{base}/v1/register", json=body, headers=headers) as response:
                assert response.status == 200
        async with session.post(f"{base}/v1/register", json=body, headers=headers) as response:
            assert response.status == 429
            error = await response.json()
            assert error["code"] == "RESOURCE_EXHAUSTED"
            assert "too many Register calls from device:bike-1" in error["message"]
        other = {**body, "device_id": "bike-2"}
        async with session.post(
            f"{base}/v1/register", json=other, headers={"Authorization": f"Bearer {TOKENS['bike-2']}"}
        ) as response:
            assert response.status == 200
        clock.now += 1 / RATE
        async with session.post(f"{base}/v1/register", json=body, headers=headers) as response:
            assert response.status == 200


def test_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    clock = FakeClock()
    limit = RateLimiter(rate=1.0, burst=2, clock=clock)
    assert [limit.allow("a") for _ in range(3)] == [True, True, False]
    assert limit.allow("b")
    clock.now += 0.5
    assert not limit.allow("a")
    clock.now += 0.5
    assert limit.allow("a")
    clock.now += 100
    assert [limit.allow("a") for _ in range(3)] == [True, True, False]


def test_rate_zero_is_unlimited() -> None:
    limit = RateLimiter(rate=0, burst=1, clock=FakeClock())
    assert all(limit.allow("a") for _ in range(1000))


def test_idle_buckets_are_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    import meshplane.registry_api.service

    monkeypatch.setattr(meshplane.registry_api.service, "_MAX_IDLE_BUCKETS", 3)
    clock = FakeClock()
    limit = RateLimiter(rate=1.0, burst=1, clock=clock)
    for key in "abc":
        assert limit.allow(key)
    clock.now += 10  # all three full again
    assert limit.allow("d")
    assert len(limit._buckets) == 1
