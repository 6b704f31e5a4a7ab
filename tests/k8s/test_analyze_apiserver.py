"""`meshplane analyze --kubernetes` against a real kube-apiserver (1.20, watch cache on) holding
meshplane's CRDs and the Gateway API's: a clean namespace exits 0; each kind of problem is named
with its object and the reason, and exits 1; a server that cannot be read exits 2 with the reason;
a second API server of the cluster, without any CRD, gives one warning per API and exits 0.

Each case has a namespace of its own and analyzes only it (`--namespace`), so the cases do not see
each other's objects; EdgeSites, cluster-scoped, are deleted by the case that makes them. The
command runs in-process (`analyze_command`) where its output is checked, and as `python -m
meshplane analyze` where the exit status of the real command line is.
"""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient

from meshplane.discovery.analyze import analyze_command
from tests.k8s import objects as k
from tests.k8s.gateway_api_crds import GROUP
from tests.k8s.gateway_api_fixtures import V1, cluster_fixtures
from tests.k8s.meshplane_api_fixtures import admin_of_both_apis, create, delete, namespace
from tests.k8s.real_apiserver import ADMIN_TOKEN, KUBE_MISSING, MESHPLANE_TOKEN, REPO, Cluster, RealApiServer, call_ok
from tests.meshplane_env import without_meshplane_variables
from tests.ports import free_port
from tests.preconditions import requires

pytestmark = [pytest.mark.xdist_group("kube-apiserver"), pytest.mark.timeout(240), requires(KUBE_MISSING)]

cluster, server = cluster_fixtures("kube-analyze")
__all__ = ["admin_of_both_apis"]  # the `admin` fixture, found by pytest under that name


@pytest.fixture
def kubeconfig(server: RealApiServer, tmp_path: Path) -> Path:
    return server.kubeconfig(tmp_path / "kubeconfig", ADMIN_TOKEN)


async def analyzed(kubeconfig: Path, namespace: str, output: str = "text") -> tuple[int, str, str]:
    """`meshplane analyze --kubernetes --context real --namespace NAMESPACE`: exit, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    code = await analyze_command(kubeconfig, "real", [namespace], output, out, err)
    return code, out.getvalue(), err.getvalue()


def command(*args: str) -> subprocess.CompletedProcess[str]:
    """The real command line, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "meshplane", "analyze", "--kubernetes", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=without_meshplane_variables(),
    )


async def web_service(admin: ApiClient, where: str) -> None:
    """A Service `web` (port 80) with one ready endpoint, as a cluster's controllers would leave it."""
    body = k.service("web", where, ports=[k.port("http", 80, target=8080)])
    del body["spec"]["clusterIP"]
    await call_ok(admin, "POST", f"/api/v1/namespaces/{where}/services", body)
    slice_ = k.endpoint_slice(
        "web-1", "web", where, [k.endpoint("10.1.0.5")], ports=[("http", 8080)], api_version="discovery.k8s.io/v1beta1"
    )
    await call_ok(admin, "POST", f"/apis/discovery.k8s.io/v1beta1/namespaces/{where}/endpointslices", slice_)


def external(address: str = "192.0.2.10") -> dict[str, Any]:
    return {"port": 8080, "endpoints": [{"address": address}]}


def on_web(**policy: Any) -> dict[str, Any]:
    return {"target_refs": [{"group": "", "kind": "Service", "name": "web"}], **policy}


async def test_a_clean_namespace_exits_0(admin: ApiClient, kubeconfig: Path) -> None:
    where = await namespace(admin, "clean")
    await web_service(admin, where)
    await create(admin, "ExternalService", "payments", where, external())
    await create(admin, "TrafficPolicy", "web", where, on_web(connect_timeout="250ms"))
    await create(
        admin, "MeshRoute", "payments", where, {"service": f"{where}/payments", "rules": [{"to": ["payments"]}]}
    )
    code, out, err = await analyzed(kubeconfig, where)
    assert (code, err) == (0, ""), (out, err)
    assert "errors" not in out, out
    assert out.endswith("0 error(s), 0 warning(s)\n"), out


