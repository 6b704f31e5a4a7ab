"""The conformance harness itself, quickly: the echo stand-ins answer as echo-basic does, every
case file loads and names manifests and objects upstream has, the list of upstream tests is
complete, the runner compares responses as upstream's CompareRequest does, and the cluster state
gives every base Service its EndpointSlice on a real kube-apiserver. Not the full run (that needs
the Gateway translation): `python -m tests.conformance` does that.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.conformance.cases import (
    CaseError,
    ExpectedRequest,
    GrpcRequest,
    Redirect,
    RequestCase,
    load_case,
    load_cases,
    named_objects,
)
from tests.conformance.cluster import (
    BASE_MANIFESTS,
    CONFORMANCE,
    OWN_MANIFESTS,
    SUITE_SECRETS,
    ClusterState,
    absent_objects,
    endpoint_slices,
    gateway_class,
    is_own_manifest,
    load_manifests,
    loopback_addresses,
    manifest_path,
    namespaces_of,
    serves_grpc,
    start_stand_ins,
    suite_secrets,
)
from tests.conformance.echo import (
    KEPT_REQUESTS,
    EchoBackend,
    EchoFleet,
    Identity,
    Received,
    canonical_header,
    parse_go_duration,
)
from tests.conformance.runner import Captured, Result, compare, compare_grpc, send_grpc, table
from tests.k8s.gateway_api_crds import GATEWAY_API_MISSING, apply_standard_crds
from tests.k8s.real_apiserver import KUBE_MISSING, Cluster, call_ok, module_cluster
from tests.ports import free_port
from tests.preconditions import require, requires

UPSTREAM_LIST = Path(__file__).resolve().parent / "upstream_tests.yaml"
# Route kinds outside the profiles this harness covers (GATEWAY-HTTP, GATEWAY-GRPC, MESH-HTTP).
OTHER_PROFILES = ("tcproute-", "tlsroute-", "udproute-")


@pytest.fixture
async def echo() -> AsyncIterator[EchoBackend]:
    async with EchoFleet() as fleet:
        yield await fleet.start(
            Identity("gateway-conformance-infra", "infra-backend-v1", "infra-backend-v1"), "127.0.0.9", free_port()
        )


async def get(backend: EchoBackend, path: str, headers: list[tuple[str, str]] | None = None) -> aiohttp.ClientResponse:
    async with aiohttp.ClientSession() as session:
        url = f"http://{backend.address}:{backend.port}{path}"
        async with session.get(url, headers=headers or []) as response:
            await response.read()
            return response


async def test_the_echo_answers_in_echo_basic_json_shape(echo: EchoBackend) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"http://{echo.address}:{echo.port}/some/path?x=1&y=2",
            headers=[("Host", "example.com"), ("x-lower-case", "a"), ("Version", "one"), ("Version", "two")],
        ) as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("application/json")
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        document = json.loads(await response.read())
    assert list(document) == [
        "path",
        "host",
        "method",
        "proto",
        "headers",
        "namespace",
        "ingress",
        "service",
        "pod",
        "sni",
    ]
    assert document["path"] == "/some/path?x=1&y=2"
    assert document["host"] == "example.com"
    assert (document["method"], document["proto"]) == ("GET", "HTTP/1.1")
    assert document["headers"]["X-Lower-Case"] == ["a"]
    assert document["headers"]["Version"] == ["one", "two"]
    assert "Host" not in document["headers"]
    assert document["namespace"] == "gateway-conformance-infra"
    assert document["service"] == "infra-backend-v1"
    assert document["pod"].startswith("infra-backend-v1-")
    assert [r.path for r in echo.received] == ["/some/path?x=1&y=2"]


async def test_the_echo_sets_the_response_headers_x_echo_set_header_asks_for(echo: EchoBackend) -> None:
    response = await get(
        echo,
        "/",
        [("X-Echo-Set-Header", "X-Foo: bar,x-two:2"), ("X-Echo-Set-Header", "X-Foo:baz"), ("X-Echo-Set-Header", "")],
    )
    assert response.status == 200
    assert response.headers["X-Foo"] == "bar,baz"
    assert response.headers["x-two"] == "2"


async def test_the_echo_answers_status_paths_and_health(echo: EchoBackend) -> None:
    assert (await get(echo, "/status/418")).status == 418
    assert (await get(echo, "/status/abc")).status == 400
    assert (await get(echo, "/status/201?x=1")).status == 400  # echo-basic matches the whole request URI
    health = await get(echo, "/health")
    assert health.status == 200


async def test_the_echo_delays_on_request_and_refuses_a_bad_delay_with_a_reason(echo: EchoBackend) -> None:
    assert (await get(echo, "/?delay=10ms")).status == 200
    async with aiohttp.ClientSession() as session:
        for delay, reason in (("soon", "invalid duration"), ("2h", "above this echo server's limit")):
            async with session.get(f"http://{echo.address}:{echo.port}/?delay={delay}") as response:
                assert response.status == 500
                assert reason in json.loads(await response.read())["message"]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0", 0.0), ("1s", 1.0), ("500ms", 0.5), ("1m30s", 90.0), ("1.5h", 5400.0), ("10us", 1e-5), ("-2s", -2.0)],
)
def test_go_durations_parse_as_go_parses_them(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1", "s", "1x", "1s2", "--1s"])
def test_a_bad_go_duration_is_refused_with_the_reason(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_go_duration(text)


@pytest.mark.parametrize(
    ("name", "canonical"), [("x-header-set", "X-Header-Set"), ("VERSION", "Version"), ("a b", "a b")]
)
def test_header_names_are_canonical_as_go_makes_them(name: str, canonical: str) -> None:
    assert canonical_header(name) == canonical


# ---- cases ---------------------------------------------------------------------------------------


MESH_NAMESPACE = "gateway-conformance-mesh"


def key(obj: dict[str, Any]) -> tuple[str, str]:
    return obj["kind"], f"{obj['metadata'].get('namespace', '')}/{obj['metadata']['name']}"


def is_mesh_test(upstream: str) -> bool:
    """A test of upstream's mesh suite (conformance/tests/mesh/*.go)."""
    return upstream.startswith("conformance/tests/mesh/")


