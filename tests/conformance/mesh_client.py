"""Mesh clients for the MESH-HTTP cases: a real sidecar Envoy per client namespace, the mesh's
echo pods stood in, and upstream's mesh comparison.

Upstream's mesh tests exec `client URL [-H name:value] [--method=M]` in an echo pod of the mesh
(conformance/utils/echo/pod.go: a pod of `app=echo,version=v1` in the client's namespace), and
that pod's sidecar carries the request. Here:

- **the client pod is a sidecar Envoy** (`meshplane bootstrap sidecar --namespace <namespace>`,
  node id `conformance-mesh-<namespace>`, its outbound listener on 127.0.0.1 and a free port),
  started on first use and kept for the run; saying its namespace gets it that namespace's
  consumer routes. A request goes to it as a meshplane app sends one
  (docs/deploy.md): HTTP to the outbound listener, the Go test's host (`echo`, `echo-v1:8080`,
  `echo-v1.gateway-conformance-mesh`) as the Host header, which the sidecar's virtual hosts
  resolve to a Service port as cluster DNS and traffic capture do upstream. A `Host` among the
  request's headers replaces it, as curl's `-H Host:` does;
- **a request to a pod's address** (`pod`, upstream's `v2.Address`) goes to that pod's stand-in
  directly, not through the sidecar: meshplane's sidecar carries traffic to services, and a
  meshplane app reaches anything else (a pod IP) on its own. The Host is the pod's address and
  the pod port the test names, as upstream sends it;
- **the mesh's pods** (`MESH_MANIFESTS`, upstream's mesh base manifests, applied before the first
  mesh case and kept) are stood in by echo.py's servers, one per echo-advanced Deployment on its
  own 127.0.0.x address, all on one port (the pods of a Deployment share their ports), answering
  on echo-advanced's HTTP ports 80 and 8080 (`MESH_HTTP_PORTS`);
- **the comparison** is upstream's mesh one (pod.go compareRequest), not the Gateway one: the
  status among those allowed; the request headers the backend saw (`expected_request` headers and
  absent headers); response headers absent, and present with the value (the first, as Go's
  Header.Get reads); and the answering pod's name prefix. Path, host and namespace are not
  compared, as upstream's mesh client does not compare them. Redirects are never followed.

Must not: send traffic anywhere but 127.0.0.x, or change meshplane.
"""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conformance.cases import RequestCase, split_name
from tests.conformance.cluster import StandIn, pod_labels
from tests.conformance.echo import EchoBackend, EchoFleet, Identity
from tests.envoy_harness import REPO, envoy_binary
from tests.ports import free_port

MESH_MANIFESTS = Path(__file__).resolve().parent / "mesh_manifests.yaml"
MESH_NAMESPACE = "gateway-conformance-mesh"  # upstream's suite.MeshNamespace: ConnectToApp's namespace
MESH_ECHO_IMAGE = "gcr.io/k8s-staging-gateway-api/echo-advanced:"
MESH_HTTP_PORTS = frozenset({80, 8080})  # echo-advanced's `--port` arguments that serve HTTP
DEFAULT_HOST = "echo"  # pod.go makeRequest: a request naming no host goes to the Service `echo`
STOP_GRACE = 10.0  # seconds a sidecar has to exit after SIGTERM before it is killed


def mesh_stand_in_identity(deployment: Mapping[str, Any]) -> Identity | None:
    """Who stands in for `deployment`, or None when it is not one of the mesh's echo-advanced pods."""
    containers = deployment.get("spec", {}).get("template", {}).get("spec", {}).get("containers") or []
    if len(containers) != 1 or not str(containers[0].get("image", "")).startswith(MESH_ECHO_IMAGE):
        return None
    meta = deployment["metadata"]
    return Identity(meta.get("namespace", "default"), meta["name"], meta["name"])


async def start_mesh_stand_ins(
    fleet: EchoFleet, objects: Iterable[dict[str, Any]], addresses: Iterator[str]
) -> list[StandIn]:
    """A stand-in for every mesh echo Deployment among `objects` that `fleet` does not serve yet,
    each on the next of `addresses`, all on one free port; returns the new ones."""
    port = free_port()
    started = []
    for obj in objects:
        if obj["kind"] != "Deployment" or (identity := mesh_stand_in_identity(obj)) is None:
            continue
        if (identity.namespace, identity.deployment) in fleet.backends:
            continue
        backend = await fleet.start(identity, next(addresses), port)
        started.append(StandIn(identity.namespace, pod_labels(obj), backend.address, port, MESH_HTTP_PORTS))
    return started


