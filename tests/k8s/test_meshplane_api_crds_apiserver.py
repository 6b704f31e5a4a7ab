"""meshplane's own CRDs (deploy/kubernetes/crds/, generated from the policy format's field table) on
the real kube-apiserver: every one is established, the API server itself refuses malformed objects
(a bad enum, a port out of range, a value of the wrong type, a duration that is none, a missing
required field) and accepts good ones; a folder of documents (and `meshplane convert`'s output of
examples/) is the same model read from files as applied to the API server and read back; and
`kubectl get -o wide` prints the printer columns, a refused object's reason among them.

CEL does not run on this API server; nothing here relies on it: the CRDs use OpenAPI validation
only (enums, patterns, bounds, maxItems, required).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_asyncio.client import ApiClient

from meshplane.discovery.inventory import Contents, Inventory
from meshplane.discovery.kubernetes import KubernetesContent
from meshplane.discovery.kubernetes_secrets import map_secret
from meshplane.discovery.meshplane_api.conditions import (
    ACCEPTED,
    REASON_CONFLICTED,
    RESOLVED_REFS,
    ObjectStatus,
    condition,
)
from meshplane.discovery.meshplane_api.convert import convert, documents_of, render
from meshplane.discovery.meshplane_api.kinds import API_VERSION, KINDS, TRAFFIC_POLICY, kind_named
from meshplane.discovery.meshplane_api.objects import MeshplaneObjects, ObjectKey, parse_object
from meshplane.discovery.meshplane_api.source import resource_of
from meshplane.discovery.meshplane_api.status_writer import MeshplaneStatusWriter, ProxiesHolding
from meshplane.discovery.policy_files import PolicyFileSource
from meshplane.model import Mesh
from tests.k8s.conftest import wait_for
from tests.k8s.real_apiserver import (
    ADMIN_TOKEN,
    CRDS,
    KUBE_MISSING,
    REPO,
    Cluster,
    call,
    call_ok,
    crd_condition,
    module_cluster,
    wait_established,
)
from tests.preconditions import require, requires
from tests.test_meshplane_api_convert import DATA, DOCUMENTS, EXAMPLES, SECRETS, model_of

pytestmark = [pytest.mark.xdist_group("kube-apiserver"), pytest.mark.timeout(180), requires(KUBE_MISSING)]

CRD_DIRECTORY = REPO / "deploy" / "kubernetes" / "crds"
NAMESPACE = "mesh"


def committed_crds() -> list[dict[str, Any]]:
    """The CRDs as shipped (the kustomization's resources, in its order)."""
    kustomization = yaml.safe_load((CRD_DIRECTORY / "kustomization.yaml").read_text())
    return [yaml.safe_load((CRD_DIRECTORY / name).read_text()) for name in kustomization["resources"]]


def path_of(kind_name: str, namespace: str = NAMESPACE) -> str:
    kind = kind_named(kind_name)
    assert kind is not None
    scope = f"/namespaces/{namespace}" if kind.namespaced else ""
    return f"/apis/{API_VERSION}{scope}/{kind.plural}"


def document(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    found = kind_named(kind)
    assert found is not None
    metadata = {"name": name, **({"namespace": NAMESPACE} if found.namespaced else {})}
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": metadata, "spec": spec}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from module_cluster(tmp_path_factory.mktemp("meshplane-crds"), uncached=False)


async def install(client: ApiClient) -> None:
    """Every committed meshplane.io CRD, established, and the test namespace (idempotent: the
    first test of the module creates them, the others find them)."""
    names = []
    for crd in committed_crds():
        status, answer = await call(client, "POST", CRDS, crd)
        assert status in (201, 409), (status, answer)
        names.append(crd["metadata"]["name"])
    established = await wait_established(client, names)
    for name, crd in established.items():
        assert crd_condition(crd, "NamesAccepted")["status"] == "True", name
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
    status, answer = await call(client, "POST", "/api/v1/namespaces", namespace)
    assert status in (201, 409), (status, answer)


@pytest.fixture
async def admin(cluster: Cluster) -> AsyncIterator[ApiClient]:
    assert cluster.cached is not None
    client = cluster.cached.client()
    try:
        await install(client)
        yield client
    finally:
        await client.close()


def test_there_is_one_committed_crd_per_kind() -> None:
    names = sorted(crd["metadata"]["name"] for crd in committed_crds())
    assert names == sorted(f"{kind.plural}.meshplane.io" for kind in KINDS)


GOOD = [
    pytest.param(
        document(
            "ExternalService",
            "payments",
            {
                "hosts": ["payments.example.com"],
                "ports": [{"name": "https", "port": 443, "protocol": "http2"}],
                "endpoints": [{"address": "192.0.2.10", "zone": "a", "weight": 3}],
                "policy": {"connect_timeout": "250ms", "load_balancing": "least_request"},
            },
        ),
        id="external-service",
    ),
    pytest.param(
        document(
            "TrafficPolicy",
            "web-policy",
            {
                "target_refs": [{"group": "", "kind": "Service", "name": "web"}],
                "connect_timeout": 2,
                "outlier_detection": {"consecutive_5xx": 3, "interval": "5s"},
            },
        ),
        id="traffic-policy",
    ),
    pytest.param(
        document(
            "MeshRoute",
            "web-routes",
            {
                "service": "web",
                "rules": [
                    {"match": {"path": {"prefix": "/api"}}, "to": ["api", {"service": "api-v2", "weight": 10}]},
                    {"backends": [{"service": "web", "port": "http"}], "retries": {"on": "5xx,reset"}},
                ],
            },
        ),
        id="mesh-route",
    ),
    pytest.param(
        document("EdgeSite", "store-9", {"region": "eu-west", "gateways": ["10.9.0.1:15443"]}),
        id="edge-site",
    ),
    pytest.param(
        document("MeshTelemetry", "logs", {"access_logs": [{"to": "stdout", "roles": ["sidecar"]}]}),
        id="mesh-telemetry",
    ),
]


@pytest.mark.parametrize("body", GOOD)
async def test_the_api_server_accepts_a_good_object_and_it_reads_back_without_errors(
    admin: ApiClient, body: dict[str, Any]
) -> None:
    created = await call_ok(admin, "POST", path_of(body["kind"]), body)
    assert created["spec"] == body["spec"]  # nothing pruned: every key is in the schema
    parsed = parse_object(created)
    assert parsed.errors == ()
    assert parsed.content is not None
    assert parsed.generation == 1
    assert parsed.created == created["metadata"]["creationTimestamp"]


BAD = [
    pytest.param("ExternalService", {"port": 80, "protocol": "http3"}, "spec.protocol", id="bad-enum"),
    pytest.param("ExternalService", {"port": 70000}, "spec.port", id="port-out-of-range"),
    pytest.param("ExternalService", {"port": "eighty"}, "spec.port", id="wrong-type"),
    pytest.param("ExternalService", {"port": 80, "hosts": "a.example.com"}, "spec.hosts", id="not-a-list"),
    pytest.param(
        "ExternalService",
        {"port": 80, "endpoints": [{"address": "192.0.2.1", "weight": 500}]},
        "spec.endpoints",
        id="weight-out-of-range",
    ),
    pytest.param(
        "ExternalService", {"port": 80, "policy": {"connect_timeout": "5x"}}, "connect_timeout", id="not-a-duration"
    ),
    pytest.param("TrafficPolicy", {"connect_timeout": "1s"}, "target_refs", id="missing-target-refs"),
    pytest.param(
        "TrafficPolicy",
        {"target_refs": [{"kind": "Deployment", "name": "web"}]},
        "kind",
        id="target-of-an-unknown-kind",
    ),
    pytest.param(
        "TrafficPolicy",
        {"target_refs": [{"kind": "Service", "name": f"web-{index}"} for index in range(17)]},
        "target_refs",
        id="too-many-targets",
    ),
    pytest.param(
        "MeshRoute",
        {"service": "web", "rules": [{"fault": {"abort": {"status": 700}}, "to": ["web"]}]},
        "status",
        id="abort-status-out-of-range",
    ),
    pytest.param("EdgeSite", {"zone": "a"}, "region", id="site-without-region"),
    pytest.param(
        "MeshTelemetry", {"tracing": [{"collector": "otel", "sampling": 150}]}, "sampling", id="percent-over-100"
    ),
]


@pytest.mark.parametrize(("kind", "spec", "field"), BAD)
async def test_the_api_server_refuses_a_malformed_object_naming_the_field(
    admin: ApiClient, kind: str, spec: dict[str, Any], field: str
) -> None:
    body = document(kind, "bad", spec)
    status, answer = await call(admin, "POST", path_of(kind), body)
    assert status == 422, (status, answer)
    assert answer["reason"] == "Invalid"
    assert field in answer["message"], answer["message"]


def test_the_crd_files_name_the_generator() -> None:
    for path in sorted(Path(CRD_DIRECTORY).glob("*.yaml")):
        assert path.read_text().startswith("# Generated by `make crds`"), path


async def served_by_the_api_server(
    client: ApiClient, documents: list[dict[str, Any]], kubernetes: KubernetesContent | None = None
) -> Mesh:
    """`documents` created on the API server, listed back, parsed and merged (as `meshplane serve
    --meshplane-api` would, with `kubernetes` as the Kubernetes source's content): the mesh of what
    the server returned."""
    for body in documents:
        found = kind_named(body["kind"])
        assert found is not None
        namespace = body["metadata"].get("namespace", "")
        if namespace:
            status, answer = await call(
                client,
                "POST",
                "/api/v1/namespaces",
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
            )
            assert status in (201, 409), (status, answer)
        created = await call_ok(client, "POST", path_of(body["kind"], namespace), body)
        assert created["spec"] == body["spec"]
    # Listed back, kind by kind (a list's items carry no apiVersion and kind: the list says them);
    # only the objects created here (other tests of the module leave theirs).
    mine = {(body["kind"], body["metadata"].get("namespace", ""), body["metadata"]["name"]) for body in documents}
    parsed = []
    for kind in KINDS:
        for namespace in sorted({body["metadata"].get("namespace", "") for body in documents}):
            if kind.namespaced != bool(namespace):
                continue
            listed = await call_ok(client, "GET", path_of(kind.name, namespace))
            for item in listed["items"]:
                if (kind.name, namespace, item["metadata"]["name"]) in mine:
                    parsed.append(parse_object({**item, "apiVersion": API_VERSION, "kind": kind.name}))
    assert len(parsed) == len(documents)
    assert [one.errors for one in parsed if one.errors] == []
    merged = Inventory().merge(Contents(kubernetes=kubernetes, meshplane_api=MeshplaneObjects.of(parsed)))
    assert merged.problems == ()
    return merged.mesh


async def test_one_folder_is_the_same_model_from_files_and_from_the_api_server(
    admin: ApiClient, tmp_path: Path
) -> None:
    folder = tmp_path / "policy"
    folder.mkdir()
    (folder / "mesh.yaml").write_text(DOCUMENTS)
    files = PolicyFileSource(folder)
    await files.load()
    assert files.status.errors == ()
    mesh = await served_by_the_api_server(admin, documents_of(DOCUMENTS))
    assert model_of(mesh) == model_of(files.mesh)


async def test_the_converted_examples_apply_and_read_back_as_the_files_say(admin: ApiClient, tmp_path: Path) -> None:
    conversion = convert(EXAMPLES, namespace="examples")
    assert conversion.errors == ()
    (tmp_path / "converted.yaml").write_text(render(conversion))
    files = PolicyFileSource(tmp_path / "converted.yaml")
    await files.load()
    assert files.status.errors == ()
    mesh = await served_by_the_api_server(admin, list(conversion.documents))
    assert model_of(mesh) == model_of(files.mesh)


async def test_converted_secrets_apply_and_read_back_as_the_files_pem(admin: ApiClient, tmp_path: Path) -> None:
    (tmp_path / "mesh.yaml").write_text(SECRETS)
    conversion = convert(tmp_path, namespace="converted-secrets")
    assert conversion.errors == ()
    secrets = [document for document in conversion.documents if document["kind"] == "Secret"]
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "converted-secrets"}}
    status, answer = await call(admin, "POST", "/api/v1/namespaces", namespace)
    assert status in (201, 409), (status, answer)
    for secret in secrets:
        await call_ok(admin, "POST", "/api/v1/namespaces/converted-secrets/secrets", secret)
    listed = await call_ok(
        admin, "GET", "/api/v1/namespaces/converted-secrets/secrets?labelSelector=meshplane.io%2Fsds%3Dtrue"
    )
    mapped = {item["metadata"]["name"]: map_secret(item) for item in listed["items"]}
    assert sorted(mapped) == ["client", "shop-ca"]
    bundle, certificate = mapped["shop-ca"].bundle, mapped["client"].certificate
    assert bundle is not None
    assert bundle.ca_certificates == (DATA / "test-ca.pem").read_text()
    assert certificate is not None
    assert certificate.private_key == (DATA / "test-client.key.pem").read_text()
    mesh = await served_by_the_api_server(
        admin,
        [document for document in conversion.documents if document["kind"] != "Secret"],
        KubernetesContent((), (), (certificate,), (bundle,)),
    )
    tls = mesh.services[0].tls
    assert tls is not None
    assert (tls.trust, tls.client_certificate) == (bundle.name, certificate.name)


