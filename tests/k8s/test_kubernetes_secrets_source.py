"""Secrets in the Kubernetes source, against the fake API server through the real client.

Add, rotate, delete, 410 relist (no duplicates, nothing stale), only labelled Secrets of the two
types served, a bad rotation keeping the last good version, and readiness waiting for the list.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from meshplane.discovery.kubernetes import KubernetesSource
from tests.k8s import objects as k
from tests.k8s.conftest import SourceFactory, wait_for
from tests.k8s.fake_apiserver import FakeApiServer
from tests.tls_certs import issue, make_ca


class Pem:
    def __init__(self, directory: Path) -> None:
        ca = make_ca(directory)
        self.ca = ca.certificate.read_text()
        one, two = issue(ca, directory, "one", "DNS:one"), issue(ca, directory, "two", "DNS:two")
        self.cert, self.key = one.certificate.read_text(), one.key.read_text()
        self.cert2, self.key2 = two.certificate.read_text(), two.key.read_text()


@pytest.fixture(scope="module")
def pem(tmp_path_factory: pytest.TempPathFactory) -> Pem:
    return Pem(tmp_path_factory.mktemp("certs"))


def names(source: KubernetesSource) -> tuple[list[str], list[str]]:
    content = source.content()
    return [c.name for c in content.certificates], [b.name for b in content.trust_bundles]


def chain_of(source: KubernetesSource, name: str) -> str | None:
    return next((c.certificate_chain for c in source.content().certificates if c.name == name), None)


async def synced(run_source: SourceFactory, **kwargs: object) -> KubernetesSource:
    kwargs.setdefault("secrets", True)
    source = await run_source(**kwargs)
    await wait_for(lambda: source.synced, what="the first full list")
    return source


async def test_add_update_delete(apiserver: FakeApiServer, run_source: SourceFactory, pem: Pem) -> None:
    apiserver.apply(k.ca_secret("internal-ca", "shop", pem.ca))
    source = await synced(run_source)
    assert names(source) == ([], ["shop/internal-ca#ca"])
    apiserver.apply(k.tls_secret("web-client", "shop", pem.cert, pem.key, ca=pem.ca))
    await wait_for(lambda: names(source) == (["shop/web-client"], ["shop/internal-ca#ca", "shop/web-client#ca"]))
    before = source.content()
    apiserver.apply(k.tls_secret("web-client", "shop", pem.cert2, pem.key2, ca=pem.ca))  # rotated
    await wait_for(lambda: chain_of(source, "shop/web-client") == pem.cert2, what="the rotated certificate")
    after = source.content()
    assert after.trust_bundles is before.trust_bundles  # unchanged parts keep their objects
    assert after.services is before.services
    apiserver.delete("Secret", "shop", "web-client")
    await wait_for(lambda: names(source) == ([], ["shop/internal-ca#ca"]), what="the deletion")
    assert source.status.counts["kubernetes_secrets"] == 1
    assert source.status.errors == ()


async def test_410_relist_replaces_without_duplicates(
    apiserver: FakeApiServer, run_source: SourceFactory, pem: Pem
) -> None:
    apiserver.apply(k.tls_secret("a", "shop", pem.cert, pem.key))
    apiserver.apply(k.tls_secret("b", "shop", pem.cert, pem.key))
    source = await synced(run_source)
    assert names(source) == (["shop/a", "shop/b"], [])
    # Meanwhile, unseen by the watches: b deleted, c added, a rotated; then the history is compacted.
    apiserver.drop_watches()
    apiserver.delete("Secret", "shop", "b")
    apiserver.apply(k.tls_secret("c", "shop", pem.cert, pem.key))
    apiserver.apply(k.tls_secret("a", "shop", pem.cert2, pem.key2))
    apiserver.compact()
    apiserver.send_error(410)
    await wait_for(lambda: names(source) == (["shop/a", "shop/c"], []), what="the relist")
    assert chain_of(source, "shop/a") == pem.cert2
    assert source.status.counts["relists"] >= 1
    assert len(source.content().certificates) == 2


async def test_only_labelled_secrets_of_the_served_types_are_fetched(
    apiserver: FakeApiServer, run_source: SourceFactory, pem: Pem
) -> None:
    apiserver.apply(k.tls_secret("unlabelled", "shop", pem.cert, pem.key, labels=None))
    apiserver.apply(k.tls_secret("other-label", "shop", pem.cert, pem.key, labels={"meshplane.io/sds": "false"}))
    apiserver.apply(k.secret("token", "shop", {"ca.crt": pem.ca}, type_="kubernetes.io/service-account-token"))
    apiserver.apply(k.tls_secret("marked", "shop", pem.cert, pem.key))
    source = await synced(run_source)
    assert names(source) == (["shop/marked"], [])
    assert source.status.counts["kubernetes_secrets"] == 1  # the others never reached meshplane
    secret_requests = [r.query for r in apiserver.requests if r.path.endswith("/secrets")]
    assert {q.get("fieldSelector") for q in secret_requests} == {"type=kubernetes.io/tls", "type=Opaque"}
    assert {q.get("labelSelector") for q in secret_requests} == {"meshplane.io/sds=true"}
    # Labelling an existing Secret brings it in; unlabelling takes it out.
    apiserver.apply(k.tls_secret("unlabelled", "shop", pem.cert, pem.key))
    await wait_for(lambda: names(source) == (["shop/marked", "shop/unlabelled"], []))
    apiserver.apply(k.tls_secret("marked", "shop", pem.cert, pem.key, labels=None))
    await wait_for(lambda: names(source) == (["shop/unlabelled"], []))


async def test_a_malformed_rotation_keeps_the_last_good_version(
    apiserver: FakeApiServer, run_source: SourceFactory, pem: Pem
) -> None:
    apiserver.apply(k.tls_secret("web", "shop", pem.cert, pem.key))
    apiserver.apply(k.tls_secret("broken", "shop", "garbage", pem.key))
    source = await synced(run_source)
    assert names(source) == (["shop/web"], [])
    # Object-level: a note, not an error of the source (which is in sync).
    assert source.status.notes == ("secret shop/broken: tls.crt holds no PEM certificate; not served",)
    assert source.status.errors == ()
    apiserver.apply(k.tls_secret("web", "shop", pem.cert2, pem.cert2))  # a certificate where the key goes
    note = "secret shop/web: tls.key is not one unencrypted PEM private key; serving its last good version"
    await wait_for(lambda: note in source.status.notes, what="the note")
    assert chain_of(source, "shop/web") == pem.cert
    assert all(pem.key.splitlines()[1] not in text for text in (*source.status.notes, *source.status.errors))
    apiserver.apply(k.tls_secret("web", "shop", pem.cert2, pem.key2))  # fixed
    await wait_for(lambda: chain_of(source, "shop/web") == pem.cert2)
    assert note not in source.status.notes


async def test_secrets_off_by_default_and_synced_waits_for_them(
    apiserver: FakeApiServer, run_source: SourceFactory, pem: Pem
) -> None:
    apiserver.apply(k.tls_secret("web", "shop", pem.cert, pem.key))
    plain = await synced(run_source, secrets=False)
    assert names(plain) == ([], [])
    assert apiserver.watches_of("Secret") == 0
    apiserver.fail_next_requests(10**6, 503, path_contains="/secrets")
    source = await run_source(secrets=True, namespaces=["shop"])
    await wait_for(lambda: any("503" in e for e in source.status.errors), what="the secrets error")
    assert not source.synced
    apiserver.clear_failures()
    await wait_for(lambda: source.synced)
    assert names(source) == (["shop/web"], [])


async def test_a_secret_recreated_with_another_type_survives_the_old_ones_late_delete(
    apiserver: FakeApiServer, run_source: SourceFactory, pem: Pem
) -> None:
    """The two types are two watch streams: the new Opaque's ADDED may arrive before the old tls
    Secret's DELETED. Forced here: the delete must not take the new Secret, nor a relist."""
    apiserver.apply(k.tls_secret("web", "shop", pem.cert, pem.key))
    source = await synced(run_source)
    assert names(source) == (["shop/web"], [])
    apiserver.hold_events("Secret", "type=kubernetes.io/tls")
    apiserver.delete("Secret", "shop", "web")
    recreated = k.ca_secret("web", "shop", pem.ca)
    recreated["metadata"]["uid"] = "uid-recreated"
    apiserver.apply(recreated)
    await wait_for(lambda: "shop/web#ca" in names(source)[1], what="the Opaque ADDED")
    assert names(source) == ([], ["shop/web#ca"])  # the newer object only, though the old one's DELETED is held
    (tls_watch,) = [w for w in source.watchers if w.field_selector == "type=kubernetes.io/tls"]
    assert tls_watch.objects  # it is, indeed
    apiserver.release_events()
    await wait_for(lambda: not tls_watch.objects, what="the tls DELETED")
    assert names(source) == ([], ["shop/web#ca"])
    assert source.status.counts["kubernetes_secrets"] == 1
    assert source.status.errors == ()
    secret_watches = [w for w in source.watchers if w.field_selector]
    apiserver.compact()
    apiserver.send_error(410)
    await wait_for(lambda: all(w.relists for w in secret_watches), what="both secret watches relisted")
    assert names(source) == ([], ["shop/web#ca"])


