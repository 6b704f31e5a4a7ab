"""Whatever bytes a client POSTs to the registry's JSON port (a real aiohttp server on 127.0.0.1,
raw HTTP/1.1 over a socket), the answer is never a 5xx and always the JSON error shape with a
reason: bytes that are not UTF-8, JSON that is not an object, oversized bodies, deep nesting."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.edge_http_server import OPS_TOKEN, RunningRegistry, post, read_answer, registry_in_thread

PATHS = ["/v1/register", "/v1/heartbeat", "/v1/deregister"]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    with registry_in_thread(tmp_path_factory.mktemp("registry")) as running:
        yield running


def assert_refused_with_reason(status: int, body: bytes) -> dict[str, str]:
    assert 400 <= status < 500, (status, body[:300])
    error = json.loads(body)
    assert isinstance(error, dict), body
    assert error["code"], error
    assert isinstance(error["message"], str), error
    assert error["message"].strip(), error
    return error


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param(b'{"device_id": "\xff\xfe"}', "not UTF-8", id="invalid-utf8-in-a-string"),
        pytest.param(b"\xc3\x28", "not UTF-8", id="invalid-utf8-sequence"),
        pytest.param(b"\xed\xa0\x80", "not UTF-8", id="utf8-encoded-surrogate"),
        pytest.param('{"device_id": "ä"}'.encode("latin-1"), "not UTF-8", id="latin-1"),
        pytest.param('{"device_id": "bike"}'.encode("utf-16"), "not UTF-8", id="utf-16"),
        pytest.param(b"\xef\xbb\xbf{}", "malformed JSON body", id="byte-order-mark"),
        pytest.param(b"[" * 50_000, "malformed JSON body", id="nested-arrays"),
        pytest.param(b'{"labels": ' * 5_000 + b"1" + b"}" * 5_000, "malformed JSON body", id="nested-objects"),
        pytest.param(b'{"device_id": "a", "device_id": "b"}', "appears twice", id="duplicate-key"),
        pytest.param(b'{"nope": 1}', "malformed JSON body", id="unknown-field"),
        pytest.param(b'{"ttl_seconds": "x"}', "malformed JSON body", id="wrong-type"),
    ],
)
def test_undecodable_bodies_are_refused_with_a_reason(registry: RunningRegistry, body: bytes, reason: str) -> None:
    answer = post(registry.http_port, "/v1/register", body)
    assert answer.status == 400, answer
    error = assert_refused_with_reason(answer.status, answer.body)
    assert error["code"] == "INVALID_ARGUMENT"
    assert reason in error["message"]


@pytest.mark.parametrize("body", ['"h"', "1", "-2.5e3", "[]", '[{"device_id": "bike-1"}]', "null", "true"])
@pytest.mark.parametrize("path", PATHS)
def test_a_body_that_is_not_a_json_object_is_refused(registry: RunningRegistry, path: str, body: str) -> None:
    answer = post(registry.http_port, path, body.encode())
    assert answer.status == 400, answer
    error = answer.json()
    assert error["code"] == "INVALID_ARGUMENT"
    assert "the body must be a JSON object" in error["message"]
    assert "has no field named" not in error["message"]


def test_an_oversized_body_is_refused_before_it_is_read(registry: RunningRegistry) -> None:
    answer = post(registry.http_port, "/v1/register", b"{" + b" " * 70_000 + b"}")
    assert answer.status == 413
    error = answer.json()
    assert error["code"] == "RESOURCE_EXHAUSTED"
    assert "65536 bytes" in error["message"]


def test_unknown_paths_and_methods_answer_the_json_error_shape(registry: RunningRegistry) -> None:
    missing = post(registry.http_port, "/v1/nothing", b"{}")
    assert (missing.status, missing.json()["code"]) == (404, "NOT_FOUND")
    wrong = post(registry.http_port, "/v1/devices", b"{}")
    assert (wrong.status, wrong.json()["code"]) == (405, "UNIMPLEMENTED")


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(b"GET /v1/devices/\xff\xfe HTTP/1.1\r\nHost: r\r\n\r\n", id="bytes-in-the-path"),
        pytest.param(b"GET /v1/devices HTTP/1.1\r\nHost: r\r\nX-\x00: 1\r\n\r\n", id="nul-in-a-header-name"),
        pytest.param(b"GET /v1/devices HTTP/1.1\r\nHost: r\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", id="huge-header"),
        pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", id="tls-hello"),
        pytest.param(b"POST /v1/register HTTP/1.1\r\nContent-Length: x\r\n\r\n", id="bad-content-length"),
    ],
)
def test_unparsable_http_is_refused_in_the_json_shape(registry: RunningRegistry, request_bytes: bytes) -> None:
    """What aiohttp refuses before any route sees it answers like every other error (not text/plain)."""
    with socket.create_connection(("127.0.0.1", registry.http_port), timeout=30) as sock:
        sock.sendall(request_bytes)
        answer = read_answer(sock)
    assert answer.status == 400, answer
    error = assert_refused_with_reason(answer.status, answer.body)
    assert error["code"] == "INVALID_ARGUMENT"
    assert error["message"].startswith("malformed HTTP request"), error


@pytest.mark.parametrize(
    "target", ["/v1/devices/%ff", "/v1/devices?label=%ff", "/v1/devices?label=" + "a" * 4000, "/v1/watch?label=x%0a"]
)
def test_odd_request_targets_answer_the_json_shape(registry: RunningRegistry, target: str) -> None:
    with socket.create_connection(("127.0.0.1", registry.http_port), timeout=30) as sock:
        sock.sendall(
            f"GET {target} HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer {OPS_TOKEN}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        answer = read_answer(sock)
    error = assert_refused_with_reason(answer.status, answer.body)
    assert len(error["message"]) < 300, error


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
field_names = st.sampled_from(
    ["device_id", "deviceId", "device_class", "site", "endpoints", "labels", "version", "ttl_seconds", "lease_id"]
)
near_valid = st.dictionaries(field_names, json_values, max_size=6).map(lambda d: json.dumps(d).encode())
VALID_BODIES = [
    json.dumps(
        {
            "device_id": "bike-1",
            "device_class": "bike",
            "site": "gym-berlin",
            "endpoints": [{"address": "10.20.1.5", "port": 8080}],
            "labels": {"zone": "cardio"},
            "ttl_seconds": 30,
        }
    ).encode(),
    b'{"deviceId": "bike-1", "leaseId": "0123456789abcdef"}',
    b'{"device_id": "bike-1", "lease_id": ""}',
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid body with a few of its bytes replaced, inserted or deleted (any byte value)."""
    body = bytearray(draw(st.sampled_from(VALID_BODIES)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(body)))
        edit = draw(st.sampled_from(["replace", "insert", "delete"]))
        if edit == "insert" or not body:
            body[at:at] = draw(st.binary(min_size=1, max_size=3))
        elif edit == "replace":
            body[min(at, len(body) - 1)] = draw(st.integers(0, 255))
        else:
            del body[min(at, len(body) - 1)]
    return bytes(body)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    path=st.sampled_from(PATHS),
    body=st.one_of(
        st.binary(max_size=512),
        mutated(),
        near_valid,
        near_valid.map(lambda b: b.replace(b'"', b"\xff", 1)),
        st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
        json_values.map(lambda v: json.dumps(v).encode()),
    ),
)
def test_any_bytes_get_an_answer_never_a_server_error(registry: RunningRegistry, path: str, body: bytes) -> None:
    answer = post(registry.http_port, path, body)
    assert answer.status < 500, (answer, body)
    if answer.status >= 400:
        assert_refused_with_reason(answer.status, answer.body)
    else:
        assert isinstance(answer.json(), dict)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    prefix=st.sampled_from([b"/v1/devices/", b"/v1/devices?label=", b"/v1/devices?site=", b"/v1/", b""]),
    junk=st.binary(max_size=200).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
)
def test_any_request_target_gets_an_answer_never_a_server_error(
    registry: RunningRegistry, prefix: bytes, junk: bytes
) -> None:
    """Bytes in the request line (not only in the body): parsed or not, the answer is JSON."""
    with socket.create_connection(("127.0.0.1", registry.http_port), timeout=30) as sock:
        sock.sendall(
            b"GET "
            + prefix
            + junk
            + b" HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer "
            + OPS_TOKEN.encode()
            + b"\r\nConnection: close\r\n\r\n"
        )
        answer = read_answer(sock)
    assert answer.status < 500, (answer, junk)
    if answer.status >= 400:
        assert_refused_with_reason(answer.status, answer.body)
    else:
        assert isinstance(answer.json(), dict)


def test_the_fixture_registry_is_real(tmp_path: Path) -> None:
    """The fuzz above is only as good as its target: a valid body registers through the same path."""
    with registry_in_thread(tmp_path) as running:
        body = {
            "device_id": "bike-1",
            "device_class": "bike",
            "site": "gym-berlin",
            "endpoints": [{"address": "10.20.1.5", "port": 8080}],
        }
        answer = post(running.http_port, "/v1/register", json.dumps(body).encode())
        assert answer.status == 200, answer
        assert answer.json()["lease_id"]
