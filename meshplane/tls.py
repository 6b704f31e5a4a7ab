"""TLS for meshplane's gRPC ports (xDS, the edge registry): server credentials that pick up renewed
certificate files without a restart.

Owns reading the certificate, key and (for mTLS) client CA files and handing gRPC a fresh
certificate configuration when they change. gRPC asks on every new handshake; the answer is
"no change" unless the files' signature (inode, size, mtime) moved, so the cost per handshake is a
few `stat` calls. A renewal caught half-written (cert and key not matching, or unreadable) is
refused with a log line and the current configuration keeps serving; the next handshake tries again.
Never logs key material.
"""

from __future__ import annotations

import logging
import ssl
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import grpc

from meshplane.file_signature import files_signature

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """The server's certificate chain and key, and the CA that client certificates must chain to (mTLS)."""

    certificate: Path
    key: Path
    client_ca: Path | None = None

    def paths(self) -> tuple[Path, ...]:
        return (self.certificate, self.key) + ((self.client_ca,) if self.client_ca else ())


def _configuration(files: TlsFiles) -> grpc.ServerCertificateConfiguration:
    certificate = files.certificate.read_bytes()
    key = files.key.read_bytes()
    if b"-----BEGIN" not in certificate or b"PRIVATE KEY-----" not in key:
        raise ValueError(f"{files.certificate} / {files.key} are not a PEM certificate and key")
    _check_pair(certificate, key)
    client_ca = files.client_ca.read_bytes() if files.client_ca else None
    return grpc.ssl_server_certificate_configuration([(key, certificate)], root_certificates=client_ca)


def _check_pair(certificate: bytes, key: bytes) -> None:
    """Refuses a key that does not belong to the certificate (a renewal caught between two writes).

    Uses the ssl module, which loads the pair the way every TLS server will.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as scratch:
        cert_path, key_path = Path(scratch, "cert.pem"), Path(scratch, "key.pem")
        cert_path.write_bytes(certificate)
        key_path.write_bytes(key)
        key_path.chmod(0o600)
        try:
            context.load_cert_chain(cert_path, key_path)
        except ssl.SSLError as error:
            raise ValueError(f"certificate and key do not match or cannot be loaded: {error.reason}") from None


class TlsFilesError(ValueError):
    """The TLS files cannot serve at start (missing, unreadable, not PEM, key not the certificate's);
    the message names the port and the file, never key material."""


class ReloadingCredentials:
    """gRPC server credentials over `files`, reloaded on change. Raises at construction if they are
    bad. `port` names the port in log lines ("the xDS port")."""

    def __init__(self, files: TlsFiles, port: str = "the xDS port") -> None:
        self.files = files
        self.port = port
        try:
            self._signature = files_signature(files.paths())
            self._initial = _configuration(files)
        except OSError as error:
            raise TlsFilesError(f"TLS for {port}: {error.filename or files.certificate}: {error.strerror}") from None
        except ValueError as error:
            raise TlsFilesError(f"TLS for {port}: {error}") from None
        self.reloads = 0
        self.failed_reloads = 0

    @property
    def requires_client_certificates(self) -> bool:
        return self.files.client_ca is not None

    def server_credentials(self) -> grpc.ServerCredentials:
        # gRPC documents None as "keep the current configuration"; grpc-stubs' type omits it.
        fetch = cast(Callable[[], grpc.ServerCertificateConfiguration], self._fetch)
        return grpc.dynamic_ssl_server_credentials(
            self._initial, fetch, require_client_authentication=self.requires_client_certificates
        )

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC before each handshake: a new configuration when the files changed, else None."""
        try:
            signature = files_signature(self.files.paths())
            if signature == self._signature:
                return None
            configuration = _configuration(self.files)
        except (OSError, ValueError) as error:
            self.failed_reloads += 1
            log.warning("TLS files for %s not reloaded, keeping the current ones: %s", self.port, error)
            return None
        self._signature = signature
        self.reloads += 1
        log.info("TLS certificate for %s reloaded from %s", self.port, self.files.certificate)
        return configuration
