"""Throwaway certificates for TLS tests, made with the openssl command line in a temporary directory."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pair:
    certificate: Path
    key: Path


def _run(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(directory: Path, name: str = "test-ca") -> Pair:
    directory.mkdir(parents=True, exist_ok=True)
    key, certificate = directory / f"{name}.key", directory / f"{name}.pem"
    _run(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", str(key), "-out", str(certificate), "-days", "2", "-subj", f"/CN={name}",
        cwd=directory,
    )  # fmt: skip
    return Pair(certificate, key)


def issue(ca: Pair, directory: Path, name: str, sans: str) -> Pair:
    """A certificate signed by `ca`; `sans` as openssl writes them, e.g. `IP:127.0.0.1,URI:meshplane://role/sidecar`."""
    key, request, certificate = directory / f"{name}.key", directory / f"{name}.csr", directory / f"{name}.pem"
    extensions = directory / f"{name}.ext"
    extensions.write_text(f"subjectAltName={sans}\n")
    _run(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", str(key), "-out", str(request), "-subj", f"/CN={name}",
        cwd=directory,
    )  # fmt: skip
    _run(
        "x509", "-req", "-in", str(request), "-CA", str(ca.certificate), "-CAkey", str(ca.key),
        "-CAcreateserial", "-out", str(certificate), "-days", "2", "-extfile", str(extensions),
        cwd=directory,
    )  # fmt: skip
    return Pair(certificate, key)
