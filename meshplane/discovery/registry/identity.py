"""Device identities: X.509 certificates the registry's CA issues for a device's own CSR.

Owns the rules of what is issued and what is refused:
- the registry never makes keys: a device sends a PEM certificate signing request (at most
  `MAX_CSR_BYTES`) signed by its own key, and gets back a certificate for that key;
- the certificate's only SAN is the device's SPIFFE id, `spiffe://<trust-domain>/site/<site>/device/<id>`
  (`spiffe_id` builds it, with the model's `device_spiffe_id`, which gateways require; no other
  place may), its subject is empty, it is no CA, its key usage is digitalSignature (and
  keyEncipherment for an RSA key), its extended key usage clientAuth and serverAuth, its serial a
  random 128-bit number;
- it is short-lived: valid from `NOT_BEFORE_SKEW` before issuance until the lease TTL times
  `LIFETIME_LEASES` later, never more than `MAX_LIFETIME` and never past the CA's own not-after;
- refused, with a reason, is a CSR that is not one PEM block, is oversized, carries a bad
  signature, a weak or unknown key type, a subject other than the device id or its SPIFFE id, or
  any SAN other than exactly the device's SPIFFE id. Other extensions a CSR requests are ignored:
  the CA sets every extension itself.

`CertificateAuthority` re-reads its certificate and key files when they change (as the TLS files
of the gRPC ports are: `meshplane/tls.py`), keeping the current pair when a renewal is caught
half-written. A replaced CA certificate stays in the trust bundle (`trust_bundle`) for as long as
a certificate it issued may still be valid, so renewing the CA never locks out the fleet: devices
move to the new CA as they renew. Retired certificates are kept in memory only (a restart
forgets them). Knows no wire format and no registry; raises `CsrRefused` for the registry to map.
Never logs key material.
"""

from __future__ import annotations

import datetime
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshplane.discovery.registry.store import CertificateRecord
from meshplane.file_signature import files_signature
from meshplane.model.sites import device_spiffe_id

log = logging.getLogger(__name__)

DEFAULT_TRUST_DOMAIN = "meshplane.local"
MAX_CSR_BYTES = 8 * 1024
# A certificate lives at most this many lease TTLs: long enough to outlast one missed renewal,
# short enough that a device that stopped registering loses its identity soon after its lease.
LIFETIME_LEASES = 2
MAX_LIFETIME = 24 * 3600.0
# Clocks of devices in the field drift: a certificate valid only from "now" would be refused for a
# minute by a peer a little behind.
NOT_BEFORE_SKEW = 60.0
MIN_RSA_BITS = 2048
# Verifying an RSA signature costs with the key's size; a client's key is bounded like its bytes.
MAX_RSA_BITS = 8192
_ALLOWED_CURVES = (ec.SECP256R1, ec.SECP384R1)
_PEM_CSR = re.compile(
    rb"\A\s*-----BEGIN (NEW )?CERTIFICATE REQUEST-----\r?\n"
    rb"[A-Za-z0-9+/=\r\n]+"
    rb"-----END (NEW )?CERTIFICATE REQUEST-----\s*\Z"
)
# SPIFFE trust domain names: lowercase letters, digits, '.', '-', '_' (the SPIFFE ID standard, section 2.1).
_TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]{1,255}$")

CertificateKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
_SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def is_trust_domain(value: str) -> bool:
    return bool(_TRUST_DOMAIN.match(value))


def spiffe_id(trust_domain: str, site: str, device_id: str) -> str:
    """The one URI a device's certificate names (`model.sites.device_spiffe_id`, which gateways
    require too)."""
    return device_spiffe_id(trust_domain, site, device_id)


class CsrRefused(Exception):
    """A CSR the CA will not sign; `reason` says why, for the device."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CaExpired(CsrRefused):
    """The CA's own certificate has ended: no CSR can be signed until its files are renewed."""


class CertificateAuthorityError(ValueError):
    """The CA files cannot be used (missing, not PEM, the key not the certificate's, not a CA);
    the message names the file, never key material."""


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    certificate_pem: str
    chain_pem: str  # the issuing CA's certificate
    record: CertificateRecord


@dataclass(frozen=True, slots=True)
class _Pair:
    certificate: x509.Certificate
    certificate_pem: str
    key: _SigningKey


