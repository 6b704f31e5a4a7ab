"""`meshplane.io/…` annotations: each valid one sets its policy; each invalid one is skipped with a reason."""

from __future__ import annotations

import pytest

from meshplane.discovery.kubernetes_annotations import parse_duration, policy_of
from meshplane.model import CircuitBreakers, HashKey, LoadBalancing, OutlierDetection, RetryPolicy, TrafficPolicy
from tests.k8s import objects as k


@pytest.mark.parametrize(
    ("text", "seconds"), [("250ms", 0.25), ("2s", 2.0), ("1.5", 1.5), ("1m", 60.0), (" 3s ", 3.0)], ids=str
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_no_annotations_is_the_default_policy() -> None:
    result = policy_of(k.service("web"))
    assert result.policy == TrafficPolicy()
    assert result.notes == ()


def test_every_annotation_applies() -> None:
    result = policy_of(
        k.service(
            "web",
            annotations={
                "meshplane.io/connect-timeout": "250ms",
                "meshplane.io/load-balancing": "ring_hash",
                "meshplane.io/hash-key": "header:X-User",
                "meshplane.io/locality-failover": "false",
                "meshplane.io/circuit-breakers": "max-connections=100, max-requests=1000",
                "meshplane.io/outlier-detection": "consecutive-5xx=3, interval=5s, base-ejection-time=1m",
                "meshplane.io/timeout": "5s",
                "meshplane.io/retries": "attempts=3, on=5xx|reset, per-try-timeout=500ms",
                "other.io/ignored": "x",
            },
        )
    )
    assert result.notes == ()
    assert result.policy == TrafficPolicy(
        connect_timeout=0.25,
        load_balancing=LoadBalancing.RING_HASH,
        hash_key=HashKey(header="x-user"),
        locality_failover=False,
        circuit_breakers=CircuitBreakers(max_connections=100, max_requests=1000),
        outlier_detection=OutlierDetection(consecutive_5xx=3, interval=5.0, base_ejection_time=60.0),
    )
    assert result.timeout == 5.0
    assert result.retry == RetryPolicy(on=("5xx", "reset"), attempts=3, per_try_timeout=0.5)


@pytest.mark.parametrize(
    ("annotations", "skipped", "reason"),
    [
        ({"connect-timeout": "soon"}, "connect-timeout", "not a duration"),
        ({"connect-timeout": "900s"}, "connect-timeout", "connect_timeout must be within"),
        ({"load-balancing": "fastest"}, "load-balancing", "expected one of"),
        ({"load-balancing": "maglev"}, "load-balancing", "needs a hash_key"),
        ({"hash-key": "header:x"}, "hash-key", "needs meshplane.io/load-balancing"),
        ({"load-balancing": "ring_hash", "hash-key": "body"}, "load-balancing", "expected header:"),
        ({"locality-failover": "maybe"}, "locality-failover", "not true or false"),
        ({"circuit-breakers": "max-connections=-1"}, "circuit-breakers", "not a non-negative integer"),
        ({"circuit-breakers": "max-pools=3"}, "circuit-breakers", "expected one of"),
        ({"outlier-detection": "max-ejection-percent=150"}, "outlier-detection", "within 0-100"),
        ({"timeout": "forever"}, "timeout", "not a duration"),
        ({"retries": "attempts=0"}, "retries", "at least 1"),
        ({"retries": "on=sometimes"}, "retries", "unknown retry condition"),
        ({"colour": "blue"}, "colour", "unknown meshplane annotation"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_an_invalid_annotation_is_skipped_with_a_reason_and_the_others_apply(
    annotations: dict[str, str], skipped: str, reason: str
) -> None:
    given = {f"meshplane.io/{key}": value for key, value in annotations.items()}
    given["meshplane.io/circuit-breakers"] = given.get("meshplane.io/circuit-breakers", "max-retries=7")
    result = policy_of(k.service("web", "shop", annotations=given))
    (note,) = [n for n in result.notes if f"meshplane.io/{skipped}=" in n]
    assert note.startswith("service shop/web: annotation ")
    assert reason in note
    assert note.endswith("; skipped")
    if skipped != "circuit-breakers":  # a valid neighbour still applies
        assert result.policy.circuit_breakers == CircuitBreakers(max_retries=7)
