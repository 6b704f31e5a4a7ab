"""A real kube-apiserver (1.20, built by scripts/kube-apiserver.sh) on a real etcd, on 127.0.0.1.

Started once per test module. Authentication by static tokens (`--token-auth-file`): `admin` is in
system:masters; `meshplane` is the ServiceAccount meshplane/meshplane by name, so the RBAC
binding in deploy/kubernetes/rbac.yaml applies to it exactly as in a cluster. `--watch-cache=false`
and a short `--etcd-compaction-interval` make a real 410 Gone; a second API server on the same
etcd keeps its watch cache, which is what sends BOOKMARK events in 1.20.

Every API server started here runs with the EndpointSlice feature gates of `FEATURE_GATES` on
(`Cluster.launch` adds them), so it keeps what 1.22 and later keep by default: without them 1.20
drops an endpoint's `serving`, `terminating` and `nodeName` when it stores the slice, and no test
could see a draining or serving-but-not-ready endpoint, or the node an endpoint runs on. A test
asks for 1.20's defaults explicitly (`feature_gates=None`) to show what a 1.20 cluster does.

`call`, `call_ok` and `wait_established` speak plain REST through a server's `client()`, for what
meshplane has no typed client for: CustomResourceDefinitions and custom resources among them.

1.20 is the newest kube-apiserver Debian's archive has a source for: the `kubernetes` source
packages of trixie (1.32) and sid (1.36) are repacked to build kubectl only, without
cmd/kube-apiserver or pkg/ (see docs/kubernetes.md, "Kubernetes versions").
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes_asyncio.client import ApiClient, Configuration

from tests.ports import free_port
from tests.preconditions import require

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "scripts" / "kube-apiserver.sh"
CACHE = Path(os.environ.get("MESHPLANE_KUBE_APISERVER_CACHE", Path.home() / ".cache/meshplane/kube-apiserver"))
# The build script's recipe names the folder of the binary it builds (see the script): read from it,
# so a binary of an older recipe is never used, and "not built" sends the reader to `make kube-apiserver`.
_RECIPE = re.search(r"^recipe=(\d+)", BUILD_SCRIPT.read_text(), re.MULTILINE)
assert _RECIPE is not None, f"{BUILD_SCRIPT} sets no recipe"
RECIPE = int(_RECIPE[1])
ADMIN_TOKEN = "admin-token"
MESHPLANE_TOKEN = "meshplane-token"
MESHPLANE_USER = "system:serviceaccount:meshplane:meshplane"
# Alpha (off by default) in 1.20; on by default from 1.21 (nodeName, GA) and 1.22 (serving and
# terminating, beta; GA in 1.26), and removed as gates later, so a newer server would refuse them.
FEATURE_GATES = "--feature-gates=EndpointSliceNodeName=true,EndpointSliceTerminatingCondition=true"


def binaries() -> tuple[Path, Path] | None:
    apiserver = CACHE / f"recipe-{RECIPE}" / "bin" / "kube-apiserver"
    etcd = shutil.which("etcd")
    return (apiserver, Path(etcd)) if apiserver.exists() and etcd else None


@dataclass
class RealApiServer:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def client(self, token: str = ADMIN_TOKEN) -> ApiClient:
        configuration = Configuration(
            host=self.url, api_key={"BearerToken": token}, api_key_prefix={"BearerToken": "Bearer"}
        )
        configuration.verify_ssl = False  # the server's certificate is self-signed, made at start-up
        return ApiClient(configuration)

    def kubeconfig(self, path: Path, token: str) -> Path:
        path.write_text(
            f"""apiVersion: v1