@dataclass
class MeshClient:
    """The sidecar Envoy standing in for the mesh client pod of one namespace."""

    namespace: str
    outbound_port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def authority(self) -> str:
        return f"127.0.0.1:{self.outbound_port}"

    def exited(self) -> str:
        """Why the sidecar cannot carry requests ("" while it runs)."""
        if self.process.poll() is None:
            return ""
        return f"the sidecar of {self.namespace} exited ({self.process.returncode}); see {self.log}"

    async def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                await asyncio.to_thread(self.process.wait, STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                await asyncio.to_thread(self.process.wait)


async def start_mesh_client(namespace: str, workdir: Path, xds_port: int) -> MeshClient:
    """A sidecar Envoy for `namespace`'s client pod, bootstrapped by `meshplane bootstrap sidecar`;
    RuntimeError with meshplane's own message when the bootstrap cannot be made."""
    outbound_port = free_port()
    bootstrap = workdir / f"sidecar-{namespace}.yaml"
    command = [
        sys.executable, "-m", "meshplane", "bootstrap", "sidecar",
        "--xds-server", f"127.0.0.1:{xds_port}", "--node-id", f"conformance-mesh-{namespace}",
        "--cluster", "echo-v1", "--namespace", namespace, "--outbound-port", str(outbound_port),
        "--admin-address", f"127.0.0.1:{free_port()}", "-o", str(bootstrap),
    ]  # fmt: skip
    made = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, cwd=REPO, check=False)
    if made.returncode != 0:
        last = (made.stderr or made.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"`meshplane bootstrap sidecar` failed (exit {made.returncode}): {last[0]}")
    log = workdir / f"sidecar-{namespace}.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [envoy_binary(), "-c", str(bootstrap), "--disable-hot-restart", "--log-level", "warn"],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    return MeshClient(namespace, outbound_port, process, log)


def mesh_target(
    case: RequestCase, client: MeshClient, backends: Mapping[tuple[str, str], EchoBackend]
) -> tuple[str, str, RequestCase]:
    """(where to connect, the Host header, the request without a `Host` among its headers) for
    `case` sent from `client`: the sidecar's outbound listener with the test's host, or (`pod`)
    the pod's stand-in with the pod's address and `pod_port` as the host."""
    headers = tuple((name, value) for name, value in case.headers if name.lower() != "host")
    given = [value for name, value in case.headers if name.lower() == "host"]
    without_host = dataclasses.replace(case, headers=headers)
    if case.pod:
        backend = backends.get(split_name(case.pod))
        if backend is None:
            raise LookupError(f"no stand-in for the pod of {case.pod}")
        return f"{backend.address}:{backend.port}", f"{backend.address}:{case.pod_port}", without_host
    host = given[-1] if given else (case.host or DEFAULT_HOST)
    return client.authority, host, without_host


def compare_mesh(
    case: RequestCase, status: int, response_headers: Mapping[str, list[str]], echo: Mapping[str, Any] | None
) -> str:
    """The first difference between an answer and what `case` expects ("" when none), in the order
    and with the messages of upstream's mesh compareRequest (pod.go). `response_headers` by
    lower-case name; `echo` the backend's JSON (None without one)."""
    allowed = case.allowed_statuses()
    if status not in allowed:
        return f"wanted status code to be one of {list(allowed)}, got {status}"
    seen = {name.lower(): values for name, values in ((echo or {}).get("headers") or {}).items()}
    expected = case.expected_request
    if expected is not None and expected.headers:
        if echo is None:
            return f"no headers captured, expected {len(expected.headers)}"
        for name, value in expected.headers:
            if name.lower() not in seen:
                return f"expected {name} header to be set, actual headers: {seen}"
            if ",".join(seen[name.lower()]) != value:
                return f"expected {name} header to be set to {value}, got {','.join(seen[name.lower()])}"
    for name in expected.absent_headers if expected is not None else ():
        if name.lower() in seen:
            return f"expected {name} header to not be set, got {seen[name.lower()]}"
    for name in case.response_absent_headers:
        if response_headers.get(name.lower()):
            return f"expected no header {name!r}, got {response_headers[name.lower()]}"
    for name, value in case.response_headers:
        got = (response_headers.get(name.lower()) or [""])[0]
        if got != value:
            return f"expected header {name}={value}, got {got}"
    pod = str((echo or {}).get("pod", ""))
    if not pod.startswith(case.backend):
        return f"expected pod name to start with {case.backend}, got {pod}"
    return ""
