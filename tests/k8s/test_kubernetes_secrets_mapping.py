"""Kubernetes Secrets → model secrets (pure): names, types, keys, and malformed PEM refused by name only."""

from __future__ import annotations

import asyncio
import functools
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from meshplane.discovery.inventory import Inventory
from meshplane.discovery.kubernetes_annotations import policy_of
from meshplane.discovery.kubernetes_mapping import map_service
from meshplane.discovery.kubernetes_secrets import (
    DEFAULT_SECRET_SELECTOR,
    SECRET_TYPES,
    MappedSecret,
    ca_bundle_name,
    certificate_name,
    map_secret,
)
from meshplane.model import ProxyGroup, ProxyRole, UpstreamTls
from meshplane.xds.cache import SnapshotCache
from meshplane.xds.publisher import SnapshotPublisher
from meshplane.xds.types import TypeUrl
from tests.k8s import objects as k
from tests.k8s.merging import errors, merge
from tests.tls_certs import Pair, issue, make_ca


class Pem:
    def __init__(self, ca: Pair, leaf: Pair, other_ca: Pair) -> None:
        self.ca = ca.certificate.read_text()
        self.cert = leaf.certificate.read_text()
        self.key = leaf.key.read_text()
        self.other_ca = other_ca.certificate.read_text()


@pytest.fixture(scope="module")
def pem(tmp_path_factory: pytest.TempPathFactory) -> Pem:
    directory: Path = tmp_path_factory.mktemp("certs")
    ca = make_ca(directory)
    return Pem(ca, issue(ca, directory, "client", "DNS:client.shop"), make_ca(directory, "other-ca"))


def test_names_are_namespace_slash_name_and_hash_ca() -> None:
    assert certificate_name("shop", "web-tls") == "shop/web-tls"
    assert ca_bundle_name("shop", "web-tls") == "shop/web-tls#ca"


def test_tls_secret_gives_a_certificate(pem: Pem) -> None:
    mapped = map_secret(k.tls_secret("web-tls", "shop", pem.cert, pem.key))
    assert mapped.notes == ()
    assert mapped.certificate is not None
    assert mapped.bundle is None
    assert mapped.certificate.name == "shop/web-tls"
    assert mapped.certificate.certificate_chain == pem.cert
    assert mapped.certificate.private_key == pem.key
    assert mapped.certificate.origin == "kubernetes"
    assert mapped.certificate.problems() == []


def test_tls_secret_with_ca_gives_a_certificate_and_a_bundle(pem: Pem) -> None:
    mapped = map_secret(k.tls_secret("web-tls", "shop", pem.cert, pem.key, ca=pem.ca))
    assert mapped.certificate is not None
    assert mapped.certificate.name == "shop/web-tls"
    assert mapped.bundle is not None
    assert mapped.bundle.name == "shop/web-tls#ca"
    assert mapped.bundle.ca_certificates == pem.ca


def test_opaque_ca_only_secret_gives_a_bundle(pem: Pem) -> None:
    bundle = pem.ca + pem.other_ca  # a bundle of two CAs
    mapped = map_secret(k.ca_secret("internal-ca", "shop", bundle))
    assert mapped == MappedSecret(None, mapped.bundle, ())
    assert mapped.bundle is not None
    assert mapped.bundle.name == "shop/internal-ca#ca"
    assert mapped.bundle.ca_certificates == bundle