KUBECTL_MISSING = None if shutil.which("kubectl") else "kubectl is not installed"


async def test_kubectl_get_wide_prints_why_an_object_is_refused(
    admin: ApiClient, cluster: Cluster, tmp_path: Path
) -> None:
    """A refused TrafficPolicy's status, written by meshplane's status writer through /status,
    read back by kubectl through the CRD's printer columns."""
    require(KUBECTL_MISSING)
    assert cluster.cached is not None
    body = document(
        TRAFFIC_POLICY,
        "second",
        {"target_refs": [{"group": "", "kind": "Service", "name": "web"}], "connect_timeout": "1s"},
    )
    created = await call_ok(admin, "POST", path_of(TRAFFIC_POLICY), body)
    key = ObjectKey(TRAFFIC_POLICY, NAMESPACE, "second")
    objects = {key: created}
    writer = MeshplaneStatusWriter(
        {kind.name: resource_of(kind) for kind in KINDS},
        objects.get,
        holding=lambda generation: ProxiesHolding(0, 0),
        revision=lambda: 0,
    )
    refused = ObjectStatus(
        1,
        (
            condition(ACCEPTED, False, REASON_CONFLICTED, "Service mesh/web: TrafficPolicy mesh/first is older"),
            condition(RESOLVED_REFS, True, "ResolvedRefs", "every target found"),
        ),
    )
    writer.update({key: refused}, 7)
    task = asyncio.create_task(writer.run(admin))
    try:
        await wait_for(lambda: writer.writes == 1 or writer.last_error, deadline=60, what="the status written")
        assert writer.last_error == ""
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    kubeconfig = cluster.cached.kubeconfig(tmp_path / "kubeconfig", ADMIN_TOKEN)
    command = ["kubectl", "--kubeconfig", str(kubeconfig), "get", "trafficpolicies", "-n", NAMESPACE, "-o", "wide"]
    shown = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    header, *rows = shown.stdout.splitlines()
    assert header.split() == ["NAME", "ACCEPTED", "REASON", "RESOLVEDREFS", "PROGRAMMED", "AGE"]
    (row,) = [line.split() for line in rows if line.split()[0] == "second"]
    assert row[1:5] == ["False", REASON_CONFLICTED, "True", "False"], shown.stdout  # Programmed: Invalid
