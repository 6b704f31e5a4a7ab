"""deploy/gitops/ without a cluster: every kustomization renders, and the Flux objects have the
shape Flux reads.

Flux does not run here and its CRDs are not installed anywhere in these tests, so the Flux objects
(`GitRepository`, `Kustomization`) are checked by their shape against the fields of their APIs
(source.toolkit.fluxcd.io/v1, kustomize.toolkit.fluxcd.io/v1), not by an API server's validation.
What Flux would do with them is what `kubectl kustomize` does with their `path`s: each is built
here from the repository as a clean clone holds it (nothing added, nothing written beside it).

One folder is not built: deploy/gitops/gateway-api-crds/ names the Gateway API release's manifest
by URL, which kustomize (and Flux) fetch from github.com when they build it, and these tests run
without the network. Its shape is checked instead: it holds nothing but its kustomization, whose
one resource is the standard channel's `standard-install.yaml` of a release meshplane supports
(the version the Gateway API tests apply, from the shared folder's copy of that release).
tests/k8s/test_gitops_apply.py applies what the other folders render.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from meshplane.discovery.gateway_api.class_status import SUPPORTED_VERSIONS
from meshplane.discovery.meshplane_api.kinds import API_VERSION, KINDS
from meshplane.discovery.meshplane_api.objects import parse_object
from tests.k8s.gateway_api_crds import VERSION as GATEWAY_API_VERSION
from tests.k8s.real_apiserver import REPO
from tests.preconditions import require

GITOPS = REPO / "deploy" / "gitops"
FLUX = GITOPS / "flux"
CONFIG = GITOPS / "config"
KUSTOMIZATION = "kustomization.yaml"
SOURCE_API = "source.toolkit.fluxcd.io/v1"
KUSTOMIZE_API = "kustomize.toolkit.fluxcd.io/v1"
# The fields of the two Flux kinds' specs that these objects may use (their v1 APIs), and the ones
# Flux requires.
GIT_REPOSITORY_FIELDS = {"interval", "url", "ref", "secretRef", "ignore", "timeout", "recurseSubmodules", "verify"}
KUSTOMIZATION_FIELDS = {
    "interval", "retryInterval", "timeout", "sourceRef", "path", "prune", "wait", "dependsOn", "healthChecks",
    "healthCheckExprs", "targetNamespace", "patches", "suspend", "force", "serviceAccountName",
}  # fmt: skip
KUSTOMIZATION_REQUIRED = {"interval", "sourceRef", "prune"}
# A Go duration, as Flux's intervals and timeouts are written ("1m", "30s", "1h30m").
GO_DURATION = re.compile(r"(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+")
KUBECTL_MISSING = None if shutil.which("kubectl") else "kubectl is not installed (it builds the kustomizations)"
GATEWAY_API_CRDS = GITOPS / "gateway-api-crds"
# Fetched by URL when built (see the module docstring): not built here.
FETCHED = "./deploy/gitops/gateway-api-crds"
RELEASE_URL = re.compile(
    r"https://github\.com/kubernetes-sigs/gateway-api/releases/download/(v\d+\.\d+\.\d+)/standard-install\.yaml"
)


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def flux_objects() -> list[dict[str, Any]]:
    listed = yaml.safe_load((FLUX / KUSTOMIZATION).read_text())["resources"]
    return [document for name in listed for document in documents(FLUX / name)]


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [obj for obj in flux_objects() if obj["kind"] == kind]


def kustomize(folder: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize folder`'s objects; fails with kustomize's own words."""
    require(KUBECTL_MISSING)
    built = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, f"kubectl kustomize {folder}: {built.stderr}"
    return [d for d in yaml.safe_load_all(built.stdout) if d is not None]


def test_every_folder_of_gitops_lists_every_file_it_holds() -> None:
    for path in sorted(GITOPS.rglob(KUSTOMIZATION)):
        listed = yaml.safe_load(path.read_text())["resources"]
        here = sorted(p.name for p in path.parent.iterdir() if p.name != KUSTOMIZATION)
        files = sorted(r for r in listed if not r.startswith("..") and "://" not in r)
        assert files == here, f"{path.relative_to(REPO)} must list every file of its folder, and only those"


def test_the_gateway_api_crds_are_the_pinned_release_manifest_of_a_supported_version() -> None:
    """What a clean clone builds: no file to vendor, one URL of one supported release."""
    (resource,) = yaml.safe_load((GATEWAY_API_CRDS / KUSTOMIZATION).read_text())["resources"]
    found = RELEASE_URL.fullmatch(resource)
    assert found is not None, f"{resource} is not a Gateway API release's standard-install.yaml"
    assert urlparse(resource).scheme == "https"
    assert SUPPORTED_VERSIONS.fullmatch(found.group(1)), found.group(1)
    assert found.group(1) == GATEWAY_API_VERSION  # the release the Gateway API tests apply
    assert sorted(p.name for p in GATEWAY_API_CRDS.iterdir()) == [KUSTOMIZATION]


