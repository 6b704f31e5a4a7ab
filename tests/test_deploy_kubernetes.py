"""deploy/kubernetes/: every manifest parsed, and the fields meshplane relies on checked against
meshplane itself (its flags, its policy validation, its bootstrap renderer, the Envoy the tests run).

Every *.yaml under deploy/ is parsed, and every Kubernetes manifest below deploy/kubernetes/ is
checked generically (names, namespaces, kustomizations listing every file, RBAC granting no writes
and no wildcards), so manifests added later are covered too. Then what ties the pieces together:
selectors and labels, Service target ports and container ports, MESHPLANE_* variables that are
real flags, volumes backed by ConfigMaps of these manifests, the policy ConfigMap passing
`meshplane validate`, the sidecar bootstrap ConfigMap equal to `meshplane bootstrap`'s output and
valid for Envoy, RBAC, probes and the security context. Last, a real kube-apiserver (1.20, built by
`make kube-apiserver`) accepts every manifest without dropping a field (it has no policy/v1, so
the PodDisruptionBudget is left out there).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import shlex
import ssl
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from meshplane.cli import _parser
from meshplane.flags import variable_of
from tests.envoy_harness import REPO, validate_bootstrap
from tests.k8s.real_apiserver import ADMIN_TOKEN, KUBE_MISSING, Cluster, module_cluster
from tests.meshplane_env import only_these_variables, without_meshplane_variables
from tests.preconditions import requires

DEPLOY = REPO / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
KUSTOMIZATION = "kustomization.yaml"
APP_LABEL = {"app.kubernetes.io/name": "meshplane"}
# Kinds without a namespace; every other kind in these manifests must name its namespace.
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass"}
READ_VERBS = {"get", "list", "watch"}
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
EDGE = Workload(one("StatefulSet", "meshplane-edge"))
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
            assert set(rule["verbs"]) <= READ_VERBS, f"{role.path}: {role.name} grants {rule['verbs']}"
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
    budget = one("PodDisruptionBudget")
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
    assert one("PodDisruptionBudget").body["spec"]["minAvailable"] == 1
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
    """Two replicas cannot share the registry's SQLite file (deployment.yaml says why)."""
    assert DEPLOYMENT.serve().registry_db is None
    assert DEPLOYMENT.manifest.body["spec"]["replicas"] > 1
    header = DEPLOYMENT.manifest.path.read_text().split("apiVersion:")[0]
    assert "registry" in header, "the header says why it is off"


def test_the_edge_registry_runs_alone_on_a_persistent_volume() -> None:
    """One replica (a single SQLite writer), the file on the StatefulSet's PersistentVolumeClaim,
    its ports on its Service, its tokens from a Secret, and no budget that would block drains."""
    spec = EDGE.manifest.body["spec"]
    assert spec["replicas"] == 1
    assert spec["serviceName"] == EDGE.service.name
    args = EDGE.serve()
    (claim,) = spec["volumeClaimTemplates"]
    (state,) = [m for m in EDGE.container["volumeMounts"] if m["name"] == claim["metadata"]["name"]]
    assert PurePosixPath(state["mountPath"]) in PurePosixPath(args.registry_db).parents
    assert not state.get("readOnly", False)
    assert EDGE.pod["spec"]["securityContext"]["fsGroup"] == EDGE.pod["spec"]["securityContext"]["runAsGroup"]
    ports = EDGE.container_ports
    assert port_of(args.registry_address) == ports["grpc-registry"]
    assert port_of(args.registry_http_address) == ports["http-registry"]
    (tokens,) = [v for v in EDGE.pod["spec"]["volumes"] if "secret" in v]
    (mount,) = [m for m in EDGE.container["volumeMounts"] if m["name"] == tokens["name"]]
    assert PurePosixPath(mount["mountPath"]) == PurePosixPath(args.registry_tokens).parent
    secret = tokens["secret"]["secretName"]
    assert f"create secret generic {secret}" in (EDGE.manifest.path.parent / KUSTOMIZATION).read_text()
    assert secret in (REPO / "docs" / "deploy.md").read_text(), "docs/deploy.md says how to create it"
    budgets = [m for m in MANIFESTS if m.kind == "PodDisruptionBudget"]
    assert not any(selects(b.body["spec"]["selector"]["matchLabels"], EDGE.labels) for b in budgets)


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
    assert command[3:] == ["--xds-server", server], "the Service of these manifests, by its cluster DNS name"
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
    return f"{prefix}{namespace}/{manifest.kind.lower()}s"


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
    created = []
    for manifest in manifests:
        if (manifest.body["apiVersion"], manifest.kind) in NOT_IN_1_20:
            continue
        status, stored = api(url, "POST", collection(manifest), manifest.body)
        assert status == 201, f"{manifest.path.relative_to(REPO)}: {manifest.kind} {manifest.name}: {stored}"
        assert dropped_fields(manifest.body, stored) == [], f"{manifest.path.relative_to(REPO)}: {manifest.name}"
        created.append(manifest.kind)
    assert {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "Deployment"} <= set(
        created
    )
    assert "Service" in created