async def test_a_meshroute_to_a_missing_service_is_named(admin: ApiClient, kubeconfig: Path) -> None:
    where = await namespace(admin, "missing-service")
    await create(admin, "MeshRoute", "orders", where, {"service": f"{where}/orders", "rules": [{"to": ["orders"]}]})
    code, out, _ = await analyzed(kubeconfig, where)
    assert code == 1, out
    assert f"  MeshRoute {where}/orders\n" in out, out
    assert f"unknown service {where}/orders" in out, out


async def test_two_traffic_policies_on_one_service_name_the_one_left_out(admin: ApiClient, kubeconfig: Path) -> None:
    where = await namespace(admin, "two-policies")
    await web_service(admin, where)
    await create(admin, "TrafficPolicy", "first", where, on_web(connect_timeout="1s"))
    await create(admin, "TrafficPolicy", "second", where, on_web(connect_timeout="2s"))
    code, out, _ = await analyzed(kubeconfig, where)
    assert code == 1, out
    assert f"  TrafficPolicy {where}/second\n    Accepted False (Conflicted): " in out, out
    assert f"TrafficPolicy {where}/first\n" not in out


async def test_overlapping_edge_site_device_ranges_are_named(admin: ApiClient, kubeconfig: Path) -> None:
    where = await namespace(admin, "sites")
    sites = {"berlin": "10.40.0.0/16", "potsdam": "10.40.8.0/24"}
    try:
        for name, device_range in sites.items():
            spec = {"region": "eu-central", "gateways": ["10.9.0.2:15080"], "device_ranges": [device_range]}
            await create(admin, "EdgeSite", name, "", spec)
        code, out, _ = await analyzed(kubeconfig, where)
    finally:
        for name in sites:
            await delete(admin, "EdgeSite", name)
    assert code == 1, out
    # The merge's problem (serving says the same), on both sites.
    assert "  EdgeSite potsdam\n    site potsdam (EdgeSite potsdam): device range 10.40.8.0/24 overlaps" in out
    assert "  EdgeSite berlin\n    site berlin (EdgeSite berlin): device range 10.40.0.0/16 overlaps" in out


async def test_an_httproute_with_a_missing_backend_is_named(admin: ApiClient, kubeconfig: Path) -> None:
    where = await namespace(admin, "missing-backend")
    gateway = {"gatewayClassName": "meshplane", "listeners": [{"name": "http", "port": 8080, "protocol": "HTTP"}]}
    await call_ok(
        admin, "POST", f"{V1}/namespaces/{where}/gateways",
        {"apiVersion": f"{GROUP}/v1", "kind": "Gateway", "metadata": {"name": "edge"}, "spec": gateway},
    )  # fmt: skip
    route = {"parentRefs": [{"name": "edge"}], "rules": [{"backendRefs": [{"name": "nowhere", "port": 80}]}]}
    await call_ok(
        admin, "POST", f"{V1}/namespaces/{where}/httproutes",
        {"apiVersion": f"{GROUP}/v1", "kind": "HTTPRoute", "metadata": {"name": "shop"}, "spec": route},
    )  # fmt: skip
    code, out, _ = await analyzed(kubeconfig, where)
    assert code == 1, out
    assert f"  HTTPRoute {where}/shop\n" in out, out
    assert "ResolvedRefs False (BackendNotFound)" in out, out


async def test_a_bad_value_the_schema_lets_through_is_named_with_its_field(admin: ApiClient, kubeconfig: Path) -> None:
    where = await namespace(admin, "bad-value")
    await web_service(admin, where)
    # Consistent hashing without a key to hash: each field is valid alone, so the CRD's schema
    # takes it; the policy is refused as a whole.
    await create(admin, "TrafficPolicy", "sticky", where, on_web(load_balancing="ring_hash"))
    code, out, _ = await analyzed(kubeconfig, where)
    assert code == 1, out
    assert f"  TrafficPolicy {where}/sticky\n    Accepted False (Invalid): " in out, out
    assert "hash_key" in out, out


