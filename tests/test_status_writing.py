"""The parts every status writer shares (`status_writing`, `status_conditions`) and the passes of
the three writers built on them, without an API server.

A pass over N marked objects sorts them once (the key comparisons are counted: about N log2 N,
where taking the smallest of the set once per object costs N²/2), and gives the event loop a turn
every `YIELD_EVERY` objects even when none needs a write (another task reads, at each turn it
gets, how many objects the pass has looked at). No timing: operations are counted.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from meshplane.discovery.gateway_api.conditions import Condition, GatewayApiStatus, ParentStatus, RouteStatus
from meshplane.discovery.gateway_api.references import ParentRef
from meshplane.discovery.gateway_api.source import CLASSES, KINDS
from meshplane.discovery.gateway_api.status_writer import ClassStatusWriter, GatewayStatusWriter
from meshplane.discovery.kubernetes_watching import Resource
from meshplane.discovery.meshplane_api.conditions import ACCEPTED, REASON_ACCEPTED, ObjectStatus, condition
from meshplane.discovery.meshplane_api.objects import ObjectKey
from meshplane.discovery.meshplane_api.status_writer import DEFAULT_CONCURRENCY, MeshplaneStatusWriter, ProxiesHolding
from meshplane.discovery.status_conditions import render_condition, render_conditions
from meshplane.discovery.status_writing import YIELD_EVERY, Marked, pass_over

N = 2000
START = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
# A sort of N keys makes at most about N log2 N comparisons; the bound leaves it room, and is
# two orders of magnitude below the N²/2 of a smallest-of-the-set per object.
MAX_COMPARISONS = 2 * N * math.ceil(math.log2(N))


class Comparisons:
    count = 0


class CountedName(str):
    """A name whose `<` comparisons are counted (tuple keys compare their names with it)."""

    __slots__ = ()

    def __lt__(self, other: str) -> bool:
        Comparisons.count += 1
        return str.__lt__(self, other)


class CountedKey(ObjectKey):
    __slots__ = ()

    def __lt__(self, other: ObjectKey) -> bool:
        Comparisons.count += 1
        return ObjectKey.__lt__(self, other)


@pytest.fixture(autouse=True)
def counting() -> None:
    Comparisons.count = 0


async def longest_hold(
    progress: Callable[[], int], start: Callable[[], Coroutine[Any, Any, object]]
) -> tuple[int, asyncio.Task[object]]:
    """Runs `start()` as a task while another task takes every turn the loop gives it, reading
    `progress()` (objects looked at) at each, until it reaches N: the most objects looked at
    between two such turns (N when the pass never lets go of the loop)."""
    task = asyncio.create_task(start())
    seen = [0]
    while seen[-1] < N:
        await asyncio.sleep(0)
        seen.append(progress())
    return max(after - before for before, after in itertools.pairwise(seen)), task


async def stop(task: asyncio.Task[object]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def test_marked_keys_are_taken_sorted_with_one_sort() -> None:
    marked: Marked[CountedName] = Marked()
    names = [CountedName(f"object-{index:05}") for index in range(N)]
    marked.mark(reversed(names))
    assert marked.wanted.is_set()
    taken = marked.take()
    assert list(taken) == names
    assert not marked
    assert Comparisons.count <= MAX_COMPARISONS, Comparisons.count


async def test_a_pass_gives_the_loop_a_turn_every_few_keys_even_when_nothing_awaits() -> None:
    looked: list[int] = []

    async def look(key: int) -> None:
        looked.append(key)  # never suspends: as an object that needs no write

    keys = Marked[int]()
    keys.mark(range(N))
    taken = keys.take()
    hold, task = await longest_hold(lambda: len(looked), lambda: pass_over(taken, look))
    assert await task == N  # looked at by this one pass
    assert looked == list(range(N))
    assert hold <= YIELD_EVERY, hold


def test_a_condition_keeps_its_transition_time_while_its_status_stays_and_is_cut_to_the_bound() -> None:
    accepted = Condition("Accepted", "True", "Accepted", "fine", 3)
    first = render_condition(accepted, 3, None, START)
    assert first == {
        "type": "Accepted",
        "status": "True",
        "reason": "Accepted",
        "message": "fine",
        "observedGeneration": 3,
        "lastTransitionTime": "2026-01-02T03:04:05Z",
    }
    later = START + timedelta(hours=1)
    other_reason = Condition("Accepted", "True", "Other", "still fine", 4)
    assert render_condition(other_reason, 4, first, later)["lastTransitionTime"] == "2026-01-02T03:04:05Z"
    refused = Condition("Accepted", "False", "Invalid", "x" * 100, 5)
    (rendered,) = render_conditions([(refused, 5)], [first, "not a condition"], later, max_message=10)
    assert rendered["lastTransitionTime"] == "2026-01-02T04:04:05Z"
    assert rendered["message"] == "x" * 10


async def test_the_meshplane_writer_passes_over_thousands_of_unchanged_objects_sorting_once_and_yielding() -> None:
    keys = [CountedKey("TrafficPolicy", "shop", f"p{index:05}") for index in range(N)]
    owed = {key: ObjectStatus(1, (condition(ACCEPTED, True, REASON_ACCEPTED, "accepted"),)) for key in reversed(keys)}
    held: dict[ObjectKey, dict[str, Any]] = {}
    writer = MeshplaneStatusWriter(
        {"TrafficPolicy": Resource("TrafficPolicy", "/apis/meshplane.io/v1alpha1", "trafficpolicies")},
        held.get,
        holding=lambda generation: ProxiesHolding(0, 0),
        revision=lambda: 0,
        now=lambda: START,
    )
    writer.update(owed, 1)
    for key in keys:  # every object already holds what it is owed: the pass writes nothing
        rendered = writer.rendered(key, {"metadata": {}})
        assert rendered is not None
        held[key] = {"metadata": {"resourceVersion": "1"}, "status": rendered}
    Comparisons.count = 0
    hold, task = await longest_hold(lambda: writer.skipped, lambda: writer.run(None))  # type: ignore[arg-type]
    try:
        assert writer.writes == 0
        assert Comparisons.count <= MAX_COMPARISONS, Comparisons.count
        # Its `concurrency` workers share one pass, each yielding every YIELD_EVERY objects.
        assert hold <= DEFAULT_CONCURRENCY * YIELD_EVERY, hold
    finally:
        await stop(task)


def _route_status(name: str) -> RouteStatus:
    parent = ParentRef("edge", namespace="infra")
    accepted = Condition("Accepted", "True", "Accepted", f"{name} accepted", 1)
    return RouteStatus(1, (ParentStatus(parent, (accepted,)),))


async def test_the_gateway_writer_passes_over_thousands_of_unchanged_routes_sorting_once_and_yielding() -> None:
    names = [CountedName(f"route-{index:05}") for index in range(N)]
    status = GatewayApiStatus(http_routes={("shop", name): _route_status(name) for name in reversed(names)})
    held: dict[tuple[str, str], dict[str, Any]] = {}
    writer = GatewayStatusWriter(
        {kind.name: kind.resource for kind in KINDS},
        "meshplane.io/gateway-controller",
        lambda kind, key: held.get(key),
        lambda gateway: [],
        now=lambda: START,
    )
    writer.update(status)
    for name in names:
        rendered = writer._rendered("HTTPRoute", ("shop", name), {"metadata": {}})
        assert rendered is not None
        held[("shop", name)] = {"metadata": {"resourceVersion": "1"}, "status": rendered}
    Comparisons.count = 0
    hold, task = await longest_hold(lambda: writer.skipped, lambda: writer.run(None))  # type: ignore[arg-type]
    try:
        assert writer.writes == 0
        assert Comparisons.count <= MAX_COMPARISONS, Comparisons.count
        assert hold <= YIELD_EVERY, hold
    finally:
        await stop(task)


async def test_the_class_writer_passes_over_thousands_of_classes_it_does_not_own_sorting_once_and_yielding() -> None:
    names = [CountedName(f"class-{index:05}") for index in range(N)]
    classes = {name: {"metadata": {"name": name}, "spec": {"controllerName": "someone.else/x"}} for name in names}
    looked: list[str] = []

    def read(name: str) -> dict[str, Any] | None:
        looked.append(name)
        return classes.get(name)

    writer = ClassStatusWriter(CLASSES.resource, "meshplane.io/gateway-controller", read, lambda: {})
    writer.mark(reversed(names))
    Comparisons.count = 0
    hold, task = await longest_hold(lambda: len(looked), lambda: writer.run(None))  # type: ignore[arg-type]
    try:
        assert looked == names  # in order
        assert writer.writes == writer.skipped == 0  # not ours: neither written nor counted
        assert Comparisons.count <= MAX_COMPARISONS, Comparisons.count
        assert hold <= YIELD_EVERY, hold
    finally:
        await stop(task)