def test_secret_without_type_is_opaque(pem: Pem) -> None:
    obj = k.ca_secret("internal-ca", "shop", pem.ca)
    del obj["type"]
    assert map_secret(obj).bundle is not None


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (lambda p: k.secret("s", "shop", {"tls.key": p.key}), "tls.crt is missing"),
        (lambda p: k.secret("s", "shop", {"tls.crt": p.cert}), "tls.key is missing"),
        (lambda p: k.secret("s", "shop", {"tls.crt": "", "tls.key": p.key}), "tls.crt is missing"),
        (lambda p: k.secret("s", "shop", {"tls.crt": p.cert}, type_="Opaque"), "must hold ca.crt"),
        (lambda p: k.secret("s", "shop", {"ca.crt": p.ca}, type_="kubernetes.io/dockerconfigjson"), "is not used"),
        (lambda p: k.secret("s", "shop", {"token": "x"}, type_="kubernetes.io/service-account-token"), "is not used"),
    ],
    ids=["no-crt", "no-key", "empty-crt", "opaque-without-ca", "docker-config", "service-account-token"],
)
def test_missing_keys_and_wrong_types_are_refused(pem: Pem, build: object, reason: str) -> None:
    mapped = map_secret(build(pem))  # type: ignore[operator]
    assert not mapped.served
    (note,) = mapped.notes
    assert note.startswith("secret shop/s: ")
    assert reason in note
    assert note.endswith("not served")


def _garble(text: str) -> str:
    """PEM armour around base64 that decodes but is not one DER value (a truncated certificate)."""
    lines = text.strip().splitlines()
    return "\n".join([lines[0], *lines[1:-3], lines[-1]]) + "\n"


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("tls.crt", lambda p: "not a certificate at all", "tls.crt holds no PEM certificate"),
        ("tls.crt", lambda p: p.key, "tls.crt holds PEM that is not a certificate"),
        ("tls.crt", lambda p: _garble(p.cert), "tls.crt is not valid PEM"),
        ("tls.crt", lambda p: b"\xff\xfe binary", "tls.crt is not PEM text"),
        ("tls.key", lambda p: p.cert, "tls.key is not one unencrypted PEM private key"),
        ("tls.key", lambda p: p.key + p.key, "tls.key is not one unencrypted PEM private key"),
        (
            "tls.key",
            lambda p: "-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n",
            "tls.key is not valid PEM",
        ),
        ("ca.crt", lambda p: _garble(p.ca), "ca.crt is not valid PEM"),
    ],
    ids=["crt-text", "crt-is-key", "crt-truncated", "crt-binary", "key-is-cert", "two-keys", "key-base64", "ca-bad"],
)
def test_malformed_pem_is_refused_naming_the_secret_never_the_content(
    pem: Pem, key: str, value: object, reason: str
) -> None:
    data: dict[str, str | bytes] = {"tls.crt": pem.cert, "tls.key": pem.key, "ca.crt": pem.ca}
    data[key] = value(pem)  # type: ignore[operator]
    mapped = map_secret(k.secret("web-tls", "shop", data))
    assert not mapped.served
    (note,) = mapped.notes
    assert note == f"secret shop/web-tls: {reason}; not served"
    for text in (pem.cert, pem.key, pem.ca):
        body = text.splitlines()[1]
        assert body not in note


def test_repr_never_shows_pem(pem: Pem) -> None:
    mapped = map_secret(k.tls_secret("web-tls", "shop", pem.cert, pem.key, ca=pem.ca))
    shown = repr(mapped)
    assert "shop/web-tls" in shown
    assert "BEGIN" not in shown
    assert pem.key.splitlines()[1] not in shown


def test_only_labelled_secrets_of_two_types_are_asked_for() -> None:
    # The API server applies both selectors (the source tests show unlabelled and other-typed
    # Secrets never arrive); the mapping refuses other types anyway (above).
    assert DEFAULT_SECRET_SELECTOR == "meshplane.io/sds=true"
    assert SECRET_TYPES == ("kubernetes.io/tls", "Opaque")


