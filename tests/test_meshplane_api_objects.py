"""`parse_object`: whatever JSON value it is given, it returns (never raises), every error names
the object and a field path, its work is bounded, and what it reads is what the policy-file reader
reads of the same spec."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshplane.discovery.meshplane_api.kinds import API_VERSION, KINDS
from meshplane.discovery.meshplane_api.objects import ObjectKey, parse_object
from meshplane.discovery.meshplane_api.parse import MAX_DEPTH, MAX_NODES
from meshplane.discovery.policy_schema import KEYS

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["1s", "250ms", "5x", "http2", "least_request", "Service", "ExternalService", "10.0.0.1"]),
)
ALL_KEYS = sorted({key for keys in KEYS.values() for key in keys})
keys = st.one_of(st.sampled_from(ALL_KEYS), st.text(max_size=8))


def values(depth: int = 3) -> st.SearchStrategy[Any]:
    if depth == 0:
        return scalars
    inner = values(depth - 1)
    return st.one_of(scalars, st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=4))


objects = st.fixed_dictionaries(
    {
        "apiVersion": st.one_of(st.just(API_VERSION), scalars),
        "kind": st.one_of(st.sampled_from([kind.name for kind in KINDS]), scalars),
        "metadata": st.one_of(
            st.fixed_dictionaries(
                {"name": st.one_of(st.just("web"), scalars), "namespace": st.one_of(st.just("shop"), scalars)},
                optional={"generation": st.one_of(st.integers(), scalars), "creationTimestamp": scalars},
            ),
            values(1),
        ),
        "spec": values(4),
    }
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.one_of(objects, values(2)))
def test_any_json_value_is_read_without_raising_and_errors_name_the_object(raw: Any) -> None:
    parsed = parse_object(raw)
    assert isinstance(parsed.key, ObjectKey)
    if parsed.content is None:
        assert parsed.errors
    for error in parsed.errors:
        assert error  # a reason, said of the object (or of the value when it is no object)
        if parsed.key.name:
            assert error.startswith(f"{parsed.key.kind} "), error


def test_a_spec_too_deep_or_too_big_is_refused_with_a_reason() -> None:
    deep: Any = "x"
    for _ in range(MAX_DEPTH + 5):
        deep = {"policy": deep}
    metadata = {"name": "web", "namespace": "shop"}
    parsed = parse_object({"apiVersion": API_VERSION, "kind": "ExternalService", "metadata": metadata, "spec": deep})
    assert parsed.content is None
    assert parsed.errors == (
        f"ExternalService shop/web: spec: more than {MAX_NODES} values or nested deeper than {MAX_DEPTH} levels",
    )
    wide = {"port": 80, "hosts": ["a.example.com"] * (MAX_NODES + 1)}
    parsed = parse_object({"apiVersion": API_VERSION, "kind": "ExternalService", "metadata": metadata, "spec": wide})
    assert parsed.content is None


def test_client_text_in_errors_is_cut_short() -> None:
    parsed = parse_object({"apiVersion": API_VERSION, "kind": "x" * 10_000, "metadata": {}, "spec": {}})
    assert len(parsed.errors[0]) < 300


def test_a_wrong_api_version_and_a_bad_name_are_refused() -> None:
    parsed = parse_object({"apiVersion": "meshplane.io/v2", "kind": "EdgeSite", "metadata": {"name": "Gym_1"}})
    assert parsed.errors == (
        "EdgeSite Gym_1: apiVersion must be meshplane.io/v1alpha1, not 'meshplane.io/v2'",
        "EdgeSite Gym_1: metadata.name 'Gym_1' is not a DNS subdomain name",
    )
