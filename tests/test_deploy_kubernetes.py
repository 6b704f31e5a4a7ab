"""deploy/kubernetes/: every manifest parsed, and the fields meshplane relies on checked against
meshplane itself (its flags, its policy validation, its bootstrap renderer, the Envoy the tests run).

Every *.yaml under deploy/ is parsed, and every Kubernetes manifest below deploy/kubernetes/ is
checked generically (names, namespaces, kustomizations listing every file, RBAC granting no writes
and no wildcards), so manifests added later are covered too. Then what ties the pieces together:
selectors and labels, Service target ports and container ports, MESHPLANE_* variables that are
real flags, volumes backed by ConfigMaps of these manifests, the policy ConfigMap passing
`meshplane validate`, the sidecar bootstrap ConfigMap equal to `meshplane bootstrap`'s output and
valid for Envoy, RBAC, probes and the security context, and the scrape configs (pod annotations,
monitoring/'s PodMonitor and ServiceMonitor) against the ports they name. Last, a real
kube-apiserver (1.20, built by `make kube-apiserver`) accepts every manifest without dropping a
field (it has no policy/v1, so the PodDisruptionBudget is left out there; prometheus-operator's
CRDs are not installed there, so PodMonitor and ServiceMonitor are checked by their shape and by
`kubectl kustomize`, not by the server).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import shlex
import shutil
import ssl
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from meshplane.bootstrap.render import KUBERNETES_STATS_ADDRESS, STATS_LISTENER
from meshplane.cli import _parser
from meshplane.flags import variable_of
from meshplane.registry_api.options import store_url
from tests.envoy_harness import REPO, validate_bootstrap
from tests.k8s.gateway_api_crds import GATEWAY_API_MISSING, standard_crds
from tests.k8s.real_apiserver import ADMIN_TOKEN, CRDS, KUBE_MISSING, Cluster, module_cluster
from tests.meshplane_env import only_these_variables, without_meshplane_variables
from tests.preconditions import require, requires

DEPLOY = REPO / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
KUSTOMIZATION = "kustomization.yaml"
APP_LABEL = {"app.kubernetes.io/name": "meshplane"}
# Kinds without a namespace; every other kind in these manifests must name its namespace.
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "PersistentVolume",
    "StorageClass",
    "GatewayClass",
    "CustomResourceDefinition",
}
READ_VERBS = {"get", "list", "watch"}
# The one write meshplane's roles grant: status conditions on the Gateway API objects it owns.
GATEWAY_API_GROUP = "gateway.networking.k8s.io"
STATUS_WRITE_VERBS = {"patch"}
RFC1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


@dataclass(frozen=True)
class Manifest:
    path: Path
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.body["kind"])

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    @property
    def namespace(self) -> str | None:
        namespace = self.body["metadata"].get("namespace")
        return None if namespace is None else str(namespace)


def yaml_files(folder: Path) -> list[Path]:
    return sorted(path for pattern in ("*.yaml", "*.yml") for path in folder.rglob(pattern))


def load_manifests() -> list[Manifest]:
    return [
        Manifest(path, document)
        for path in yaml_files(KUBERNETES)
        if path.name != KUSTOMIZATION
        for document in yaml.safe_load_all(path.read_text())
        if document is not None
    ]


MANIFESTS = load_manifests()


def one(kind: str, name: str | None = None) -> Manifest:
    found = [m for m in MANIFESTS if m.kind == kind and (name is None or m.name == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[str(m.path) for m in found]}"
    return found[0]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


@dataclass(frozen=True)
class Workload:
    """A workload running `meshplane serve`, its one container, and the one Service selecting it."""

    manifest: Manifest

    @property
    def pod(self) -> dict[str, Any]:
        return dict(self.manifest.body["spec"]["template"])

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.pod["metadata"]["labels"])

    @property
    def container(self) -> dict[str, Any]:
        (container,) = self.pod["spec"]["containers"]
        return dict(container)

    @property
    def container_ports(self) -> dict[str, int]:
        return {port["name"]: port["containerPort"] for port in self.container["ports"]}

    @property
    def service(self) -> Manifest:
        (service,) = [
            m
            for m in MANIFESTS
            if m.kind == "Service"
            and m.namespace == self.manifest.namespace
            and selects(m.body["spec"]["selector"], self.labels)
        ]
        return service

    def serve(self) -> argparse.Namespace:
        """The container's args, parsed by meshplane's real parser with the container's environment."""
        with only_these_variables(env_of(self.container)):
            return _parser().parse_args([*self.container.get("command", [])[1:], *self.container["args"]])

    def __str__(self) -> str:
        return f"{self.manifest.kind}/{self.manifest.name}"


