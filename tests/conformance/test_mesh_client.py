"""The MESH-HTTP part of the harness, quickly: mesh requests compare as upstream's mesh client
compares them, a request goes to the sidecar (or, naming a pod, to its stand-in) with the Host
upstream sends, the mesh steps are validated, and the mesh's pods get stand-ins and EndpointSlices
on echo-advanced's HTTP ports. The end-to-end run is test_conformance_subset.py's.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conformance.cases import CaseError, ExpectedRequest, RequestCase, load_case
from tests.conformance.cluster import endpoint_slices, load_manifests, loopback_addresses
from tests.conformance.echo import EchoBackend, EchoFleet, Identity
from tests.conformance.mesh_client import (
    MESH_HTTP_PORTS,
    MESH_MANIFESTS,
    MeshClient,
    compare_mesh,
    mesh_target,
    start_mesh_stand_ins,
)


def echoed(pod: str = "echo-v1-meshplane-0", **headers: list[str]) -> dict[str, Any]:
    return {"pod": pod, "headers": dict(headers), "path": "/ignored", "host": "ignored", "namespace": "ignored"}


@pytest.mark.parametrize(
    ("case", "status", "response_headers", "echo", "difference"),
    [
        pytest.param(RequestCase("/", backend="echo-v1"), 200, {}, echoed(), "", id="ok-path-host-namespace-unread"),
        pytest.param(RequestCase("/"), 404, {}, None, "wanted status code to be one of [200], got 404", id="status"),
        pytest.param(RequestCase("/", status=302), 302, {}, None, "", id="redirect-status-only"),
        pytest.param(
            RequestCase("/", backend="echo-v2"),
            200,
            {},
            echoed(),
            "expected pod name to start with echo-v2, got echo-v1-meshplane-0",
            id="pod",
        ),
        pytest.param(
            RequestCase("/", response_headers=(("X-Header-Set", "v1"),)),
            200,
            {"x-header-set": ["v1", "later"]},
            echoed(),
            "",
            id="response-header-first-value",
        ),
        pytest.param(
            RequestCase("/", response_headers=(("X-Header-Set", "v1"),)),
            200,
            {},
            echoed(),
            "expected header X-Header-Set=v1, got ",
            id="response-header-missing",
        ),
        pytest.param(
            RequestCase("/", response_absent_headers=("X-Header-Set",)),
            200,
            {"x-header-set": ["set"]},
            echoed(),
            "expected no header 'X-Header-Set', got ['set']",
            id="response-header-present",
        ),
        pytest.param(
            RequestCase("/", expected_request=ExpectedRequest(headers=(("X-Add", "a,b"),))),
            200,
            {},
            echoed(**{"X-Add": ["a", "b"]}),
            "",
            id="request-header-values-joined",
        ),
        pytest.param(
            RequestCase("/", expected_request=ExpectedRequest(absent_headers=("x-gone",))),
            200,
            {},
            echoed(**{"X-Gone": ["v"]}),
            "expected x-gone header to not be set, got ['v']",
            id="request-header-present",
        ),
        pytest.param(
            RequestCase("/", expected_request=ExpectedRequest(headers=(("X-Add", "a"),))),
            200,
            {},
            None,
            "no headers captured, expected 1",
            id="request-headers-not-captured",
        ),
    ],
)
def test_mesh_answers_compare_as_upstreams_mesh_client_compares(
    case: RequestCase, status: int, response_headers: dict[str, list[str]], echo: Any, difference: str
) -> None:
    assert compare_mesh(case, status, response_headers, echo) == difference


def client() -> MeshClient:
    return MeshClient("gateway-conformance-mesh", 15001, subprocess.Popen(["true"]), Path("log"))


def test_a_request_goes_to_the_sidecar_with_the_tests_host_or_to_the_pod_it_names() -> None:
    backends = {("mesh", "echo-v2"): EchoBackend(Identity("mesh", "echo-v2"), "127.0.0.12", 40000)}
    sidecar = client()
    assert mesh_target(RequestCase("/"), sidecar, backends)[:2] == ("127.0.0.1:15001", "echo")
    assert mesh_target(RequestCase("/", host="echo-v1:8080"), sidecar, backends)[:2] == (
        "127.0.0.1:15001",
        "echo-v1:8080",
    )
    # A Host among the headers replaces the URL's host, as curl's -H does, and is sent once.
    authority, host, sent = mesh_target(
        RequestCase("/", host="echo-v2", headers=(("Host", "echo-v1"), ("X-A", "b"))), sidecar, backends
    )
    assert (authority, host, sent.headers) == ("127.0.0.1:15001", "echo-v1", (("X-A", "b"),))
    # A pod's address: straight to its stand-in, with the pod's address and port as the Host.
    to_pod = RequestCase("/", pod="mesh/echo-v2", pod_port=8080)
    assert mesh_target(to_pod, sidecar, backends)[:2] == ("127.0.0.12:40000", "127.0.0.12:8080")
    with pytest.raises(LookupError, match="no stand-in for the pod of mesh/echo-v9"):
        mesh_target(RequestCase("/", pod="mesh/echo-v9", pod_port=80), sidecar, backends)
    sidecar.process.wait()


def test_mesh_steps_are_validated(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    distribution = {"request": {"path": "/"}, "total": 5, "concurrency": 1, "tolerance": 0.1, "attempts": 1}
    bad.write_text(
        "# a bad mesh case\n"
        + yaml.safe_dump(
            {
                "test": "Bad",
                "upstream": "conformance/tests/mesh/bad.go",
                "profiles": ["MESH-HTTP"],
                "features": ["Mesh"],
                "manifests": [],
                "steps": [
                    {"mesh_requests": {"client": "Not/A-Namespace", "cases": [{"path": "/", "pod": "no-slash"}]}},
                    {"mesh_distribution": {"client": "mesh", **distribution}},
                    {"requests": {"gateway": "ns/gw", "cases": [{"path": "/", "pod": "ns/p", "pod_port": 80}]}},
                    {"mesh_requests": {"client": "mesh", "cases": [{"path": "/", "pod_port": 80}]}},
                ],
            }
        )
    )
    with pytest.raises(CaseError) as refused:
        load_case(bad)
    message = str(refused.value)
    for reason in (
        "steps[0].mesh_requests.client: the client pod's namespace, not 'Not/A-Namespace'",
        "steps[0].mesh_requests.cases[0].pod: 'no-slash' is not NAMESPACE/NAME",
        "steps[0].mesh_requests.cases[0].pod_port: the pod's port the request names, not 0",
        "steps[1].mesh_distribution: missing ['weights']",
        "steps[2].requests: `pod` is for mesh requests only",
        "steps[3].mesh_requests.cases[0].pod_port: only with `pod`",
    ):
        assert f"{bad}: {reason}" in message, message


async def test_the_mesh_pods_are_stood_in_on_one_port_and_get_slices_on_their_http_ports() -> None:
    objects = load_manifests(MESH_MANIFESTS, "meshplane")
    async with EchoFleet() as fleet:
        stand_ins = await start_mesh_stand_ins(fleet, objects, loopback_addresses(240))
        pods = sorted((s.namespace, s.labels["version"]) for s in stand_ins)
        assert pods == [
            ("gateway-conformance-mesh", "v1"),
            ("gateway-conformance-mesh", "v2"),
            ("gateway-conformance-mesh-consumer", "v1"),
        ]
        assert len({s.port for s in stand_ins}) == 1
        assert all(s.target_ports == MESH_HTTP_PORTS for s in stand_ins)
        slices = {s["metadata"]["name"]: s for s in endpoint_slices(objects, stand_ins)}
        echo = slices["echo-stand-in"]  # the Service selecting both versions
        assert len(echo["endpoints"]) == 2
        # echo-advanced's HTTP ports reach the stand-ins; https, tcp and grpc are not served.
        assert sorted((p["name"], p["port"]) for p in echo["ports"]) == [
            ("http", stand_ins[0].port),
            ("http-alt", stand_ins[0].port),
        ]
        # Started once: a second look starts none.
        assert await start_mesh_stand_ins(fleet, objects, loopback_addresses(245)) == []
