"""meshplane.io documents in policy files, and `meshplane convert`.

A policy file may hold documents of meshplane's own kinds: they read as the plain form does (one
reader), their errors are `file:line: reason`, and TrafficPolicy documents apply to the files'
services. `meshplane convert` turns policy folders into such documents (and Kubernetes Secrets):
read back, they are the same model objects (origins aside).
"""

from __future__ import annotations

import base64
import dataclasses
import io
from pathlib import Path
from typing import Any

import yaml

from meshplane.cli import main
from meshplane.discovery.inventory import Contents, Inventory
from meshplane.discovery.kubernetes import KubernetesContent
from meshplane.discovery.kubernetes_secrets import map_secret
from meshplane.discovery.meshplane_api.convert import convert, documents_of, render
from meshplane.discovery.meshplane_api.objects import MeshplaneObjects, ObjectKey, parse_object
from meshplane.discovery.policy_files import PolicyFileSource, check_policy, find_policy_files
from meshplane.discovery.policy_schema import parse_policy
from meshplane.model import Endpoint, LoadBalancing, Mesh, Service, ServicePort, ServiceRef

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
DATA = REPO / "tests" / "data"


def blank_origins(value: Any) -> Any:
    """`value` with every `origin` of every dataclass inside it emptied (where things were said
    differs between a file and a cluster; what they say must not)."""
    if isinstance(value, tuple):
        return tuple(blank_origins(item) for item in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {
            field.name: "" if field.name == "origin" else blank_origins(getattr(value, field.name))
            for field in dataclasses.fields(value)
        }
        return dataclasses.replace(value, **changes)
    return value


def model_of(mesh: Mesh | None) -> tuple[Any, ...]:
    """What a mesh says of services, routes, sites and telemetry, origins blanked."""
    assert mesh is not None
    said: tuple[Any, ...] = blank_origins((mesh.services, mesh.routes, mesh.sites, mesh.telemetry))
    return said


async def read(path: Path, **options: Any) -> PolicyFileSource:
    source = PolicyFileSource(path, **options)
    await source.load()
    return source


PLAIN = """\
services:
  - name: payments
    namespace: shop
    hosts: [payments.example.com]
    port: 443
    protocol: http2
    endpoints: [{address: 192.0.2.10}, {address: 192.0.2.11, zone: b}]
    policy: {connect_timeout: 0.75, load_balancing: least_request}
routes:
  - name: payments-routes
    service: shop/payments
    rules:
      - match: {headers: [{name: x-version, exact: 010}]}
        to: [shop/payments]
        retries: {on: [5xx], per_try_timeout: 1.5}
sites:
  - {id: gym-1, region: eu-west, gateways: ["10.9.0.1:15443"]}
telemetry:
  access_logs: [{to: stdout}]
"""

DOCUMENTS = """\
apiVersion: meshplane.io/v1alpha1
kind: ExternalService
metadata: {name: payments, namespace: shop}
spec:
  hosts: [payments.example.com]
  port: 443
  protocol: http2
  endpoints: [{address: 192.0.2.10}, {address: 192.0.2.11, zone: b}]
  policy: {connect_timeout: 750ms, load_balancing: least_request}
---
apiVersion: meshplane.io/v1alpha1
kind: MeshRoute
metadata: {name: payments-routes, namespace: shop}
spec:
  service: payments
  rules:
    - match: {headers: [{name: x-version, exact: "010"}]}
      to: [payments]
      retries: {on: [5xx], per_try_timeout: 1500ms}
---
apiVersion: meshplane.io/v1alpha1
kind: EdgeSite
metadata: {name: gym-1}
spec: {region: eu-west, gateways: ["10.9.0.1:15443"]}
---
apiVersion: meshplane.io/v1alpha1
kind: MeshTelemetry
metadata: {name: logs, namespace: shop}
spec:
  access_logs: [{to: stdout}]
"""


async def test_documents_of_meshplane_kinds_read_as_the_plain_form(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    (tmp_path / "documents").mkdir()
    (tmp_path / "plain" / "mesh.yaml").write_text(PLAIN)
    (tmp_path / "documents" / "mesh.yaml").write_text(DOCUMENTS)
    plain, documents = await read(tmp_path / "plain"), await read(tmp_path / "documents")
    assert plain.status.errors == ()
    assert documents.status.errors == ()
    assert model_of(documents.mesh) == model_of(plain.mesh)
    assert documents.mesh is not None
    # Relative references in a namespaced document mean its own namespace.
    assert documents.mesh.routes[0].service == ServiceRef("shop", "payments")
    assert documents.mesh.services[0].origin == f"{tmp_path / 'documents' / 'mesh.yaml'}:1"


def test_errors_in_documents_name_the_file_and_line() -> None:
    text = DOCUMENTS.replace("load_balancing: least_request", "load_balancing: fastest").replace(
        "metadata: {name: gym-1}", "metadata: {name: gym-1, namespace: shop}"
    )
    errors = parse_policy(text, "m.yaml").errors
    assert errors == (
        "m.yaml:9: service.policy.load_balancing: 'fastest' is not one of round_robin, least_request, ring_hash, "
        "maglev, random (did you mean 'least_request'?)",
        "m.yaml:23: EdgeSite is cluster-scoped: it has no namespace",
    )


def test_an_unknown_kind_and_a_spec_naming_itself_are_refused() -> None:
    text = "apiVersion: meshplane.io/v1alpha1\nkind: ExternalServce\nmetadata: {name: a}\nspec: {port: 80}\n"
    assert parse_policy(text, "m.yaml").errors == (
        "m.yaml:2: unknown meshplane.io kind 'ExternalServce' (did you mean 'ExternalService'?)",
    )
    text = "apiVersion: meshplane.io/v1alpha1\nkind: ExternalService\nmetadata: {name: a}\nspec: {name: b, port: 80}\n"
    assert parse_policy(text, "m.yaml").errors == (
        "m.yaml:4: spec.name: a ExternalService takes it from metadata.name, not from its spec",
    )


POLICY_DOCUMENT = """\
---
apiVersion: meshplane.io/v1alpha1
kind: TrafficPolicy
metadata: {name: fast, namespace: shop}
spec:
  target_refs: [{group: meshplane.io, kind: ExternalService, name: payments}]
  load_balancing: random
  tls: {trust: shop-ca}
"""


async def test_a_traffic_policy_document_applies_to_the_files_services(tmp_path: Path) -> None:
    secret = f"secrets: [{{name: shop-ca, ca_file: {DATA / 'test-ca.pem'}}}]\n"
    (tmp_path / "mesh.yaml").write_text(PLAIN + secret + POLICY_DOCUMENT)
    source = await read(tmp_path)
    assert source.status.errors == ()
    assert source.mesh is not None
    payments = source.mesh.services[0]
    assert payments.policy.load_balancing is LoadBalancing.RANDOM
    assert payments.policy.connect_timeout == 1.0  # whole: the service's own policy is replaced
    assert payments.tls is not None
    assert payments.tls.trust == "shop-ca"


async def test_a_traffic_policy_document_naming_no_files_service_is_an_error(tmp_path: Path) -> None:
    document = POLICY_DOCUMENT.replace("group: meshplane.io, kind: ExternalService", "kind: Service")
    (tmp_path / "mesh.yaml").write_text(PLAIN + document)
    source = await read(tmp_path)
    assert source.mesh is None
    assert source.status.errors == (
        f"{tmp_path / 'mesh.yaml'}:21: TrafficPolicy shop/fast: no such target: Service shop/payments",
    )


async def test_converting_the_examples_reads_back_as_the_same_model(tmp_path: Path) -> None:
    conversion = convert(EXAMPLES)
    assert conversion.errors == ()
    assert conversion.warnings == ()
    kinds = sorted({document["kind"] for document in conversion.documents})
    assert kinds == ["EdgeSite", "ExternalService", "MeshRoute"]
    (tmp_path / "converted.yaml").write_text(render(conversion))
    original, converted = await read(EXAMPLES), await read(tmp_path / "converted.yaml")
    assert original.status.errors == ()
    assert converted.status.errors == ()
    assert model_of(converted.mesh) == model_of(original.mesh)


async def test_converting_every_kind_with_fractional_durations_and_literal_strings(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "mesh.yaml").write_text(PLAIN)
    conversion = convert(tmp_path / "plain", namespace="shop")
    kinds = [document["kind"] for document in conversion.documents]
    assert kinds == ["ExternalService", "MeshRoute", "EdgeSite", "MeshTelemetry"]
    service, route = conversion.documents[0], conversion.documents[1]
    assert service["spec"]["policy"]["connect_timeout"] == "0.75s"  # the CRD's int-or-string takes it
    assert route["spec"]["rules"][0]["match"]["headers"][0]["exact"] == "010"
    assert route["spec"]["rules"][0]["retries"] == {"on": ["5xx"], "per_try_timeout": "1.5s"}
    (tmp_path / "converted.yaml").write_text(render(conversion))
    original, converted = await read(tmp_path / "plain"), await read(tmp_path / "converted.yaml")
    assert converted.status.errors == ()
    assert model_of(converted.mesh) == model_of(original.mesh)


SECRETS = f"""\
secrets:
  - {{name: shop-ca, ca_file: {DATA / "test-ca.pem"}}}
  - {{name: client, certificate_file: {DATA / "test-client.pem"}, key_file: {DATA / "test-client.key.pem"}}}
services:
  - name: payments
    port: 443
    endpoints: [{{address: 192.0.2.10}}]
    tls: {{trust: shop-ca, client_certificate: client, sni: payments.example.internal}}
"""


def test_file_secrets_become_labelled_kubernetes_secrets_and_references_follow(tmp_path: Path) -> None:
    (tmp_path / "mesh.yaml").write_text(SECRETS)
    conversion = convert(tmp_path, namespace="shop")
    assert conversion.errors == ()
    secrets = [document for document in conversion.documents if document["kind"] == "Secret"]
    assert [(s["metadata"]["name"], s["type"]) for s in secrets] == [
        ("shop-ca", "Opaque"),
        ("client", "kubernetes.io/tls"),
    ]
    for secret in secrets:
        assert secret["metadata"]["namespace"] == "shop"
        assert secret["metadata"]["labels"] == {"meshplane.io/sds": "true"}
    ca, client = (map_secret(secret) for secret in secrets)
    assert ca.bundle is not None
    assert ca.bundle.name == "shop/shop-ca#ca"
    assert ca.bundle.ca_certificates == (DATA / "test-ca.pem").read_text()
    assert client.certificate is not None
    assert client.certificate.name == "shop/client"
    assert base64.b64decode(secrets[1]["data"]["tls.key"]) == (DATA / "test-client.key.pem").read_bytes()
    (service,) = [document for document in conversion.documents if document["kind"] == "ExternalService"]
    assert service["metadata"] == {"name": "payments", "namespace": "shop"}
    assert service["spec"]["tls"] == {
        "trust": "shop/shop-ca#ca",
        "client_certificate": "shop/client",
        "sni": "payments.example.internal",
    }


def test_no_secrets_leaves_them_out_with_a_warning(tmp_path: Path) -> None:
    (tmp_path / "mesh.yaml").write_text(SECRETS)
    conversion = convert(tmp_path, secrets=False)
    assert [document["kind"] for document in conversion.documents] == ["ExternalService"]
    assert conversion.warnings == (
        "secret shop-ca is left out (--no-secrets): create it as a Kubernetes Secret and refer to it as "
        "default/shop-ca",
        "secret client is left out (--no-secrets): create it as a Kubernetes Secret and refer to it as default/client",
    )


def test_files_with_errors_are_not_converted(tmp_path: Path) -> None:
    (tmp_path / "mesh.yaml").write_text("services:\n  - name: web\n    port: eighty\n")
    conversion = convert(tmp_path)
    assert conversion.documents == ()
    assert conversion.errors == (f"{tmp_path / 'mesh.yaml'}:3: service.port must be a whole number, not 'eighty'",)


def test_gateway_api_documents_pass_through_unchanged(tmp_path: Path) -> None:
    gateway = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web"}], "rules": [{"backendRefs": []}]},
    }
    (tmp_path / "mesh.yaml").write_text(PLAIN + "---\n" + yaml.safe_dump(gateway))
    conversion = convert(tmp_path)
    assert gateway in conversion.documents


def test_the_command_writes_the_documents(tmp_path: Path, capsys: Any) -> None:
    output = tmp_path / "out.yaml"
    assert main(["convert", "--config", str(EXAMPLES), "--namespace", "shop", "-o", str(output)]) == 0
    documents = documents_of(output.read_text())
    assert documents == list(convert(EXAMPLES, namespace="shop").documents)
    assert {document["metadata"]["namespace"] for document in documents if document["kind"] == "MeshRoute"} == {"shop"}
    assert main(["convert", "--config", str(tmp_path / "missing")]) == 1
    assert capsys.readouterr().err.startswith(f"meshplane convert: {tmp_path / 'missing'}: ")


def test_render_writes_no_yaml_anchors() -> None:
    text = render(convert(EXAMPLES))
    assert "&id" not in text
    assert "*id" not in text
    assert io.StringIO(text).read().count("---") == len(convert(EXAMPLES).documents) - 1


async def test_two_traffic_policy_documents_on_one_files_service_are_an_error(tmp_path: Path) -> None:
    second = POLICY_DOCUMENT.replace("name: fast", "name: slow").replace("tls: {trust: shop-ca}", "connect_timeout: 2s")
    (tmp_path / "mesh.yaml").write_text(PLAIN + POLICY_DOCUMENT.replace("  tls: {trust: shop-ca}\n", "") + second)
    source = await read(tmp_path)
    assert source.mesh is None
    assert source.status.errors == (
        f"{tmp_path / 'mesh.yaml'}:28: TrafficPolicy shop/slow: ExternalService shop/payments: TrafficPolicy "
        "shop/fast comes first by namespace/name and applies to it",
    )


DEVICE_POLICY_FILE = """\
services:
  - {name: web, port: 8080, endpoints: [{address: 192.0.2.10}]}
  - {name: api, namespace: other, port: 8080, endpoints: [{address: 192.0.2.11}]}
sites:
  - {id: gym, region: eu}
device_policies:
  - name: bikes
    sites: [gym]
    classes: [bike]
    allow: [{service: web, paths: [{prefix: /rides}]}, {service: other/api}]
"""


async def test_a_device_policy_keeps_its_meaning_in_another_namespace(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "mesh.yaml").write_text(DEVICE_POLICY_FILE)
    conversion = convert(tmp_path / "plain", namespace="shop")
    assert conversion.errors == ()
    (policy,) = [document for document in conversion.documents if document["kind"] == "DevicePolicy"]
    # Cluster-scoped: a bare name there would mean default/web, not the shop/web it became.
    assert policy["spec"]["allow"] == [
        {"service": "shop/web", "paths": [{"prefix": "/rides"}]},
        {"service": "other/api"},
    ]
    (tmp_path / "converted.yaml").write_text(render(conversion))
    converted = await read(tmp_path / "converted.yaml")
    assert converted.status.errors == ()
    assert converted.mesh is not None
    (read_back,) = converted.mesh.device_policies
    assert [str(entry.service) for entry in read_back.allow or ()] == ["shop/web", "other/api"]
    assert converted.mesh.service(ServiceRef("shop", "web")) is not None


FILE_POLICY_ON_A_KUBERNETES_SERVICE = """\
services:
  - {name: payments, namespace: shop, port: 8080, endpoints: [{address: 192.0.2.10}]}
---
apiVersion: meshplane.io/v1alpha1
kind: TrafficPolicy
metadata: {name: fast, namespace: shop}
spec:
  target_refs:
    - {kind: Service, name: web}
    - {group: meshplane.io, kind: ExternalService, name: payments}
  connect_timeout: 2s
"""


def kubernetes_service(name: str) -> Service:
    return Service(name, "shop", (ServicePort("http", 80),), (Endpoint("10.0.0.1", 8080, "http"),), origin="kubernetes")


async def test_with_kubernetes_a_files_traffic_policy_on_a_kubernetes_service_is_left_to_the_merge(
    tmp_path: Path,
) -> None:
    (tmp_path / "mesh.yaml").write_text(FILE_POLICY_ON_A_KUBERNETES_SERVICE)
    source = await read(tmp_path, open_world=True)
    assert source.status.errors == ()
    assert source.mesh is not None
    assert source.mesh.services[0].policy.connect_timeout == 2.0  # the files' own target: applied there
    (left,) = source.mesh.policy_attachments
    assert [str(target) for target in left.targets] == ["Service shop/web"]
    # The merge attaches the rest, above every TrafficPolicy object (the files' precedence).
    web = kubernetes_service("web")
    rival = {
        "apiVersion": "meshplane.io/v1alpha1",
        "kind": "TrafficPolicy",
        "metadata": {
            "name": "rival",
            "namespace": "shop",
            "generation": 1,
            "creationTimestamp": "2020-01-01T00:00:00Z",
        },
        "spec": {"target_refs": [{"kind": "Service", "name": "web"}], "connect_timeout": "9s"},
    }
    found = MeshplaneObjects.of([parse_object(rival)])
    merged = Inventory().merge(
        Contents(files=source.mesh, kubernetes=KubernetesContent((web,), ()), meshplane_api=found)
    )
    served = merged.mesh.service(ServiceRef("shop", "web"))
    assert served is not None
    assert served.policy.connect_timeout == 2.0
    assert merged.mesh.policy_attachments == ()
    accepted = merged.object_status[ObjectKey("TrafficPolicy", "shop", "rival")].condition("Accepted")
    assert accepted is not None
    assert (accepted.status, accepted.reason) == ("False", "Conflicted")
    assert "the policy files set the policy of service shop/web" in accepted.message
    # The Kubernetes Service missing: an error of the merge, said where the document is.
    merged = Inventory().merge(Contents(files=source.mesh, kubernetes=KubernetesContent((), ())))
    (problem,) = merged.problems
    assert problem.where == f"{tmp_path / 'mesh.yaml'}:4"
    assert problem.message.endswith("TrafficPolicy shop/fast: no such target: Service shop/web")
    # Without Kubernetes, it stays an error naming the target.
    source = await read(tmp_path)
    assert source.status.errors == (
        f"{tmp_path / 'mesh.yaml'}:4: TrafficPolicy shop/fast: no such target: Service shop/web",
    )


async def test_a_folder_shared_with_a_cluster_is_read_skipping_kustomize_and_other_api_groups(
    tmp_path: Path,
) -> None:
    gitops = REPO / "deploy" / "gitops" / "config"
    assert (gitops / "kustomization.yaml").exists()
    assert (gitops / "kustomization.yaml") not in find_policy_files(gitops)
    check = await check_policy(gitops)
    assert check.errors == ()
    assert check.warnings == (
        f"{gitops / 'namespace.yaml'}:1: ignored: 'v1' Namespace is not an object of meshplane's API "
        "(meshplane.io) or of the Gateway API (gateway.networking.k8s.io)",
    )
    assert [service.name for service in check.mesh.services] == ["payments"]
    # As `serve --config` reads it.
    source = await read(gitops)
    assert source.status.errors == ()
    assert source.mesh is not None
    assert [site.id for site in source.mesh.sites] == ["gym-berlin"]
    # Kustomize's other spellings, and a document of the Gateway API's group still checked.
    (tmp_path / "kustomization.yml").write_text("resources: [a.yaml]\n")
    (tmp_path / "Kustomization").write_text("resources: [a.yaml]\n")
    (tmp_path / "a.yaml").write_text("apiVersion: gateway.networking.k8s.io/v1beta9\nkind: HTTPRoute\n")
    assert find_policy_files(tmp_path) == [tmp_path / "a.yaml"]
    check = await check_policy(tmp_path)
    assert check.warnings == ()
    assert any("apiVersion must be gateway.networking.k8s.io/v1" in error for error in check.errors), check.errors