def _load_pair(certificate_path: Path, key_path: Path) -> _Pair:
    """The CA pair the files hold; raises CertificateAuthorityError (or OSError) saying why."""
    certificate_bytes = certificate_path.read_bytes()
    key_bytes = key_path.read_bytes()
    try:
        certificate = x509.load_pem_x509_certificate(certificate_bytes)
    except ValueError:
        raise CertificateAuthorityError(f"{certificate_path}: not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_bytes, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise CertificateAuthorityError(f"{key_path}: not an unencrypted PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise CertificateAuthorityError(f"{key_path}: an RSA, EC or Ed25519 key is required")
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, public) != certificate.public_key().public_bytes(der, public):
        raise CertificateAuthorityError(f"{key_path}: not the key of the certificate {certificate_path}")
    try:
        is_ca = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise CertificateAuthorityError(f"{certificate_path}: not a CA certificate (basicConstraints CA:TRUE)")
    pem = certificate.public_bytes(serialization.Encoding.PEM).decode()
    return _Pair(certificate, pem, key)


class CertificateAuthority:
    """Signs device CSRs with the CA in `certificate_path` and `key_path` (PEM; the key unencrypted).

    Raises CertificateAuthorityError at construction when the files cannot serve. Before each
    issuance the files are checked (a few `stat` calls) and re-read when they changed; a renewal that
    cannot be read (half-written, key and certificate not matching) is logged and the current pair
    keeps signing. Counts `reloads` and `failed_reloads`."""

    def __init__(
        self,
        certificate_path: Path,
        key_path: Path,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not is_trust_domain(trust_domain):
            raise CertificateAuthorityError(
                f"trust domain {trust_domain[:64]!r}: lowercase letters, digits, '.', '-', '_' (at most 255)"
            )
        self.trust_domain = trust_domain
        self._paths = (certificate_path, key_path)
        try:
            self._signature = files_signature(self._paths)
            self._pair = _load_pair(certificate_path, key_path)
        except OSError as error:
            raise CertificateAuthorityError(f"{error.filename or certificate_path}: {error.strerror}") from None
        self.reloads = 0
        self.failed_reloads = 0
        self._clock = clock
        # Replaced CA certificates, newest first, with when they were replaced (see `trust_bundle`).
        self._retired: list[tuple[_Pair, float]] = []

    @property
    def certificate_pem(self) -> str:
        return self._pair.certificate_pem

    def current_certificate_pem(self) -> str:
        """The CA's certificate as its files hold it now (re-read when they changed, as before an
        issuance)."""
        return self._current().certificate_pem

    def refresh(self) -> bool:
        """Re-reads the files when they changed; whether the CA certificate changed (a few `stat`
        calls when they did not)."""
        before = self._pair
        return self._current() is not before

    def trust_bundle(self, keep: float) -> str:
        """What gateways verify device certificates by (PEM): the current CA certificate, then each
        replaced one for `keep` seconds after it was replaced (the longest a certificate it issued
        may live) and never past its own not-after."""
        current = self._current()
        now = self._clock()
        self._retired = [
            (pair, retired_at)
            for pair, retired_at in self._retired
            if retired_at + keep > now and pair.certificate.not_valid_after_utc.timestamp() > now
        ]
        return "".join([current.certificate_pem, *(pair.certificate_pem for pair, _ in self._retired)])

    def issued(self, certificate: x509.Certificate) -> bool:
        """Whether the current CA, or one still in the trust bundle, signed `certificate`."""
        for pair in (self._pair, *(pair for pair, _ in self._retired)):
            try:
                certificate.verify_directly_issued_by(pair.certificate)
            except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
                continue
            return True
        return False

    def _current(self) -> _Pair:
        try:
            signature = files_signature(self._paths)
            if signature != self._signature:
                pair = _load_pair(*self._paths)
                self._signature = signature
                if pair.certificate_pem != self._pair.certificate_pem:
                    self._retired.insert(0, (self._pair, self._clock()))
                    self._pair = pair
                self.reloads += 1
                log.info("registry CA reloaded from %s", self._paths[0])
        except (OSError, ValueError) as error:
            self.failed_reloads += 1
            log.warning("registry CA files not reloaded, keeping the current ones: %s", error)
        return self._pair

    def issue(self, csr_pem: str, *, site: str, device_id: str, lease_ttl: float, now: float) -> IssuedCertificate:
        """A certificate for the key of `csr_pem`, naming device `device_id` of `site` (both
        validated by the caller), valid from `now` (seconds since the epoch) less the skew for
        `lease_ttl` times LIFETIME_LEASES (at most MAX_LIFETIME). Raises CsrRefused with the reason
        (CaExpired when the CA's certificate has ended, whatever the CSR)."""
        uri = spiffe_id(self.trust_domain, site, device_id)
        key = check_csr(csr_pem, device_id=device_id, uri=uri)
        pair = self._current()
        ca_end = pair.certificate.not_valid_after_utc.timestamp()
        not_after = min(now + min(lease_ttl * LIFETIME_LEASES, MAX_LIFETIME), ca_end)
        if not_after <= now:
            raise CaExpired("the registry's CA certificate has expired; it issues no certificates until renewed")
        serial = 0
        while not serial:  # a serial is positive (RFC 5280, 4.1.2.2)
            serial = secrets.randbits(128)
        usage_for_rsa = isinstance(key, rsa.RSAPublicKey)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(pair.certificate.subject)
            .public_key(key)
            .serial_number(serial)
            .not_valid_before(_utc(now - NOT_BEFORE_SKEW))
            .not_valid_after(_utc(not_after))
            # An empty subject makes the SAN critical (RFC 5280, 4.2.1.6).
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=usage_for_rsa,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(pair.key.public_key()),
                critical=False,
            )
        )
        algorithm = None if isinstance(pair.key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
        certificate = builder.sign(pair.key, algorithm)
        return IssuedCertificate(
            certificate_pem=certificate.public_bytes(serialization.Encoding.PEM).decode(),
            chain_pem=pair.certificate_pem,
            record=CertificateRecord(
                f"{serial:x}",
                certificate.not_valid_after_utc.timestamp(),
                uri,
                certificate.not_valid_before_utc.timestamp(),
            ),
        )


def check_csr(csr_pem: str, *, device_id: str, uri: str) -> CertificateKey:
    """The public key of `csr_pem` when the CA may sign it for `uri`, else CsrRefused with the reason."""
    data = csr_pem.encode("utf-8", "replace")
    if len(data) > MAX_CSR_BYTES:
        raise CsrRefused(f"csr is {len(data)} bytes; at most {MAX_CSR_BYTES}")
    if not _PEM_CSR.match(data):
        raise CsrRefused("csr is not one PEM certificate request (-----BEGIN CERTIFICATE REQUEST-----)")
    try:
        csr = x509.load_pem_x509_csr(data)
    except ValueError:
        raise CsrRefused("csr is not a well-formed PEM certificate request") from None
    try:
        key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise CsrRefused("csr: its public key cannot be read or is of an unsupported type") from None
    _check_key(key)
    try:
        valid = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm, InvalidSignature):
        valid = False
    if not valid:
        raise CsrRefused("csr: its signature does not verify with its own public key")
    assert isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey)
    _check_names(csr, device_id=device_id, uri=uri)
    return key