def is_mesh_variant(manifest: Path) -> bool:
    """The shared copy keeps one file per name: for some tests that is upstream's mesh variant
    (tests/mesh/<name>.yaml, every object in the mesh namespace) rather than the Gateway one."""
    return namespaces_of(load_manifests(manifest, "meshplane")) == {MESH_NAMESPACE}


def test_every_case_loads_names_its_upstream_test_and_refers_to_manifests_and_objects_upstream_has() -> None:
    require(GATEWAY_API_MISSING)
    cases = load_cases()
    assert cases, "no case files"
    assert len({c.test for c in cases}) == len(cases), "two cases for one upstream test"
    base = load_manifests(BASE_MANIFESTS, "meshplane")
    for case in cases:
        # Named after its Go file, or (when one Go file holds several tests) after its manifest;
        # a mesh test's (conformance/tests/mesh/) with `mesh-` before, unless the name has it.
        names = {Path(case.upstream).stem, *(Path(m).stem for m in case.manifests)}
        if is_mesh_test(case.upstream):
            names = {name if name.startswith("mesh-") else f"mesh-{name}" for name in names}
        assert case.path.stem in names, f"{case.path}: not named after {case.upstream} or its manifests"
        objects = list(base)
        for manifest in case.manifests:
            assert manifest_path(manifest).is_file(), f"{case.path}: {manifest} is not upstream's"
            objects += load_manifests(manifest_path(manifest), "meshplane")
        absent = absent_objects(named_objects(case), objects)
        if not any(step.kind == "patch" for step in case.steps):
            # The listeners a step expects are the Gateway's own (a case that patches may add some).
            for step in (s for s in case.steps if s.kind == "listeners"):
                gateway = next(o for o in objects if ("Gateway", step.spec["gateway"]) == key(o))
                declared = {listener["name"] for listener in gateway["spec"]["listeners"]}
                expected = {listener["name"] for listener in step.spec["listeners"]}
                assert expected == declared, (case.path, step.spec["gateway"], expected, declared)
        # Either every object a step names is applied, or the shared copy holds the mesh variant of
        # the manifest (the runner reports such a case as not supported, saying so).
        assert not absent or all(is_mesh_variant(manifest_path(m)) for m in case.manifests), (case.path, absent)