@pytest.mark.parametrize(
    ("annotations", "tls", "notes"),
    [
        ({"meshplane.io/tls-trust": "shop/internal-ca#ca"}, UpstreamTls("shop/internal-ca#ca"), 0),
        (
            {
                "meshplane.io/tls-trust": "shop/internal-ca#ca",
                "meshplane.io/tls-client-certificate": "shop/web-client",
                "meshplane.io/tls-sni": "payments.shop.example.com",
            },
            UpstreamTls("shop/internal-ca#ca", "payments.shop.example.com", "shop/web-client"),
            0,
        ),
        ({"meshplane.io/tls-client-certificate": "shop/web-client"}, None, 1),
        ({"meshplane.io/tls-trust": ""}, None, 1),
        (
            {"meshplane.io/tls-trust": "internal-ca#ca", "meshplane.io/tls-sni": "not a host"},
            UpstreamTls("shop/internal-ca#ca"),
            1,
        ),
        (
            {"meshplane.io/tls-trust": "internal-ca#ca", "meshplane.io/tls-client-certificate": "web-client"},
            UpstreamTls("shop/internal-ca#ca", client_certificate="shop/web-client"),
            0,
        ),
        (
            {"meshplane.io/tls-trust": "internal-ca#ca", "meshplane.io/tls-client-certificate": "prod/pay-client"},
            UpstreamTls("shop/internal-ca#ca"),
            1,
        ),
        ({"meshplane.io/tls-trust": "prod/internal-ca#ca"}, None, 1),
    ],
    ids=[
        "trust",
        "mtls-and-sni",
        "client-without-trust",
        "empty-trust",
        "bad-sni",
        "bare-names-are-the-own-namespace",
        "other-namespace-certificate",
        "other-namespace-trust",
    ],
)
def test_tls_annotations(annotations: dict[str, str], tls: UpstreamTls | None, notes: int) -> None:
    policy = policy_of(k.service("web", "shop", annotations=annotations))
    assert policy.tls == tls
    assert len(policy.notes) == notes, policy.notes


def test_an_empty_ca_crt_in_a_tls_secret_is_no_bundle_not_a_refusal(pem: Pem) -> None:
    """cert-manager writes an empty `ca.crt` for issuers that give no CA: the certificate serves."""
    mapped = map_secret(k.tls_secret("web-tls", "shop", pem.cert, pem.key, ca=""))
    assert mapped.notes == ()
    assert mapped.certificate is not None
    assert mapped.certificate.name == "shop/web-tls"
    assert mapped.bundle is None


def test_an_empty_ca_crt_in_an_opaque_secret_is_still_refused() -> None:
    mapped = map_secret(k.ca_secret("internal-ca", "shop", ""))
    assert mapped.notes == ("secret shop/internal-ca: ca.crt is missing; not served",)