def _check_key(key: object) -> None:
    if isinstance(key, rsa.RSAPublicKey):
        if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
            raise CsrRefused(f"csr: an RSA key of {key.key_size} bits; {MIN_RSA_BITS} to {MAX_RSA_BITS} are accepted")
        return
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, _ALLOWED_CURVES):
            raise CsrRefused(f"csr: an EC key on curve {key.curve.name}; P-256 and P-384 are accepted")
        return
    if isinstance(key, ed25519.Ed25519PublicKey):
        return
    kind = type(key).__name__.removesuffix("PublicKey") or "unknown"
    raise CsrRefused(f"csr: a {kind} key; RSA, EC or Ed25519 are accepted")


def _check_names(csr: x509.CertificateSigningRequest, *, device_id: str, uri: str) -> None:
    """The subject may be empty or one common name (the device id or its SPIFFE id); the SANs
    none or exactly `uri`. Anything else would ask the CA to vouch for a name it does not issue."""
    try:
        attributes = list(csr.subject)
    except ValueError:
        raise CsrRefused("csr: its subject cannot be read") from None
    for attribute in attributes:
        value = attribute.value if isinstance(attribute.value, str) else ""
        if attribute.oid != NameOID.COMMON_NAME or value not in (device_id, uri) or len(attributes) > 1:
            named = _shown(csr.subject.rfc4514_string())
            raise CsrRefused(
                f"csr: its subject must be empty or only CN={device_id} (it names {named});"
                " the registry sets the identity"
            )
    try:
        extension = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType):
        raise CsrRefused("csr: its requested extensions cannot be read") from None
    names = list(extension.value)
    if names != [x509.UniformResourceIdentifier(uri)]:
        shown = ", ".join(_general_name(name) for name in names[:4]) + (", …" if len(names) > 4 else "")
        raise CsrRefused(f"csr: its SANs must be none or exactly URI:{uri}, not {_shown(shown)}")


def _general_name(name: x509.GeneralName) -> str:
    kinds = {
        x509.DNSName: "DNS",
        x509.IPAddress: "IP",
        x509.UniformResourceIdentifier: "URI",
        x509.RFC822Name: "email",
    }
    kind = kinds.get(type(name), type(name).__name__)
    return f"{kind}:{name.value}"


def _shown(text: str) -> str:
    return repr(text[:128]) + ("…" if len(text) > 128 else "")


def _utc(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC)
