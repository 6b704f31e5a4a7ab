"""Property tests for the policy-file parser: whatever the text, `parse_policy` returns (never raises),
every error points at `source:line:` (or `source:` for the whole file), and well-formed generated
documents come back as model objects without errors. `validate_policy` on a directory of fuzzed
files never raises either."""

from __future__ import annotations

import asyncio
import re
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshplane.discovery.policy_files import validate_policy
from meshplane.discovery.policy_schema import KEYS, parse_policy

SOURCE = "fuzz/policy.yaml"
ERROR = re.compile(rf"^{re.escape(SOURCE)}(:\d+)?: ")

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["1s", "250ms", "-1s", "1e999", "http", "ring_hash", "10.0.0.0/8", "::1", "", "~", "*"]),
)
ALL_KEYS = sorted({key for keys in KEYS.values() for key in keys})
keys = st.one_of(st.sampled_from(ALL_KEYS), st.text(max_size=10))


def values(depth: int = 3) -> st.SearchStrategy[Any]:
    if depth == 0:
        return scalars
    inner = values(depth - 1)
    return st.one_of(
        scalars,
        st.lists(inner, max_size=3),
        st.dictionaries(keys, inner, max_size=4),
    )


# Structured but wrong: the real sections, each holding lists of mappings of real keys, random values.
structured = st.dictionaries(
    st.sampled_from(KEYS["document"]),
    st.one_of(values(1), st.lists(st.dictionaries(keys, values(2), max_size=6), max_size=3)),
    max_size=4,
)


def check(text: str) -> None:
    parsed = parse_policy(text, SOURCE)
    for error in parsed.errors:
        assert ERROR.match(error), error


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_arbitrary_text_never_raises(text: str) -> None:
    check(text)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                "services:",
                "- ",
                "  ",
                "name: a",
                "port: 80",
                ": ",
                "{",
                "[",
                "&a",
                "*a",
                "!!python/object:os.system",
                "---",
                "\n",
                "\t",
                '"',
                "'",
                "|",
                ">",
                "? ",
                "%YAML 1.1",
            ]
        ),
        max_size=30,
    )
)
def test_yaml_looking_text_never_raises(parts: list[str]) -> None:
    check("".join(parts))


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(structured)
def test_structured_but_wrong_documents_never_raise(document: dict[str, Any]) -> None:
    check(yaml.safe_dump(document, allow_unicode=True))


names = st.from_regex(r"\A[a-z][a-z0-9-]{0,14}[a-z0-9]\Z")
octets = st.integers(min_value=1, max_value=254)


@st.composite
def valid_documents(draw: st.DrawFn) -> dict[str, Any]:
    service_names = draw(st.lists(names, min_size=1, max_size=4, unique=True))
    services = []
    for index, name in enumerate(service_names):
        service: dict[str, Any] = {
            "name": name,
            "port": draw(st.integers(min_value=1, max_value=65535)),
            "protocol": draw(st.sampled_from(["http1", "http2", "grpc", "tcp"])),
            "endpoints": [
                {"address": f"10.{index}.{draw(octets)}.{i + 1}", "weight": draw(st.integers(1, 100))}
                for i in range(draw(st.integers(0, 3)))
            ],
        }
        if draw(st.booleans()):
            service["policy"] = {
                "connect_timeout": draw(st.sampled_from(["250ms", "1s", "2m", 1.5])),
                "load_balancing": draw(st.sampled_from(["round_robin", "least_request", "random"])),
                "circuit_breakers": {"max_connections": draw(st.integers(1, 10_000))},
            }
        services.append(service)
    return {"services": services}


@settings(max_examples=100, deadline=None)
@given(valid_documents())
def test_valid_documents_round_trip(document: dict[str, Any]) -> None:
    parsed = parse_policy(yaml.safe_dump(document), SOURCE)
    assert parsed.errors == ()
    assert [service.name for service in parsed.services] == [s["name"] for s in document["services"]]
    for service, spec in zip(parsed.services, document["services"], strict=True):
        assert [port.port for port in service.ports] == [spec["port"]]
        assert [e.address for e in service.endpoints] == [e["address"] for e in spec["endpoints"]]
        assert service.origin.startswith(f"{SOURCE}:")
        assert service.problems() == []
        if "policy" in spec:
            assert (
                service.policy.circuit_breakers.max_connections == spec["policy"]["circuit_breakers"]["max_connections"]
            )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.text(max_size=200), structured.map(yaml.safe_dump)), min_size=1, max_size=4))
def test_validate_policy_on_fuzzed_directory_never_raises(texts: list[str]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        for index, text in enumerate(texts):
            (root / f"p{index}.yaml").write_text(text, encoding="utf-8", errors="surrogatepass")
        errors = asyncio.run(validate_policy(root))
        assert all(isinstance(error, str) and error for error in errors)