def test_our_manifests_stand_only_for_mesh_variants_and_say_so() -> None:
    require(GATEWAY_API_MISSING)
    ours = sorted(OWN_MANIFESTS.glob("*.yaml"))
    assert ours, "no manifests of our own"
    used = {manifest_path(m) for case in load_cases() for m in case.manifests if is_own_manifest(m)}
    for manifest in ours:
        # The shared copy's file of that name is the mesh variant: ours is the Gateway variant.
        assert is_mesh_variant(CONFORMANCE / "tests" / manifest.name), manifest
        assert namespaces_of(load_manifests(manifest, "meshplane")) == {"gateway-conformance-infra"}, manifest
        assert manifest.read_text().startswith("# Ours, not upstream's file: the Gateway variant of "), manifest
        assert manifest in used, f"{manifest}: no case applies it"


def test_the_table_marks_the_tests_that_applied_our_manifests() -> None:
    results = [
        Result("A", ["GATEWAY-HTTP"], ["Gateway"], "passed", own_manifests=["manifests/a.yaml"]),
        Result("B", ["GATEWAY-HTTP"], ["Gateway"], "passed"),
    ]
    lines = table(results).splitlines()
    assert lines[1].startswith("A *")
    assert lines[2].startswith("B ")
    assert lines[-1].startswith("* applies our own Gateway-variant manifests")


def test_a_bad_case_file_is_refused_with_every_problem_and_where(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "test": "X",
                "upstream": "somewhere/x.go",
                "profiles": ["GATEWAY-FTP"],
                "features": ["Gateway"],
                "manifests": [],
                "extra": 1,
                "steps": [
                    {"accepted": {"gateway": "no-namespace", "routes": []}},
                    {"requests": {"gateway": "a/b", "cases": [{"path": "relative", "status": 200}]}},
                    {
                        "route_condition": {
                            "route": "a/r",
                            "gateway": "a/b",
                            "condition": {"type": "Accepted", "status": False},
                        }
                    },
                    {"teleport": {}},
                ],
            }
        )
    )
    with pytest.raises(CaseError) as refused:
        load_case(bad)
    message = str(refused.value)
    for reason in (
        "the first line must be a `# one-line summary`",
        "unknown keys ['extra']",
        "profiles: ['GATEWAY-FTP']",
        "upstream: 'somewhere/x.go' is not conformance/tests/<name>.go",
        "steps[0].accepted.gateway: 'no-namespace' is not NAMESPACE/NAME",
        "steps[1].requests.cases[0]: path must start with /",
        "steps[2].route_condition.condition: status False is not True, False or Unknown",
        "steps[3]: unknown step 'teleport'",
    ):
        assert f"{bad}: {reason}" in message, message


