"""The status writer of meshplane's own objects, without an API server: what `Programmed` says as
proxies acknowledge (Pending with a message that stays while it waits, the counts in
`progress()`; Programmed, NoProxies, Invalid naming the last accepted generation), that it settles
once per object generation, that the proxies are counted once per configuration generation waited
on and registry revision (not per object), that an acknowledgement which completes nothing writes
nothing, how conditions are rendered (observedGeneration, lastTransitionTime kept while a status
stays, bounded messages, nothing to write when the object holds it), and that a pass over
thousands of marked objects sorts them once and gives the event loop turns.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from meshplane.discovery.kubernetes_watching import Resource
from meshplane.discovery.meshplane_api.conditions import (
    ACCEPTED,
    MAX_MESSAGE,
    REASON_ACCEPTED,
    REASON_INVALID,
    REASON_RESOLVED_REFS,
    RESOLVED_REFS,
    ObjectStatus,
    condition,
)
from meshplane.discovery.meshplane_api.objects import ObjectKey
from meshplane.discovery.meshplane_api.source import MeshplaneApiSource
from meshplane.discovery.meshplane_api.status_writer import (
    PROGRAMMED,
    REASON_NO_PROXIES,
    REASON_PENDING,
    REASON_PROGRAMMED,
    MeshplaneStatusWriter,
    ProxiesHolding,
    render_conditions,
)

POLICY = ObjectKey("TrafficPolicy", "shop", "pay")
ROUTE = ObjectKey("MeshRoute", "shop", "pay")
START = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def accepted(generation: int) -> ObjectStatus:
    return ObjectStatus(
        generation,
        (
            condition(ACCEPTED, True, REASON_ACCEPTED, "accepted"),
            condition(RESOLVED_REFS, True, REASON_RESOLVED_REFS, "every reference resolved"),
        ),
    )


def refused(generation: int) -> ObjectStatus:
    return ObjectStatus(generation, (condition(ACCEPTED, False, REASON_INVALID, "spec.connect_timeout: bad"),))


class Proxies:
    """What the xDS side would say: `counts` per configuration generation, and a revision bumped on
    every change; `asked` records each question."""

    def __init__(self) -> None:
        self.counts: dict[int, ProxiesHolding] = {}
        self.revision = 0
        self.asked: list[int] = []

    def holding(self, generation: int) -> ProxiesHolding:
        self.asked.append(generation)
        return self.counts.get(generation, ProxiesHolding(0, 0))

    def set(self, generation: int, held: int, total: int) -> None:
        self.counts[generation] = ProxiesHolding(held, total)
        self.revision += 1


def writer_for(proxies: Proxies, now: datetime = START) -> MeshplaneStatusWriter:
    resources = {"TrafficPolicy": Resource("TrafficPolicy", "/apis/meshplane.io/v1alpha1", "trafficpolicies")}
    return MeshplaneStatusWriter(
        resources, lambda key: None, holding=proxies.holding, revision=lambda: proxies.revision, now=lambda: now
    )


def programmed(writer: MeshplaneStatusWriter, key: ObjectKey = POLICY) -> tuple[str, str, str]:
    found = writer.programmed(key)
    assert found is not None
    assert found.type == PROGRAMMED
    return found.status, found.reason, found.message


def test_programmed_is_pending_until_every_proxy_holds_the_generation_then_true() -> None:
    proxies = Proxies()
    proxies.set(5, 0, 2)
    writer = writer_for(proxies)
    writer.update({POLICY: accepted(1)}, 5)
    status, reason, message = programmed(writer)
    assert (status, reason) == ("False", REASON_PENDING)
    assert message.startswith("waiting for the connected proxies to acknowledge configuration generation 5,")
    assert "generation 1 of this object" in message
    assert writer.progress() == [(5, ProxiesHolding(0, 2), 1)]

    proxies.set(5, 1, 2)
    writer.check_proxies()
    assert programmed(writer)[2] == message  # the count moved: the condition did not
    assert writer.progress() == [(5, ProxiesHolding(1, 2), 1)]
    proxies.set(5, 2, 2)
    writer.check_proxies()
    assert programmed(writer)[:2] == ("True", REASON_PROGRAMMED)
    assert "all 2 connected proxies" in programmed(writer)[2]
    assert writer.waiting == 0

    # Settled for this object generation: a proxy connecting later does not take it back.
    proxies.set(5, 2, 3)
    writer.check_proxies()
    assert programmed(writer)[:2] == ("True", REASON_PROGRAMMED)


def test_with_no_proxy_connected_programmed_is_true_with_reason_no_proxies() -> None:
    proxies = Proxies()
    writer = writer_for(proxies)
    writer.update({POLICY: accepted(1)}, 3)
    status, reason, message = programmed(writer)
    assert (status, reason) == ("True", REASON_NO_PROXIES)
    assert "configuration generation 3" in message
    assert "no proxy is connected" in message


def test_a_new_object_generation_waits_on_the_configuration_generation_that_first_carried_it() -> None:
    proxies = Proxies()
    for generation in (4, 6, 7):
        proxies.set(generation, 0, 1)
    writer = writer_for(proxies)
    writer.update({POLICY: accepted(1)}, 4)
    writer.update({POLICY: accepted(1), ROUTE: accepted(1)}, 6)  # another object changed: gen 6
    assert "configuration generation 4," in programmed(writer)[2]  # not 6: gen 4 first carried it
    writer.update({POLICY: accepted(2), ROUTE: accepted(1)}, 7)
    assert "configuration generation 7, the first to carry generation 2 " in programmed(writer)[2]
    assert "configuration generation 6," in programmed(writer, ROUTE)[2]


def test_a_refused_generation_is_not_programmed_and_names_the_last_accepted_one_still_served() -> None:
    proxies = Proxies()
    proxies.set(2, 1, 1)
    writer = writer_for(proxies)
    writer.update({POLICY: accepted(1)}, 2)
    assert programmed(writer)[:2] == ("True", REASON_PROGRAMMED)
    writer.update({POLICY: refused(2)}, 3)
    status, reason, message = programmed(writer)
    assert (status, reason) == ("False", "Invalid")
    assert message == "generation 2 is not served (see Accepted); generation 1, the last accepted, is still served"
    writer.update({POLICY: accepted(3)}, 4)
    assert programmed(writer)[1] in (REASON_PENDING, REASON_NO_PROXIES)

    # Refused from the start: nothing accepted before.
    other = writer_for(Proxies())
    other.update({POLICY: refused(1)}, 1)
    assert programmed(other)[2].endswith("its last accepted generation, if any, is still served")


def test_proxies_are_counted_once_per_generation_waited_on_and_revision_not_per_object() -> None:
    proxies = Proxies()
    proxies.set(9, 0, 3)
    writer = writer_for(proxies)
    keys = [ObjectKey("TrafficPolicy", "shop", f"p{index}") for index in range(500)]
    writer.update({key: accepted(1) for key in keys}, 9)
    assert proxies.asked == [9]
    assert writer.waiting == 500
    writer.check_proxies()  # the revision has not moved: nothing asked
    assert proxies.asked == [9]
    writer._marked.take()  # as a pass that wrote them does
    proxies.revision += 1  # something moved, but not the count for 9: nothing to write again
    writer.check_proxies()
    assert proxies.asked == [9, 9]
    assert writer.marked == frozenset()
    proxies.set(9, 3, 3)
    writer.check_proxies()
    assert proxies.asked == [9, 9, 9]
    assert writer.marked == frozenset(keys)  # every proxy holds it: each waiting object is written again


def test_acknowledgements_that_complete_no_generation_write_nothing() -> None:
    """1,000 objects wait on one configuration generation; proxies acknowledge one by one. Until
    the last, no object is marked and every object already holds what it is owed: not one PATCH
    per acknowledgement per object (only the counts in `progress()` move)."""
    proxies = Proxies()
    proxies.set(9, 0, 5)
    writer = writer_for(proxies)
    keys = [ObjectKey("TrafficPolicy", "shop", f"p{index:04}") for index in range(1000)]
    writer.update({key: accepted(1) for key in keys}, 9)
    written = {key: writer.rendered(key, {"metadata": {}}) for key in writer._marked.take()}
    assert set(written) == set(keys)
    for held_by in range(1, 5):
        proxies.set(9, held_by, 5)
        writer.check_proxies()
        assert writer.marked == frozenset(), f"{held_by} of 5 acknowledged: nothing is to be looked at"
        assert all(writer.rendered(key, {"status": status}) is None for key, status in written.items())
        assert writer.progress() == [(9, ProxiesHolding(held_by, 5), 1000)]
    proxies.set(9, 5, 5)
    writer.check_proxies()
    assert writer.marked == frozenset(keys)
    assert all(writer.rendered(key, {"status": status}) is not None for key, status in written.items())
    assert writer.progress() == []


def test_an_object_gone_from_the_merge_is_forgotten() -> None:
    proxies = Proxies()
    proxies.set(2, 0, 1)
    writer = writer_for(proxies)
    writer.update({POLICY: accepted(1)}, 2)
    writer.update({}, 3)
    assert writer.programmed(POLICY) is None
    assert writer.waiting == 0


def held(conditions: list[dict[str, Any]]) -> dict[str, Any]:
    return {"metadata": {"resourceVersion": "7"}, "status": {"conditions": conditions}}


def test_conditions_carry_observed_generation_and_keep_their_time_while_their_status_stays() -> None:
    proxies = Proxies()
    writer = writer_for(proxies)
    writer.update({POLICY: accepted(1)}, 1)
    first = writer.rendered(POLICY, {"metadata": {}})
    assert first is not None
    by_type = {c["type"]: c for c in first["conditions"]}
    assert set(by_type) == {ACCEPTED, RESOLVED_REFS, PROGRAMMED}
    assert all(c["observedGeneration"] == 1 for c in first["conditions"])
    assert by_type[ACCEPTED]["lastTransitionTime"] == "2026-01-02T03:04:05Z"
    # Held already: nothing to write (so writes never loop).
    assert writer.rendered(POLICY, held(first["conditions"])) is None

    later = writer_for(proxies, START + timedelta(hours=1))
    later.update({POLICY: accepted(2)}, 2)
    second = later.rendered(POLICY, held(first["conditions"]))
    assert second is not None
    by_type = {c["type"]: c for c in second["conditions"]}
    assert by_type[ACCEPTED]["observedGeneration"] == 2
    assert by_type[ACCEPTED]["lastTransitionTime"] == "2026-01-02T03:04:05Z"  # still True: kept
    later.update({POLICY: refused(3)}, 3)
    third = later.rendered(POLICY, held(second["conditions"]))
    assert third is not None
    by_type = {c["type"]: c for c in third["conditions"]}
    assert by_type[ACCEPTED]["status"] == "False"
    assert by_type[ACCEPTED]["lastTransitionTime"] == "2026-01-02T04:04:05Z"  # changed: now


def test_messages_are_cut_to_the_crd_bound() -> None:
    long = condition(ACCEPTED, False, REASON_INVALID, "x" * (MAX_MESSAGE * 2))
    (rendered,) = render_conditions((long,), 1, None, START)
    assert len(rendered["message"]) == MAX_MESSAGE


def test_a_generation_whose_references_do_not_resolve_is_not_programmed_and_says_so() -> None:
    proxies = Proxies()
    writer = writer_for(proxies)
    unresolved = ObjectStatus(
        2,
        (
            condition(ACCEPTED, True, REASON_ACCEPTED, "accepted"),
            condition(RESOLVED_REFS, False, "BackendNotFound", "unknown service shop/nope; route left out"),
        ),
    )
    writer.update({ROUTE: unresolved}, 4)
    status, reason, message = programmed(writer, ROUTE)
    assert (status, reason) == ("False", "Invalid")
    assert message == "generation 2 is not served while its references do not resolve (see ResolvedRefs)"
    # The service appears: the same generation resolves, and waits for the proxies like any other.
    writer.update({ROUTE: accepted(2)}, 5)
    assert programmed(writer, ROUTE)[:2] == ("True", REASON_NO_PROXIES)


def test_the_live_counts_are_on_the_sources_status_not_on_the_objects() -> None:
    proxies = Proxies()
    proxies.set(5, 1, 3)
    source = MeshplaneApiSource(holding=proxies.holding, revision=lambda: proxies.revision)
    source.writer.update({POLICY: accepted(1), ROUTE: accepted(1)}, 5)
    status = source.status
    assert status.counts["programmed_waiting"] == 2
    assert "Programmed: 1 of 3 connected proxies hold configuration generation 5; 2 objects wait for it" in status.notes
    proxies.set(5, 3, 3)
    source.writer.check_proxies()
    status = source.status
    assert status.counts["programmed_waiting"] == 0
    assert not [note for note in status.notes if note.startswith("Programmed:")]
