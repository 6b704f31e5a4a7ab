"""The conditions of an owned GatewayClass (pure): Accepted and SupportedVersion by the spec, with
observedGeneration, lastTransitionTime kept while a status stays, other conditions kept, and no
update at all when the object already holds what would be written."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from meshplane.discovery.gateway_api.class_status import status_update, version_condition
from meshplane.discovery.gateway_api.gateway_classes import parse_gateway_class

T0 = datetime(2026, 12, 7, 1, 0, 0, tzinfo=UTC)
T1 = datetime(2026, 12, 7, 2, 0, 0, tzinfo=UTC)
CURRENT = {"gatewayclasses.gateway.networking.k8s.io": "v1.6.1", "httproutes.gateway.networking.k8s.io": "v1.6.0"}
# What the API server stores on create (the CRD's default for status).
PENDING = {
    "type": "Accepted",
    "status": "Unknown",
    "reason": "Pending",
    "message": "Waiting for controller",
    "lastTransitionTime": "1970-01-01T00:00:00Z",
}


def gateway_class(generation: int = 1, conditions: list[dict[str, Any]] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "meshplane", "generation": generation, "resourceVersion": "7"},
        "spec": {"controllerName": "meshplane.io/gateway-controller", **spec},
        "status": {"conditions": [PENDING] if conditions is None else conditions},
    }


def update(obj: dict[str, Any], bundles: Mapping[str, str | None] = CURRENT, now: datetime = T0) -> Any:
    return status_update(obj, parse_gateway_class(obj), bundles, now)


def by_type(conditions: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in conditions}


def test_a_new_class_is_accepted_with_a_supported_version() -> None:
    written = by_type(update(gateway_class(generation=4)))
    assert written["Accepted"] == {
        "type": "Accepted",
        "status": "True",
        "reason": "Accepted",
        "message": "meshplane accepts this class",
        "observedGeneration": 4,
        "lastTransitionTime": "2026-12-07T01:00:00Z",
    }
    assert written["SupportedVersion"]["status"] == "True"
    assert written["SupportedVersion"]["reason"] == "SupportedVersion"
    assert "v1.6.0, v1.6.1" in written["SupportedVersion"]["message"]


def test_nothing_to_write_when_the_object_holds_it_already() -> None:
    first = update(gateway_class())
    assert update(gateway_class(conditions=first), now=T1) is None


def test_a_spec_change_bumps_observed_generation_and_keeps_transition_times() -> None:
    first = update(gateway_class(generation=1))
    second = update(gateway_class(generation=2, conditions=first), now=T1)
    assert [c["observedGeneration"] for c in second] == [2, 2]
    assert [c["lastTransitionTime"] for c in second] == ["2026-12-07T01:00:00Z"] * 2


def test_parameters_are_refused_and_the_transition_time_moves() -> None:
    first = update(gateway_class())
    refused = by_type(
        update(gateway_class(2, first, parametersRef={"group": "x.io", "kind": "Config", "name": "c"}), now=T1)
    )
    accepted = refused["Accepted"]
    assert (accepted["status"], accepted["reason"]) == ("False", "InvalidParameters")
    assert accepted["message"] == "meshplane takes no parameters; parametersRef names Config c"
    assert accepted["lastTransitionTime"] == "2026-12-07T02:00:00Z"
    assert refused["SupportedVersion"]["lastTransitionTime"] == "2026-12-07T01:00:00Z"


@pytest.mark.parametrize(
    ("bundles", "status", "fragment"),
    [
        ({"gateways.gateway.networking.k8s.io": "v1.6.1"}, "True", "v1.6.1"),
        ({"gateways.gateway.networking.k8s.io": "v1.6.12"}, "True", "v1.6.12"),
        ({"gateways.gateway.networking.k8s.io": "v1.5.0"}, "False", "gateways.gateway.networking.k8s.io v1.5.0"),
        ({"gateways.gateway.networking.k8s.io": "v1.7.0"}, "False", "supported: v1.6.x"),
        ({"gateways.gateway.networking.k8s.io": None}, "False", "(no bundle-version annotation)"),
        ({"a": "v1.6.1", "b": "v1.60.0"}, "False", "b v1.60.0"),
        ({}, "False", "no Gateway API CRD is installed"),
    ],
    ids=["v1.6.1", "a-later-patch", "older-minor", "newer-minor", "no-annotation", "one-of-two", "none"],
)
def test_supported_version(bundles: dict[str, str | None], status: str, fragment: str) -> None:
    condition = version_condition(bundles)
    assert condition.status == status
    assert condition.reason == ("SupportedVersion" if status == "True" else "UnsupportedVersion")
    assert fragment in condition.message


def test_an_unsupported_version_keeps_the_class_accepted() -> None:
    written = by_type(update(gateway_class(), bundles={"gateways.gateway.networking.k8s.io": "v1.5.0"}))
    assert written["Accepted"]["status"] == "True"
    assert written["SupportedVersion"]["status"] == "False"


def test_other_conditions_are_kept_and_ours_take_their_place_in_order() -> None:
    other = {
        "type": "Example",
        "status": "True",
        "reason": "X",
        "message": "",
        "lastTransitionTime": "2020-01-01T00:00:00Z",
    }
    written = update(gateway_class(conditions=[other, PENDING]))
    assert [c["type"] for c in written] == ["Example", "Accepted", "SupportedVersion"]
    assert written[0] == other


def test_at_most_eight_conditions_ours_among_them() -> None:
    others = [
        {"type": f"T{i}", "status": "True", "reason": "X", "message": "", "lastTransitionTime": "2020-01-01T00:00:00Z"}
        for i in range(8)
    ]
    written = update(gateway_class(conditions=others))
    assert len(written) == 8
    assert {"Accepted", "SupportedVersion"} <= {c["type"] for c in written}


def test_a_malformed_status_is_replaced_not_a_crash() -> None:
    obj = gateway_class()
    obj["status"] = {"conditions": "broken"}
    assert [c["type"] for c in update(obj)] == ["Accepted", "SupportedVersion"]