DEPLOYMENT = Workload(one("Deployment", "meshplane"))
EDGE = Workload(one("Deployment", "meshplane-edge"))
WORKLOADS = [DEPLOYMENT, EDGE]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env", []) if "value" in item}


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


def meshplane(*arguments: str) -> subprocess.CompletedProcess[str]:
    clean = without_meshplane_variables()
    return subprocess.run(
        [sys.executable, "-m", "meshplane", *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean,
        cwd=REPO,
        check=False,
    )


# --- every file, generically ---------------------------------------------------------------------


@pytest.mark.parametrize("path", yaml_files(DEPLOY), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_under_deploy_parses(path: Path) -> None:
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert documents, f"{path} is empty"
    assert all(isinstance(document, dict) for document in documents)


def test_every_manifest_names_its_kind_name_and_namespace() -> None:
    assert MANIFESTS
    seen = set()
    for manifest in MANIFESTS:
        body, where = manifest.body, manifest.path.relative_to(REPO)
        assert isinstance(body.get("apiVersion"), str), where
        assert isinstance(body.get("kind"), str), where
        assert RFC1123_SUBDOMAIN.fullmatch(manifest.name), f"{where}: {manifest.name!r}"
        if manifest.kind in CLUSTER_SCOPED:
            assert manifest.namespace is None, f"{where}: a {manifest.kind} has no namespace"
        else:
            assert manifest.namespace, f"{where}: {manifest.kind} {manifest.name} names no namespace"
            assert RFC1123_SUBDOMAIN.fullmatch(manifest.namespace), where
        key = (body["apiVersion"].partition("/")[0], manifest.kind, manifest.namespace, manifest.name)
        assert key not in seen, f"{where}: {key} is defined twice"
        seen.add(key)


def test_every_namespace_used_exists_here_or_is_default() -> None:
    namespaces = {m.name for m in MANIFESTS if m.kind == "Namespace"}
    used = {m.namespace for m in MANIFESTS if m.namespace is not None}
    assert used <= namespaces | {"default"}


def kustomizations() -> list[Path]:
    return sorted(KUBERNETES.rglob(KUSTOMIZATION))


def test_every_manifest_folder_has_a_kustomization_listing_every_file() -> None:
    folders = {path.parent for path in yaml_files(KUBERNETES)}
    assert folders == {path.parent for path in kustomizations()}, "each folder of manifests is a kustomization"
    for path in kustomizations():
        kustomization = yaml.safe_load(path.read_text())
        assert kustomization["kind"] == "Kustomization"
        resources = kustomization["resources"]
        assert len(resources) == len(set(resources)), f"{path}: a resource listed twice"
        files = [r for r in resources if (path.parent / r).is_file()]
        folders_listed = [r for r in resources if (path.parent / r).is_dir()]
        assert len(files) + len(folders_listed) == len(resources), f"{path}: lists what does not exist"
        assert all((path.parent / r / KUSTOMIZATION).is_file() for r in folders_listed), path
        here = sorted(p.name for p in yaml_files(path.parent) if p.parent == path.parent and p.name != KUSTOMIZATION)
        assert sorted(files) == here, f"{path} must list every manifest of its folder"


# --- RBAC ----------------------------------------------------------------------------------------


def rules_by_resource(role: Manifest) -> dict[tuple[str, str], set[str]]:
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role.body["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    return granted


def test_rbac_grants_reads_only_and_no_wildcards() -> None:
    roles = [m for m in MANIFESTS if m.kind in ("Role", "ClusterRole")]
    assert roles
    for role in roles:
        for rule in role.body["rules"]:
            assert "*" not in [*rule.get("apiGroups", []), *rule.get("resources", []), *rule["verbs"]], role.path
            if set(rule["verbs"]) - READ_VERBS:
                # Only status subresources of the Gateway API or of meshplane's own API, and only
                # patched: never an object itself.
                writes = f"{role.path}: {role.name} writes {rule}"
                assert rule["apiGroups"] in ([GATEWAY_API_GROUP], ["meshplane.io"]), writes
                assert all(resource.endswith("/status") for resource in rule["resources"]), f"{role.path}: {rule}"
                assert set(rule["verbs"]) <= STATUS_WRITE_VERBS, f"{role.path}: {role.name} grants {rule['verbs']}"
            assert "nonResourceURLs" not in rule, role.path
    for binding in (m for m in MANIFESTS if m.kind in ("RoleBinding", "ClusterRoleBinding")):
        reference = binding.body["roleRef"]
        assert reference["apiGroup"] == "rbac.authorization.k8s.io"
        role = one(reference["kind"], reference["name"])
        if role.kind == "Role":
            assert role.namespace == binding.namespace, binding.path
        for subject in binding.body["subjects"]:
            if subject["kind"] == "ServiceAccount":
                one("ServiceAccount", subject["name"])


def test_discovery_gets_exactly_list_and_watch_on_services_and_endpointslices_for_the_deployment() -> None:
    role = one("ClusterRole", "meshplane-discovery")
    assert rules_by_resource(role) == {
        ("", "services"): {"list", "watch"},
        ("discovery.k8s.io", "endpointslices"): {"list", "watch"},
    }
    binding = one("ClusterRoleBinding", "meshplane-discovery")
    assert binding.body["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role.name,
    }
    for workload in WORKLOADS:
        account = workload.pod["spec"]["serviceAccountName"]
        namespace = workload.manifest.namespace
        assert binding.body["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": namespace}]
        assert one("ServiceAccount", account).namespace == namespace


# --- the Deployment, its Service and its PodDisruptionBudget -------------------------------------


def test_deployment_service_and_budget_select_the_same_pods() -> None:
    labels = DEPLOYMENT.labels
    assert selects(APP_LABEL, labels)
    assert DEPLOYMENT.service.name == "meshplane"
    budget = one("PodDisruptionBudget", "meshplane")
    assert budget.body["apiVersion"] == "policy/v1"
    assert budget.namespace == DEPLOYMENT.manifest.namespace
    assert set(budget.body["spec"]["selector"]) == {"matchLabels"}
    assert selects(budget.body["spec"]["selector"]["matchLabels"], labels)
    assert not selects(budget.body["spec"]["selector"]["matchLabels"], EDGE.labels)


@pytest.mark.parametrize("workload", WORKLOADS, ids=str)
def test_each_workload_selects_its_own_pods_and_no_one_elses(workload: Workload) -> None:
    assert workload.manifest.body["spec"]["selector"] == {"matchLabels": workload.labels}
    assert workload.service.namespace == workload.manifest.namespace
    for other in WORKLOADS:
        if other is not workload:
            assert not selects(workload.labels, other.labels), f"{workload} would select the pods of {other}"
            assert workload.service.name != other.service.name


def test_two_replicas_spread_over_nodes_and_the_budget_keeps_one() -> None:
    assert DEPLOYMENT.manifest.body["spec"]["replicas"] == 2
    assert one("PodDisruptionBudget", "meshplane").body["spec"]["minAvailable"] == 1
    spread = DEPLOYMENT.pod["spec"]["topologySpreadConstraints"]
    assert "kubernetes.io/hostname" in {constraint["topologyKey"] for constraint in spread}
    for constraint in spread:
        assert constraint["maxSkew"] == 1
        assert constraint["labelSelector"] == {"matchLabels": DEPLOYMENT.labels}


@pytest.mark.parametrize("workload", WORKLOADS, ids=str)
def test_service_target_ports_name_container_ports(workload: Workload) -> None:
    container_ports = workload.container_ports
    ports = workload.service.body["spec"]["ports"]
    for port in ports:
        target = port["targetPort"]
        assert target in container_ports, f"Service port {port['name']}: no container port {target!r}"
        assert port["port"] == container_ports[target], "the Service keeps the container's port numbers"
    assert {port["name"] for port in ports} == set(container_ports)


def serve_variables() -> set[str]:
    """Every MESHPLANE_* variable `meshplane serve` reads: a flag's own variable, or one its help names."""
    parser = _parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    serve = commands.choices["serve"]
    known: set[str] = set()
    for action in serve._actions:
        known.update(variable_of(flag) for flag in action.option_strings if flag.startswith("--"))
        known.update(re.findall(r"MESHPLANE_[A-Z_]+", action.help or ""))
    return known


@pytest.mark.parametrize("workload", WORKLOADS, ids=str)
def test_every_meshplane_variable_is_a_real_flag_and_takes_effect(workload: Workload) -> None:
    variables = {name: value for name, value in env_of(workload.container).items() if name.startswith("MESHPLANE_")}
    assert variables
    unknown = set(variables) - serve_variables()
    assert not unknown, f"not variables of `meshplane serve`: {sorted(unknown)}"
    args = workload.serve()
    assert args.command == "serve"
    assert args.kubernetes is True
    assert args.config == Path(variables["MESHPLANE_CONFIG"])
    ports = workload.container_ports
    assert port_of(args.xds_address) == ports["grpc-xds"]
    assert port_of(args.status_address) == ports["http-status"]
    assert ipaddress.ip_address(args.xds_address.rpartition(":")[0]).is_unspecified, "reachable from other pods"


def test_the_edge_registry_is_off_in_the_replicated_deployment() -> None:
    """Sidecars' control plane needs no database: the registry runs in the edge Deployment only."""
    assert DEPLOYMENT.serve().registry_db is None
    assert DEPLOYMENT.manifest.body["spec"]["replicas"] > 1
    header = DEPLOYMENT.manifest.path.read_text().split("apiVersion:")[0]
    assert "registry" in header, "the header says why it is off"


EDGE_STORE_SECRET = "meshplane-registry-store"


def edge_store_url_example() -> str:
    """The `url` the edge kustomization's `kubectl create secret` line gives its Secret."""
    text = (EDGE.manifest.path.parent / KUSTOMIZATION).read_text()
    found = re.search(rf"create secret generic {EDGE_STORE_SECRET} .*?--from-literal=url='([^']+)'", text, re.DOTALL)
    assert found is not None, f"the kustomization says how to create {EDGE_STORE_SECRET}"
    return found.group(1)


def test_the_edge_registry_runs_three_replicas_on_postgresql_and_no_volume() -> None:
    """Any number of replicas share the registry in PostgreSQL: nothing of it lives in a pod, so no
    PersistentVolumeClaim, and no SQLite file."""
    assert EDGE.manifest.kind == "Deployment"
    spec = EDGE.manifest.body["spec"]
    assert spec["replicas"] == 3
    assert "volumeClaimTemplates" not in spec
    assert all(set(volume) & {"configMap", "secret"} for volume in EDGE.pod["spec"]["volumes"])
    with only_these_variables({**env_of(EDGE.container), "MESHPLANE_REGISTRY_STORE": edge_store_url_example()}):
        args = _parser().parse_args(EDGE.container["args"])
    assert args.registry_db is None
    assert store_url(args.registry_store) == args.registry_store, "the example URL holds no password"
    ports = EDGE.container_ports
    assert port_of(args.registry_address) == ports["grpc-registry"]
    assert port_of(args.registry_http_address) == ports["http-registry"]
    # Rolling updates keep as many ready as the budget does.
    rolling = spec["strategy"]["rollingUpdate"]
    assert (
        spec["replicas"] - rolling["maxUnavailable"]
        >= one("PodDisruptionBudget", "meshplane-edge").body["spec"]["minAvailable"]
    )


def secret_volume(workload: Workload, secret: str) -> tuple[dict[str, Any], PurePosixPath]:
    """The volume mounting `secret`, and where."""
    (volume,) = [v for v in workload.pod["spec"]["volumes"] if v.get("secret", {}).get("secretName") == secret]
    (mount,) = [m for m in workload.container["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True
    return volume, PurePosixPath(mount["mountPath"])


def test_the_edge_database_address_and_password_come_from_a_secret_the_password_as_a_file() -> None:
    """The URL from the Secret's `url` key (an environment variable: it holds no password), the
    password from its `password` key as a file readable by the image's group only, never in an
    environment variable; the Secret is created by the user as the kustomization and docs say."""
    env = {item["name"]: item for item in EDGE.container["env"]}
    assert env["MESHPLANE_REGISTRY_STORE"]["valueFrom"] == {"secretKeyRef": {"name": EDGE_STORE_SECRET, "key": "url"}}
    from_secrets = {name for name, item in env.items() if "valueFrom" in item}
    assert from_secrets == {"MESHPLANE_REGISTRY_STORE"}, "only the URL comes from a Secret by variable"
    assert from_secrets <= serve_variables()
    assert "MESHPLANE_REGISTRY_STORE" not in env_of(EDGE.container)
    volume, mounted = secret_volume(EDGE, EDGE_STORE_SECRET)
    (item,) = volume["secret"]["items"]
    assert item["key"] == "password"
    assert PurePosixPath(str(EDGE.serve().registry_store_password_file)) == mounted / item["path"]
    assert volume["secret"]["defaultMode"] & 0o007 == 0, "not readable by other users"
    context = EDGE.pod["spec"]["securityContext"]
    assert context["fsGroup"] == context["runAsGroup"], "the image's group reads it"
    assert not any("PASSWORD" in name and name != "MESHPLANE_REGISTRY_STORE_PASSWORD_FILE" for name in env)
    kustomization = (EDGE.manifest.path.parent / KUSTOMIZATION).read_text()
    assert "--from-file=password=" in kustomization
    for secret in (EDGE_STORE_SECRET, "meshplane-registry-tokens"):
        assert f"create secret generic {secret}" in kustomization
        assert secret in (REPO / "docs" / "deploy.md").read_text(), "docs/deploy.md says how to create it"
        assert not any(m.kind == "Secret" and m.name == secret for m in MANIFESTS), "the user's, not applied here"
    tokens_volume, tokens_at = secret_volume(EDGE, "meshplane-registry-tokens")
    assert tokens_at == PurePosixPath(str(EDGE.serve().registry_tokens)).parent
    assert tokens_volume["name"] != volume["name"]


def test_the_edge_budget_keeps_two_replicas_of_the_edge_pods_only() -> None:
    budget = one("PodDisruptionBudget", "meshplane-edge")
    assert budget.body["apiVersion"] == "policy/v1"
    assert budget.namespace == EDGE.manifest.namespace
    assert budget.body["spec"]["minAvailable"] == 2
    assert set(budget.body["spec"]["selector"]) == {"matchLabels"}
    assert selects(budget.body["spec"]["selector"]["matchLabels"], EDGE.labels)
    assert not selects(budget.body["spec"]["selector"]["matchLabels"], DEPLOYMENT.labels)
    assert budget.body["spec"]["minAvailable"] < EDGE.manifest.body["spec"]["replicas"], "drains can proceed"


def test_edge_replicas_keep_off_each_others_nodes() -> None:
    (term,) = EDGE.pod["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["weight"] == 100
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"] == {"matchLabels": EDGE.labels}


def test_edge_replicas_are_ready_on_readyz_which_the_registry_turns_false_without_its_database() -> None:
    probe = EDGE.container["readinessProbe"]
    assert probe["httpGet"] == {"path": "/readyz", "port": "http-status"}
    assert EDGE.container["livenessProbe"]["httpGet"]["path"] == "/healthz", "a database outage restarts nothing"


@pytest.mark.parametrize("workload", WORKLOADS, ids=str)
def test_probes_ask_readyz_and_healthz_on_the_status_port(workload: Workload) -> None:
    container = workload.container
    assert workload.container_ports["http-status"] == port_of(workload.serve().status_address)
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-status"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-status"}


def dockerfile_user() -> str:
    users = re.findall(r"^USER\s+(\S+)", (REPO / "Dockerfile").read_text(), flags=re.MULTILINE)
    return str(users[-1])


@pytest.mark.parametrize("workload", WORKLOADS, ids=str)
def test_the_pod_runs_as_the_images_non_root_user_with_nothing_extra(workload: Workload) -> None:
    pod = workload.pod["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert f"{pod['runAsUser']}:{pod['runAsGroup']}" == dockerfile_user()
    assert pod["runAsUser"] != 0
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    container = workload.container["securityContext"]
    assert container["allowPrivilegeEscalation"] is False
    assert container["readOnlyRootFilesystem"] is True
    assert container["capabilities"] == {"drop": ["ALL"]}


@pytest.mark.parametrize("workload", WORKLOADS, ids=str)
def test_the_image_is_the_one_the_dockerfile_and_compose_build(workload: Workload) -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert workload.container["image"] == f"meshplane:{version}" == compose["services"]["meshplane"]["image"]


# --- volumes and ConfigMaps ----------------------------------------------------------------------


def config_map_volumes(workload: Workload) -> dict[str, Manifest]:
    found = {}
    for volume in workload.pod["spec"].get("volumes", []):
        assert set(volume) & {"configMap", "secret"}, f"volume {volume['name']}: a ConfigMap or a Secret"
        if "configMap" in volume:
            config_map = one("ConfigMap", volume["configMap"]["name"])
            assert config_map.namespace == workload.manifest.namespace, "a pod mounts ConfigMaps of its namespace"
            found[volume["name"]] = config_map
    return found


@pytest.mark.parametrize("workload", WORKLOADS, ids=str)
def test_volumes_exist_here_and_are_all_mounted(workload: Workload) -> None:
    config_maps = config_map_volumes(workload)
    volumes = {volume["name"] for volume in workload.pod["spec"].get("volumes", [])}
    claims = {claim["metadata"]["name"] for claim in workload.manifest.body["spec"].get("volumeClaimTemplates", [])}
    mounts = {mount["name"]: mount for mount in workload.container.get("volumeMounts", [])}
    assert set(mounts) == volumes | claims, "every volume mounted, every mount backed by a volume"
    assert all(mounts[name]["readOnly"] is True for name in volumes), "configuration is mounted read-only"
    assert config_maps, "the policy files"


def policy_config_map(workload: Workload) -> Manifest:
    """The ConfigMap mounted where MESHPLANE_CONFIG points: a directory of policy files."""
    config = PurePosixPath(str(workload.serve().config))
    volumes = config_map_volumes(workload)
    (mount,) = [m for m in workload.container["volumeMounts"] if PurePosixPath(m["mountPath"]) == config]
    assert "subPath" not in mount, "mounted as a directory, so ConfigMap updates reach the pod"
    return volumes[mount["name"]]


def test_both_workloads_serve_the_same_policy_files() -> None:
    assert policy_config_map(DEPLOYMENT) == policy_config_map(EDGE)


def test_the_policy_configmap_passes_meshplane_validate(tmp_path: Path) -> None:
    config_map = policy_config_map(DEPLOYMENT)
    assert config_map.name == "meshplane-policy"
    for key, text in config_map.body["data"].items():
        assert key.endswith((".yaml", ".yml")), f"{key}: meshplane reads *.yaml and *.yml files only"
        (tmp_path / key).write_text(text)
    # As the Deployment serves it: with Kubernetes discovery, routes may name cluster services.
    flags = ["--kubernetes"] if DEPLOYMENT.serve().kubernetes else []
    result = meshplane("validate", *flags, "--config", str(tmp_path))
    assert result.returncode == 0, result.stderr
    documents = [yaml.safe_load(text) for text in config_map.body["data"].values()]
    assert any(document.get("services") for document in documents), "an example service"
    assert any(document.get("sites") for document in documents), "an example site for the edge registry"


def sidecar_bootstrap() -> tuple[Manifest, str]:
    config_map = one("ConfigMap", "meshplane-sidecar-bootstrap")
    return config_map, config_map.body["data"]["envoy.yaml"]


def rewrite_last_data_key(path: Path, key: str, text: str) -> None:
    """Replaces the value of `key`, the ConfigMap's last data key (a `|` block), keeping the comments."""
    marker = f"\n  {key}: |\n"
    head = path.read_text().split(marker)[0]
    path.write_text(head + marker + "".join(f"    {line}\n" if line else "\n" for line in text.splitlines()))
    assert yaml.safe_load(path.read_text())["data"][key] == text


def test_the_sidecar_bootstrap_configmap_is_what_meshplane_bootstrap_renders(update_golden: bool) -> None:
    """`pytest --update-golden` renders it again when the renderer changed."""
    config_map, text = sidecar_bootstrap()
    command = shlex.split(config_map.body["metadata"]["annotations"]["meshplane.io/rendered-by"])
    assert command[:3] == ["meshplane", "bootstrap", "sidecar"]
    service = DEPLOYMENT.service
    xds_port = next(p["port"] for p in service.body["spec"]["ports"] if p["targetPort"] == "grpc-xds")
    server = f"{service.name}.{service.namespace}.svc.cluster.local:{xds_port}"
    assert command[3:5] == ["--xds-server", server], "the Service of these manifests, by its cluster DNS name"
    assert command[5:] == ["--stats-address", KUBERNETES_STATS_ADDRESS], "Envoy's stats for the PodMonitor"
    result = meshplane(*command[1:])
    assert result.returncode == 0, result.stderr
    if update_golden and text != result.stdout:
        rewrite_last_data_key(config_map.path, "envoy.yaml", result.stdout)
        text = result.stdout
    assert text == result.stdout, "stale: run `pytest tests/test_deploy_kubernetes.py --update-golden`"
    bootstrap = yaml.safe_load(text)
    (cluster,) = [c for c in bootstrap["static_resources"]["clusters"] if c["name"] == "meshplane"]
    socket = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert f"{socket['address']}:{socket['port_value']}" == server
    assert bootstrap["node"]["metadata"]["role"] == "sidecar"


def test_the_sidecar_bootstrap_configmap_passes_envoy_validation(tmp_path: Path) -> None:
    _, text = sidecar_bootstrap()
    path = tmp_path / "envoy.yaml"
    path.write_text(text)
    validate_bootstrap(path)


# --- scraping: meshplane's /metrics and the sidecars' stats listener --------------------------------

MONITORING = KUBERNETES / "monitoring"
MONITORING_API = "monitoring.coreos.com/v1"
KUBECTL_MISSING = None if shutil.which("kubectl") else "kubectl is not installed (it builds the kustomization)"


@pytest.mark.parametrize("workload", WORKLOADS, ids=str)
def test_meshplanes_pods_carry_scrape_annotations_naming_the_status_port(workload: Workload) -> None:
    annotations = workload.pod["metadata"]["annotations"]
    status_port = port_of(env_of(workload.container)["MESHPLANE_STATUS_ADDRESS"])
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(status_port),
        "prometheus.io/path": "/metrics",
    }
    assert workload.container_ports["http-status"] == status_port


def test_the_service_monitor_scrapes_both_workloads_through_their_services_status_port() -> None:
    monitor = one("ServiceMonitor", "meshplane")
    assert monitor.body["apiVersion"] == MONITORING_API
    assert monitor.path.parent == MONITORING
    spec = monitor.body["spec"]
    (expression,) = spec["selector"]["matchExpressions"]
    assert expression["operator"] == "In"
    for workload in WORKLOADS:
        service = workload.service
        assert service.body["metadata"]["labels"][expression["key"]] in expression["values"], str(workload)
        (endpoint,) = spec["endpoints"]
        ports = {port["name"]: port["targetPort"] for port in service.body["spec"]["ports"]}
        assert ports[endpoint["port"]] == "http-status"
        assert endpoint["path"] == "/metrics"


def test_the_pod_monitor_scrapes_the_port_the_sidecar_bootstrap_serves_stats_on() -> None:
    monitor = one("PodMonitor", "meshplane-sidecars")
    assert monitor.body["apiVersion"] == MONITORING_API
    spec = monitor.body["spec"]
    assert spec["namespaceSelector"] == {"any": True}
    (expression,) = spec["selector"]["matchExpressions"]
    (endpoint,) = spec["podMetricsEndpoints"]
    assert endpoint["path"] == "/stats/prometheus"
    # The sidecar example names that port and that label, on the port the bootstrap listens on.
    config_map, text = sidecar_bootstrap()
    comments = config_map.path.read_text()
    assert f"ports: [{{name: {endpoint['port']}, containerPort: {port_of(KUBERNETES_STATS_ADDRESS)}}}]" in comments
    assert f"labels: {{{expression['key']}: " in comments
    (listener,) = yaml.safe_load(text)["static_resources"]["listeners"]
    assert listener["name"] == STATS_LISTENER
    socket = listener["address"]["socket_address"]
    assert f"{socket['address']}:{socket['port_value']}" == KUBERNETES_STATS_ADDRESS


def test_the_monitoring_kustomization_is_optional() -> None:
    top = yaml.safe_load((KUBERNETES / KUSTOMIZATION).read_text())["resources"]
    assert "monitoring" not in top, "prometheus-operator's CRDs may be absent: applying it is a choice"


@requires(KUBECTL_MISSING)
def test_the_monitoring_kustomization_builds() -> None:
    result = subprocess.run(
        ["kubectl", "kustomize", str(MONITORING)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    built = [document for document in yaml.safe_load_all(result.stdout) if document]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in built) == [
        ("PodMonitor", "meshplane-sidecars"),
        ("ServiceMonitor", "meshplane"),
    ]


# --- a real API server ---------------------------------------------------------------------------

# Kinds the 1.20 API server cannot take: policy/v1 arrived in 1.21 (1.20 has only policy/v1beta1).
NOT_IN_1_20 = {("policy/v1", "PodDisruptionBudget")}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from module_cluster(tmp_path_factory.mktemp("kube"))


def api(url: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the test server's certificate is self-signed
    request = urllib.request.Request(
        url + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def collection(manifest: Manifest) -> str:
    """The REST collection of a manifest's kind (plural: the kind in lower case + s, true of every
    kind here)."""
    version = manifest.body["apiVersion"]
    prefix = f"/api/{version}" if "/" not in version else f"/apis/{version}"
    namespace = f"/namespaces/{manifest.namespace}" if manifest.namespace else ""
    kind = manifest.kind.lower()
    return f"{prefix}{namespace}/{kind}{'es' if kind.endswith('s') else 's'}"


def install_gateway_api_crds(url: str) -> None:
    """The Gateway API CRDs, as upstream wrote them, Established: deploy/kubernetes/gateway-api/
    holds a GatewayClass."""
    require(GATEWAY_API_MISSING)
    names = []
    for crd in standard_crds():
        status, stored = api(url, "POST", CRDS, crd)
        assert status in (201, 409), stored
        names.append(crd["metadata"]["name"])
    deadline = time.monotonic() + 120
    while names:
        status, stored = api(url, "GET", f"{CRDS}/{names[0]}")
        conditions = {c["type"]: c["status"] for c in stored.get("status", {}).get("conditions", [])}
        if conditions.get("Established") == "True":
            names.pop(0)
            continue
        assert time.monotonic() < deadline, f"CRD {names[0]} not Established: {stored.get('status')}"
        time.sleep(0.1)  # polling the API server for a condition, with a deadline


def dropped_fields(sent: Any, stored: Any, where: str = "") -> list[str]:
    """Every field of `sent` the server did not keep as sent (an unknown field is dropped silently
    by 1.20, which has no strict field validation)."""
    if isinstance(sent, dict):
        if not isinstance(stored, dict):
            return [where or "."]
        return [p for key, value in sent.items() for p in dropped_fields(value, stored.get(key), f"{where}.{key}")]
    if isinstance(sent, list):
        if not isinstance(stored, list) or len(stored) != len(sent):
            return [where]
        return [
            p for i, (a, b) in enumerate(zip(sent, stored, strict=True)) for p in dropped_fields(a, b, f"{where}[{i}]")
        ]
    return [] if sent == stored else [f"{where}: sent {sent!r}, stored {stored!r}"]


@pytest.mark.xdist_group("kube-apiserver")
@pytest.mark.timeout(180)
@requires(KUBE_MISSING)
def test_a_real_api_server_accepts_every_manifest_as_written(cluster: Cluster) -> None:
    assert cluster.uncached is not None
    url = cluster.uncached.url
    manifests = sorted(MANIFESTS, key=lambda m: m.kind != "Namespace")  # namespaces first
    install_gateway_api_crds(url)
    created = []
    for manifest in manifests:
        if (manifest.body["apiVersion"], manifest.kind) in NOT_IN_1_20:
            continue
        if manifest.body["apiVersion"] == MONITORING_API:
            continue  # prometheus-operator's CRDs are not installed on the test server: checked above

        status, stored = api(url, "POST", collection(manifest), manifest.body)
        assert status == 201, f"{manifest.path.relative_to(REPO)}: {manifest.kind} {manifest.name}: {stored}"
        assert dropped_fields(manifest.body, stored) == [], f"{manifest.path.relative_to(REPO)}: {manifest.name}"
        created.append(manifest.kind)
    assert {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "Deployment"} <= set(
        created
    )
    assert "Service" in created