kind: Config
clusters: [{{name: real, cluster: {{server: "{self.url}", insecure-skip-tls-verify: true}}}}]
users: [{{name: user, user: {{token: {token}}}}}]
contexts: [{{name: real, context: {{cluster: real, user: user}}}}]
current-context: real
"""
        )
        return path


@dataclass
class Cluster:
    """etcd and the API servers on it: `uncached` (--watch-cache=false) and `cached`, plus any that
    `start_apiserver` added. Each server stores its objects under its own etcd prefix."""

    workdir: Path
    apiserver: Path
    etcd_url: str = ""
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    uncached: RealApiServer | None = None
    cached: RealApiServer | None = None
    # Ports a caller has given to something else (a benchmark's own servers, in a process whose
    # tests.ports hands out the same sequence as its caller's).
    avoid: frozenset[int] = frozenset()

    def free_port(self) -> int:
        """A free port (tests/ports.py) that is not one of `avoid`."""
        while (port := free_port()) in self.avoid:
            pass
        return port

    def launch(self, name: str, *flags: str, feature_gates: str | None = FEATURE_GATES) -> RealApiServer:
        """Starts API server `name` (not yet ready: see `wait_ready`). Every server of these tests
        gets `FEATURE_GATES` unless a test asks for Kubernetes' defaults with `feature_gates=None`."""
        port = self.free_port()
        log = self.workdir / f"{name}.log"
        with log.open("wb") as log_file:
            process = subprocess.Popen(
                [
                    str(self.apiserver),
                    f"--etcd-servers={self.etcd_url}",
                    f"--etcd-prefix=/registry-{name}",
                    "--bind-address=127.0.0.1",
                    "--advertise-address=127.0.0.1",
                    f"--secure-port={port}",
                    "--insecure-port=0",
                    f"--cert-dir={self.workdir / name}-certs",
                    "--authorization-mode=RBAC",
                    f"--token-auth-file={self.workdir / 'tokens.csv'}",
                    "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                    f"--service-account-key-file={self.workdir / 'sa.key'}",
                    f"--service-account-signing-key-file={self.workdir / 'sa.key'}",
                    "--service-cluster-ip-range=10.0.0.0/16",
                    "--enable-priority-and-fairness=false",
                    "--profiling=false",
                    *([feature_gates] if feature_gates else []),
                    *flags,
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        self.processes.append(process)
        return RealApiServer(f"https://127.0.0.1:{port}", process, log)

    def start_apiserver(self, name: str, *flags: str, feature_gates: str | None = FEATURE_GATES) -> RealApiServer:
        """One more API server on this cluster's etcd, ready; stopped with the cluster."""
        server = self.launch(name, *flags, feature_gates=feature_gates)
        wait_ready(server)
        return server

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def start_cluster(
    workdir: Path,
    apiserver: Path,
    etcd: Path,
    *,
    cached: bool = True,
    uncached: bool = True,
    avoid: frozenset[int] = frozenset(),
) -> Cluster:
    """etcd and the API servers asked for, all ready: `uncached` and `cached` (each unless False),
    on free ports other than `avoid`."""
    cluster = Cluster(workdir, apiserver, avoid=avoid)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        client_port, peer_port = cluster.free_port(), cluster.free_port()
        cluster.etcd_url = f"http://127.0.0.1:{client_port}"
        etcd_log = (workdir / "etcd.log").open("wb")
        cluster.processes.append(
            subprocess.Popen(
                [
                    str(etcd),
                    "--data-dir", str(workdir / "etcd"),
                    "--listen-client-urls", cluster.etcd_url,
                    "--advertise-client-urls", cluster.etcd_url,
                    "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
                    "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
                    "--initial-cluster", f"default=http://127.0.0.1:{peer_port}",
                ],
                stdout=etcd_log,
                stderr=subprocess.STDOUT,
            )
        )  # fmt: skip
        subprocess.run(["openssl", "genrsa", "-out", str(workdir / "sa.key"), "2048"], check=True, capture_output=True)
        (workdir / "tokens.csv").write_text(
            f'{ADMIN_TOKEN},admin,1,"system:masters"\n'
            f'{MESHPLANE_TOKEN},{MESHPLANE_USER},2,"system:serviceaccounts,system:serviceaccounts:meshplane"\n'
        )
        # Both started before either is waited for: they start up side by side.
        if uncached:
            cluster.uncached = cluster.launch("uncached", "--watch-cache=false", "--etcd-compaction-interval=1s")
        if cached:
            cluster.cached = cluster.launch("cached", "--watch-cache=true")
        for server in (cluster.uncached, cluster.cached):
            if server is not None:
                wait_ready(server)
        return cluster
    except BaseException:
        cluster.stop()
        raise


def wait_ready(server: RealApiServer, deadline: float = 90.0) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    request = urllib.request.Request(f"{server.url}/readyz", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    end = time.monotonic() + deadline
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(f"kube-apiserver exited:\n{server.log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(request, timeout=2, context=context) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > end:
            raise RuntimeError(f"kube-apiserver not ready after {deadline} s:\n{server.log.read_text()[-3000:]}")
        time.sleep(0.1)


KUBE_MISSING = (
    None if binaries() else f"kube-apiserver (recipe {RECIPE}) and etcd are not built: run `make kube-apiserver`"
)


def module_cluster(workdir: Path, *, cached: bool = True, uncached: bool = True) -> Iterator[Cluster]:
    """A fresh etcd and kube-apiservers in `workdir` (see `start_cluster`), stopped after use: the
    body of a test module's `cluster` fixture. Fails (never skips) when the binaries are not built,
    unless opted out."""
    require(KUBE_MISSING)
    found = binaries()
    assert found is not None
    running = start_cluster(workdir, *found, cached=cached, uncached=uncached)
    try:
        yield running
    finally:
        running.stop()


MERGE_PATCH = "application/merge-patch+json"


async def call(
    client: ApiClient, method: str, path: str, body: Any = None, content_type: str = "application/json"
) -> tuple[int, Any]:
    """`method path` with `body` (JSON; `content_type` says how the server reads it, e.g.
    `MERGE_PATCH`): the status code and the decoded answer (None when empty)."""
    response = await client.call_api(
        path,
        method,
        body=body,
        header_params={"Content-Type": content_type, "Accept": "application/json"},
        auth_settings=["BearerToken"],
        _preload_content=False,
    )
    data = await response.read()
    response.release()
    return response.status, (json.loads(data) if data else None)


async def call_ok(
    client: ApiClient, method: str, path: str, body: Any = None, content_type: str = "application/json"
) -> Any:
    """The decoded answer to `method path` with `body`, asserted to be 200 or 201."""
    status, answer = await call(client, method, path, body, content_type)
    assert status in (200, 201), (status, answer)
    return answer


CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


def crd_condition(crd: dict[str, Any], kind: str) -> dict[str, Any]:
    """The CustomResourceDefinition's condition of type `kind` (empty when it has none yet)."""
    conditions = (crd.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == kind), {})


async def wait_established(client: ApiClient, names: list[str], deadline: float = 60.0) -> dict[str, dict[str, Any]]:
    """The CustomResourceDefinitions `names` once each is Established (its resources are served),
    by name. Fails with each one's conditions when one is not after `deadline` seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while True:
        found = {name: await call_ok(client, "GET", f"{CRDS}/{name}") for name in names}
        waiting = {
            n: (c.get("status") or {}).get("conditions")
            for n, c in found.items()
            if crd_condition(c, "Established").get("status") != "True"
        }
        if not waiting:
            return found
        if loop.time() > end:
            raise AssertionError(f"not Established after {deadline} s: {waiting}")
        await asyncio.sleep(0.05)
