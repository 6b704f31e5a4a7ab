"""Fixtures for Kubernetes discovery tests: a fake API server and a real client pointed at it."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from kubernetes_asyncio.client import ApiClient, Configuration

from meshplane.discovery.kubernetes import KubernetesSource
from meshplane.discovery.kubernetes_watching import Backoff
from tests.k8s.fake_apiserver import FakeApiServer

# Short waits: reconnects in tests need not be polite to a real API server.
FAST_BACKOFF = Backoff(base=0.02, cap=0.2)


async def wait_for(condition: Callable[[], object], *, deadline: float = 20.0, what: str = "") -> None:
    """Polls `condition` until it holds; fails the test after `deadline` seconds (never a timing assertion)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not condition():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what or condition}")
        await asyncio.sleep(0.01)


def client_for(url: str) -> ApiClient:
    configuration = Configuration(host=url)
    return ApiClient(configuration)


@pytest.fixture
async def apiserver() -> AsyncIterator[FakeApiServer]:
    async with FakeApiServer() as server:
        yield server


@pytest.fixture
async def client(apiserver: FakeApiServer) -> AsyncIterator[ApiClient]:
    api = client_for(apiserver.url)
    yield api
    await api.close()


SourceFactory = Callable[..., Awaitable[KubernetesSource]]


@pytest.fixture
async def run_source(client: ApiClient) -> AsyncIterator[SourceFactory]:
    """Starts a KubernetesSource (watching through `client`) in the background; stopped at the end."""
    tasks: list[asyncio.Task[None]] = []

    async def start(**kwargs: object) -> KubernetesSource:
        kwargs.setdefault("client", client)
        kwargs.setdefault("backoff", FAST_BACKOFF)
        kwargs.setdefault("rng", random.Random(7))
        source = KubernetesSource(**kwargs)  # type: ignore[arg-type]
        tasks.append(asyncio.create_task(source.run()))
        return source

    yield start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
