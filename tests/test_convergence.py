"""Change → ACK convergence: `meshplane_proxy_convergence_seconds` and each generation's `acks`.

The bookkeeping on a stream registry and a change log alone, driven as the server drives them
(`sent`, `acked`, `nacked`), with the clocks' readings given as `Instant`s so the figures are
exact; then through the composition root with real Envoys: a policy-file edit shows its ACK
figures on `/changes` and its observations on `/metrics`. Every wait is for a condition.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import jsonschema
import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshplane.app import ControlPlane, Settings
from meshplane.model import ProxyGroup, ProxyRole
from meshplane.status.changes import one_generation
from meshplane.status.console import generation_line
from meshplane.xds.cache import SnapshotCache
from meshplane.xds.publication import Cause, ChangeLog, Generation, Instant
from meshplane.xds.server.tracking import StreamKind, StreamRegistry, StreamTrack
from meshplane.xds.types import TypeUrl
from tests.envoy_harness import REPO, Envoy, start_backend, start_envoy

SCHEMA = json.loads((REPO / "docs" / "status-api.schema.json").read_text())
A = ProxyGroup()
B = ProxyGroup(ProxyRole.SIDECAR, outbound_port=15002)
CDS, EDS = TypeUrl.CLUSTER, TypeUrl.ENDPOINT
T = TypeVar("T")


class World:
    """A change log and a registry wired as the composition root wires them; `now` is what the
    registry's clock would read (it reads `time.monotonic()`: the test reads the figures back
    relative to the `changed` it gave, so it asserts bounds, never durations)."""

    def __init__(self, keep: int = 100) -> None:
        self.log = ChangeLog(keep)
        self.registry = StreamRegistry(changes=self.log)

    def publish(self, number: int, versions: dict[ProxyGroup, str], changed: Instant | None = None) -> None:
        """Generation `number`: each group's every type at its version (as the publisher records them)."""
        generation = Generation(number, time.time(), Cause(("policy files",)), ("endpoints",), (), 0, {}, changed)
        self.log.record(generation, {group: {str(t): version for t in TypeUrl} for group, version in versions.items()})

    def stream(self, group: ProxyGroup, node_id: str) -> StreamTrack:
        return self.registry.open(StreamKind.DELTA_ADS, node_id, "c", group, "envoy", "127.0.0.1:1")

    def push(self, track: StreamTrack, type_url: TypeUrl, version: str) -> None:
        self.registry.sent(track, type_url, version, f"n-{version}", ())

    def counted(self, type_url: TypeUrl) -> int:
        return self.registry.convergence[type_url].count


def test_an_ack_is_counted_once_per_stream_type_and_generation_and_both_groups_count() -> None:
    world = World()
    a1, a2, b1 = world.stream(A, "a-1"), world.stream(A, "a-2"), world.stream(B, "b-1")
    world.publish(1, {A: "a1", B: "b1"}, Instant.now())
    for track, version in ((a1, "a1"), (a2, "a1"), (b1, "b1")):
        world.push(track, CDS, version)
    # Out of order: the second group answers first; an ACK repeated (a re-request) counts once.
    world.registry.acked(b1, CDS, "b1")
    world.registry.acked(a2, CDS, "a1")
    world.registry.acked(a2, CDS, "a1")
    assert world.log.acks(1).acked == 2
    world.registry.acked(a1, CDS, "a1")
    acks = world.log.acks(1)
    assert acks.acked == 3
    assert acks.first_seconds is not None
    assert acks.last_seconds is not None
    assert 0.0 <= acks.first_seconds <= acks.last_seconds
    assert world.counted(CDS) == 3
    # Another type of the same generation on the same stream is its own observation.
    world.push(a1, EDS, "a1")
    world.registry.acked(a1, EDS, "a1")
    assert (world.counted(EDS), world.log.acks(1).acked) == (1, 4)