def test_the_git_repository_is_the_one_source_and_has_what_flux_requires() -> None:
    (repository,) = of_kind("GitRepository")
    assert repository["apiVersion"] == SOURCE_API
    spec = repository["spec"]
    assert set(spec) <= GIT_REPOSITORY_FIELDS, set(spec) - GIT_REPOSITORY_FIELDS
    assert GO_DURATION.fullmatch(spec["interval"])
    assert re.match(r"(https|ssh)://", spec["url"])
    assert set(spec["ref"]) <= {"branch", "tag", "semver", "name", "commit"}
    assert spec["ref"]
    for kustomization in of_kind("Kustomization"):
        assert kustomization["spec"]["sourceRef"] == {"kind": "GitRepository", "name": repository["metadata"]["name"]}
        assert kustomization["metadata"]["namespace"] == repository["metadata"]["namespace"] == "flux-system"


def test_every_kustomization_has_the_shape_flux_reads() -> None:
    kustomizations = of_kind("Kustomization")
    assert len(kustomizations) == 4
    for kustomization in kustomizations:
        assert kustomization["apiVersion"] == KUSTOMIZE_API
        spec = kustomization["spec"]
        name = kustomization["metadata"]["name"]
        assert KUSTOMIZATION_REQUIRED <= set(spec) <= KUSTOMIZATION_FIELDS, (name, set(spec))
        for field in ("interval", "retryInterval", "timeout"):
            assert field not in spec or GO_DURATION.fullmatch(spec[field]), (name, field)
        assert isinstance(spec["prune"], bool)
        assert isinstance(spec.get("wait", False), bool)
        assert spec["path"].startswith("./"), name
        for dependency in spec.get("dependsOn", ()):
            assert set(dependency) <= {"name", "namespace"}


def test_crds_come_before_meshplane_and_meshplane_before_the_config() -> None:
    depends = {
        k["metadata"]["name"]: {d["name"] for d in k["spec"].get("dependsOn", ())} for k in of_kind("Kustomization")
    }
    by_path = {k["spec"]["path"]: k["metadata"]["name"] for k in of_kind("Kustomization")}
    crds = {by_path["./deploy/kubernetes/crds"], by_path["./deploy/gitops/gateway-api-crds"]}
    meshplane = by_path["./deploy/gitops/meshplane"]
    config = by_path["./deploy/gitops/config"]
    assert depends[meshplane] == crds
    assert depends[config] == {meshplane}
    assert all(not depends[name] for name in crds)


def test_only_crds_are_never_pruned() -> None:
    for kustomization in of_kind("Kustomization"):
        crds_only = "crds" in kustomization["spec"]["path"]
        assert kustomization["spec"]["prune"] is not crds_only, kustomization["metadata"]["name"]


def test_the_config_health_checks_cover_every_kind_of_ours_by_their_conditions() -> None:
    (config,) = [k for k in of_kind("Kustomization") if k["spec"]["path"] == "./deploy/gitops/config"]
    expressions = config["spec"]["healthCheckExprs"]
    assert {(e["apiVersion"], e["kind"]) for e in expressions} == {(API_VERSION, kind.name) for kind in KINDS}
    for expression in expressions:
        assert set(expression) <= {"apiVersion", "kind", "current", "inProgress", "failed"}
        assert "'Accepted'" in expression["failed"]
        assert "metadata.generation" in expression["failed"]
        assert "'Programmed'" in expression["current"]
        assert "metadata.generation" in expression["current"]


@pytest.mark.parametrize(
    "folder",
    sorted(
        str(path.parent.relative_to(REPO))
        for top in ("deploy/gitops", "deploy/kubernetes")
        for path in (REPO / top).rglob(KUSTOMIZATION)
        if path.parent != GATEWAY_API_CRDS  # fetched by URL: see the module docstring
    ),
)
def test_every_kustomization_renders_from_a_clean_clone(folder: str) -> None:
    assert kustomize(REPO / folder), f"{folder} renders nothing"


def test_every_flux_path_renders_what_it_is_for() -> None:
    paths = [k["spec"]["path"] for k in of_kind("Kustomization")]
    assert FETCHED in paths
    rendered = {path: kustomize(REPO / path) for path in paths if path != FETCHED}
    for path, objects in rendered.items():
        kinds = {obj["kind"] for obj in objects}
        if "crds" in path:
            assert kinds == {"CustomResourceDefinition"} | (
                {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"} & kinds
            ), path
    ours = {crd["spec"]["names"]["kind"] for crd in rendered["./deploy/kubernetes/crds"]}
    assert ours == {kind.name for kind in KINDS}
    (deployment,) = [o for o in rendered["./deploy/gitops/meshplane"] if o["kind"] == "Deployment"]
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MESHPLANE_KUBERNETES"] == env["MESHPLANE_GATEWAY_API"] == env["MESHPLANE_MESHPLANE_API"] == "true"
    roles = {o["metadata"]["name"] for o in rendered["./deploy/gitops/meshplane"] if o["kind"] == "ClusterRole"}
    assert len(roles) >= 3, roles  # the base's, the Gateway API's, the meshplane API's


def test_the_config_folder_holds_each_kind_it_shows_and_every_object_of_ours_parses() -> None:
    objects = kustomize(CONFIG)
    kinds = {obj["kind"] for obj in objects}
    assert {"ExternalService", "TrafficPolicy", "MeshRoute", "EdgeSite", "Gateway", "HTTPRoute"} <= kinds
    for obj in objects:
        if obj["apiVersion"] == API_VERSION:
            parsed = parse_object(obj)
            assert parsed.errors == (), (obj["kind"], obj["metadata"]["name"], parsed.errors)
