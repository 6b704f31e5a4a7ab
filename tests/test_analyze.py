"""`meshplane analyze`'s analysis and report, on objects as the API server sends them (no cluster:
tests/k8s/test_analyze_apiserver.py reads a real one)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from meshplane.cli import main
from meshplane.discovery.analyze import ClusterObjects, Finding, Severity, analyze, render_json, render_text
from tests.k8s import objects as k

SERVER = "https://127.0.0.1:6443"


def ours(kind: str, name: str, spec: dict[str, Any], namespace: str | None = "shop") -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "generation": 1, "creationTimestamp": "2026-01-01T00:00:00Z"}
    if namespace is not None:
        metadata["namespace"] = namespace
    return {"apiVersion": "meshplane.io/v1alpha1", "kind": kind, "metadata": metadata, "spec": spec}


def site(name: str, *ranges: str) -> dict[str, Any]:
    spec = {"region": "eu", "gateways": ["10.1.0.2:15080"], "device_ranges": list(ranges)}
    return ours("EdgeSite", name, spec, namespace=None)


def external(name: str, **extra: Any) -> dict[str, Any]:
    return ours("ExternalService", name, {"port": 8080, "endpoints": [{"address": "192.0.2.10"}], **extra})


def cluster(*objects: dict[str, Any], secrets: frozenset[tuple[str, str]] | None = frozenset()) -> ClusterObjects:
    return ClusterObjects(server=SERVER, meshplane_api=objects, secrets=secrets)


def errors(findings: tuple[Finding, ...]) -> list[Finding]:
    return [finding for finding in findings if finding.severity == Severity.ERROR]


def test_a_clean_set_has_no_findings() -> None:
    route = ours("MeshRoute", "payments", {"service": "shop/payments", "rules": [{"to": ["shop/payments"]}]})
    assert analyze(cluster(external("payments"), route, site("berlin", "10.20.0.0/16"))) == ()


def test_overlapping_device_ranges_name_both_sites_and_both_ranges() -> None:
    # The merge's own problem (serving says the same), on both sites.
    found = errors(analyze(cluster(site("berlin", "10.20.0.0/16"), site("paris", "10.30.0.0/16", "10.20.5.0/24"))))
    assert [(f.kind, f.namespace, f.name) for f in found] == [("EdgeSite", "", "berlin"), ("EdgeSite", "", "paris")]
    for finding, other in zip(found, ("paris", "berlin"), strict=True):
        assert "10.20.5.0/24" in finding.reason
        assert "10.20.0.0/16" in finding.reason
        assert f"of site {other}" in finding.reason


@pytest.mark.parametrize(
    ("first", "second"),
    [("10.20.0.0/24", "10.20.1.0/24"), ("10.20.0.0/16", "fd20::/48"), ("fd20::/48", "fd21::/48")],
    ids=["adjacent", "other-family", "ipv6-apart"],
)
def test_ranges_that_do_not_overlap_are_fine(first: str, second: str) -> None:
    assert analyze(cluster(site("berlin", first), site("paris", second))) == ()


def test_a_secret_reference_is_checked_against_the_secrets_listed_and_never_read() -> None:
    service = external("payments", tls={"trust": "shop/payments-ca#ca"})
    missing = errors(analyze(cluster(service, secrets=frozenset())))
    assert missing
    assert all("shop/payments-ca" in f.reason for f in missing)
    assert errors(analyze(cluster(service, secrets=frozenset({("shop", "payments-ca")})))) == []
    # Secrets that may not be listed: the reference is taken to resolve (read_cluster says so).
    assert errors(analyze(cluster(service, secrets=None))) == []


def test_what_a_services_mapping_leaves_out_is_a_warning_on_that_service() -> None:
    udp = k.service("dns", "kube-system", ports=[k.port("dns", 53, protocol="UDP")])
    found = analyze(ClusterObjects(server=SERVER, services=(udp,)))
    assert found
    assert {(f.severity, f.kind, f.namespace, f.name) for f in found} == {
        (Severity.WARNING, "Service", "kube-system", "dns")
    }


def test_the_text_report_puts_errors_first_groups_by_object_and_escapes_what_the_cluster_wrote() -> None:
    findings = [
        Finding(Severity.ERROR, "MeshRoute", "shop", "r", "unknown service shop/x\x1b[2J"),
        Finding(Severity.ERROR, "MeshRoute", "shop", "r", "second reason"),
        Finding(Severity.WARNING, "", "", "", "Secrets cannot be listed"),
    ]
    assert render_text(findings) == (
        "errors (2):\n"
        "  MeshRoute shop/r\n"
        "    unknown service shop/x\\x1b[2J\n"
        "    second reason\n"
        "warnings (1):\n"
        "  cluster\n"
        "    Secrets cannot be listed\n"
    )
    assert render_text([]) == ""


def test_the_json_report_names_kind_namespace_name_and_reason() -> None:
    findings = [
        Finding(Severity.ERROR, "EdgeSite", "", "paris", "overlaps"),
        Finding(Severity.WARNING, "", "", "", "w"),
    ]
    assert json.loads(render_json(findings, SERVER)) == {
        "cluster": SERVER,
        "errors": [{"kind": "EdgeSite", "namespace": "", "name": "paris", "reason": "overlaps"}],
        "warnings": [{"kind": "", "namespace": "", "name": "", "reason": "w"}],
    }


def test_analyze_needs_kubernetes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["analyze"])
    assert exited.value.code == 2
    assert "--kubernetes" in capsys.readouterr().err


def test_a_kubernetes_service_naming_a_missing_secret_is_named_as_that_service() -> None:
    annotated = k.service("web", "shop", annotations={"meshplane.io/tls-trust": "web-ca#ca"})
    slice_ = k.endpoint_slice("web-1", "web", "shop", [k.endpoint("10.1.0.5")], ports=[("http", 80)])
    found = errors(analyze(ClusterObjects(server=SERVER, services=(annotated,), endpoint_slices=(slice_,))))
    assert found == []  # Secrets not listable: taken to resolve
    found = errors(
        analyze(ClusterObjects(server=SERVER, services=(annotated,), endpoint_slices=(slice_,), secrets=frozenset()))
    )
    assert [(f.kind, f.namespace, f.name) for f in found] == [("Service", "shop", "web")]
    assert "'shop/web-ca#ca', which no source has" in found[0].reason


def test_a_service_withheld_for_its_tls_annotation_is_an_error() -> None:
    # A trust bundle in another namespace: refused, so the service is not served at all.
    withheld = k.service("web", "shop", annotations={"meshplane.io/tls-trust": "other/ca#ca"})
    found = analyze(ClusterObjects(server=SERVER, services=(withheld,)))
    assert found
    assert {(f.severity, f.kind, f.namespace, f.name) for f in found} == {(Severity.ERROR, "Service", "shop", "web")}