def test_the_list_names_every_upstream_test_file_of_the_profiles_and_which_have_cases() -> None:
    require(GATEWAY_API_MISSING)
    listed = yaml.safe_load(UPSTREAM_LIST.read_text())["tests"]
    upstream = {p.name for p in (CONFORMANCE / "tests").glob("*.yaml") if not p.name.startswith(OTHER_PROFILES)}
    # A mesh test's manifest has its Gateway namesake's name in the shared copy: the Gateway test's
    # entry is the one checked against it (mesh tests' entries come first, so they are overwritten).
    by_manifest = {
        manifest: entry
        for entry in sorted(listed, key=lambda entry: is_mesh_test(entry["upstream"]), reverse=True)
        for manifest in entry["manifests"]
    }
    assert set(by_manifest) == upstream, (sorted(upstream - set(by_manifest)), sorted(set(by_manifest) - upstream))
    for manifest, entry in by_manifest.items():
        mesh_only = is_mesh_variant(CONFORMANCE / "tests" / manifest) and not manifest.startswith("mesh-")
        assert entry.get("shared_copy") == ("mesh variant only" if mesh_only else None), manifest
    cases = {case.test: case for case in load_cases()}
    for entry in listed:
        assert set(entry["profiles"]) <= {"GATEWAY-HTTP", "GATEWAY-GRPC", "MESH-HTTP"}, entry
        # Upstream's mesh tests, and they only, are MESH-HTTP's; each applies the mesh variant.
        assert ("MESH-HTTP" in entry["profiles"]) == is_mesh_test(entry["upstream"]), entry["test"]
        if is_mesh_test(entry["upstream"]):
            mesh = {MESH_NAMESPACE, f"{MESH_NAMESPACE}-consumer"}
            for manifest in entry["manifests"]:
                assert namespaces_of(load_manifests(CONFORMANCE / "tests" / manifest, "meshplane")) <= mesh, manifest
        assert entry["features"], entry
        assert entry["case"] == (entry["test"] in cases), f"{entry['test']}: `case` says {entry['case']}"
        if entry["case"]:
            case = cases[entry["test"]]
            assert sorted(case.features) == sorted(entry["features"]), entry["test"]
            assert sorted(Path(m).name for m in case.manifests) == sorted(entry["manifests"]), entry["test"]
            assert case.upstream == entry["upstream"], entry["test"]
    assert set(cases) <= {entry["test"] for entry in listed}, "a case for a test the list does not name"


# ---- comparing responses -------------------------------------------------------------------------


def echoed(**changes: Any) -> dict[str, Any]:
    document = {
        "path": "/",
        "host": "127.0.0.200",
        "method": "GET",
        "headers": {},
        "namespace": "ns",
        "pod": "v1-meshplane-0",
    }
    return {**document, **changes}


@pytest.mark.parametrize(
    ("case", "captured", "difference"),
    [
        (RequestCase("/", backend="v1", namespace="ns"), Captured(200, {}, echoed(), ""), ""),
        (RequestCase("/", status=404), Captured(404, {}, None, ""), ""),
        (RequestCase("/", status=504), Captured(408, {}, None, ""), ""),
        (
            RequestCase("/", backend="v2", namespace="ns"),
            Captured(200, {}, echoed(), ""),
            "expected pod name to start with v2",
        ),
        (
            RequestCase("/", namespace="other"),
            Captured(200, {}, echoed(), ""),
            "expected namespace to be other, got ns",
        ),
        (RequestCase("/", status=500), Captured(200, {}, echoed(), ""), "expected status code to be 500, got 200"),
        (
            RequestCase("/", headers=(("Version", "one"),), namespace="ns"),
            Captured(200, {}, echoed(headers={"Version": ["two"]}), ""),
            "expected Version header to be set to one, got two",
        ),
        (
            RequestCase("/", namespace="ns", response_absent_headers=("X-Gone",)),
            Captured(200, {"x-gone": ["1"]}, echoed(), ""),
            "expected X-Gone response header to not be set",
        ),
        (
            RequestCase("/a", status=302, redirect=Redirect(host="example.org")),
            Captured(302, {}, None, "http://example.org/a"),
            "",
        ),
        (
            RequestCase("/a", status=302, redirect=Redirect(host="example.org")),
            Captured(302, {}, None, "http://example.org:8080/a"),
            "for http scheme, expected redirected port to be 80 or not set",
        ),
        (
            RequestCase("/a?q=1", status=301, redirect=Redirect(host="")),
            Captured(301, {}, None, "http://127.0.0.200/b"),
            "expected redirected path to be '/a', got '/b'",
        ),
        (RequestCase("/", statuses=(200, 204), status=204), Captured(204, {}, None, ""), ""),
        (
            RequestCase("/", statuses=(200, 204), status=204),
            Captured(403, {}, None, ""),
            "expected status code to be one of [200, 204, 204], got 403",
        ),
        (
            RequestCase(
                "/",
                method="OPTIONS",
                expected_request=ExpectedRequest(method="OPTIONS"),
                response_header_values=(("Access-Control-Allow-Methods", ("GET, OPTIONS", "OPTIONS, GET")),),
                ignore_whitespace=True,
            ),
            Captured(200, {"access-control-allow-methods": ["OPTIONS,GET"]}, None, ""),
            "",
        ),
        (
            RequestCase("/", response_header_values=(("Allow", ("GET, OPTIONS",)),), namespace="ns"),
            Captured(200, {"allow": ["GET,OPTIONS"]}, echoed(), ""),
            "expected Allow response header to be one of ['GET, OPTIONS'], got GET,OPTIONS",
        ),
        (
            RequestCase("/", namespace="ns"),
            Captured(200, {}, None, ""),
            "expected path to be /, got ",
        ),
    ],
    ids=[
        "backend-answers",
        "404",
        "timeout-is-timeout",
        "wrong-backend",
        "wrong-namespace",
        "wrong-status",
        "request-header",
        "absent-response-header",
        "redirect-host",
        "redirect-port-defaults",
        "redirect-path-defaults-to-the-request-path",
        "one-of-several-statuses",
        "none-of-several-statuses",
        "preflight-without-echo-body-and-valid-values-ignoring-whitespace",
        "valid-values-minding-whitespace",
        "a-200-without-echo-body-where-a-backend-should-answer",
    ],
)
def test_responses_compare_as_upstream_compares_them(case: RequestCase, captured: Captured, difference: str) -> None:
    found = compare(case, captured, case.path)
    assert found.startswith(difference) if difference else found == "", found


