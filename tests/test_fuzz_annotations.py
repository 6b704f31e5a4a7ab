"""Property tests for the `meshplane.io/…` annotation parser: any annotation map (real keys with
random or near-miss values, random keys) is read without raising; every value that cannot be used
is skipped with a note naming its annotation; what is kept passes the model's checks; and the
Service is still discovered."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from meshplane.discovery import kubernetes_annotations as ann
from meshplane.discovery.kubernetes_annotations import policy_of
from meshplane.discovery.kubernetes_mapping import map_service
from tests.k8s import objects as k

KNOWN = (
    ann.CONNECT_TIMEOUT,
    ann.LOAD_BALANCING,
    ann.HASH_KEY,
    ann.LOCALITY_FAILOVER,
    ann.CIRCUIT_BREAKERS,
    ann.OUTLIER_DETECTION,
    ann.TIMEOUT,
    ann.RETRIES,
)
WHERE = "service default/web"

numbers = st.one_of(
    st.integers(min_value=-5, max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["", "1e999", "9" * 400, "0", "-0", "1.", ".5", "0x10", "١٢"]),
)
durations = st.builds(lambda n, u: n + u, numbers, st.sampled_from(["", "ms", "s", "m", "h", " s", "sec"]))
pair_keys = st.sampled_from(
    [
        "max-connections",
        "max-pending-requests",
        "max-requests",
        "max-retries",
        "consecutive-5xx",
        "consecutive-gateway-failure",
        "interval",
        "base-ejection-time",
        "max-ejection-percent",
        "attempts",
        "on",
        "per-try-timeout",
        "",
        "bogus",
    ]
)
pair_values = st.one_of(durations, st.sampled_from(["5xx", "reset|connect-failure", "5xx|nope", "|", "a=b"]))
pairs = st.lists(
    st.builds(
        lambda key, sep, value: f"{key}{sep}{value}", pair_keys, st.sampled_from(["=", " = ", ":", ""]), pair_values
    ),
    max_size=5,
).map(", ".join)
words = st.sampled_from(
    [
        "round_robin",
        "ROUND_ROBIN",
        "least_request",
        "ring_hash",
        "maglev",
        "random",
        "source-ip",
        "header:x-user",
        "header:",
        "cookie:session",
        "cookie: ",
        "true",
        "false",
        "yes",
        "maybe",
    ]
)
annotation_values = st.one_of(st.text(max_size=40), durations, pairs, words)
annotation_keys = st.one_of(
    st.sampled_from(KNOWN),
    st.text(max_size=12).map(lambda suffix: ann.PREFIX + suffix),
    st.text(max_size=20),
)
annotation_maps = st.dictionaries(annotation_keys, annotation_values, max_size=8)


def service_with(annotations: dict[str, Any]) -> dict[str, Any]:
    return k.service("web", annotations=annotations)


@settings(max_examples=1500, deadline=None)
@given(annotation_maps)
def test_random_annotations_never_raise_and_every_note_names_its_annotation(annotations: dict[str, str]) -> None:
    result = policy_of(service_with(annotations))
    ours = {key for key in annotations if key.startswith(ann.PREFIX)}
    for note in result.notes:
        assert note.startswith(f"{WHERE}: annotation "), note
        assert any(note.startswith(f"{WHERE}: annotation {key}={annotations[key]!r}: ") for key in ours), note
    # At most one note per annotation, and what was kept is valid for the model.
    assert len(result.notes) <= len(ours)
    assert result.policy.problems(WHERE) == []
    assert result.timeout is None or result.timeout >= 0
    if result.retry is not None:
        assert result.retry.attempts >= 1


@settings(max_examples=1500, deadline=None)
@given(st.sampled_from(KNOWN), annotation_values)
def test_one_annotation_is_either_used_or_skipped_with_its_name(key: str, value: str) -> None:
    annotations = {key: value}
    if key == ann.HASH_KEY:
        annotations[ann.LOAD_BALANCING] = "ring_hash"  # else it is always skipped: it needs a balancer
    result = policy_of(service_with(annotations))
    named = [note for note in result.notes if f"annotation {key}=" in note]
    others = [note for note in result.notes if note not in named]
    if key == ann.HASH_KEY:
        # An invalid key makes the balancer that needs it fall too, and that note names the balancer.
        assert all(f"annotation {ann.LOAD_BALANCING}=" in note for note in others)
    else:
        assert others == []
    assert len(named) <= 1
    assert result.policy.problems(WHERE) == []


@settings(max_examples=500, deadline=None)
@given(annotation_maps, st.sampled_from(["http", "grpc", "tcp-db"]))
def test_the_service_is_still_discovered(annotations: dict[str, str], port_name: str) -> None:
    obj = k.service("web", ports=[k.port(port_name, 80)], annotations=annotations)
    slices = [k.endpoint_slice("web-a", "web", endpoints=[k.endpoint("10.0.0.1")], ports=[(port_name, 8080)])]
    mapped = map_service(obj, slices)
    assert mapped.service is not None, mapped.notes
    assert mapped.service.problems() == []
    assert [e.address for e in mapped.service.endpoints] == ["10.0.0.1"]


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(KNOWN), st.text(alphabet="qwxz!?#~ ", min_size=1, max_size=30))
def test_a_value_that_cannot_mean_anything_is_skipped_with_its_name(key: str, value: str) -> None:
    annotations = {key: value}
    if key == ann.HASH_KEY:
        annotations[ann.LOAD_BALANCING] = "ring_hash"
    result = policy_of(service_with(annotations))
    if key == ann.HASH_KEY:  # it falls with its balancer, on whose note it is named
        prefix = f"{WHERE}: annotation {ann.LOAD_BALANCING}='ring_hash': {key}: "
    else:
        prefix = f"{WHERE}: annotation {key}={value!r}: "
    assert any(note.startswith(prefix) for note in result.notes), result.notes
    assert result.policy.problems(WHERE) == []
