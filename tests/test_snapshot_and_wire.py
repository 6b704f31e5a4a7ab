"""Snapshots: content-hash versions, pre-encoded bytes that parse exactly as protobuf's own, consistency."""

from __future__ import annotations

import pytest
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from meshplane.xds import wire
from meshplane.xds.server.responses import ResponseCache
from meshplane.xds.server.sotw import _NONCE, _TYPE_URL, _VERSION_INFO
from meshplane.xds.snapshot import Snapshot
from meshplane.xds.types import TypeUrl
from tests.xds_fixtures import CDS, EDS, LDS, RDS, eds_cluster, endpoints, http_listener, routes, snapshot


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 16383, 16384, 2**31, 2**63 - 1])
def test_varint_matches_protobuf(value: int) -> None:
    # An Any whose value has `value` bytes would need its length as a varint; compare with protobuf.
    assert wire.varint(value) == _protobuf_varint(value)


def _protobuf_varint(value: int) -> bytes:
    from google.protobuf.internal import encoder

    out: list[bytes] = []
    encoder._EncodeVarint(out.append, value)  # type: ignore[attr-defined]
    return b"".join(out)


def test_sotw_response_bytes_parse_exactly_as_protobuf_builds_them() -> None:
    snap, shared = snapshot(["a", "b"]), ResponseCache()
    version, chosen = shared.select(snap, CDS, None)
    ours = (
        wire.string_field(_VERSION_INFO, version)
        + wire.string_field(_TYPE_URL, CDS.value)
        + wire.string_field(_NONCE, "7")
        + shared.sotw_body(snap, CDS, None, chosen)
    )
    expected = discovery_pb2.DiscoveryResponse(version_info=version, type_url=CDS.value, nonce="7")
    for resource in chosen:
        packed = any_pb2.Any()
        packed.Pack(resource.message, deterministic=True)
        expected.resources.append(packed)
    assert discovery_pb2.DiscoveryResponse.FromString(ours) == expected


def test_delta_entries_carry_name_version_and_resource() -> None:
    snap = snapshot(["a"])
    resource = snap.of_type(CDS).by_name["a"]
    parsed = discovery_pb2.DeltaDiscoveryResponse.FromString(resource.delta_entry)
    (entry,) = parsed.resources
    assert (entry.name, entry.version) == ("a", resource.version)
    assert entry.resource.type_url == CDS.value
    assert entry.resource.value == resource.message.SerializeToString(deterministic=True)


def test_versions_are_content_hashes_equal_for_equal_content() -> None:
    one, two = snapshot(["a", "b"]), snapshot(["a", "b"])
    assert one.version == two.version
    assert one.of_type(CDS).by_name["a"].version == two.of_type(CDS).by_name["a"].version
    changed = snapshot(["a", "b"], connect_ms=999)
    assert changed.of_type(CDS).version != one.of_type(CDS).version
    assert changed.of_type(EDS).version == one.of_type(EDS).version  # endpoints did not change


@pytest.mark.parametrize(
    ("messages", "problem"),
    [
        pytest.param({CDS: [eds_cluster("a")]}, "cluster a wants endpoints 'a'", id="cluster-without-endpoints"),
        pytest.param(
            {LDS: [http_listener("l", "missing")]}, "listener l wants routes 'missing'", id="listener-without-routes"
        ),
    ],
)
def test_inconsistent_snapshots_are_reported(messages: dict[TypeUrl, list[object]], problem: str) -> None:
    problems = Snapshot.of(messages).consistency_problems()  # type: ignore[arg-type]
    assert len(problems) == 1
    assert problems[0].startswith(problem)


def test_consistent_snapshot_has_no_problems() -> None:
    snap = Snapshot.of(
        {CDS: [eds_cluster("a")], EDS: [endpoints("a", 1)], LDS: [http_listener("l", "r")], RDS: [routes("r", "a")]}
    )
    assert snap.consistency_problems() == []


def test_duplicate_resource_names_are_refused() -> None:
    with pytest.raises(ValueError, match="not unique"):
        Snapshot.of({CDS: [eds_cluster("a"), eds_cluster("a")]})
