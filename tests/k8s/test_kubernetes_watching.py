"""The list/watch machinery against the fake API server, through the real client library.

One pass (`run_once`) is tested where it can be, as kopf does; `run()` where reconnects matter.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest
from kubernetes_asyncio.client import ApiClient

from meshplane.discovery.kubernetes_watching import (
    ENDPOINT_SLICES_V1,
    SERVICES,
    Backoff,
    Change,
    Gone,
    Watcher,
    list_objects,
)
from tests.k8s import objects as k
from tests.k8s.conftest import FAST_BACKOFF, client_for, wait_for
from tests.k8s.fake_apiserver import FakeApiServer


def names(watcher: Watcher) -> list[str]:
    return sorted(name for _, name in watcher.objects)


class Recorder:
    def __init__(self) -> None:
        self.changes: list[Change] = []

    def __call__(self, changes: list[Change]) -> None:
        self.changes += changes

    def kinds(self) -> list[tuple[str, str]]:
        def kind(old: object, new: object) -> str:
            return "added" if old is None else "deleted" if new is None else "modified"

        return [(kind(old, new), ((new or old) or {})["metadata"]["name"]) for old, new in self.changes]


@pytest.fixture
async def running() -> AsyncIterator[list[asyncio.Task[None]]]:
    tasks: list[asyncio.Task[None]] = []
    yield tasks
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_list_pages_with_continue(apiserver: FakeApiServer, client: ApiClient) -> None:
    apiserver.apply_many([k.service(f"svc-{i:02d}") for i in range(25)])
    items, version = await list_objects(client, SERVICES, page_size=10)
    assert [item["metadata"]["name"] for item in items] == [f"svc-{i:02d}" for i in range(25)]
    assert version == str(apiserver.version)
    pages = [r for r in apiserver.requests if r.path == "/api/v1/services"]
    assert [bool(r.query.get("continue")) for r in pages] == [False, True, True]


async def test_list_starts_over_when_a_continue_token_expires(apiserver: FakeApiServer, client: ApiClient) -> None:
    apiserver.apply_many([k.service(f"svc-{i:02d}") for i in range(5)])
    expired = False

    def expire_once(request: object) -> None:
        nonlocal expired
        if getattr(request, "query", {}).get("continue") and not expired:
            expired = True
            apiserver.expire_continue_tokens()

    apiserver.on_request = expire_once  # type: ignore[assignment]
    items, _ = await list_objects(client, SERVICES, page_size=2)
    assert len(items) == 5
    assert expired


async def test_one_pass_lists_then_follows_the_watch(apiserver: FakeApiServer, client: ApiClient) -> None:
    apiserver.apply(k.service("a"))
    recorder = Recorder()
    watcher = Watcher(client, SERVICES, on_change=recorder, timeout_seconds=1)
    listed_at = apiserver.version
    apiserver.on_request = lambda request: None
    task = asyncio.create_task(watcher.run_once())
    await wait_for(lambda: apiserver.watches_of("Service") == 1, what="the watch to open")
    apiserver.apply(k.service("b"))
    apiserver.apply(k.service("a", labels={"x": "y"}))
    apiserver.delete("Service", "default", "b")
    assert await task is True  # the server ended the stream after timeoutSeconds
    assert recorder.kinds() == [("added", "a"), ("added", "b"), ("modified", "a"), ("deleted", "b")]
    watches = [r for r in apiserver.requests if r.query.get("watch")]
    assert watches[0].query["resourceVersion"] == str(listed_at)
    assert watches[0].query["allowWatchBookmarks"] == "true"
    assert watcher.synced
    assert names(watcher) == ["a"]


async def test_bookmarks_advance_the_version_to_resume_from(apiserver: FakeApiServer, client: ApiClient) -> None:
    watcher = Watcher(client, SERVICES, timeout_seconds=30)
    task = asyncio.create_task(watcher.run_once())
    await wait_for(lambda: apiserver.watches_of("Service") == 1)
    apiserver.apply(k.service("elsewhere", labels={"x": "1"}))  # an unrelated change moves the version
    apiserver.delete("Service", "default", "elsewhere")
    before = watcher.resource_version
    await wait_for(lambda: watcher.resource_version != before)
    apiserver.version += 5  # versions move on without events this watch sees (other resources)
    apiserver.bookmark()
    await wait_for(lambda: watcher.resource_version == str(apiserver.version), what="the bookmark")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize("as_http_status", [False, True], ids=["error-event", "http-410"])
async def test_gone_relists_and_reports_what_changed_meanwhile(
    apiserver: FakeApiServer, client: ApiClient, running: list[asyncio.Task[None]], as_http_status: bool
) -> None:
    apiserver.gone_as_http_status = as_http_status
    apiserver.apply_many([k.service("keep"), k.service("drop"), k.service("change")])
    recorder = Recorder()
    watcher = Watcher(client, SERVICES, on_change=recorder, backoff=FAST_BACKOFF, rng=random.Random(1))
    running.append(asyncio.create_task(watcher.run()))
    await wait_for(lambda: apiserver.watches_of("Service") == 1)
    # While the watch is down, things change and the history is compacted: resuming gets 410.
    apiserver.fail_next_requests(10**6)
    apiserver.drop_watches()
    await wait_for(lambda: apiserver.watches_of("Service") == 0)
    apiserver.delete("Service", "default", "drop")
    apiserver.apply(k.service("change", labels={"v": "2"}))
    apiserver.apply(k.service("new"))
    apiserver.compact()
    apiserver.clear_failures()
    await wait_for(lambda: watcher.relists == 1, what="a relist")
    await wait_for(lambda: names(watcher) == ["change", "keep", "new"])
    kinds = recorder.kinds()
    assert kinds[:3] == [("added", "change"), ("added", "drop"), ("added", "keep")]
    # Every change reported exactly once: nothing lost, nothing twice, nothing stale.
    assert sorted(kinds[3:]) == sorted([("deleted", "drop"), ("modified", "change"), ("added", "new")])
    assert watcher.objects[("default", "change")]["metadata"]["labels"] == {"v": "2"}


async def test_a_watch_cut_mid_stream_resumes_without_loss_or_repeats(
    apiserver: FakeApiServer, client: ApiClient, running: list[asyncio.Task[None]]
) -> None:
    recorder = Recorder()
    watcher = Watcher(client, SERVICES, on_change=recorder, backoff=FAST_BACKOFF, rng=random.Random(2))
    running.append(asyncio.create_task(watcher.run()))
    await wait_for(lambda: apiserver.watches_of("Service") == 1)
    apiserver.apply(k.service("one"))
    await wait_for(lambda: names(watcher) == ["one"])
    apiserver.drop_watches(mid_line=True)
    await wait_for(lambda: apiserver.watches_of("Service") == 0)
    apiserver.apply(k.service("two"))  # happens while nobody watches
    apiserver.apply(k.service("one", labels={"v": "2"}))
    await wait_for(
        lambda: names(watcher) == ["one", "two"] and "labels" in watcher.objects[("default", "one")]["metadata"]
    )
    assert recorder.kinds() == [("added", "one"), ("added", "two"), ("modified", "one")]
    assert watcher.relists == 0  # resumed from the last version, not relisted
    resumed = [r for r in apiserver.requests if r.query.get("watch")]
    assert len(resumed) >= 2
    assert int(resumed[-1].query["resourceVersion"]) >= int(resumed[0].query["resourceVersion"])


async def test_a_repeated_event_is_not_reported_twice(apiserver: FakeApiServer, client: ApiClient) -> None:
    recorder = Recorder()
    watcher = Watcher(client, SERVICES, on_change=recorder, timeout_seconds=30)
    apiserver.apply(k.service("a"))
    task = asyncio.create_task(watcher.run_once())
    await wait_for(lambda: apiserver.watches_of("Service") == 1)
    stored = apiserver.objects["Service"][("default", "a")]
    for watch in apiserver._watches:  # the same object again, as a server may send after a reconnect
        watch.queue.put_nowait(("MODIFIED", stored))
    apiserver.apply(k.service("b"))
    await wait_for(lambda: names(watcher) == ["a", "b"])
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert recorder.kinds() == [("added", "a"), ("added", "b")]


async def test_unknown_event_types_are_skipped(apiserver: FakeApiServer, client: ApiClient) -> None:
    watcher = Watcher(client, SERVICES, timeout_seconds=30)
    task = asyncio.create_task(watcher.run_once())
    await wait_for(lambda: apiserver.watches_of("Service") == 1)
    for watch in apiserver._watches:
        watch.queue.put_nowait(("SURPRISE", {"metadata": {"name": "x", "resourceVersion": "1"}}))
    apiserver.apply(k.service("after"))
    await wait_for(lambda: names(watcher) == ["after"])
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_gone_from_one_pass_raises_and_clears_the_version(apiserver: FakeApiServer, client: ApiClient) -> None:
    watcher = Watcher(client, ENDPOINT_SLICES_V1, timeout_seconds=30)
    task = asyncio.create_task(watcher.run_once())
    await wait_for(lambda: apiserver.watches_of("EndpointSlice") == 1)
    apiserver.send_error(410)
    with pytest.raises(Gone):
        await task
    assert watcher.resource_version == ""


async def test_the_api_server_down_at_start_up() -> None:
    server = FakeApiServer()
    server.apply(k.service("early"))
    api = client_for(server.url)
    watcher = Watcher(api, SERVICES, backoff=FAST_BACKOFF, rng=random.Random(3))
    task = asyncio.create_task(watcher.run())
    try:
        await wait_for(lambda: "cannot connect" in watcher.last_error, what="a connection error")
        assert not watcher.synced
        await server.start()
        await wait_for(lambda: watcher.synced and names(watcher) == ["early"])
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await server.stop()
        await api.close()


async def test_server_errors_are_retried(
    apiserver: FakeApiServer, client: ApiClient, running: list[asyncio.Task[None]]
) -> None:
    apiserver.apply(k.service("a"))
    apiserver.fail_next_requests(3, 503)
    watcher = Watcher(client, SERVICES, backoff=FAST_BACKOFF, rng=random.Random(4))
    running.append(asyncio.create_task(watcher.run()))
    await wait_for(lambda: watcher.synced and names(watcher) == ["a"])


def test_backoff_is_jittered_and_capped() -> None:
    backoff = Backoff(base=0.5, cap=4.0)
    rng = random.Random(11)
    for attempt in range(1, 10):
        delays = [backoff.delay(attempt, rng) for _ in range(50)]
        assert all(0 <= delay <= min(4.0, 0.5 * 2**attempt) for delay in delays)
        assert len(set(delays)) == 50  # jittered: reconnecting clients do not stampede together
