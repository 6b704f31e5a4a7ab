"""Model validation that every source relies on, whatever it parses (files, annotations, registrations)."""

from __future__ import annotations

import dataclasses
import math

import pytest

from meshplane.model import (
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
    assert any(expected in problem for problem in problems), problems


def test_empty_regex_is_refused() -> None:
    rule = RouteRule(RouteMatch(PathMatch(PathMatchKind.REGEX, "")), (WeightedBackend(ServiceRef("default", "web")),))
    problems = Mesh.of([WEB], [RouteTable("r", (rule,), service=WEB.ref)]).problems()
    assert any("regex must not be empty" in problem for problem in problems), problems


def test_every_problem_is_listed_not_just_the_first() -> None:
    broken = dataclasses.replace(WEB, name="Bad_Name", ports=(ServicePort("http", 0),))
    problems = Mesh.of([broken]).problems()
    assert len(problems) == 2
