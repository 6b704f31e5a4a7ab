"""What the tests of meshplane's own API (group meshplane.io) on a real kube-apiserver share: the
CRDs (those of deploy/kubernetes/crds/ when that folder holds them, else minimal ones that keep
every field and serve `/status`), objects of each kind, reading their conditions, namespaces, a
running source, and a control plane with the API on.

The module's `cluster` and `server` come from `gateway_api_fixtures.cluster_fixtures`; the wait is
its `until` (polls a condition with a deadline, failing with what it last saw).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from kubernetes_asyncio.client import ApiClient

from meshplane.app import Settings
from meshplane.discovery.meshplane_api.kinds import API_VERSION, GROUP, KINDS, VERSION, Kind, kind_named
from meshplane.discovery.meshplane_api.source import MeshplaneApiSource, crd_name
from tests.k8s.conftest import FAST_BACKOFF
from tests.k8s.gateway_api_fixtures import ensure_crds, ensure_meshplane_class
from tests.k8s.real_apiserver import CRDS, MERGE_PATCH, REPO, RealApiServer, call, call_ok, wait_established

CRD_FOLDER = REPO / "deploy" / "kubernetes" / "crds"
DEPLOY = REPO / "deploy" / "kubernetes"


def minimal_crd(kind: Kind) -> dict[str, Any]:
    """A CRD for `kind` that keeps every field as sent and serves the status subresource (for a
    tree without the generated CRDs)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": crd_name(kind)},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced" if kind.namespaced else "Cluster",
            "names": {"kind": kind.name, "plural": kind.plural, "singular": kind.singular, "listKind": kind.list_kind},
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
                }
            ],
        },
    }


def our_crds() -> list[dict[str, Any]]:
    """The CRDs to install: the generated ones of deploy/kubernetes/crds/ when present (every
    kind's), else `minimal_crd` of each kind."""
    found: dict[str, dict[str, Any]] = {}
    if CRD_FOLDER.is_dir():
        for path in sorted(CRD_FOLDER.glob("*.yaml")):
            for document in yaml.safe_load_all(path.read_text()):
                if isinstance(document, dict) and document.get("kind") == "CustomResourceDefinition":
                    found[document["metadata"]["name"]] = document
    if all(crd_name(kind) in found for kind in KINDS):
        return [found[crd_name(kind)] for kind in KINDS]
    return [minimal_crd(kind) for kind in KINDS]


async def install_crds(admin: ApiClient) -> None:
    """Our CRDs, created (those already there are left) and Established."""
    for crd in our_crds():
        status, answer = await call(admin, "POST", CRDS, crd)
        assert status in (201, 409), answer
    await wait_established(admin, [crd_name(kind) for kind in KINDS], deadline=120.0)


def path_of(kind: str, namespace: str = "", name: str = "") -> str:
    """The REST path of kind `kind`'s collection (in `namespace` when namespaced), or of object `name`."""
    found = kind_named(kind)
    assert found is not None, kind
    where = f"/namespaces/{namespace}" if found.namespaced else ""
    collection = f"/apis/{GROUP}/{VERSION}{where}/{found.plural}"
    return f"{collection}/{name}" if name else collection


def manifest(kind: str, name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    found = kind_named(kind)
    assert found is not None, kind
    metadata: dict[str, Any] = {"name": name}
    if found.namespaced:
        metadata["namespace"] = namespace
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": metadata, "spec": spec}


async def create(admin: ApiClient, kind: str, name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    return dict(await call_ok(admin, "POST", path_of(kind, namespace), manifest(kind, name, namespace, spec)))


async def set_spec(admin: ApiClient, kind: str, name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Replaces the spec of the object (a merge patch setting `spec` whole: the old keys nulled)."""
    current = await read(admin, kind, name, namespace)
    patch = {key: None for key in current.get("spec") or {}} | spec
    return dict(await call_ok(admin, "PATCH", path_of(kind, namespace, name), {"spec": patch}, MERGE_PATCH))


async def read(admin: ApiClient, kind: str, name: str, namespace: str = "") -> dict[str, Any]:
    return dict(await call_ok(admin, "GET", path_of(kind, namespace, name)))


async def delete(admin: ApiClient, kind: str, name: str, namespace: str = "") -> None:
    status, answer = await call(admin, "DELETE", path_of(kind, namespace, name))
    assert status in (200, 202, 404), answer


def conditions_of(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


async def namespace(admin: ApiClient, name: str) -> str:
    status, answer = await call(
        admin, "POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    )
    assert status in (201, 409), answer
    return name


def manifests(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


@pytest.fixture
async def admin(server: RealApiServer) -> AsyncIterator[ApiClient]:
    client = server.client()
    yield client
    await client.close()


@pytest.fixture(name="admin")
async def admin_of_both_apis(server: RealApiServer) -> AsyncIterator[ApiClient]:
    """An admin client of a server holding both APIs' CRDs and the GatewayClass `meshplane`
    (import it as the `admin` of a module that needs both)."""
    client = server.client()
    await ensure_crds(client)
    await ensure_meshplane_class(client)
    await install_crds(client)
    yield client
    await client.close()


SourceFactory = Callable[..., Awaitable[MeshplaneApiSource]]


@pytest.fixture
async def running(admin: ApiClient) -> AsyncIterator[SourceFactory]:
    """Starts MeshplaneApiSources (through `admin` unless given a client or kubeconfig); stopped at the end."""
    tasks: list[asyncio.Task[None]] = []

    async def run(**options: Any) -> MeshplaneApiSource:
        if "kubeconfig" not in options:
            options.setdefault("client", admin)
        options.setdefault("backoff", FAST_BACKOFF)
        options.setdefault("rng", random.Random(7))
        source = MeshplaneApiSource(**options)
        tasks.append(asyncio.create_task(source.run()))
        return source

    yield run
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def plane_settings(server: RealApiServer, kubeconfig: Path, **more: Any) -> Settings:
    """A control plane on `server` (Kubernetes and meshplane's API on), its ports free, quick to react."""
    options: dict[str, Any] = {
        "kubernetes": True,
        "meshplane_api": True,
        "kubeconfig": kubeconfig,
        "xds_address": "127.0.0.1:0",
        "status_address": "127.0.0.1:0",
        "debounce_quiet": 0.01,
        "debounce_max": 0.1,
        "shutdown_grace": 0.2,
    }
    return Settings(**(options | more))


async def status_document(port: int) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/status") as response:
        return dict(await response.json())


async def source_entry(port: int, name: str = "meshplane-api") -> dict[str, Any] | None:
    document = await status_document(port)
    return next((source for source in document["sources"] if source["name"] == name), None)


async def readyz(port: int) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/readyz") as response:
        return response.status, await response.text()
