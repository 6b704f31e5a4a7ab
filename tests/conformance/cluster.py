"""The cluster state the Gateway API conformance suite expects, on a real kube-apiserver.

Owns reading upstream's manifests (the shared copy), and our own Gateway variants of the tests
for which the shared copy holds only upstream's mesh variant (`manifests/` beside this file, named
`manifests/<name>.yaml` by a case; `OWN_MANIFESTS`), applying them as
upstream's suite applies them (unchanged but for the suite's own placeholders `{GATEWAY_CLASS_NAME}`
and `{GATEWAY_CONTROLLER_NAME}`), and making what a real cluster's controllers would add:

- an **EndpointSlice** for every Service with a selector that picks a stood-in Deployment's pods
  (tests/conformance/echo.py, or grpc_echo.py for a Deployment in echo-basic's gRPC mode, which
  serves gRPC on that same HTTP port), pointing at the stand-in's address and port, as
  kube-controller-manager's EndpointSlice controller would; only the ports the stand-in serves are
  listed (echo-basic's HTTP port; its h2c port, h2c_echo.py; its TLS port in TLS mode,
  tls_echo.py), so a Service whose backends nobody stands in for gets an EndpointSlice with no
  endpoints: there is nothing ready behind it;
- the `kubernetes.io/metadata.name` label on every Namespace, which API servers from 1.21 on add
  themselves and which the suite's namespace selectors rely on;
- a GatewayClass of the name the run uses, with controllerName `meshplane.io/gateway-controller`;
- the Secrets upstream's suite creates in its setup (`SUITE_SECRETS`): self-signed certificates
  for the names it gives, made here with openssl, labelled `SDS_LABEL` since meshplane serves
  only the Secrets an operator labels for it (docs/gateway-api.md); and the CA ConfigMaps and the
  CA-signed Secret its BackendTLSPolicy tests use (tls_echo.py). Secrets of upstream's manifests
  stay as they are.

Deployments are stored but no Pod ever runs (no scheduler, no kubelet): the stand-ins are the pods.
An object whose apiVersion the API server does not serve is skipped with that reason, never
rewritten, with one exception: an EndpointSlice of `discovery.k8s.io/v1`, which the 1.20 API server
does not serve, is stored as `discovery.k8s.io/v1beta1` (`as_served_endpoint_slice`: the same
object in the older version's shape, a zone moved into `topology`), as a newer API server would
convert it for a v1beta1 reader. Must not: edit a manifest beyond the placeholders, or
write status (that is meshplane's job).
"""

from __future__ import annotations

import base64
import copy
import os
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes_asyncio.client import ApiClient

from tests.conformance.echo import HTTP_PORT, EchoFleet, Identity
from tests.conformance.grpc_echo import start_grpc_echo
from tests.conformance.h2c_echo import H2C_PORT, serve_h2c
from tests.conformance.tls_echo import TLS_PORT, KeyPair, backend_tls_objects, key_pairs, serve_tls, tls_secret_name
from tests.k8s.real_apiserver import MERGE_PATCH, REPO, call
from tests.ports import free_port

Obj = dict[str, Any]
VERSION = "v1.6.1"
GATEWAY_API = Path(os.environ.get("GATEWAY_API_DIR", REPO.parent / "shared" / "gateway-api"))
CONFORMANCE = GATEWAY_API / VERSION / "conformance"
BASE_MANIFESTS = CONFORMANCE / "base" / "manifests.yaml"
CONTROLLER_NAME = "meshplane.io/gateway-controller"
SDS_LABEL = ("meshplane.io/sds", "true")  # `meshplane serve --kubernetes-secrets`' default selector
DEFAULT_CLASS = "meshplane"
ECHO_IMAGE = "registry.k8s.io/gateway-api/echo-basic:"
SLICE_MANAGER = "meshplane-conformance-harness"
# Environment variables that switch echo-basic into a mode the stand-ins do not serve (the TLS
# port asking for client certificates: the backend client certificate tests, not served).
UNSERVED_MODES = ("TCP_ECHO_SERVER", "TLS_CLIENT_CACERTS")
# The variable that switches echo-basic to its gRPC echo on the HTTP port (grpc_echo.py stands in).
GRPC_MODE = "GRPC_ECHO_SERVER"
MAX_MANIFEST_BYTES = 4 << 20
# Our own Gateway-variant manifests: for 16 tests the shared copy's file of that name is upstream's
# mesh variant (every object in gateway-conformance-mesh), which a Gateway case cannot apply. Each
# file here says, in its first lines, which upstream test it stands for and why it is ours.
OWN_MANIFESTS = Path(__file__).resolve().parent / "manifests"
OWN_PREFIX = "manifests/"


