"""The gRPC side of the conformance harness, quickly: the generated echo code is what its one
command makes now, the gRPC echo stand-in answers as echo-basic's gRPC mode does (over a real
grpc.aio connection), a Deployment in gRPC mode gets one with an h2c EndpointSlice, gRPC cases are
validated, and answers and weighted spreads are judged as upstream's grpc utilities judge them.
The calls through a real Envoy are the cases' own (`python -m tests.conformance --profile
GATEWAY-GRPC`; two of them in test_conformance_subset.py).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from tests.conformance.cases import CaseError, GrpcRequest, load_case
from tests.conformance.cluster import BASE_MANIFESTS, endpoint_slices, load_manifests, start_stand_ins
from tests.conformance.echo import EchoBackend, EchoFleet, Identity
from tests.conformance.grpc_echo import full_method, start_grpc_echo
from tests.conformance.grpcecho.grpcecho_pb2 import Assertions, Context, EchoResponse
from tests.conformance.runner import GrpcAnswer, compare_grpc, send_grpc, weight_problems
from tests.envoy_harness import REPO
from tests.k8s.gateway_api_crds import GATEWAY_API_MISSING
from tests.ports import free_port
from tests.preconditions import require

NAMESPACE = "gateway-conformance-infra"


def test_generated_code_is_current(tmp_path: Path) -> None:
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.fail("grpcio-tools is missing: pip install -e '.[dev]'")
    result = subprocess.run(
        [sys.executable, "-m", "tests.conformance.generate_grpcecho", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    folder = Path("tests") / "conformance" / "grpcecho"
    fresh = {p.name: p.read_bytes() for p in (tmp_path / folder).glob("*.py")}
    committed = {p.name: p.read_bytes() for p in (REPO / folder).glob("*.py")}
    assert sorted(fresh) == sorted(committed), "files differ; run `python -m tests.conformance.generate_grpcecho`"
    stale = sorted(name for name in fresh if fresh[name] != committed[name])
    assert stale == [], f"generated code is stale; run `python -m tests.conformance.generate_grpcecho`: {stale}"


def test_the_generated_code_keeps_upstreams_names_on_the_wire() -> None:
    from tests.conformance.grpcecho import grpcecho_pb2

    service = grpcecho_pb2.DESCRIPTOR.services_by_name["GrpcEcho"]
    assert service.full_name == "gateway_api_conformance.echo_basic.grpcecho.GrpcEcho"
    assert [m.name for m in service.methods] == ["Echo", "EchoTwo", "EchoThree"]
    assert full_method("EchoTwo") == "/gateway_api_conformance.echo_basic.grpcecho.GrpcEcho/EchoTwo"


@pytest.fixture
async def grpc_echo() -> AsyncIterator[EchoBackend]:
    async with EchoFleet() as fleet:
        yield await start_grpc_echo(
            fleet, Identity(NAMESPACE, "grpc-infra-backend-v1", "grpc-infra-backend-v1"), "127.0.0.9", free_port()
        )


def target(backend: EchoBackend) -> str:
    return f"{backend.address}:{backend.port}"


async def test_the_grpc_echo_answers_echo_and_echo_two_with_the_calls_assertions(grpc_echo: EchoBackend) -> None:
    for method in ("Echo", "EchoTwo"):
        answer = await send_grpc(target(grpc_echo), "echo.example", GrpcRequest(method, (("Version", "one"),)))
        assert answer.code == "OK", answer
        assert answer.response is not None
        assertions = answer.response.assertions
        assert assertions.fully_qualified_method == f"/gateway_api_conformance.echo_basic.grpcecho.GrpcEcho/{method}"
        assert (assertions.context.namespace, assertions.context.pod) == (
            NAMESPACE,
            "grpc-infra-backend-v1-meshplane-0",
        )
        # Metadata names arrive lower-case, as Go's metadata.New sends them.
        assert ("version", "one") in [(h.key, h.value) for h in assertions.headers]
    assert [r.path for r in grpc_echo.received] == [full_method("Echo"), full_method("EchoTwo")]
    assert grpc_echo.count == 2


async def test_echo_three_is_unimplemented_as_upstream_leaves_it(grpc_echo: EchoBackend) -> None:
    answer = await send_grpc(target(grpc_echo), "echo.example", GrpcRequest("EchoThree"))
    assert answer.code == "UNIMPLEMENTED", answer
    assert compare_grpc(GrpcRequest("EchoThree", code="UNIMPLEMENTED"), answer) == ""


async def test_a_deployment_in_grpc_mode_gets_a_grpc_stand_in_behind_an_h2c_endpoint_slice() -> None:
    require(GATEWAY_API_MISSING)
    base = load_manifests(BASE_MANIFESTS, "meshplane")
    grpc_objects = [o for o in base if o["metadata"]["name"] == "grpc-infra-backend-v2"]
    assert {o["kind"] for o in grpc_objects} == {"Deployment", "Service"}
    async with EchoFleet() as fleet:
        addresses = iter(["127.0.0.9"])
        (stand_in,) = await start_stand_ins(fleet, grpc_objects, addresses)
        (slice_,) = endpoint_slices(grpc_objects, [stand_in])
        assert slice_["ports"] == [
            {"name": "", "port": stand_in.port, "protocol": "TCP", "appProtocol": "kubernetes.io/h2c"}
        ]
        assert slice_["endpoints"] == [{"addresses": ["127.0.0.9"], "conditions": {"ready": True}}]
        answer = await send_grpc(f"127.0.0.9:{stand_in.port}", "echo.example", GrpcRequest("Echo"))
        assert compare_grpc(GrpcRequest("Echo", backend="grpc-infra-backend-v2", namespace=NAMESPACE), answer) == ""


def answered(
    method: str = "Echo", namespace: str = NAMESPACE, pod: str = "grpc-infra-backend-v1-meshplane-0"
) -> GrpcAnswer:
    assertions = Assertions(fully_qualified_method=full_method(method), context=Context(namespace=namespace, pod=pod))
    return GrpcAnswer("OK", EchoResponse(assertions=assertions))


@pytest.mark.parametrize(
    ("rpc", "answer", "difference"),
    [
        (GrpcRequest("Echo", backend="grpc-infra-backend-v1", namespace=NAMESPACE), answered(), ""),
        (GrpcRequest("EchoThree", code="UNIMPLEMENTED"), GrpcAnswer("UNIMPLEMENTED", None, "no route"), ""),
        (
            GrpcRequest("EchoThree", code="UNIMPLEMENTED"),
            answered("EchoThree"),
            "expected status code to be UNIMPLEMENTED, but got OK",
        ),
        (
            GrpcRequest("Echo", backend="grpc-infra-backend-v1"),
            GrpcAnswer("UNAVAILABLE", None, "no healthy upstream"),
            "expected status code to be OK, but got UNAVAILABLE (no healthy upstream)",
        ),
        (
            GrpcRequest("EchoTwo", backend="grpc-infra-backend-v1"),
            answered("Echo"),
            "expected path to be /gateway_api_conformance.echo_basic.grpcecho.GrpcEcho/EchoTwo",
        ),
        (GrpcRequest("Echo", namespace="other"), answered(), f"expected namespace to be other, got {NAMESPACE}"),
        (GrpcRequest("Echo"), answered(namespace="any"), ""),
        (
            GrpcRequest("Echo", backend="grpc-infra-backend-v2"),
            answered(),
            "expected pod name to start with grpc-infra-backend-v2, got grpc-infra-backend-v1-meshplane-0",
        ),
    ],
    ids=[
        "backend-answers",
        "unimplemented-expected",
        "ok-where-unimplemented-expected",
        "unavailable-where-ok-expected",
        "wrong-method",
        "wrong-namespace",
        "namespace-not-expected",
        "wrong-backend",
    ],
)
def test_grpc_answers_compare_as_upstream_compares_them(rpc: GrpcRequest, answer: GrpcAnswer, difference: str) -> None:
    found = compare_grpc(rpc, answer)
    assert found.startswith(difference) if difference else found == "", found


WEIGHTS = {"v1": 0.7, "v2": 0.3, "v3": 0.0}


@pytest.mark.parametrize(
    ("seen", "problems"),
    [
        ({"v1": 350, "v2": 150}, []),
        ({"v1": 370, "v2": 130}, []),
        ({"v1": 390, "v2": 110}, ["backend 'v1' got 0.780", "backend 'v2' got 0.220"]),
        ({"v1": 349, "v2": 150, "v3": 1}, ["expected only 2 backends to receive traffic"]),
        ({"v1": 500}, ["expected only 2 backends", "backend 'v1' got 1.000", "backend 'v2' got 0.000"]),
    ],
    ids=["exact", "within-tolerance", "outside-tolerance", "zero-weight-backend-answered", "one-backend-only"],
)
def test_a_weighted_spread_is_judged_as_upstream_judges_it(seen: dict[str, int], problems: list[str]) -> None:
    found = weight_problems(seen, WEIGHTS, 500, 0.05)
    assert len(found) == len(problems), found
    assert all(got.startswith(want) for got, want in zip(found, problems, strict=True)), found


def test_a_bad_grpc_case_is_refused_with_every_problem_and_where(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    distribution = {"gateway": "ns/gw", "total": 10, "concurrency": 1, "tolerance": 0.05, "attempts": 1}
    bad.write_text(
        "# a bad gRPC case\n"
        + yaml.safe_dump(
            {
                "test": "Bad",
                "upstream": "conformance/tests/bad.go",
                "profiles": ["GATEWAY-GRPC"],
                "features": ["Gateway", "GRPCRoute"],
                "manifests": [],
                "steps": [
                    {
                        "grpc_requests": {
                            "gateway": "ns/gw",
                            "cases": [
                                {"method": "EchoFour"},
                                {"method": "Echo", "code": "NOPE", "path": "/x"},
                                {"method": "Echo", "metadata": ["not", "a", "mapping"]},
                            ],
                        }
                    },
                    {"grpc_requests": {"gateway": "ns/gw", "cases": []}},
                    {"grpc_distribution": {**distribution, "weights": {"a": 1.0}, "request": "Echo"}},
                ],
            }
        )
    )
    with pytest.raises(CaseError) as refused:
        load_case(bad)
    message = str(refused.value)
    for reason in (
        "steps[0].grpc_requests.cases[0]: method must be one of ['Echo', 'EchoTwo', 'EchoThree'], not 'EchoFour'",
        "steps[0].grpc_requests.cases[1]: unknown keys ['path']",
        "steps[0].grpc_requests.cases[1]: code 'NOPE' is not a gRPC status name",
        "steps[0].grpc_requests.cases[2].metadata: must be a mapping of names to strings",
        "steps[1].grpc_requests.cases: a non-empty list",
        "steps[2].grpc_distribution.request: a gRPC request is a mapping",
    ):
        assert f"{bad}: {reason}" in message, message
