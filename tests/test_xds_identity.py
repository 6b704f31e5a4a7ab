"""Proxy identity from client-certificate URI SANs, and TLS files reloaded without a restart."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from meshplane.tls import ReloadingCredentials, TlsFiles
from meshplane.xds.server.identity import Grant, grants_of, parse_grant, refusal
from tests.tls_certs import issue, make_ca


@pytest.mark.parametrize(
    ("san", "grant"),
    [
        pytest.param("meshplane://role/sidecar", Grant("sidecar"), id="any-site"),
        pytest.param("meshplane://role/device/site/gym-12", Grant("device", "gym-12"), id="one-site"),
        pytest.param("spiffe://cluster.local/ns/a/sa/b", None, id="other-scheme"),
        pytest.param("meshplane://role/", None, id="empty-role"),
        pytest.param("meshplane://role/device/site/", None, id="empty-site"),
        pytest.param("meshplane://role/device/zone/a", None, id="unknown-segment"),
        pytest.param("meshplane://role/device?site=x", None, id="query"),
        pytest.param("meshplane://other/device", None, id="other-authority"),
    ],
)
def test_parse_grant(san: str, grant: Grant | None) -> None:
    assert parse_grant(san) == grant


@pytest.mark.parametrize(
    ("uris", "role", "site", "allowed"),
    [
        pytest.param([b"meshplane://role/sidecar"], "sidecar", "", True, id="role-any-site"),
        pytest.param([b"meshplane://role/sidecar"], "edge-gateway", "", False, id="other-role"),
        pytest.param([b"meshplane://role/device/site/a"], "device", "a", True, id="its-site"),
        pytest.param([b"meshplane://role/device/site/a"], "device", "b", False, id="other-site"),
        pytest.param([b"meshplane://role/device/site/a"], "edge-gateway", "a", False, id="device-claims-gateway"),
        pytest.param([], "sidecar", "", False, id="certificate-without-grants"),
    ],
)
def test_refusal(uris: list[bytes], role: str, site: str, allowed: bool) -> None:
    grants = grants_of({"x509_pem_cert": [b"..."], "peer_uri": uris})
    reason = refusal(grants, role, site)
    assert (reason is None) is allowed
    if not allowed:
        assert "does not grant" in str(reason)


def test_no_client_certificate_means_no_identity_to_check() -> None:
    assert grants_of({"transport_security_type": [b"ssl"]}) is None
    assert refusal(None, "edge-gateway", "x") is None


def test_renewed_files_are_picked_up_and_a_bad_renewal_is_refused(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    first = issue(ca, tmp_path, "first", "IP:127.0.0.1")
    live = TlsFiles(tmp_path / "tls.crt", tmp_path / "tls.key", ca.certificate)
    shutil.copy(first.certificate, live.certificate)
    shutil.copy(first.key, live.key)
    credentials = ReloadingCredentials(live)
    assert credentials._fetch() is None  # unchanged: nothing to reload

    second = issue(ca, tmp_path, "second", "IP:127.0.0.1")
    shutil.copy(second.certificate, live.certificate)  # half a renewal: the key is still the old one
    assert credentials._fetch() is None
    assert credentials.failed_reloads == 1
    shutil.copy(second.key, live.key)
    assert credentials._fetch() is not None
    assert credentials.reloads == 1


def test_bad_files_are_refused_at_start(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("not a certificate")
    (tmp_path / "key.pem").write_text("not a key")
    with pytest.raises(ValueError, match="not a PEM"):
        ReloadingCredentials(TlsFiles(tmp_path / "cert.pem", tmp_path / "key.pem"))
