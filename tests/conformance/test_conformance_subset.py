"""A few Gateway API conformance cases end to end, in `make test`, so a regression fails CI.

Runs `SUBSET` with the harness (tests/conformance/runner.py): a real kube-apiserver, the real
`meshplane serve --gateway-api` and real gateway Envoys, one run for all of them. The cases are
core ones and those of the fixes they guard: the Host header the backend sees (port included),
redirect ports, `timeouts.backendRequest`, listener isolation, a Gateway's parametersRef, one
of our own Gateway-variant manifests, 421 for misdirected HTTPS requests, a backendRef's own
request header changes, two mesh cases from real sidecars (a parentRef's port narrowing a mesh
route to it; a consumer route reaching its own namespace's clients only), and two GRPCRoute cases
sending real gRPC calls to the gRPC echo stand-ins (method and header matches, UNIMPLEMENTED where
none matches), a WebSocket upgrade through a gateway (gateway Envoys once answered 403), and a
BackendTLSPolicy's upstream TLS to a stand-in that checks SNI. The whole suite is `python -m tests.conformance`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.conformance.__main__ import all_features
from tests.conformance.runner import Options, run, table
from tests.k8s.gateway_api_crds import GATEWAY_API_MISSING
from tests.k8s.real_apiserver import KUBE_MISSING
from tests.preconditions import require, requires

SUBSET = (
    "HTTPRouteSimpleSameNamespace",
    "HTTPRouteHostnameIntersection",
    "HTTPRouteRedirectPortAndScheme",
    "HTTPRouteTimeoutBackendRequest",
    "GatewayHTTPListenerIsolation",
    "GatewayInvalidParametersRef",
    "HTTPRouteHTTPSListenerDetectMisdirectedRequests",
    "HTTPRouteRequestHeaderModifierBackendWeights",
    "MeshPorts",
    "MeshConsumerRoute",
    "GRPCExactMethodMatching",
    "GRPCRouteHeaderMatching",
    "HTTPRouteBackendProtocolWebSocket",
    "BackendTLSPolicy",
)


@pytest.mark.envoy
@pytest.mark.xdist_group("envoy")
@pytest.mark.timeout(300)
@requires(KUBE_MISSING or GATEWAY_API_MISSING)
def test_a_subset_of_the_conformance_cases_passes(tmp_path: Path) -> None:
    require(KUBE_MISSING or GATEWAY_API_MISSING)
    options = Options(workdir=tmp_path, features=all_features(), only=SUBSET)
    results = asyncio.run(run(options))
    assert sorted(result.test for result in results) == sorted(SUBSET)
    # The table shows every result with its reason (the first mismatch of a failure).
    assert all(result.result == "passed" for result in results), table(results)
