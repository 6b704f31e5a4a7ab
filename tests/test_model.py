"""Model validation that every source relies on, whatever it parses (files, annotations, registrations)."""

from __future__ import annotations

import dataclasses
import math

import pytest

from meshplane.model import (
    Device,
    DeviceEndpoint,
    Mesh,
    OutlierDetection,
    PathMatch,
    PathMatchKind,
    Protocol,
    RouteMatch,
    RouteRule,
    RouteTable,
    Service,
    ServicePort,
    ServiceRef,
    TrafficPolicy,
    WeightedBackend,
)

WEB = Service("web", "default", (ServicePort("http", 80, Protocol.HTTP1),))


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        pytest.param(TrafficPolicy(connect_timeout=math.nan), "connect_timeout must be a finite", id="nan"),
        pytest.param(TrafficPolicy(connect_timeout=math.inf), "connect_timeout must be a finite", id="inf"),
        pytest.param(
            TrafficPolicy(outlier_detection=OutlierDetection(interval=math.nan)), "interval must be a finite", id="od"
        ),
    ],
)
def test_non_finite_numbers_are_refused(policy: TrafficPolicy, expected: str) -> None:
    problems = Mesh.of([dataclasses.replace(WEB, policy=policy)]).problems()
    assert any(expected in str(problem) for problem in problems), problems


def test_empty_regex_is_refused() -> None:
    rule = RouteRule(RouteMatch(PathMatch(PathMatchKind.REGEX, "")), (WeightedBackend(ServiceRef("default", "web")),))
    problems = Mesh.of([WEB], [RouteTable("r", (rule,), service=WEB.ref)]).problems()
    assert any("regex must not be empty" in str(problem) for problem in problems), problems


def test_every_problem_is_listed_not_just_the_first() -> None:
    broken = dataclasses.replace(WEB, name="Bad_Name", ports=(ServicePort("http", 0),))
    problems = Mesh.of([broken]).problems()
    assert len(problems) == 2


def test_a_sites_devices_are_one_slice_of_the_mesh_in_site_then_id_order() -> None:
    devices = [
        Device(f"{kind}-{index}", kind, site, (DeviceEndpoint("10.0.0.1", 80),))
        for index, (kind, site) in enumerate(
            [("bike", "b"), ("tread", "a"), ("bike", "c"), ("row", "b"), ("bike", "a")]
        )
    ]
    mesh = Mesh.of([], devices=devices)
    assert [(d.site, d.id) for d in mesh.devices] == sorted((d.site, d.id) for d in devices)
    assert [d.id for d in mesh.devices_at("b")] == ["bike-0", "row-3"]
    assert [d.id for d in mesh.devices_at("a")] == ["bike-4", "tread-1"]
    assert mesh.devices_at("zz") == ()
    assert mesh.devices_at("") == ()