async def test_the_json_report_names_each_object(admin: ApiClient, kubeconfig: Path) -> None:
    where = await namespace(admin, "json-report")
    await create(admin, "MeshRoute", "orders", where, {"service": f"{where}/orders", "rules": [{"to": ["orders"]}]})
    code, out, err = await analyzed(kubeconfig, where, output="json")
    document = json.loads(out)
    assert code == 1
    assert "1 error(s)" in err
    assert [(e["kind"], e["namespace"], e["name"]) for e in document["errors"]] == [("MeshRoute", where, "orders")]
    assert document["warnings"] == []


async def test_secrets_are_read_as_metadata_only(admin: ApiClient, kubeconfig: Path) -> None:
    where = await namespace(admin, "secrets")
    secret = k.ca_secret("payments-ca", where, "not-a-certificate-SECRET-MARKER")  # labelled for meshplane
    await call_ok(admin, "POST", f"/api/v1/namespaces/{where}/secrets", secret)
    await create(
        admin, "ExternalService", "payments", where, external() | {"tls": {"trust": f"{where}/payments-ca#ca"}}
    )
    await create(admin, "ExternalService", "ledger", where, external() | {"tls": {"trust": f"{where}/ledger-ca#ca"}})
    code, out, _ = await analyzed(kubeconfig, where)
    assert code == 1
    assert "SECRET-MARKER" not in out
    assert f"  ExternalService {where}/ledger\n" in out
    assert f"'{where}/ledger-ca#ca', which no source has" in out
    assert f"ExternalService {where}/payments\n" not in out, out


def test_an_unreachable_api_server_exits_2_with_the_reason(tmp_path: Path) -> None:
    nowhere = RealApiServer(f"https://127.0.0.1:{free_port()}", None, tmp_path / "log")  # type: ignore[arg-type]
    ran = command("--kubeconfig", str(nowhere.kubeconfig(tmp_path / "kubeconfig", ADMIN_TOKEN)))
    assert ran.returncode == 2, ran
    assert ran.stderr.startswith("meshplane analyze: cannot list Services and EndpointSlices at https://127.0.0.1:")
    assert ran.stdout == ""


def test_a_context_the_kubeconfig_lacks_exits_2(server: RealApiServer, tmp_path: Path) -> None:
    ran = command("--kubeconfig", str(server.kubeconfig(tmp_path / "kubeconfig", ADMIN_TOKEN)), "--context", "other")
    assert ran.returncode == 2, ran
    assert "no usable client configuration" in ran.stderr, ran.stderr
    assert "other" in ran.stderr, ran.stderr


def test_credentials_that_may_not_list_services_exit_2(server: RealApiServer, tmp_path: Path) -> None:
    # The meshplane ServiceAccount's token, with no RBAC binding on this server: every list is refused.
    ran = command("--kubeconfig", str(server.kubeconfig(tmp_path / "kubeconfig", MESHPLANE_TOKEN)))
    assert ran.returncode == 2, ran
    assert "HTTP 403" in ran.stderr, ran.stderr


async def test_the_command_line_exits_1_and_prints_the_report(admin: ApiClient, kubeconfig: Path) -> None:
    where = await namespace(admin, "command-line")
    await create(admin, "MeshRoute", "orders", where, {"service": f"{where}/orders", "rules": [{"to": ["orders"]}]})
    ran = await asyncio.to_thread(command, "--kubeconfig", str(kubeconfig), "--namespace", where)
    assert ran.returncode == 1, ran
    assert ran.stdout.startswith(f"errors (1):\n  MeshRoute {where}/orders\n"), ran.stdout
    assert ran.stderr.endswith("1 error(s), 0 warning(s)\n"), ran.stderr


async def test_a_cluster_without_the_crds_is_analyzed_with_a_warning_per_api(cluster: Cluster, tmp_path: Path) -> None:
    bare = await asyncio.to_thread(cluster.start_apiserver, "bare")  # its own etcd prefix: no CRDs
    code, out, err = await analyzed(bare.kubeconfig(tmp_path / "kubeconfig", ADMIN_TOKEN), "default")
    assert (code, err) == (0, ""), (out, err)
    assert out.startswith("warnings (2):\n  cluster\n"), out
    assert "    the CRDs of meshplane's API are not installed: its objects were not checked\n" in out
    assert "    the CRDs of the Gateway API are not installed: its objects were not checked\n" in out