# Upstream's suite setup: (namespace, name, DNS names) of each self-signed certificate Secret.
SUITE_SECRETS = (
    ("gateway-conformance-web-backend", "certificate", ("*",)),
    ("gateway-conformance-infra", "tls-validity-checks-certificate", ("*", "*.org")),
    ("gateway-conformance-infra", "tls-passthrough-checks-certificate", ("abc.example.com",)),
    ("gateway-conformance-app-backend", "tls-passthrough-checks-certificate", ("abc.example.com",)),
)


class ManifestError(ValueError):
    """A manifest file that cannot be read as upstream's: `path: reason`."""


def load_manifests(path: Path, gateway_class: str) -> list[Obj]:
    """The objects of the manifest file at `path`, with the suite's placeholders filled in."""
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest file")
    text = path.read_text()
    if len(text) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{path}: larger than {MAX_MANIFEST_BYTES} bytes")
    text = text.replace("{GATEWAY_CLASS_NAME}", gateway_class).replace("{GATEWAY_CONTROLLER_NAME}", CONTROLLER_NAME)
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as error:
        raise ManifestError(f"{path}: not YAML: {error}") from None
    found = []
    for index, document in enumerate(documents):
        if document is None:
            continue
        if not isinstance(document, dict) or "kind" not in document or "apiVersion" not in document:
            raise ManifestError(f"{path}: document {index} is not a Kubernetes object")
        found.append(document)
    return found


def manifest_path(relative: str) -> Path:
    """Upstream's path `tests/<name>.yaml` (as a Go test names it) in the shared copy, or ours,
    `manifests/<name>.yaml`, in `OWN_MANIFESTS`."""
    if is_own_manifest(relative):
        return OWN_MANIFESTS / relative.removeprefix(OWN_PREFIX)
    return CONFORMANCE / relative


def is_own_manifest(relative: str) -> bool:
    """Whether a case's manifest is one of ours (a Gateway variant the shared copy lacks)."""
    return relative.startswith(OWN_PREFIX)


def absent_objects(wanted: Iterable[tuple[str, str]], objects: Iterable[Obj]) -> list[str]:
    """Those of `wanted` ((kind, `ns/name`)) that no object among `objects` is, as `Kind ns/name`."""
    present = {
        (o["kind"], f"{(o.get('metadata') or {}).get('namespace', '')}/{o['metadata']['name']}") for o in objects
    }
    return sorted(f"{kind} {name}" for kind, name in set(wanted) - present)


def namespaces_of(objects: Iterable[Obj]) -> set[str]:
    return {(o.get("metadata") or {}).get("namespace", "") for o in objects}


def key_of(obj: Obj) -> tuple[str, str, str]:
    meta = obj.get("metadata") or {}
    return obj["kind"], meta.get("namespace", ""), meta["name"]


def stand_in_identity(deployment: Obj) -> Identity | None:
    """Who stands in for `deployment`, or None when it is not an echo-basic serving HTTP or gRPC."""
    containers = deployment.get("spec", {}).get("template", {}).get("spec", {}).get("containers") or []
    if len(containers) != 1 or not str(containers[0].get("image", "")).startswith(ECHO_IMAGE):
        return None
    if any(variable.get("name") in UNSERVED_MODES for variable in containers[0].get("env") or []):
        return None
    meta = deployment["metadata"]
    return Identity(meta.get("namespace", "default"), meta["name"], meta["name"])