def test_the_seconds_run_from_when_the_change_was_observed_not_from_the_publication() -> None:
    world = World()
    track = world.stream(A, "a-1")
    observed = Instant(time.time() - 5.0, time.monotonic() - 5.0)  # five seconds of debounce and build
    world.publish(1, {A: "v1"}, observed)
    world.push(track, CDS, "v1")
    world.registry.acked(track, CDS, "v1")
    acks = world.log.acks(1)
    assert acks.first_seconds is not None
    assert acks.first_seconds >= 5.0
    assert world.registry.convergence[CDS].sum >= 5.0
    generation = world.log.get(1)
    assert generation is not None
    assert generation.changed_at == observed.wall


def test_a_nack_then_the_next_generations_ack_counts_for_that_generation_only() -> None:
    world = World()
    track = world.stream(A, "a-1")
    world.publish(1, {A: "v1"})
    world.push(track, CDS, "v1")
    world.registry.nacked(track, CDS, "v1", "rejected")
    assert (world.log.acks(1).acked, world.counted(CDS)) == (0, 0)
    world.publish(2, {A: "v2"})
    world.push(track, CDS, "v2")
    world.registry.acked(track, CDS, "v2")
    assert (world.log.acks(1).acked, world.log.acks(2).acked, world.counted(CDS)) == (0, 1, 1)


def test_an_ack_of_a_version_other_than_the_one_sent_is_not_counted() -> None:
    world = World()
    track = world.stream(A, "a-1")
    world.publish(1, {A: "v1"})
    world.publish(2, {A: "v2"})
    world.push(track, CDS, "v1")
    world.push(track, CDS, "v2")
    world.registry.acked(track, CDS, "v1")  # answers the response v2 replaced
    assert (world.log.acks(1).acked, world.log.acks(2).acked) == (0, 0)
    world.registry.acked(track, CDS, "v2")
    assert (world.log.acks(1).acked, world.log.acks(2).acked) == (0, 1)


def test_a_revert_to_an_older_version_counts_for_the_revert() -> None:
    world = World()
    track = world.stream(A, "a-1")
    for number, version in ((1, "old"), (2, "new"), (3, "old")):
        world.publish(number, {A: version})
        world.push(track, CDS, version)
        world.registry.acked(track, CDS, version)
    assert [world.log.acks(number).acked for number in (1, 2, 3)] == [1, 1, 1]
    assert world.counted(CDS) == 3


def test_a_selection_by_name_counts_for_the_groups_newest_generation() -> None:
    world = World()
    track = world.stream(A, "a-1")
    world.publish(1, {A: "v1"})
    world.publish(2, {A: "v2"})
    world.push(track, EDS, "selection-of-some-names")  # SotW by name: not the type's version
    world.registry.acked(track, EDS, "selection-of-some-names")
    assert (world.log.acks(1).acked, world.log.acks(2).acked) == (0, 1)


def test_a_stream_connected_after_the_publication_is_not_counted() -> None:
    world = World()
    world.publish(1, {A: "v1"})
    late = world.stream(A, "late")  # it gets the change with its first config
    world.push(late, CDS, "v1")
    world.registry.acked(late, CDS, "v1")
    assert (world.log.acks(1).acked, world.counted(CDS)) == (0, 0)


def test_a_generation_leaving_the_window_takes_its_figures_and_later_acks_are_not_counted() -> None:
    world = World(keep=2)
    track = world.stream(A, "a-1")
    world.publish(1, {A: "v1"})
    world.push(track, CDS, "v1")
    world.registry.acked(track, CDS, "v1")
    world.publish(2, {B: "b2"})
    other = world.stream(A, "a-2")
    world.push(other, CDS, "v1")  # sent while generation 1 is kept …
    world.publish(3, {B: "b3"})  # … which then leaves the window
    world.registry.acked(other, CDS, "v1")
    assert world.log.get(1) is None
    assert world.log.acks(1).acked == 0
    assert world.counted(CDS) == 1  # the first stream's ACK only


