"""Kubernetes secrets meet the rest: names reserved in policy files, references from policy files,
the inventory's merge and missing-secret errors (a deleted secret still referenced keeps its last
version; a service naming one never served is left out alone), and the consistency gate behind
them that keeps the last good snapshot should a snapshot reference a missing secret anyway (the
endpoint fast path included)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path

import pytest

from meshplane.app import ControlPlane, Settings
from meshplane.discovery.inventory import Inventory
from meshplane.discovery.policy_files import PolicyFileSource
from meshplane.discovery.policy_schema import parse_policy
from meshplane.model import (
    Endpoint,
    Mesh,
    Protocol,
    ProxyGroup,
    ProxyRole,
    Service,
    ServicePort,
    TlsCertificate,
    TrustBundle,
    UpstreamTls,
)
from meshplane.xds.cache import SnapshotCache
from meshplane.xds.publisher import SnapshotPublisher
from meshplane.xds.types import TypeUrl
from tests.k8s.merging import errors, merge

CERT = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\nMIIEfake\n-----END PRIVATE KEY-----\n"


def web(*ports: int, tls: UpstreamTls | None = None) -> Service:
    endpoints = tuple(Endpoint("10.0.0.1", port, "http") for port in ports)
    return Service("web", "shop", (ServicePort("http", 8443, Protocol.HTTP1),), endpoints, tls=tls, origin="kubernetes")


def test_file_secret_names_may_not_contain_a_slash() -> None:
    parsed = parse_policy("secrets:\n  - name: shop/ca\n    ca_file: ca.pem\n", "p.yaml")
    assert parsed.errors == (
        "p.yaml:2: secret name 'shop/ca': `/` is reserved for Kubernetes Secrets (namespace/name)",
    )
    assert parsed.secrets == ()


async def test_policy_files_may_name_kubernetes_secrets_when_kubernetes_is_on(tmp_path: Path) -> None:
    (tmp_path / "mesh.yaml").write_text(
        "services:\n"
        "  - {name: pay, namespace: shop, port: 8443, endpoints: [{address: 10.0.0.2}],\n"
        "     tls: {trust: 'shop/mesh-ca#ca', client_certificate: shop/pay-client}}\n"
    )
    open_world = PolicyFileSource(tmp_path, open_world=True)
    await open_world.load()
    assert open_world.status.errors == ()
    assert open_world.mesh is not None
    closed = PolicyFileSource(tmp_path)
    await closed.load()
    assert len(closed.status.errors) == 2  # both names unknown without Kubernetes
    assert "unknown CA bundle 'shop/mesh-ca#ca'" in closed.status.errors[0] + closed.status.errors[1]


def test_inventory_merges_secrets_and_reports_missing_ones() -> None:
    files = Mesh.of([], certificates=[TlsCertificate("file-cert", CERT, KEY, "a.yaml:1")])
    bundle = TrustBundle("shop/mesh-ca#ca", CERT, "kubernetes")
    certificate = TlsCertificate("shop/web-client", CERT, KEY, "kubernetes")
    inventory = Inventory()
    tls = UpstreamTls("shop/mesh-ca#ca", client_certificate="shop/web-client")
    merged = merge(inventory, files, (web(1, tls=tls),), (), (certificate,), (bundle,))
    assert [c.name for c in merged.certificates] == ["file-cert", "shop/web-client"]
    assert merged.trust_bundles == (bundle,)
    assert not errors(inventory)
    assert merged.problems() == []
    merged = merge(inventory, files, (web(1, tls=tls),), (), (), (bundle,))  # the tls Secret deleted
    (error,) = errors(inventory)
    assert error.startswith(
        "service shop/web (kubernetes): tls.client_certificate names certificate 'shop/web-client', "
        "which no source has any more"
    )
    assert "serving its last version" in error
    assert "BEGIN" not in error
    # Kept, with the version last served: its proxies keep working TLS and the mesh keeps changing.
    assert merged.service(web().ref) is not None
    assert [c.name for c in merged.certificates] == ["file-cert", "shop/web-client"]
    assert merged.problems() == []
    merged = merge(inventory, files, (web(1, 2, tls=tls),), (), (), (bundle,))  # and again, on a later change
    assert [c.name for c in merged.certificates] == ["file-cert", "shop/web-client"]
    merged = merge(inventory, files, (web(1, 2),), (), (), (bundle,))  # the reference goes: so does the secret
    assert [c.name for c in merged.certificates] == ["file-cert"]
    assert errors(inventory) == ()


def test_a_service_naming_a_secret_never_served_is_left_out_alone() -> None:
    """A typo or a Secret not created yet must not hold the rest of the mesh (nor its routes' other services)."""
    inventory = Inventory()
    other = Service("api", "shop", (ServicePort("http", 80, Protocol.HTTP1),), origin="kubernetes")
    merged = merge(inventory, None, (other, web(1, tls=UpstreamTls("shop/typo-ca#ca"))))
    assert [service.name for service in merged.services] == ["api"]
    (error,) = errors(inventory)
    assert "tls.trust names CA bundle 'shop/typo-ca#ca', which no source has" in error
    assert "left out until it exists" in error
    bundle = TrustBundle("shop/typo-ca#ca", CERT, "kubernetes")
    merged = merge(inventory, None, (other, web(1, tls=UpstreamTls("shop/typo-ca#ca"))), (), (), (bundle,))
    assert [service.name for service in merged.services] == ["api", "web"]
    assert errors(inventory) == ()


def test_a_clash_is_impossible_by_name_but_the_files_would_win() -> None:
    files = Mesh.of([], trust_bundles=[TrustBundle("x/y#ca", CERT, "a.yaml:1")])
    inventory = Inventory()
    merged = merge(inventory, files, (), (), (), (TrustBundle("x/y#ca", CERT + CERT, "kubernetes"),))
    assert merged.trust_bundles == files.trust_bundles
    assert "secret x/y#ca is defined by policy files (a.yaml:1) and by Kubernetes" in errors(inventory)[0]


async def test_the_gate_keeps_the_last_good_snapshot_while_a_secret_is_missing() -> None:
    cache = SnapshotCache()
    publisher = SnapshotPublisher(cache)
    group = ProxyGroup(ProxyRole.SIDECAR)
    cache.subscribe(group, asyncio.Event())
    tls = UpstreamTls("shop/mesh-ca#ca")
    bundles = [TrustBundle("shop/mesh-ca#ca", CERT, "kubernetes")]
    publisher.publish(Mesh.of([web(1, tls=tls)], trust_bundles=bundles))
    good = cache.snapshot(group)
    assert good is not None
    assert list(good.of_type(TypeUrl.SECRET).by_name) == ["shop/mesh-ca#ca"]
    assert not publisher.state.problems

    publisher.publish(Mesh.of([web(1, tls=tls)]))  # the Secret deleted
    assert cache.snapshot(group) is good
    (problem,) = publisher.state.problems
    assert "wants secret 'shop/mesh-ca#ca', which is missing" in problem
    publisher.publish(Mesh.of([web(1, 2, tls=tls)]))  # an endpoint-only change must not slip through
    assert cache.snapshot(group) is good
    assert publisher.state.problems

    publisher.publish(Mesh.of([web(1, 2, tls=tls)], trust_bundles=bundles))  # back
    assert cache.snapshot(group) is not good
    assert publisher.state.problems == ()
    grpc = publisher.snapshot_for(ProxyGroup(ProxyRole.GRPC))
    assert grpc is not None
    assert len(grpc.of_type(TypeUrl.SECRET).by_name) == 0


async def test_kubernetes_secrets_need_kubernetes() -> None:
    plane = ControlPlane(Settings(kubernetes_secrets=True, xds_address="127.0.0.1:0", status_address="127.0.0.1:0"))
    with pytest.raises(ValueError, match="--kubernetes-secrets needs --kubernetes"):
        await plane.start()


def test_a_typo_in_a_live_services_tls_keeps_its_previous_tls_not_an_outage() -> None:
    """Bad input keeps the last good config: the live service stays, with the TLS that worked."""
    bundle = TrustBundle("shop/mesh-ca#ca", CERT, "kubernetes")
    good = UpstreamTls("shop/mesh-ca#ca")
    inventory = Inventory()
    merge(inventory, None, (web(1, tls=good),), (), (), (bundle,))
    assert not errors(inventory)

    typo = web(1, 2, tls=UpstreamTls("shop/mesh-caa#ca"))  # the edit also brought an endpoint
    merged = merge(inventory, None, (typo,), (), (), (bundle,))
    (error,) = errors(inventory)
    assert error == (
        "service shop/web (kubernetes): tls.trust names CA bundle 'shop/mesh-caa#ca', which no source has "
        "(a Kubernetes Secret not created, not labelled for meshplane, or not valid?); serving its previous "
        "TLS settings until it exists or the reference is fixed"
    )
    kept = merged.service(web().ref)
    assert kept is not None
    assert kept.tls == good
    assert [e.port for e in kept.endpoints] == [1, 2]  # the rest of the new definition is served
    assert merged.trust_bundles == (bundle,)
    assert merged.problems() == []

    # Later merges keep it (the very object while nothing about it changed), even once its old
    # Secret is gone too: that one is carried over, said separately.
    other = Service("api", "shop", (ServicePort("http", 80, Protocol.HTTP1),), origin="kubernetes")
    again = merge(inventory, None, (other, typo), (), (), (bundle,))
    assert again.service(web().ref) is kept
    gone = merge(inventory, None, (other, typo))
    assert gone.service(web().ref) is kept
    assert gone.trust_bundles == (bundle,)
    assert gone.problems() == []
    assert len(errors(inventory)) == 2
    assert "serving its previous TLS settings" in errors(inventory)[0]
    assert errors(inventory)[1].startswith(
        "service shop/web (kubernetes): previous tls.trust names CA bundle 'shop/mesh-ca#ca', which no source "
        "has any more"
    )

    fixed = merge(inventory, None, (other, web(1, 2, tls=good)), (), (), (bundle,))
    assert fixed.service(web().ref) == web(1, 2, tls=good)
    assert not errors(inventory)


def test_a_kept_definition_lives_in_memory_only_so_a_restart_leaves_the_service_out() -> None:
    """Documented (docs/kubernetes.md): a replica started while the reference is broken has no previous."""
    restarted = Inventory()
    merged = merge(restarted, None, (web(1, tls=UpstreamTls("shop/mesh-caa#ca")),))
    assert merged.services == ()
    (error,) = errors(restarted)
    assert error.endswith("the service is left out until it exists")


def test_a_live_plaintext_service_given_a_broken_tls_stays_as_it_was() -> None:
    inventory = Inventory()
    merge(inventory, None, (web(1),))
    merged = merge(inventory, None, (web(1, tls=UpstreamTls("shop/typo#ca")),))
    served = merged.service(web().ref)
    assert served is not None
    assert served.tls is None
    assert "serving its previous TLS settings" in errors(inventory)[0]


def test_the_missing_secret_error_says_when_kubernetes_secrets_are_off() -> None:
    tls = UpstreamTls("shop/mesh-ca#ca", client_certificate="shop/web-client")
    inventory = Inventory(kubernetes_secrets=False)
    merge(inventory, None, (web(1, tls=tls),))
    assert len(errors(inventory)) == 2
    for error in errors(inventory):
        assert "which no source has (--kubernetes-secrets is off, so no Kubernetes Secret is read)" in error
    on = Inventory()
    merge(on, None, (web(1, tls=tls),))
    assert all("--kubernetes-secrets" not in error for error in errors(on))
    # The control plane tells its inventory.
    plane = ControlPlane(Settings(kubernetes=True, xds_address="127.0.0.1:0", status_address="127.0.0.1:0"))
    assert not plane.inventory.kubernetes_secrets


def test_kubernetes_secrets_without_client_authentication_warn_once(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    base = Settings(kubernetes=True, kubernetes_secrets=True, xds_address="127.0.0.1:0")
    with caplog.at_level(logging.WARNING, logger="meshplane.app"):
        ControlPlane(base)
    (record,) = [r for r in caplog.records if "--kubernetes-secrets" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert "they are withheld from every proxy" in record.getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="meshplane.app"):
        ControlPlane(dataclasses.replace(base, insecure_serve_keys_without_client_auth=True))
    (record,) = [r for r in caplog.records if "--kubernetes-secrets" in r.getMessage()]
    assert "anyone who can reach 127.0.0.1:0 can fetch the certificates and private keys" in record.getMessage()
    for authenticated in (
        dataclasses.replace(base, xds_tokens=tmp_path / "tokens.yaml"),
        dataclasses.replace(base, client_ca=tmp_path / "ca.pem"),
        dataclasses.replace(base, kubernetes_secrets=False),
    ):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="meshplane.app"):
            ControlPlane(authenticated)
        assert not [r for r in caplog.records if "--kubernetes-secrets" in r.getMessage()]


def test_an_empty_secret_selector_is_refused_by_the_control_plane() -> None:
    with pytest.raises(ValueError, match="the secret selector '' is empty: it would read every Secret"):
        ControlPlane(Settings(kubernetes=True, kubernetes_secrets=True, secret_selector=""))