@pytest.fixture(scope="module")
def ecparam_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A key as `openssl ecparam -genkey` writes it (EC PARAMETERS, then EC PRIVATE KEY) and its certificate."""
    directory: Path = tmp_path_factory.mktemp("ecparam")
    key, certificate = directory / "key.pem", directory / "cert.pem"
    run = functools.partial(subprocess.run, check=True, capture_output=True, cwd=directory)
    run(["openssl", "ecparam", "-genkey", "-name", "prime256v1", "-out", str(key)])
    run(["openssl", "req", "-x509", "-key", str(key), "-subj", "/CN=ecparam", "-days", "2", "-out", str(certificate)])
    return certificate.read_text(), key.read_text()


def test_a_key_from_openssl_ecparam_is_served_its_parameters_block_ignored(ecparam_pair: tuple[str, str]) -> None:
    certificate, key = ecparam_pair
    assert key.startswith("-----BEGIN EC PARAMETERS-----")  # what the test is about
    assert "-----BEGIN EC PRIVATE KEY-----" in key
    mapped = map_secret(k.tls_secret("web-tls", "shop", certificate, key))
    assert mapped.notes == ()
    assert mapped.certificate is not None
    assert mapped.certificate.private_key == key  # served as given: Envoy's PEM reader skips the parameters too


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (lambda key: key.split("-----BEGIN EC PRIVATE KEY-----")[0], "tls.key is not one unencrypted PEM private key"),
        (
            lambda key: key.replace("EC PRIVATE KEY", "ENCRYPTED PRIVATE KEY"),
            "tls.key is not one unencrypted PEM private key",
        ),
        (
            lambda key: key + key.split("-----END EC PARAMETERS-----\n")[1],
            "tls.key is not one unencrypted PEM private key",
        ),
    ],
    ids=["parameters-only", "encrypted", "two-keys-after-parameters"],
)
def test_ignored_blocks_never_make_a_key_of_nothing(
    ecparam_pair: tuple[str, str], value: Callable[[str], str], reason: str
) -> None:
    certificate, key = ecparam_pair
    mapped = map_secret(k.tls_secret("web-tls", "shop", certificate, value(key)))
    assert mapped.notes == (f"secret shop/web-tls: {reason}; not served",)


def test_unused_blocks_beside_certificates_are_ignored_but_keys_are_not(pem: Pem) -> None:
    crl = "-----BEGIN X509 CRL-----\nnot even base64 !!\n-----END X509 CRL-----\n"
    assert map_secret(k.ca_secret("internal-ca", "shop", pem.ca + crl)).notes == ()
    mapped = map_secret(k.ca_secret("internal-ca", "shop", pem.ca + pem.key))
    assert mapped.notes == ("secret shop/internal-ca: ca.crt holds PEM that is not a certificate; not served",)
    mapped = map_secret(k.ca_secret("internal-ca", "shop", crl))
    assert mapped.notes == ("secret shop/internal-ca: ca.crt holds no PEM certificate; not served",)


PROD_KEY_ANNOTATIONS = {
    "meshplane.io/tls-trust": "dev-ca#ca",
    "meshplane.io/tls-client-certificate": "prod/payments-client",
}


def test_an_annotation_cannot_name_another_namespaces_secret() -> None:
    """Whoever may edit Services in dev must not make meshplane hand out prod's key (SECURITY.md)."""
    policy = policy_of(k.service("web", "dev", annotations=PROD_KEY_ANNOTATIONS))
    assert policy.tls == UpstreamTls("dev/dev-ca#ca")
    assert policy.notes == (
        "service dev/web: annotation meshplane.io/tls-client-certificate='prod/payments-client': names a Secret "
        "of namespace 'prod'; a Service's annotations may only name Secrets of its own namespace 'dev'; skipped",
    )
    trusting_prod = policy_of(k.service("web", "dev", annotations={"meshplane.io/tls-trust": "prod/prod-ca#ca"}))
    assert trusting_prod.tls is None
    assert trusting_prod.withheld
    mapped = map_service(k.service("web", "dev", annotations={"meshplane.io/tls-trust": "prod/prod-ca#ca"}), ())
    assert mapped.service is None  # fail closed: never served in clear instead
    assert mapped.notes == (
        "service dev/web: annotation meshplane.io/tls-trust='prod/prod-ca#ca': names a Secret of namespace "
        "'prod'; a Service's annotations may only name Secrets of its own namespace 'dev'; skipped",
        "service dev/web: not served, rather than served without the TLS it asks for",
    )
    own = policy_of(k.service("web", "dev", annotations={"meshplane.io/tls-trust": "dev/dev-ca#ca"}))
    assert own.tls == UpstreamTls("dev/dev-ca#ca")
    assert own.notes == ()


async def test_another_namespaces_key_never_reaches_proxies_over_sds(pem: Pem) -> None:
    """Through the whole way: Secret and Service mapped, merged, published; the sidecars' SDS holds dev's only."""
    secrets = [
        map_secret(k.tls_secret("payments-client", "prod", pem.cert, pem.key)),
        map_secret(k.ca_secret("dev-ca", "dev", pem.ca)),
    ]
    mapped = map_service(
        k.service("web", "dev", annotations=PROD_KEY_ANNOTATIONS),
        [k.endpoint_slice("web-1", "web", "dev", [k.endpoint("10.0.0.1")])],
    )
    assert mapped.service is not None
    inventory = Inventory()
    mesh = merge(
        inventory,
        None,
        (mapped.service,),
        (),
        tuple(s.certificate for s in secrets if s.certificate),
        tuple(s.bundle for s in secrets if s.bundle),
    )
    assert errors(inventory) == ()
    cache = SnapshotCache()
    group = ProxyGroup(ProxyRole.SIDECAR)
    cache.subscribe(group, asyncio.Event())
    SnapshotPublisher(cache).publish(mesh)
    snapshot = cache.snapshot(group)
    assert snapshot is not None
    assert sorted(snapshot.of_type(TypeUrl.SECRET).by_name) == ["dev/dev-ca#ca"]
