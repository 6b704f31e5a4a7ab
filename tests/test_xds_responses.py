"""The server's per-snapshot answers: computed once, shared as one object, bounded, gone with the snapshot."""

from __future__ import annotations

import functools
import gc

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2

from meshplane.xds.server.responses import DERIVED_LIMIT, RESPONSE_LIMIT, ResponseCache
from meshplane.xds.snapshot import Snapshot
from tests.xds_fixtures import CDS, EDS, SDS, snapshot


def test_streams_asking_the_same_names_share_one_selection() -> None:
    snap, shared = snapshot(["a", "b", "c"]), ResponseCache()
    first = shared.select(snap, EDS, frozenset({"a", "c"}))
    again = shared.select(snap, EDS, frozenset({"c", "a"}))
    assert first is again
    assert [r.name for r in first[1]] == ["a", "c"]


def test_a_wildcard_selection_is_every_resource_at_the_types_version() -> None:
    snap, shared = snapshot(["b", "a"]), ResponseCache()
    version, chosen = shared.select(snap, CDS, None)
    assert version == snap.of_type(CDS).version
    assert [r.name for r in chosen] == ["a", "b"]


def test_the_first_set_of_names_is_the_one_every_later_stream_is_given() -> None:
    snap, shared = snapshot(["a"]), ResponseCache()
    first, equal = frozenset({"a", "b"}), frozenset({"b", "a"})
    assert shared.known_names(snap, equal) is None
    assert shared.intern_names(snap, first) is first
    assert shared.intern_names(snap, equal) is first
    assert shared.known_names(snap, equal) is first


def test_answers_are_per_snapshot_object() -> None:
    shared = ResponseCache()
    one, other = snapshot(["a"]), snapshot(["a"], connect_ms=999)
    assert shared.select(one, CDS, None)[0] == one.of_type(CDS).version
    assert shared.select(other, CDS, None)[0] == other.of_type(CDS).version
    assert shared.select(one, CDS, None)[0] != shared.select(other, CDS, None)[0]


def test_what_is_remembered_for_a_snapshot_goes_with_it() -> None:
    shared = ResponseCache()
    snap = snapshot(["a"])
    shared.select(snap, CDS, None)
    shared.shared_response(snap, (CDS, "v", "1", None), lambda: b"response")
    assert len(shared) == 1
    del snap
    gc.collect()
    assert len(shared) == 0


def test_a_new_snapshot_never_gets_the_answers_of_a_dropped_one() -> None:
    # CPython may give a new snapshot the address (the id) of one just dropped.
    shared = ResponseCache()
    for port in range(8000, 8050):
        snap = snapshot(["a"], endpoint_ports={"a": (port,)})
        assert shared.select(snap, EDS, None)[0] == snap.of_type(EDS).version
        del snap
    gc.collect()
    assert len(shared) == 0


def test_derived_values_are_kept_up_to_the_limit_and_still_computed_beyond() -> None:
    snap, shared = snapshot(["a"]), ResponseCache()
    kept = [shared.intern_names(snap, frozenset({f"n{i}"})) for i in range(DERIVED_LIMIT)]
    assert all(shared.known_names(snap, names) is names for names in kept)
    beyond = frozenset({"beyond"})
    assert shared.intern_names(snap, beyond) is beyond
    assert shared.known_names(snap, beyond) is None
    assert shared.select(snap, CDS, frozenset({"a"}))[1][0].name == "a"


def test_whole_responses_are_built_once_up_to_the_limit() -> None:
    snap, shared = snapshot(["a"]), ResponseCache()
    builds: list[str] = []

    def build(nonce: str) -> bytes:
        builds.append(nonce)
        return f"response {nonce}".encode()

    first = shared.shared_response(snap, (CDS, "v", "1", None), lambda: build("1"))
    assert shared.shared_response(snap, (CDS, "v", "1", None), lambda: build("1")) is first
    assert builds == ["1"]
    for nonce in map(str, range(2, RESPONSE_LIMIT + 3)):
        shared.shared_response(snap, (CDS, "v", nonce, None), functools.partial(build, nonce))
    last = str(RESPONSE_LIMIT + 2)
    assert shared.shared_response(snap, (CDS, "v", last, None), lambda: build(last)) == f"response {last}".encode()
    assert builds.count(last) == 2  # beyond the limit: built again, not kept


def test_private_key_secrets_are_found_once_per_snapshot() -> None:
    key = common_pb2.TlsCertificate(
        certificate_chain=base_pb2.DataSource(inline_string="chain"),
        private_key=base_pb2.DataSource(inline_string="key"),
    )
    bundle = common_pb2.CertificateValidationContext(trusted_ca=base_pb2.DataSource(inline_string="ca"))
    snap = Snapshot.of(
        {
            SDS: [
                secret_pb2.Secret(name="client", tls_certificate=key),
                secret_pb2.Secret(name="ca", validation_context=bundle),
            ]
        }
    )
    shared = ResponseCache()
    found = shared.private_key_secrets(snap)
    assert found == frozenset({"client"})
    assert shared.private_key_secrets(snap) is found
    version, kept = shared.without_keys(snap, SDS, None, shared.select(snap, SDS, None)[1], found)
    assert [r.name for r in kept] == ["ca"]
    assert version == shared.select(snap, SDS, frozenset({"ca"}))[0]


def test_gone_is_what_an_earlier_selection_held_that_the_snapshot_dropped() -> None:
    shared = ResponseCache()
    before, after = snapshot(["a", "b", "c"]), snapshot(["a", "c"])
    held = shared.select(before, CDS, None)[1]
    gone = shared.gone(after, CDS, held)
    assert [r.name for r in gone] == ["b"]
    assert shared.gone(after, CDS, held) is gone


def test_changed_is_what_differs_from_the_acknowledged_or_the_sent_since() -> None:
    shared = ResponseCache()
    acked = snapshot(["a", "b", "c"])
    sent = snapshot(["a", "b", "c"], endpoint_ports={"a": (9000,)})
    now = snapshot(["a", "b", "c"], endpoint_ports={"a": (9000,), "b": (9001,)})
    accepted, held = shared.select(acked, EDS, None)[1], shared.select(sent, EDS, None)[1]
    chosen = shared.select(now, EDS, None)[1]
    changed = shared.changed(now, EDS, accepted, held, chosen)
    assert [r.name for r in changed] == ["a", "b"]  # a: not acknowledged yet; b: changed since
    assert shared.changed(now, EDS, accepted, held, chosen) is changed
    assert [r.name for r in shared.changed(now, EDS, chosen, chosen, chosen)] == []