def test_a_stand_in_counts_the_requests_for_a_path_since_a_point() -> None:
    backend = EchoBackend(Identity("ns", "v2"), "127.0.0.9", 3000)
    for path in ["/a", "/b", "/a", "/a"]:
        backend.count += 1
        backend.received.append(Received("GET", path, "h", (), backend.count))
    assert backend.received_since(0, "/a") == 3
    assert backend.received_since(2, "/a") == 2
    assert backend.received_since(4, "/a") == 0
    for _ in range(KEPT_REQUESTS):  # the window's start is no longer kept: no count rather than a wrong one
        backend.count += 1
        backend.received.append(Received("GET", "/c", "h", (), backend.count))
    assert backend.received_since(2, "/a") is None


def test_new_step_kinds_are_validated(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    step = {"gateway": "ns/gw", "request": {"path": "/"}, "total": 10, "concurrency": 1, "tolerance": 5}
    bad.write_text(
        "# a bad case\n"
        + yaml.safe_dump(
            {
                "test": "Bad",
                "upstream": "conformance/tests/bad.go",
                "profiles": ["GATEWAY-HTTP"],
                "features": ["Gateway"],
                "manifests": [],
                "steps": [
                    {"mirror_percentages": {**step, "attempts": 1, "mirrors": {"no-namespace": 150}}},
                    {"backend_header": {"gateway": "ns/gw", "request": {"path": "/"}, "total": 3}},
                    {"requests": {"gateway": "ns/gw", "cases": [{"path": "/", "statuses": [200, 999]}]}},
                ],
            }
        )
    )
    with pytest.raises(CaseError) as refused:
        load_case(bad)
    message = str(refused.value)
    for reason in (
        "steps[0].mirror_percentages.mirrors: 'no-namespace' is not NAMESPACE/NAME",
        "steps[0].mirror_percentages.mirrors[no-namespace]: 150 is not a percent above 0",
        "steps[1].backend_header: missing ['header']",
        "steps[2].requests.cases[0]: status 999 is not an HTTP status code",
    ):
        assert f"{bad}: {reason}" in message, message


# ---- the cluster state, on a real API server ----------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from module_cluster(tmp_path_factory.mktemp("conformance-cluster"), uncached=False)


@requires(KUBE_MISSING)
@pytest.mark.xdist_group("kube-apiserver")
@pytest.mark.timeout(240)
async def test_the_cluster_state_gives_every_base_service_an_endpoint_slice_to_its_stand_in(cluster: Cluster) -> None:
    require(GATEWAY_API_MISSING)
    assert cluster.cached is not None
    client = cluster.cached.client()
    try:
        state = ClusterState(client)
        await apply_standard_crds(client)
        await state.apply([gateway_class("meshplane")])
        base = load_manifests(BASE_MANIFESTS, "meshplane")
        applied = await state.apply(base)
        assert applied.skipped == []
        secrets = suite_secrets()
        await state.apply(secrets)
        for namespace, name, _ in SUITE_SECRETS:
            secret = await call_ok(client, "GET", f"/api/v1/namespaces/{namespace}/secrets/{name}")
            assert secret["type"] == "kubernetes.io/tls"
            assert base64.b64decode(secret["data"]["tls.crt"]).startswith(b"-----BEGIN CERTIFICATE-----")
        async with EchoFleet() as fleet:
            stand_ins = await start_stand_ins(fleet, base, loopback_addresses(10), secrets)
            await state.apply(endpoint_slices(base, stand_ins))
            namespaces = (await call_ok(client, "GET", "/api/v1/namespaces"))["items"]
            for namespace in namespaces:
                if namespace["metadata"]["name"].startswith("gateway-conformance-"):
                    assert (
                        namespace["metadata"]["labels"]["kubernetes.io/metadata.name"] == namespace["metadata"]["name"]
                    )
            stored = (await call_ok(client, "GET", "/apis/discovery.k8s.io/v1beta1/endpointslices"))["items"]
            by_service = {
                (s["metadata"]["namespace"], s["metadata"]["labels"]["kubernetes.io/service-name"]): s for s in stored
            }
            services = [o for o in base if o["kind"] == "Service"]
            assert {(s["metadata"]["namespace"], s["metadata"]["name"]) for s in services} == set(by_service)
            async with aiohttp.ClientSession() as session:
                for service in services:
                    namespace, name = service["metadata"]["namespace"], service["metadata"]["name"]
                    slice_ = by_service[(namespace, name)]
                    backend = fleet.backends.get((namespace, name))
                    targets_http = any(
                        p.get("targetPort") == 3000 and p.get("protocol", "TCP") == "TCP"
                        for p in service["spec"]["ports"]
                    )
                    stand_in = next((s for s in stand_ins if backend and s.address == backend.address), None)
                    if backend is None or stand_in is None or not targets_http:
                        # The tls-backend Services target only echo-basic's TLS port (tls_echo.py).
                        tls_port = stand_in.real_port(8443) if stand_in is not None else None
                        if tls_port is not None and [p["port"] for p in slice_["ports"]] == [tls_port]:
                            continue
                        assert slice_["endpoints"] in ([], None), (namespace, name, slice_)
                        continue
                    assert [e["addresses"] for e in slice_["endpoints"]] == [[backend.address]]
                    assert backend.port in {p["port"] for p in slice_["ports"]}
                    # The slice leads to a live stand-in of the right Deployment (gRPC for one in gRPC mode).
                    deployment = next(o for o in base if key(o) == ("Deployment", f"{namespace}/{name}"))
                    if serves_grpc(deployment):
                        answer = await send_grpc(f"{backend.address}:{backend.port}", name, GrpcRequest("Echo"))
                        assert compare_grpc(GrpcRequest("Echo", backend=name, namespace=namespace), answer) == ""
                        continue
                    async with session.get(f"http://{backend.address}:{backend.port}/") as response:
                        document = json.loads(await response.read())
                    assert (document["namespace"], document["pod"].startswith(name)) == (namespace, True)
            first = by_service[("gateway-conformance-infra", "infra-backend-v1")]
            # first-port and third-port target echo-basic's HTTP port; second-port its h2c port
            # (3001), served on another port (h2c_echo.py).
            ports = {p["name"]: p["port"] for p in first["ports"]}
            assert sorted(ports) == ["first-port", "second-port", "third-port"]
            assert ports["first-port"] == ports["third-port"] != ports["second-port"]
    finally:
        await client.close()
