"""How the Kubernetes source comes back after an outage, and what its status says meanwhile.

Against the fake API server (through the real client library), which can stop, compact its
history and fail chosen requests on demand. The backoffs here are rigged so that a wait the
source should not take is an hour long: a source that takes it never gets to the condition the
test waits for, and the test fails at its deadline instead of passing slowly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from meshplane.discovery.kubernetes import KubernetesSource
from meshplane.discovery.kubernetes_watching import Backoff
from tests.k8s import objects as k
from tests.k8s.conftest import FAST_BACKOFF, SourceFactory, wait_for
from tests.k8s.fake_apiserver import FakeApiServer, Request

AN_HOUR = 3600.0


@dataclass(frozen=True, slots=True)
class BackoffUntilAnswered(Backoff):
    """Short waits while the server is away; an hour for any wait asked for once it has answered
    a request again (`answered`, set by the fake's request hook)."""

    answered: list[bool] = field(default_factory=list)

    def delay(self, attempt: int, rng: random.Random) -> float:
        return AN_HOUR if self.answered else 0.02


@dataclass(frozen=True, slots=True)
class OneShortWait(Backoff):
    """A short wait for a first failure, an hour for any later one in a row; `asked` records the
    attempts it was asked about (a watcher asks just before it starts waiting)."""

    asked: list[int] = field(default_factory=list)

    def delay(self, attempt: int, rng: random.Random) -> float:
        self.asked.append(attempt)
        return 0.02 if attempt <= 1 else AN_HOUR


def endpoints_of(source: KubernetesSource, name: str) -> list[str]:
    for service in source.content().services:
        if f"{service.namespace}/{service.name}" == name:
            return [endpoint.address for endpoint in service.endpoints]
    return []


async def synced_with_watches(
    apiserver: FakeApiServer, run_source: SourceFactory, **kwargs: object
) -> KubernetesSource:
    apiserver.apply(k.service("web"))
    apiserver.apply(k.endpoint_slice("web-1", "web", endpoints=[k.endpoint("10.0.0.1")]))
    source = await run_source(**kwargs)
    await wait_for(lambda: source.synced, what="the first full list")
    await wait_for(
        lambda: apiserver.watches_of("Service") == 1 and apiserver.watches_of("EndpointSlice") == 1,
        what="both watches open",
    )
    return source


@pytest.mark.parametrize("as_http_status", [False, True], ids=["410-error-event", "410-http-status"])
async def test_a_410_after_an_outage_relists_at_once(
    apiserver: FakeApiServer, run_source: SourceFactory, as_http_status: bool
) -> None:
    """The API server restarts with its history compacted: the resumed watches get 410 Gone. That
    is an answer, not one more failure: the source lists again at once, not after a grown backoff."""
    backoff = BackoffUntilAnswered()
    source = await synced_with_watches(apiserver, run_source, backoff=backoff)
    await apiserver.stop()
    await wait_for(
        lambda: all("cannot connect" in watcher.last_error for watcher in source.watchers),
        what="every watcher failing to connect",
    )
    # Meanwhile: a new service and its slice, and the history the watches would resume from is gone.
    apiserver.apply(k.service("api"))
    apiserver.apply(k.endpoint_slice("api-1", "api", endpoints=[k.endpoint("10.0.0.9")]))
    apiserver.compact()
    apiserver.gone_as_http_status = as_http_status

    def answered(request: Request) -> None:
        backoff.answered.append(True)

    apiserver.on_request = answered
    await apiserver.start()
    await wait_for(lambda: endpoints_of(source, "default/api") == ["10.0.0.9"], what="the relist after the 410")
    assert source.status.counts["relists"] == 2  # one per watcher
    assert source.status.errors == ()


async def test_a_watcher_waiting_out_its_backoff_wakes_when_the_server_answers_another(
    apiserver: FakeApiServer, run_source: SourceFactory
) -> None:
    """The EndpointSlice watcher failed twice and waits an hour; the Services watcher fails once
    and gets through: the server is back, so the slices are fetched now, not an hour later (new
    Services would be served with old slices meanwhile)."""
    backoff = OneShortWait()
    # Each watch ends after two seconds and resumes (a pass of that length is no spin to back off from).
    source = await synced_with_watches(apiserver, run_source, backoff=backoff, watch_timeout_seconds=2)
    (slices,) = [watcher for watcher in source.watchers if watcher.resource.kind == "EndpointSlice"]
    apiserver.fail_next_requests(10**6, 503, path_contains="endpointslices")
    # The slices' next resume fails, and the next again: it waits an hour from there.
    await wait_for(lambda: 2 in backoff.asked, what="the slice watcher's second failure in a row")
    assert "503" in slices.last_error
    apiserver.clear_failures()
    apiserver.fail_next_requests(1, 503, path_contains="/services")
    apiserver.apply(k.service("api"))
    apiserver.apply(k.endpoint_slice("api-1", "api", endpoints=[k.endpoint("10.0.0.9")]))
    await wait_for(lambda: endpoints_of(source, "default/api") == ["10.0.0.9"], what="the new slice")
    assert source.status.errors == ()


async def test_errors_clear_as_soon_as_the_source_is_back_in_sync(
    apiserver: FakeApiServer, run_source: SourceFactory
) -> None:
    """Not when the resumed watch ends (after its timeout, five minutes by default)."""
    source = await synced_with_watches(apiserver, run_source, backoff=FAST_BACKOFF, watch_timeout_seconds=300)
    apiserver.fail_next_requests(2, 503, path_contains="/services")
    apiserver.drop_watches()
    await wait_for(lambda: any("503" in error for error in source.status.errors), what="the error")
    apiserver.apply(k.service("api"))
    await wait_for(lambda: "default/api" in {f"{s.namespace}/{s.name}" for s in source.content().services})
    assert source.status.errors == ()


async def test_a_quiet_healthy_source_stays_confirmed_and_an_unreachable_one_does_not(
    apiserver: FakeApiServer, run_source: SourceFactory
) -> None:
    """`last_success` is when the source last confirmed it is in sync (a BOOKMARK on a quiet
    cluster), not when something last changed; `last_attempt` moves while the server is away."""
    source = await synced_with_watches(apiserver, run_source, backoff=FAST_BACKOFF)
    first = source.status.last_success
    assert first is not None
    apiserver.bookmark()  # nothing changed; the server says the watches are current
    await wait_for(lambda: (source.status.last_success or 0) > first, what="the bookmark to confirm the sync")
    confirmed = source.status.last_success
    assert confirmed is not None
    await apiserver.stop()
    await wait_for(lambda: (source.status.last_attempt or 0) > confirmed, what="an attempt during the outage")
    assert source.status.last_success == confirmed  # not confirmed since
    assert source.status.errors