def test_the_changes_document_carries_changed_at_and_acks_and_the_cli_says_converged() -> None:
    world = World()
    track = world.stream(A, "a-1")
    observed = Instant.now()
    world.publish(1, {A: "v1"}, observed)
    document = one_generation(world.log, world.registry, SnapshotCache(), 1)
    assert document["changed_at"] == observed.wall
    assert document["acks"] == {"first_seconds": None, "last_seconds": None, "acked": 0}
    world.push(track, CDS, "v1")
    world.registry.acked(track, CDS, "v1")
    document = one_generation(world.log, world.registry, SnapshotCache(), 1)
    jsonschema.validate(document, {**SCHEMA, "$ref": "#/$defs/generation"})
    assert document["acks"]["acked"] == 1
    assert document["complete"] is True
    last = document["acks"]["last_seconds"]
    assert generation_line(document).endswith(f", converged in {last * 1000:.0f} ms")
    assert "converged" not in generation_line({**document, "complete": False})


# Through the composition root, with real Envoys.

SERVICES = """services:
  - name: web
    port: 8080
    endpoints:
      - {{address: 127.0.0.1, port: {port}}}
"""


async def eventually(check: Callable[[], Awaitable[T | None]], what: str, deadline: float = 30.0) -> T:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    last: object = None
    while loop.time() < end:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[ControlPlane]:
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "services.yaml").write_text(SERVICES.format(port=9001))
    settings = Settings(
        config=policy,
        xds_address="127.0.0.1:0",
        status_address="127.0.0.1:0",
        poll_interval=0.05,
        debounce_quiet=0.02,
        debounce_max=0.2,
        shutdown_grace=0.5,
    )
    control = ControlPlane(settings)
    await control.start()
    stop = asyncio.Event()
    task = asyncio.create_task(control.run(stop))
    try:
        yield control
    finally:
        stop.set()
        await task


@pytest.mark.envoy
@pytest.mark.xdist_group("envoy")
async def test_a_policy_edit_shows_its_convergence_on_changes_and_metrics(plane: ControlPlane, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{plane.status_port}"
    backend = await start_backend("web")
    envoys: list[Envoy] = []
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:

            async def get(path: str) -> Any:
                async with session.get(url + path) as response:
                    assert response.status == 200, await response.text()
                    return await (response.json() if response.content_type == "application/json" else response.text())

            async def all_synced() -> bool:
                proxies = (await get("/status"))["proxies"]
                states = {state["state"] for proxy in proxies for state in proxy["types"].values()}
                return len(proxies) == 2 and states <= {"SYNCED", "NOT SENT"}

            for node_id, delta in (("delta-envoy", True), ("sotw-envoy", False)):
                envoys.append(await start_envoy(tmp_path / node_id, plane.xds_port, node_id=node_id, delta=delta))
            await eventually(all_synced, "both Envoys synced")

            first = (await get("/changes?limit=1"))["newest"]
            policy = tmp_path / "policy"
            (policy / "services.tmp").write_text(SERVICES.format(port=backend.port))
            (policy / "services.tmp").rename(policy / "services.yaml")  # whole, never half-written

            async def edited_and_converged() -> dict[str, Any] | None:
                listing = await get("/changes?limit=1")
                newest = listing["generations"][0] if listing["generations"] else None
                if newest is None or newest["generation"] == first or not newest["complete"]:
                    return None
                return newest if newest["acks"]["last_seconds"] is not None and newest["acks"]["acked"] >= 2 else None

            generation = await eventually(edited_and_converged, "the edit's generation reached and its ACKs noted")
            jsonschema.validate(generation, {**SCHEMA, "$ref": "#/$defs/generation"})
            assert "endpoints" in generation["cause"]["parts"]
            assert generation["changed_at"] <= generation["published_at"]
            acks = generation["acks"]
            assert 0.0 <= acks["first_seconds"] <= acks["last_seconds"]

            samples = {}
            for family in text_string_to_metric_families(await get("/metrics")):
                for sample in family.samples:
                    samples[(sample.name, sample.labels.get("type"))] = sample.value
            # The edit moved web's endpoints: both Envoys ACKed new EDS, each counted once.
            assert samples[("meshplane_proxy_convergence_seconds_count", "EDS")] >= 2
    finally:
        for envoy in envoys:
            await envoy.stop()
        await backend.close()
