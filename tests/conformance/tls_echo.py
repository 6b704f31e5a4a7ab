"""echo-basic's TLS port, and the CA and certificates upstream's suite makes for BackendTLSPolicy.

Owns two things:

- `backend_tls_objects`: what upstream's suite setup creates for its BackendTLSPolicy tests, made
  here with `cryptography` as conformance/utils/kubernetes/certificate.go makes them (RSA 2048, a
  CA "gatewayapi" of "Kubernetes Gateway API"): the ConfigMap `tls-checks-ca-certificate`
  (`ca.crt`), the Secret `tls-checks-certificate` (a server certificate that CA signs, which the
  `tls-backend` Deployments mount) and the ConfigMap `mismatch-ca-certificate` (another CA, which
  signs nothing served). The server certificate's names are those the tests' expectations need:
  the DNS names `abc.example.com` and `other.example.com` and the URI
  `spiffe://abc.example.com/test-identity`; no other (a policy asking for `dce.example.com`,
  `def.example.com`, `mismatch.example.com` or `spiffe://def.example.com/…` must fail).
- `serve_tls`: a stand-in's TLS port (echo-basic's 8443 when its Deployment sets
  `TLS_SERVER_CERT`), HTTP/1.1 inside TLS with the certificate of the Secret the Deployment mounts,
  answering as its HTTP port does (echo.py) with `sni` the server name the client sent, as
  echo-basic reports it.

Must not: ask for client certificates (echo-basic's `TLS_CLIENT_CACERTS` mode is not stood in
for: cluster.py leaves such Deployments without a stand-in), or bind anything but the stand-in's
own loopback address.
"""

from __future__ import annotations

import base64
import datetime
import ssl
import tempfile
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.conformance.echo import EchoBackend, EchoFleet, make_app

Obj = dict[str, Any]
NAMESPACE = "gateway-conformance-infra"
SERVER_SECRET = "tls-checks-certificate"
CA_CONFIG_MAP = "tls-checks-ca-certificate"
MISMATCH_CA_CONFIG_MAP = "mismatch-ca-certificate"
SERVER_NAMES = ("abc.example.com", "other.example.com", "spiffe://abc.example.com/test-identity")
TLS_PORT = 8443  # echo-basic's TLS port: the targetPort a Service names for a stand-in's TLS
CERT_ENV, KEY_ENV = "TLS_SERVER_CERT", "TLS_SERVER_PRIVKEY"  # echo-basic's TLS mode: files it reads
RSA_BITS = 2048
VALID_FOR = datetime.timedelta(days=365)


@dataclass(frozen=True)
class KeyPair:
    """A PEM certificate and its PEM private key."""

    certificate: str
    key: str


def _name(common_name: str, organization: str, country: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization)]
    if country:
        attributes.insert(0, x509.NameAttribute(NameOID.COUNTRY_NAME, country))
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def _pem_key(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    ).decode()


def new_ca() -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """A self-signed CA, as upstream's generateCACert makes it (a CA for client and server auth)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    now = datetime.datetime.now(datetime.UTC)
    name = _name("gatewayapi", "Kubernetes Gateway API", "US")
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(2024)
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALID_FOR)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, False, False, False), critical=True
        )  # digital signature, certificate signing
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return certificate, key


def issue(ca: x509.Certificate, ca_key: rsa.RSAPrivateKey, names: Iterable[str]) -> KeyPair:
    """A server certificate `ca` signs for `names` (a name with `://` is a URI, any other a DNS
    name), as upstream's generateRSACert makes one (CN "default" of "Acme Co")."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    now = datetime.datetime.now(datetime.UTC)
    alternatives: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(name) if "://" in name else x509.DNSName(name) for name in names
    ]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name("default", "Acme Co"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALID_FOR)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True
        )  # digital signature, key encipherment
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return KeyPair(certificate.public_bytes(serialization.Encoding.PEM).decode(), _pem_key(key))