def serves_grpc(deployment: Obj) -> bool:
    """Whether `deployment`'s echo-basic runs its gRPC echo (on its HTTP port) instead of HTTP."""
    containers = deployment.get("spec", {}).get("template", {}).get("spec", {}).get("containers") or []
    return any(variable.get("name") == GRPC_MODE for c in containers for variable in c.get("env") or [])


def pod_labels(deployment: Obj) -> dict[str, str]:
    return dict(deployment.get("spec", {}).get("template", {}).get("metadata", {}).get("labels") or {})


@dataclass(frozen=True)
class StandIn:
    """A running stand-in as the cluster state needs it: whose pods, and where it listens."""

    namespace: str
    labels: dict[str, str]
    address: str
    port: int
    # The pod ports it answers on (a Service port targeting one reaches `port`): echo-basic's HTTP
    # port, or echo-advanced's two HTTP ports for the mesh's pods (tests/conformance/mesh_client.py).
    target_ports: frozenset[int] = frozenset({HTTP_PORT})
    # (pod port, real port) of the other ports it answers on: echo-basic's h2c port (h2c_echo.py)
    # and, in its TLS mode, its TLS port (tls_echo.py).
    more_ports: tuple[tuple[int, int], ...] = ()

    def real_port(self, target: object) -> int | None:
        """Where it answers what its pods answer on port `target`; None when they do not."""
        if target in self.target_ports:
            return self.port
        return next((real for pod_port, real in self.more_ports if pod_port == target), None)


def endpoint_slice(service: Obj, stand_ins: Iterable[StandIn]) -> Obj | None:
    """The `discovery.k8s.io/v1beta1` EndpointSlice the EndpointSlice controller would keep for
    `service` (None for a Service without a selector: its slices are made by hand, as upstream's
    manifests do). Endpoints: the stand-ins whose pod labels the selector picks; ports: the
    Service's ports that target a port every chosen stand-in answers on, at the stand-ins' real port."""
    meta, spec = service["metadata"], service.get("spec") or {}
    selector = spec.get("selector") or {}
    if not selector:
        return None
    namespace = meta.get("namespace", "default")
    chosen = [
        s for s in stand_ins if s.namespace == namespace and all(s.labels.get(k) == v for k, v in selector.items())
    ]
    ports: list[Obj] = []
    for port in spec.get("ports") or []:
        target = port.get("targetPort", port.get("port"))
        # A slice gives each port one number for all its endpoints: every chosen stand-in must
        # answer the target port on the same real port (a port none answers is left out).
        real_ports = {s.real_port(target) for s in chosen}
        if len(real_ports) != 1 or None in real_ports or port.get("protocol", "TCP") != "TCP":
            continue
        (real_port,) = real_ports
        entry: Obj = {"name": port.get("name", ""), "port": real_port, "protocol": "TCP"}
        if port.get("appProtocol"):
            entry["appProtocol"] = port["appProtocol"]
        ports.append(entry)
    return {
        "apiVersion": "discovery.k8s.io/v1beta1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{meta['name']}-stand-in",
            "namespace": namespace,
            "labels": {
                "kubernetes.io/service-name": meta["name"],
                "endpointslice.kubernetes.io/managed-by": SLICE_MANAGER,
            },
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [s.address], "conditions": {"ready": True}} for s in chosen] if ports else [],
        "ports": ports,
    }