async def test_while_both_types_are_held_the_newer_object_is_served(
    apiserver: FakeApiServer, run_source: SourceFactory, pem: Pem
) -> None:
    """The other way round: a tls Secret replaces an Opaque one; until the Opaque's DELETED, the
    newer object (the tls Secret's ca.crt) is the CA bundle served, never both."""
    apiserver.apply(k.ca_secret("web", "shop", pem.ca))
    source = await synced(run_source)
    apiserver.hold_events("Secret", "type=Opaque")
    apiserver.delete("Secret", "shop", "web")
    apiserver.apply(k.tls_secret("web", "shop", pem.cert, pem.key, ca=pem.cert2))
    await wait_for(lambda: names(source)[0] == ["shop/web"], what="the tls ADDED")
    (bundle,) = source.content().trust_bundles
    assert bundle.ca_certificates == pem.cert2
    assert source.status.counts["kubernetes_secrets"] == 2  # both held, only the newer served
    (opaque_watch,) = [w for w in source.watchers if w.field_selector == "type=Opaque"]
    apiserver.release_events()
    await wait_for(lambda: not opaque_watch.objects, what="the Opaque DELETED")
    assert source.status.counts["kubernetes_secrets"] == 1
    assert names(source) == (["shop/web"], ["shop/web#ca"])
    assert source.content().trust_bundles[0].ca_certificates == pem.cert2


def test_an_empty_secret_selector_is_refused() -> None:
    """It would read every Secret of the served types, not only those an owner marked for meshplane."""
    for empty in ("", " ", " , "):
        with pytest.raises(ValueError, match=r"is empty: it would read every Secret of type kubernetes\.io/tls or"):
            KubernetesSource(secrets=True, secret_selector=empty)
    assert not KubernetesSource(secrets=False, secret_selector="").secrets  # not used: not checked
