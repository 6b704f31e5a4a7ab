"""Throwaway certificates for TLS tests, made with the openssl command line in a temporary directory."""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web


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


def mesh_certificates(directory: Path, **clients: str) -> dict[str, Pair]:
    """A new CA in `directory` (key "ca"), a certificate it signs for localhost and 127.0.0.1
    ("server"), and for every `name=role` in `clients` one claiming that role with the SAN
    `URI:meshplane://role/<role>` (key `name`)."""
    ca = make_ca(directory)
    issued = {"ca": ca, "server": issue(ca, directory, "server", "DNS:localhost,IP:127.0.0.1")}
    for name, role in clients.items():
        issued[name] = issue(ca, directory, name, f"URI:meshplane://role/{role}")
    return issued


async def start_mtls_server(
    answer: Callable[[web.Request], Awaitable[web.Response]], ca: Path, server: Pair
) -> web.AppRunner:
    """An HTTPS server on 127.0.0.1 (a port the OS picks: `runner.addresses[0][1]`) with `server`'s
    certificate, that requires a client certificate issued by `ca` and hands every request, any
    method and path, to `answer`. The caller cleans the runner up."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca))
    context.load_cert_chain(str(server.certificate), str(server.key))
    context.verify_mode = ssl.CERT_REQUIRED
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
    return runner