def self_signed_secret(namespace: str, name: str, hosts: tuple[str, ...]) -> Obj:
    """A `kubernetes.io/tls` Secret holding a new self-signed certificate for `hosts` (as
    upstream's MustCreateSelfSignedCertSecret makes: RSA 2048, the hosts as DNS names)."""
    with tempfile.TemporaryDirectory() as directory:
        key, certificate = Path(directory) / "tls.key", Path(directory) / "tls.crt"
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                "-keyout", str(key), "-out", str(certificate), "-subj", f"/O=gateway-conformance/CN={hosts[0]}",
                "-addext", "subjectAltName=" + ",".join(f"DNS:{host}" for host in hosts),
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
        data = {"tls.crt": certificate.read_bytes(), "tls.key": key.read_bytes()}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": namespace, "labels": dict([SDS_LABEL])},
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
    }


def suite_secrets() -> list[Obj]:
    """The Secrets of `SUITE_SECRETS`, then the BackendTLSPolicy tests' CA ConfigMaps and server
    certificate (tls_echo.py), each with a new certificate."""
    made = [self_signed_secret(namespace, name, hosts) for namespace, name, hosts in SUITE_SECRETS]
    return [*made, *backend_tls_objects()]


def gateway_class(name: str) -> Obj:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "GatewayClass",
        "metadata": {"name": name},
        "spec": {"controllerName": CONTROLLER_NAME},
    }


ENDPOINT_SLICE_V1 = "discovery.k8s.io/v1"
ENDPOINT_SLICE_SERVED = "discovery.k8s.io/v1beta1"


def as_served_endpoint_slice(obj: Obj) -> Obj:
    """`obj` as the 1.20 API server can store it: an EndpointSlice of `discovery.k8s.io/v1` becomes
    `v1beta1` (each endpoint's `zone` moved to `topology`, `hints` left out, which v1beta1 lacks);
    any other object is returned as it is."""
    if obj.get("kind") != "EndpointSlice" or obj.get("apiVersion") != ENDPOINT_SLICE_V1:
        return obj
    obj["apiVersion"] = ENDPOINT_SLICE_SERVED
    for endpoint in obj.get("endpoints") or ():
        endpoint.pop("hints", None)
        if (zone := endpoint.pop("zone", None)) is not None:
            endpoint.setdefault("topology", {})["topology.kubernetes.io/zone"] = zone
    return obj


@dataclass
class Applied:
    """What `ClusterState.apply` did: objects created or updated, and objects skipped with why."""

    objects: list[Obj] = field(default_factory=list)
    skipped: list[tuple[tuple[str, str, str], str]] = field(default_factory=list)


class ClusterState:
    """Applies and removes objects through `client` (an admin client of a real API server)."""

    def __init__(self, client: ApiClient) -> None:
        self.client = client
        self._resources: dict[str, dict[str, tuple[str, str, bool]] | None] = {}

    async def resource(self, api_version: str, kind: str) -> tuple[str, str, bool] | str:
        """(group-version path, plural, namespaced) of `kind` in `api_version`, or why it is not served."""
        if api_version not in self._resources:
            base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
            status, answer = await call(self.client, "GET", base)
            self._resources[api_version] = (
                {
                    r["kind"]: (base, r["name"], bool(r["namespaced"]))
                    for r in answer["resources"]
                    if "/" not in r["name"]
                }
                if status == 200
                else None
            )
        served = self._resources[api_version]
        if served is None:
            return f"the API server does not serve {api_version}"
        if kind not in served:
            return f"the API server serves no {kind} in {api_version}"
        return served[kind]

    async def path_of(self, obj: Obj) -> str:
        """The object's REST path; LookupError (saying why) when the server does not serve its kind."""
        found = await self.resource(obj["apiVersion"], obj["kind"])
        if isinstance(found, str):
            raise LookupError(found)
        base, plural, namespaced = found
        _, namespace, name = key_of(obj)
        return (
            f"{base}/namespaces/{namespace or 'default'}/{plural}/{name}" if namespaced else f"{base}/{plural}/{name}"
        )

    async def apply(self, objects: Iterable[Obj]) -> Applied:
        """Creates each object, or merge-patches it when it exists (upstream's create-or-update);
        Namespaces get the `kubernetes.io/metadata.name` label. Skips what the server cannot store."""
        applied = Applied()
        for original in objects:
            obj = as_served_endpoint_slice(copy.deepcopy(original))
            if obj["kind"] == "Namespace":
                labels = obj.setdefault("metadata", {}).setdefault("labels", {})
                labels.setdefault("kubernetes.io/metadata.name", obj["metadata"]["name"])
            try:
                path = await self.path_of(obj)
            except LookupError as reason:
                applied.skipped.append((key_of(obj), str(reason)))
                continue
            status, answer = await call(self.client, "POST", path.rsplit("/", 1)[0], obj)
            if status == 409:
                status, answer = await call(self.client, "PATCH", path, obj, MERGE_PATCH)
            if status not in (200, 201):
                raise RuntimeError(f"{'/'.join(key_of(obj))}: the API server refused it ({status}): {answer}")
            applied.objects.append(answer)
        return applied

    async def delete(self, objects: Iterable[Obj]) -> None:
        """Deletes the objects (in reverse order), but never a Namespace: with no namespace
        controller running, a deleted Namespace would stay Terminating and could not be reused."""
        for obj in reversed(list(objects)):
            if obj["kind"] == "Namespace":
                continue
            try:
                path = await self.path_of(obj)
            except LookupError:
                continue
            status, answer = await call(self.client, "DELETE", path)
            if status not in (200, 202, 404):
                raise RuntimeError(f"{'/'.join(key_of(obj))}: delete refused ({status}): {answer}")

    async def get(self, obj: Obj) -> Obj | None:
        status, answer = await call(self.client, "GET", await self.path_of(obj))
        return answer if status == 200 else None


