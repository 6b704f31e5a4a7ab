"""Gateway API documents in policy files: read by the Kubernetes source's own parsers, errors as
`file:line: reason`, resolved against the files' services; the precedence against Kubernetes'
Gateways; and the offline commands (`meshplane validate`, `meshplane config --config`), run as
processes as a user runs them."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from meshplane.discovery.gateway_api.objects import GatewayApiObjects
from meshplane.discovery.gateway_api.resolve import resolve
from meshplane.discovery.inventory import Contents, Inventory
from meshplane.discovery.policy_files import PolicyFileSource, check_policy
from meshplane.discovery.policy_schema import parse_policy
from meshplane.model import ProblemKind
from tests.envoy_harness import REPO

SERVICES = """\
services:
  - name: web
    namespace: shop
    port: 8080
    endpoints: [{address: 127.0.0.1, port: 9001}]
"""

GATEWAY = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: shop}
spec:
  gatewayClassName: meshplane
  listeners:
    - {name: http, port: 8000, protocol: HTTP}
"""

ROUTE = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: shop}
spec:
  parentRefs: [{name: edge}]
  rules:
    - backendRefs: [{name: web, port: 8080}]
"""


def policy(*documents: str) -> str:
    return "---\n".join(documents)


def meshplane(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshplane", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={key: value for key, value in os.environ.items() if not key.startswith("MESHPLANE_")},
        cwd=REPO,
    )


# --- the format ---


def test_gateway_api_documents_beside_policy_documents_in_one_file() -> None:
    parsed = parse_policy(policy(SERVICES, GATEWAY, ROUTE), "p.yaml")
    assert parsed.errors == ()
    assert [service.name for service in parsed.services] == ["web"]
    found = {(document.kind, document.key): document.origin for document in parsed.gateway_api}
    assert found == {("Gateway", ("shop", "edge")): "p.yaml:7", ("HTTPRoute", ("shop", "web")): "p.yaml:15"}


def test_the_parsers_problems_point_at_the_line_of_the_field() -> None:
    bad = GATEWAY.replace("port: 8000", "port: 70000")
    route = ROUTE + "      matches:\n        - path: {type: Bogus, value: /x}\n"
    parsed = parse_policy(policy(bad, route), "p.yaml")
    assert parsed.errors == (
        "p.yaml:7: Gateway shop/edge: spec.listeners[0].port: 70000 is not in 1..65535",
        "p.yaml:17: HTTPRoute shop/web: spec.rules[0].matches[0].path.type: 'Bogus' is not one of Exact, "
        "PathPrefix, RegularExpression",
    )


def test_a_namespace_defaults_to_default_and_a_gatewayclass_has_none() -> None:
    route = ROUTE.replace(", namespace: shop", "")
    klass = "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: c, namespace: x}\n"
    klass += "spec: {controllerName: example.com/c}\n"
    parsed = parse_policy(policy(route, klass), "p.yaml")
    assert [document.key for document in parsed.gateway_api] == [("default", "web"), ("", "c")]
    assert parsed.errors == ("p.yaml:11: GatewayClass is cluster-scoped: it has no namespace",)


def test_bad_gateway_api_documents_are_refused_with_a_reason() -> None:
    cases = {
        "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: Gateway\nmetadata: {name: a}\n": (
            "p.yaml:1: apiVersion must be gateway.networking.k8s.io/v1, not 'gateway.networking.k8s.io/v1beta1'"
        ),
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HttpRoute\nmetadata: {name: a}\n": (
            "p.yaml:2: unknown Gateway API kind 'HttpRoute' (did you mean 'HTTPRoute'?)"
        ),
        "apiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\nmetadata: {name: a}\n": (
            "p.yaml:2: BackendTLSPolicy is not read from policy files"
        ),
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {}\n": (
            "p.yaml:3: Gateway needs `metadata.name`"
        ),
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: Not_A_Name}\n": (
            "p.yaml:3: Gateway metadata.name 'Not_A_Name' is not a DNS subdomain name"
        ),
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: a}\nstatus: {}\n": (
            "p.yaml:4: unknown key 'status' in a Gateway API document "
            "(expected one of: apiVersion, kind, metadata, spec)"
        ),
    }
    for text, error in cases.items():
        parsed = parse_policy(text, "p.yaml")
        assert error in parsed.errors, (text, parsed.errors)


def test_a_deeply_nested_document_is_refused_not_a_crash() -> None:
    deep = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: a}\nspec: " + "[" * 40 + "]" * 40
    parsed = parse_policy(deep, "p.yaml")
    assert "p.yaml:1: Gateway a: nested deeper than 32 levels" in parsed.errors


# --- the source ---


def test_an_object_defined_twice_is_an_error_at_the_second(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(policy(SERVICES, GATEWAY, ROUTE))
    (tmp_path / "b.yaml").write_text(ROUTE)
    check = asyncio.run(check_policy(tmp_path))
    assert check.errors == (
        f"{tmp_path / 'b.yaml'}:1: HTTPRoute shop/web is defined already at {tmp_path / 'a.yaml'}:15",
    )


def test_the_files_gateways_are_served_with_the_implicit_class(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(policy(SERVICES, GATEWAY, ROUTE))
    source = PolicyFileSource(tmp_path)
    assert asyncio.run(source.load())
    assert source.mesh is not None
    (gateway,) = source.mesh.gateways
    assert gateway.key == "shop/edge"
    assert source.status.counts["gateways"] == 1
    route_status = source.gateway_status.http_routes[("shop", "web")]
    assert [(c.type, c.status) for c in route_status.parents[0].conditions] == [
        ("Accepted", "True"),
        ("ResolvedRefs", "True"),
    ]


def test_a_gateway_of_a_class_the_files_declare_for_another_controller_is_not_served(tmp_path: Path) -> None:
    klass = "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: other}\n"
    klass += "spec: {controllerName: example.com/other}\n"
    (tmp_path / "a.yaml").write_text(policy(SERVICES, klass, GATEWAY.replace("meshplane", "other"), ROUTE))
    check = asyncio.run(check_policy(tmp_path))
    assert check.errors == ()
    assert check.mesh.gateways == ()
    assert ("shop", "edge") not in check.gateway_status.gateways


# --- the merge ---


def _kubernetes_gateway_api() -> GatewayApiObjects:
    """The same Gateway shop/edge, from Kubernetes, with no route."""
    parsed = parse_policy(GATEWAY, "k8s.yaml")
    klass = parse_policy(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: meshplane}\n"
        "spec: {controllerName: meshplane.io/gateway-controller}\n",
        "k8s.yaml",
    )
    (gateway,) = parsed.gateway_api
    (gateway_class,) = klass.gateway_api
    return GatewayApiObjects(
        gateway_classes={gateway_class.key: gateway_class.parsed}, gateways={gateway.key: gateway.parsed}
    )


def test_a_gateway_both_sources_define_is_the_files_with_a_conflict(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(policy(SERVICES, GATEWAY, ROUTE))
    source = PolicyFileSource(tmp_path)
    asyncio.run(source.load())
    kubernetes = _kubernetes_gateway_api()
    assert resolve(kubernetes, "meshplane.io/gateway-controller", {}, frozenset()).gateways  # it would be served
    merged = Inventory().merge(Contents(files=source.mesh, gateway_api=kubernetes))
    (gateway,) = merged.mesh.gateways
    assert gateway == source.mesh.gateways[0] if source.mesh is not None else False
    (conflict,) = [problem for problem in merged.problems if problem.kind is ProblemKind.CONFLICT]
    assert conflict.subject == "Gateway shop/edge"
    assert "serving the policy files' definition" in conflict.message


# --- offline commands ---


def test_validate_shows_every_condition_and_fails_on_an_unresolved_backend(tmp_path: Path) -> None:
    route = ROUTE.replace("[{name: web, port: 8080}]", "[{name: web, port: 8080}, {name: nowhere, port: 80}]")
    (tmp_path / "a.yaml").write_text(policy(SERVICES, GATEWAY, route))
    result = meshplane("validate", "--config", str(tmp_path))
    assert result.returncode == 1, result.stderr
    assert result.stdout.splitlines() == [
        "GatewayClass meshplane",
        "  Accepted True (Accepted): meshplane accepts this class",
        "Gateway shop/edge",
        "  Accepted True (Accepted)",
        "  Programmed False (Pending): waiting for a gateway Envoy to take its listeners",
        "  listener http: attachedRoutes 1",
        "    Accepted True (Accepted)",
        "    ResolvedRefs True (ResolvedRefs)",
        "    Conflicted False (NoConflicts)",
        "    Programmed False (Pending): waiting for a gateway Envoy to take its listeners",
        "HTTPRoute shop/web",
        "  parent Gateway shop/edge",
        "    Accepted True (Accepted)",
        "    ResolvedRefs False (BackendNotFound): Service shop/nowhere is not found",
    ]
    assert "1 Gateway API condition(s) say a part is not served as written" in result.stderr


def test_validate_passes_good_gateway_api_documents_and_speaks_json(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(policy(SERVICES, GATEWAY, ROUTE))
    result = meshplane("validate", "--config", str(tmp_path), "-o", "json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    (parent,) = document["HTTPRoute"]["shop/web"]["parents"]
    assert parent["parentRef"] == {
        "group": "gateway.networking.k8s.io",
        "kind": "Gateway",
        "name": "edge",
        "namespace": "shop",
    }
    assert {c["type"]: c["status"] for c in parent["conditions"]} == {"Accepted": "True", "ResolvedRefs": "True"}
    assert document["Gateway"]["shop/edge"]["listeners"][0]["attachedRoutes"] == 1


def test_validate_reports_a_route_naming_no_served_gateway(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(policy(SERVICES, ROUTE))
    result = meshplane("validate", "--config", str(tmp_path))
    assert result.returncode == 1
    assert "HTTPRoute shop/web\n  not served: its parentRefs name no Gateway meshplane serves" in result.stdout


def test_validate_refuses_a_broken_gateway_api_document_with_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(policy(SERVICES, GATEWAY.replace("port: 8000", "port: 0"), ROUTE))
    result = meshplane("validate", "--config", str(tmp_path))
    assert result.returncode == 1
    assert f"{tmp_path / 'a.yaml'}:13: Gateway shop/edge: spec.listeners[0].port: 0 is not in 1..65535" in result.stderr


def test_config_previews_a_gateway_proxy_offline(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(policy(SERVICES, GATEWAY, ROUTE))
    result = meshplane(
        "config", "--config", str(tmp_path), "--gateway", "shop/edge", "--port-offset", "1000", "-o", "json"
    )
    assert result.returncode == 0, result.stderr
    dump = json.loads(result.stdout)
    assert dump["group_fields"]["gateway"] == "shop/edge"
    (listener,) = dump["types"]["LDS"]["resources"]
    address = listener["resource"]["address"]["socket_address"]
    assert address["port_value"] == 9000  # the listener's 8000 plus the offset
    clusters = [resource["name"] for resource in dump["types"]["CDS"]["resources"]]
    assert clusters == ["web.shop:8080"]


def test_config_offline_refuses_bad_input_with_exit_codes(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(policy(SERVICES, GATEWAY.replace("port: 8000", "port: 0")))
    broken = meshplane("config", "--config", str(tmp_path), "--gateway", "shop/edge")
    assert broken.returncode == 1
    assert "nothing would be served from it" in broken.stderr
    (tmp_path / "a.yaml").write_text(policy(SERVICES, GATEWAY))
    bad_name = meshplane("config", "--config", str(tmp_path), "--gateway", "Shop/Edge!")
    assert bad_name.returncode == 2
    assert "is not namespace/name of a Gateway" in bad_name.stderr
    wrong_role = meshplane("config", "--config", str(tmp_path), "--role", "sidecar", "--gateway", "shop/edge")
    assert wrong_role.returncode == 2
    assert "--gateway is for --role gateway" in wrong_role.stderr