def _config_map(name: str, ca: x509.Certificate, key: rsa.RSAPrivateKey) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": NAMESPACE},
        # As upstream's MustCreateCACertConfigMap: the CA's key beside it ("just for conformance testing").
        "data": {"ca.crt": ca.public_bytes(serialization.Encoding.PEM).decode(), "key.crt": _pem_key(key)},
    }


def backend_tls_objects() -> list[Obj]:
    """The CA ConfigMap, the server certificate's Secret and the mismatched CA's ConfigMap (see the
    module docstring), each new."""
    ca, ca_key = new_ca()
    server = issue(ca, ca_key, SERVER_NAMES)
    mismatch, mismatch_key = new_ca()
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": SERVER_SECRET, "namespace": NAMESPACE},
        "data": {
            "tls.crt": base64.b64encode(server.certificate.encode()).decode(),
            "tls.key": base64.b64encode(server.key.encode()).decode(),
        },
    }
    return [_config_map(CA_CONFIG_MAP, ca, ca_key), secret, _config_map(MISMATCH_CA_CONFIG_MAP, mismatch, mismatch_key)]


def tls_secret_name(deployment: Mapping[str, Any]) -> str | None:
    """The Secret whose certificate `deployment`'s echo-basic serves on its TLS port: the volume
    mounted where `TLS_SERVER_CERT` points; None when it sets no such variable (or mounts no Secret there)."""
    pod = deployment.get("spec", {}).get("template", {}).get("spec", {})
    containers = pod.get("containers") or []
    if len(containers) != 1:
        return None
    env = {v.get("name"): v.get("value") for v in containers[0].get("env") or [] if isinstance(v, dict)}
    path = env.get(CERT_ENV)
    if not isinstance(path, str):
        return None
    for mount in containers[0].get("volumeMounts") or []:
        if path.startswith(str(mount.get("mountPath", "")).rstrip("/") + "/"):
            volume: Mapping[str, Any] = next(
                (v for v in pod.get("volumes") or [] if v.get("name") == mount.get("name")), {}
            )
            name = (volume.get("secret") or {}).get("secretName")
            return str(name) if name else None
    return None


def key_pairs(objects: Iterable[Obj]) -> dict[tuple[str, str], KeyPair]:
    """The `kubernetes.io/tls` Secrets among `objects`, by (namespace, name)."""
    found = {}
    for obj in objects:
        data = obj.get("data") or {}
        if obj.get("kind") == "Secret" and "tls.crt" in data and "tls.key" in data:
            meta = obj.get("metadata") or {}
            found[(str(meta.get("namespace", "")), str(meta.get("name", "")))] = KeyPair(
                base64.b64decode(data["tls.crt"]).decode(), base64.b64decode(data["tls.key"]).decode()
            )
    return found


def server_context(pair: KeyPair) -> tuple[ssl.SSLContext, weakref.WeakKeyDictionary[Any, str]]:
    """A server context presenting `pair`, and where it notes each connection's server name (the
    server side of Python's ssl learns the SNI only in a callback, by connection)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as folder:  # load_cert_chain reads files only
        certificate, key = Path(folder) / "tls.crt", Path(folder) / "tls.key"
        certificate.write_text(pair.certificate)
        key.write_text(pair.key)
        context.load_cert_chain(certificate, key)
    context.set_alpn_protocols(["http/1.1"])
    names: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()

    def note(connection: Any, server_name: str | None, _: ssl.SSLContext) -> None:
        names[connection] = server_name or ""

    context.sni_callback = note
    return context, names


async def serve_tls(fleet: EchoFleet, backend: EchoBackend, port: int, pair: KeyPair) -> None:
    """Serves `backend`'s TLS port on its address and `port` (a free port: tests/ports.py),
    presenting `pair`, until the fleet stops."""
    context, names = server_context(pair)

    def sni_of(request: web.Request) -> str:
        connection = request.transport.get_extra_info("ssl_object") if request.transport is not None else None
        return names.get(connection, "") if connection is not None else ""

    runner = web.AppRunner(make_app(backend, sni_of), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, backend.address, port, ssl_context=context).start()
    # The same backend: its requests on either port count as one pod's.
    fleet.adopt(backend, runner.cleanup)
