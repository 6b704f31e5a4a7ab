"""Kubernetes Secrets → model secrets: TLS certificates and CA bundles for SDS.

Owns the naming contract between policy (files and Service annotations) and Secrets, and the
mapping, as pure functions over Secrets as the API server sends them (JSON dicts, `data` values
base64-encoded). See docs/kubernetes.md, "Secrets from Kubernetes":

- A `kubernetes.io/tls` Secret `shop/web-tls` (`tls.crt` + `tls.key`) is the certificate
  `shop/web-tls`; its optional `ca.crt` is also the CA bundle `shop/web-tls#ca`.
- An `Opaque` Secret `shop/internal-ca` holding `ca.crt` is the CA bundle `shop/internal-ca#ca`.

`/` and `#` cannot occur in Kubernetes names (DNS subdomains) and policy-file secret names may not
contain `/` (policy_schema), so no name means two things. A Secret is served whole or not at all:
a missing key or a value that is not PEM of the right kind refuses it, with a note naming
`namespace/name` and the key, never the content. An empty `ca.crt` in a `kubernetes.io/tls` Secret
is no CA bundle (cert-manager writes one for issuers that give no CA), and PEM blocks of a
kind meshplane does not use (the `EC PARAMETERS` that `openssl ecparam -genkey` writes before the
key) are ignored: Envoy's PEM reader skips them too. Must not log, print or repr the data.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from meshplane.model import TlsCertificate, TrustBundle

ORIGIN = "kubernetes"
# Only Secrets an owner marked for meshplane are read (RBAC cannot restrict by label: see the docs).
DEFAULT_SECRET_SELECTOR = "meshplane.io/sds=true"
TLS_TYPE = "kubernetes.io/tls"
OPAQUE_TYPE = "Opaque"
# The types served, one field-selected watch each: the API server filters, so Secrets of any
# other type (service-account tokens, registry credentials) never reach meshplane even if labelled.
SECRET_TYPES = (TLS_TYPE, OPAQUE_TYPE)
TLS_CERT_KEY = "tls.crt"
TLS_KEY_KEY = "tls.key"
CA_KEY = "ca.crt"
CA_SUFFIX = "#ca"

_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.DOTALL)
_CERTIFICATE_LABEL = "CERTIFICATE"
_KEY_LABELS = frozenset({"PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"})
# The PEM labels meshplane reads; blocks of any other label (`EC PARAMETERS`, `X509 CRL`, an
# `ENCRYPTED PRIVATE KEY`…) are skipped unread, as Envoy's PEM reader skips them.
_USED_LABELS = _KEY_LABELS | {_CERTIFICATE_LABEL}


def selector_problem(selector: str) -> str | None:
    """Why label selector `selector` cannot choose the Secrets served, or None: one with no term
    would select every Secret of the types served, not only those an owner marked (refused by
    kubernetes.py, and by the CLI first)."""
    if any(term.strip() for term in selector.split(",")):
        return None
    return (
        f"the secret selector {selector!r} is empty: it would read every Secret of type "
        f"{' or '.join(SECRET_TYPES)} in the watched namespaces; give --secret-selector "
        f"(MESHPLANE_SECRET_SELECTOR) a label (default {DEFAULT_SECRET_SELECTOR})"
    )


def certificate_name(namespace: str, name: str) -> str:
    """The model name of the certificate (tls.crt + tls.key) of Secret `namespace/name`."""
    return f"{namespace}/{name}"


def ca_bundle_name(namespace: str, name: str) -> str:
    """The model name of the CA bundle (ca.crt) of Secret `namespace/name`."""
    return f"{namespace}/{name}{CA_SUFFIX}"


def is_kubernetes_secret_name(name: str) -> bool:
    """Whether a secret reference names a Kubernetes Secret (`namespace/name`, `namespace/name#ca`)."""
    return "/" in name


@dataclass(frozen=True, slots=True)
class MappedSecret:
    """One Secret as the model sees it: its certificate and/or CA bundle, or none with the reason."""

    certificate: TlsCertificate | None
    bundle: TrustBundle | None
    notes: tuple[str, ...]

    @property
    def served(self) -> bool:
        return self.certificate is not None or self.bundle is not None


class _Refused(ValueError):
    pass


def map_secret(obj: Mapping[str, Any]) -> MappedSecret:
    """The certificate and CA bundle Secret `obj` provides; none, with a note, when it cannot be served."""
    meta = obj.get("metadata") or {}
    namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
    where = f"secret {namespace}/{name}"
    kind = str(obj.get("type") or OPAQUE_TYPE)
    data: Mapping[str, Any] = obj.get("data") or {}
    try:
        if kind == TLS_TYPE:
            chain = _pem(data, TLS_CERT_KEY, _check_certificates)
            key = _pem(data, TLS_KEY_KEY, _check_key)
            certificate = TlsCertificate(certificate_name(namespace, name), chain, key, origin=ORIGIN)
            bundle = None
            if data.get(CA_KEY):  # an empty ca.crt is no bundle, not a malformed one
                bundle = TrustBundle(ca_bundle_name(namespace, name), _pem(data, CA_KEY, _check_certificates), ORIGIN)
            return MappedSecret(certificate, bundle, ())
        if kind == OPAQUE_TYPE:
            if CA_KEY not in data:
                raise _Refused(f"an {OPAQUE_TYPE} secret must hold {CA_KEY}")
            bundle = TrustBundle(ca_bundle_name(namespace, name), _pem(data, CA_KEY, _check_certificates), ORIGIN)
            return MappedSecret(None, bundle, ())
        raise _Refused(f"type {kind!r} is not used (only {TLS_TYPE} and {OPAQUE_TYPE} with {CA_KEY})")
    except _Refused as reason:
        return MappedSecret(None, None, (f"{where}: {reason}; not served",))


def _pem(data: Mapping[str, Any], key: str, check: Callable[[str], str]) -> str:
    """The PEM text of `data[key]` (base64 in the API), checked; raises _Refused naming only `key`."""
    if key not in data or not data[key]:
        raise _Refused(f"{key} is missing")
    try:
        text = base64.b64decode(str(data[key]), validate=True).decode("ascii")
    except (binascii.Error, ValueError):
        raise _Refused(f"{key} is not PEM text") from None
    reason = check(text)
    if reason:
        raise _Refused(f"{key} {reason}")
    return text


def _blocks(text: str) -> list[tuple[str, bytes]] | None:
    """The PEM blocks of `text` with a label meshplane uses, as (label, DER); None when one of them
    is not base64 of one DER value. Blocks of other labels are skipped unread."""
    found = []
    for match in _PEM_BLOCK.finditer(text):
        if match.group(1) not in _USED_LABELS:
            continue
        try:
            der = base64.b64decode("".join(match.group(2).split()), validate=True)
        except (binascii.Error, ValueError):
            return None
        if not _is_der_sequence(der):
            return None
        found.append((match.group(1), der))
    return found


def _is_der_sequence(der: bytes) -> bool:
    """Whether `der` is exactly one DER SEQUENCE (what certificates and keys are): a cheap check that
    catches truncated or garbled PEM without a crypto library; Envoy checks the rest (and NACKs)."""
    if len(der) < 2 or der[0] != 0x30:
        return False
    if der[1] < 0x80:
        return 2 + der[1] == len(der)
    size = der[1] & 0x7F
    if not 1 <= size <= 4 or len(der) < 2 + size:
        return False
    return 2 + size + int.from_bytes(der[2 : 2 + size], "big") == len(der)


def _check_certificates(text: str) -> str:
    blocks = _blocks(text)
    if blocks is None:
        return "is not valid PEM"
    if not blocks:
        return "holds no PEM certificate"
    if any(label != _CERTIFICATE_LABEL for label, _ in blocks):
        return "holds PEM that is not a certificate"
    return ""


def _check_key(text: str) -> str:
    blocks = _blocks(text)
    if blocks is None:
        return "is not valid PEM"
    if len(blocks) != 1 or blocks[0][0] not in _KEY_LABELS:
        return "is not one unencrypted PEM private key"
    return ""
