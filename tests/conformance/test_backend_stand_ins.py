"""The harness's h2c and TLS stand-ins, the suite's backend TLS objects, and the case keys they need.

- The h2c port answers HTTP/2 with prior knowledge in echo-basic's JSON (proto HTTP/2.0, the
  :authority as host), counts what it receives, and closes a connection that speaks HTTP/1.1.
- The TLS port presents the Secret's certificate, which the suite's CA ConfigMap verifies for
  exactly the names the tests need and the mismatched CA does not, and echoes the SNI it was sent.
- A Service's ports reach the stand-in's HTTP, h2c or TLS port by their targetPort.
- Cases: `sni`, `fails`, `protocol`, `policy_condition` and `websocket` parse, with reasons when wrong.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from tests.conformance.cases import CaseError, RequestCase, load_case, named_objects, parse_request
from tests.conformance.cluster import (
    BASE_MANIFESTS,
    StandIn,
    endpoint_slice,
    load_manifests,
    manifest_path,
    stand_in_identity,
)
from tests.conformance.echo import EchoBackend, EchoFleet, Identity
from tests.conformance.h2c_echo import H2C_PORT, h2c_request, serve_h2c
from tests.conformance.runner import Captured, compare
from tests.conformance.tls_echo import (
    CA_CONFIG_MAP,
    MISMATCH_CA_CONFIG_MAP,
    SERVER_NAMES,
    SERVER_SECRET,
    TLS_PORT,
    backend_tls_objects,
    key_pairs,
    serve_tls,
    tls_secret_name,
)
from tests.ports import free_port

DEADLINE = 10.0  # seconds for one request to a local stand-in
IDENTITY = Identity("gateway-conformance-infra", "tls-backend", "tls-backend")


@pytest.fixture
async def fleet() -> AsyncIterator[EchoFleet]:
    async with EchoFleet() as started:
        yield started


async def test_the_h2c_port_answers_prior_knowledge_requests_in_echo_basic_json(fleet: EchoFleet) -> None:
    backend = await fleet.start(IDENTITY, "127.0.0.9", free_port())
    port = free_port()
    await serve_h2c(fleet, backend, port)
    async with asyncio.timeout(DEADLINE):
        answer = await h2c_request(
            backend.address, port, "GET", "gw.example:80", "/h2c?x=1", [("x-echo-set-header", "X-Set:1")]
        )
    assert answer.status == 200
    assert answer.headers["x-set"] == ["1"]
    document = json.loads(answer.body)
    assert (document["proto"], document["host"], document["path"], document["method"]) == (
        "HTTP/2.0",
        "gw.example:80",
        "/h2c?x=1",
        "GET",
    )
    assert document["pod"].startswith("tls-backend")
    assert document["namespace"] == IDENTITY.namespace
    assert document["headers"]["X-Echo-Set-Header"] == ["X-Set:1"]
    assert backend.count == 1
    assert backend.received[-1].path == "/h2c?x=1"


async def test_the_h2c_port_closes_a_connection_speaking_http1(fleet: EchoFleet) -> None:
    backend = await fleet.start(IDENTITY, "127.0.0.9", free_port())
    port = free_port()
    await serve_h2c(fleet, backend, port)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=DEADLINE)) as session:
        with pytest.raises(aiohttp.ClientError):
            async with session.get(f"http://{backend.address}:{port}/") as response:
                await response.read()
    assert backend.count == 0


def objects_by_name() -> dict[str, dict[str, Any]]:
    return {obj["metadata"]["name"]: obj for obj in backend_tls_objects()}


def test_the_server_certificate_names_exactly_what_the_tests_need_and_its_ca_signed_it() -> None:
    found = objects_by_name()
    assert found[SERVER_SECRET]["type"] == "kubernetes.io/tls"
    pair = key_pairs([found[SERVER_SECRET]])[("gateway-conformance-infra", SERVER_SECRET)]
    certificate = x509.load_pem_x509_certificate(pair.certificate.encode())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(
        [*names.get_values_for_type(x509.DNSName), *names.get_values_for_type(x509.UniformResourceIdentifier)]
    ) == sorted(SERVER_NAMES)
    ca = x509.load_pem_x509_certificate(found[CA_CONFIG_MAP]["data"]["ca.crt"].encode())
    mismatch = x509.load_pem_x509_certificate(found[MISMATCH_CA_CONFIG_MAP]["data"]["ca.crt"].encode())
    certificate.verify_directly_issued_by(ca)
    assert mismatch.subject == ca.subject  # as upstream's: the same name, another key
    with pytest.raises(InvalidSignature):
        certificate.verify_directly_issued_by(mismatch)


def trusting(ca_pem: str, check_hostname: bool = True) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=ca_pem)
    context.check_hostname = check_hostname
    return context


async def tls_get(backend: EchoBackend, port: int, context: ssl.SSLContext, server_name: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=DEADLINE)) as session,
        session.get(f"https://{backend.address}:{port}/tls", ssl=context, server_hostname=server_name) as response,
    ):
        assert response.status == 200
        document: dict[str, Any] = json.loads(await response.read())
        return document


async def test_the_tls_port_presents_the_secret_and_echoes_the_sni(fleet: EchoFleet) -> None:
    found = objects_by_name()
    backend = await fleet.start(IDENTITY, "127.0.0.9", free_port())
    port = free_port()
    await serve_tls(fleet, backend, port, key_pairs([found[SERVER_SECRET]])[(IDENTITY.namespace, SERVER_SECRET)])
    ca = found[CA_CONFIG_MAP]["data"]["ca.crt"]
    for name in ("abc.example.com", "other.example.com"):
        document = await tls_get(backend, port, trusting(ca), name)
        assert (document["sni"], document["path"], document["proto"]) == (name, "/tls", "HTTP/1.1")
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await tls_get(backend, port, trusting(ca), "dce.example.com")
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await tls_get(backend, port, trusting(found[MISMATCH_CA_CONFIG_MAP]["data"]["ca.crt"]), "abc.example.com")
    assert backend.count == 2  # the refused handshakes never reached it


def test_a_tls_backend_deployment_serves_the_secret_it_mounts_and_client_certificate_mode_is_not_stood_in() -> None:
    base = {
        (o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o
        for o in load_manifests(BASE_MANIFESTS, "x")
    }
    tls_backend = base[("Deployment", "gateway-conformance-infra", "tls-backend")]
    assert tls_secret_name(tls_backend) == SERVER_SECRET
    assert tls_secret_name(base[("Deployment", "gateway-conformance-infra", "infra-backend-v1")]) is None
    client_cert = next(
        o
        for o in load_manifests(manifest_path("tests/gateway-tls-backend-client-certificate.yaml"), "x")
        if o["kind"] == "Deployment"
    )
    assert stand_in_identity(client_cert) is None


def test_each_service_port_reaches_the_stand_in_port_its_target_names() -> None:
    stand_in = StandIn("ns", {"app": "echo"}, "127.0.0.9", 4000, more_ports=((H2C_PORT, 4001), (TLS_PORT, 4443)))
    service = {
        "metadata": {"name": "echo", "namespace": "ns"},
        "spec": {
            "selector": {"app": "echo"},
            "ports": [
                {"name": "http", "port": 80, "targetPort": 3000},
                {"name": "h2c", "port": 81, "targetPort": 3001, "appProtocol": "kubernetes.io/h2c"},
                {"name": "https", "port": 443, "targetPort": 8443},
                {"name": "other", "port": 90, "targetPort": 9999},
            ],
        },
    }
    made = endpoint_slice(service, [stand_in])
    assert made is not None
    assert [(p["name"], p["port"], p.get("appProtocol")) for p in made["ports"]] == [
        ("http", 4000, None),
        ("h2c", 4001, "kubernetes.io/h2c"),
        ("https", 4443, None),
    ]
    without_tls = StandIn("ns", {"app": "echo"}, "127.0.0.10", 4000, more_ports=((H2C_PORT, 4001),))
    # Two pods of which one does not answer 8443: a slice's port is one number for every endpoint.
    both = endpoint_slice(service, [stand_in, without_tls])
    assert both is not None
    assert [p["name"] for p in both["ports"]] == ["http", "h2c"]


def write_case(tmp_path: Path, steps: list[Any]) -> Path:
    path = tmp_path / "case.yaml"
    body = {
        "test": "T",
        "upstream": "conformance/tests/t.go",
        "profiles": ["GATEWAY-HTTP"],
        "features": [],
        "manifests": [],
        "steps": steps,
    }
    path.write_text("# A case.\n" + yaml.safe_dump(body))
    return path


def test_the_new_request_keys_and_steps_parse(tmp_path: Path) -> None:
    case = load_case(
        write_case(
            tmp_path,
            [
                {"requests": {"gateway": "ns/gw", "cases": [{"path": "/", "sni": "a.example", "fails": True}]}},
                {"requests": {"gateway": "ns/gw", "cases": [{"path": "/", "protocol": "h2c"}]}},
                {
                    "policy_condition": {
                        "policy": "ns/p",
                        "gateway": "ns/gw",
                        "condition": {"type": "Accepted", "status": "True"},
                    }
                },
                {"websocket": {"gateway": "ns/gw", "path": "/ws", "text": "hi", "binary": [1, 2]}},
                {"latest_conditions": {"kind": "BackendTLSPolicy", "name": "ns/p"}},
            ],
        )
    )
    first, second = case.steps[0].requests[0], case.steps[1].requests[0]
    assert (first.sni, first.fails, first.backend_sees().sni, second.protocol) == (
        "a.example",
        True,
        "a.example",
        "h2c",
    )
    assert ("BackendTLSPolicy", "ns/p") in named_objects(case)


@pytest.mark.parametrize(
    ("step", "reason"),
    [
        ({"requests": {"gateway": "ns/gw", "cases": [{"path": "/", "protocol": "h3"}]}}, "'h3' is not one of"),
        ({"websocket": {"gateway": "ns/gw", "path": "/ws", "text": "hi", "binary": [256]}}, "a list of byte values"),
        (
            {"policy_condition": {"policy": "p", "gateway": "ns/gw", "condition": {"type": "A", "status": "True"}}},
            "is not NAMESPACE/NAME",
        ),
        ({"latest_conditions": {"kind": "Service", "name": "ns/p"}}, "BackendTLSPolicy"),
    ],
    ids=["unknown-protocol", "not-bytes", "policy-without-namespace", "latest-conditions-kind"],
)
def test_a_wrong_new_key_is_refused_with_a_reason(tmp_path: Path, step: dict[str, Any], reason: str) -> None:
    with pytest.raises(CaseError, match=reason):
        load_case(write_case(tmp_path, [step]))


def test_a_backend_sent_another_sni_is_a_mismatch() -> None:
    echo = {
        "path": "/",
        "host": "",
        "method": "GET",
        "namespace": "ns",
        "pod": "p-0",
        "headers": {},
        "sni": "b.example",
    }
    request = _request({"path": "/", "sni": "a.example", "namespace": "ns"})
    assert compare(request, Captured(200, {}, echo, ""), "/") == "expected SNI to be a.example, got b.example"
    assert compare(_request({"path": "/", "namespace": "ns"}), Captured(200, {}, echo, ""), "/") == ""


def _request(raw: dict[str, Any]) -> RequestCase:
    problems: list[str] = []
    parsed = parse_request(raw, "test", problems)
    assert parsed is not None
    assert not problems
    return parsed


def test_the_secret_round_trips_through_key_pairs() -> None:
    secret = objects_by_name()[SERVER_SECRET]
    pair = key_pairs([secret])[("gateway-conformance-infra", SERVER_SECRET)]
    assert base64.b64decode(secret["data"]["tls.crt"]).decode() == pair.certificate
    assert pair.key.startswith("-----BEGIN RSA PRIVATE KEY-----")