def endpoint_slices(objects: Iterable[Obj], stand_ins: Iterable[StandIn]) -> list[Obj]:
    """The EndpointSlices for every Service among `objects` (see `endpoint_slice`)."""
    chosen = list(stand_ins)
    found = []
    for obj in objects:
        if obj["kind"] == "Service" and obj["apiVersion"] == "v1":
            slice_ = endpoint_slice(obj, chosen)
            if slice_ is not None:
                found.append(slice_)
    return found


def loopback_addresses(first: int) -> Iterator[str]:
    """127.0.0.`first`, 127.0.0.`first + 1`, ... up to 127.0.0.254."""
    for last in range(first, 255):
        yield f"127.0.0.{last}"


async def start_stand_ins(
    fleet: EchoFleet, objects: Iterable[Obj], addresses: Iterator[str], secrets: Iterable[Obj] = ()
) -> list[StandIn]:
    """Starts a stand-in (each on the next of `addresses`, on a free port) for every echo
    Deployment among `objects` that `fleet` does not serve yet, a gRPC echo for one in gRPC mode;
    returns the new ones. An HTTP one also answers h2c on another free port (echo-basic's 3001)
    and, when its Deployment mounts a TLS Secret for echo-basic's TLS mode, TLS on a third
    (8443), presenting that Secret's certificate: found among `secrets`, else not served."""
    pairs: dict[tuple[str, str], KeyPair] = key_pairs([*secrets, *objects])
    started = []
    for obj in objects:
        if obj["kind"] != "Deployment" or (identity := stand_in_identity(obj)) is None:
            continue
        if (identity.namespace, identity.deployment) in fleet.backends:
            continue
        more: list[tuple[int, int]] = []
        if serves_grpc(obj):
            backend = await start_grpc_echo(fleet, identity, next(addresses), free_port())
        else:
            backend = await fleet.start(identity, next(addresses), free_port())
            more.append((H2C_PORT, free_port()))
            await serve_h2c(fleet, backend, more[-1][1])
            secret = tls_secret_name(obj)
            if secret is not None and (pair := pairs.get((identity.namespace, secret))) is not None:
                more.append((TLS_PORT, free_port()))
                await serve_tls(fleet, backend, more[-1][1], pair)
        started.append(
            StandIn(identity.namespace, pod_labels(obj), backend.address, backend.port, more_ports=tuple(more))
        )
    return started
