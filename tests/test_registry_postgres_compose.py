"""deploy/compose/ha.yaml, the two-replica override of docker-compose.yml, checked as compose merges
it over the base file and as thoroughly as tests/test_deploy_compose.py checks the base: images
built here or pinned (PostgreSQL at the major version the tests run), mounted files present and
read-only, named volumes and secrets declared and used, `depends_on` and networks naming what
exists, health checks (PostgreSQL's own, the replicas keeping the image's), every command parsed
by the real CLI, every `host:port` naming a service on a port it listens on, published ports on
the host's loopback without clashes; then what the override is for: both replicas on one
database, the password only in a declared secret's file (in no command line, URL or variable),
and the second replica reachable as `meshplane`.

No container engine runs here: the files are checked, not started.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import urllib.parse
from typing import Any

import pytest
import yaml

from meshplane.cli import _parser
from meshplane.registry_api.options import store_url
from tests.envoy_harness import REPO
from tests.test_deploy_compose import (
    MESHPLANE_IMAGE,
    SERVE_ADDRESS_FLAGS,
    command_of,
    environment_of,
    host_ports,
    mounts_of,
    published_port,
)

OVERRIDE_FILE = REPO / "deploy" / "compose" / "ha.yaml"
BASE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
OVERRIDE = yaml.safe_load(OVERRIDE_FILE.read_text())
REPLICAS = ("meshplane", "meshplane-2")
POSTGRES_PORT = 5432  # the image's default; ha.yaml's postgres service does not change it
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


def merged_service(name: str) -> dict[str, Any]:
    """A service as compose merges the override over the base: scalars and `command` replaced,
    mappings (`environment`, `depends_on`) merged key by key, `volumes`, `ports` and `secrets`
    joined (the override's entry wins for the same container path)."""
    base, override = BASE["services"].get(name, {}), OVERRIDE["services"].get(name, {})
    service = {**base, **override}
    for key in ("environment", "depends_on"):
        if key in base or key in override:
            service[key] = {**base.get(key, {}), **override.get(key, {})}
    for key in ("ports", "secrets"):
        if key in base or key in override:
            service[key] = [
                *base.get(key, []),
                *(item for item in override.get(key, []) if item not in base.get(key, [])),
            ]
    if "volumes" in base or "volumes" in override:
        targets = {str(volume).split(":")[1] for volume in override.get("volumes", [])}
        service["volumes"] = [
            *(volume for volume in base.get("volumes", []) if str(volume).split(":")[1] not in targets),
            *override.get("volumes", []),
        ]
    return service


SERVICES = {name: merged_service(name) for name in {*BASE["services"], *OVERRIDE["services"]}}
VOLUMES = {**BASE.get("volumes", {}), **OVERRIDE.get("volumes", {})}
SECRETS = {**BASE.get("secrets", {}), **OVERRIDE.get("secrets", {})}
NETWORKS = {**BASE.get("networks", {}), **OVERRIDE.get("networks", {})}


def parsed(name: str) -> Any:
    return _parser().parse_args(command_of(SERVICES[name]))


def secret_file(name: str) -> str:
    return f"/run/secrets/{name}"


def postgres_major() -> str:
    binary = shutil.which("postgres") or "/usr/lib/postgresql/15/bin/postgres"
    output = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
    found = re.search(r"(\d+)\.\d+", output)
    assert found is not None, output
    return found.group(1)


def listening_ports(name: str) -> set[int]:
    """The ports a merged service listens on: a replica's serve addresses, PostgreSQL's port."""
    if name == "postgres":
        assert "PGPORT" not in environment_of(SERVICES[name])
        assert "command" not in SERVICES[name]
        return {POSTGRES_PORT}
    args = parsed(name)
    assert args.command == "serve"
    return {int(getattr(args, flag.lstrip("-").replace("-", "_")).rpartition(":")[2]) for flag in SERVE_ADDRESS_FLAGS}


# --- as thoroughly as the base file -------------------------------------------------------------


def test_the_override_adds_postgresql_and_a_second_replica_and_builds_nothing() -> None:
    assert set(OVERRIDE["services"]) == {"postgres", "meshplane", "meshplane-2"}
    for name in OVERRIDE["services"]:
        assert "build" not in OVERRIDE["services"][name], "only the base's meshplane builds the image"


@pytest.mark.parametrize("name", sorted(OVERRIDE["services"]))
def test_every_image_is_built_here_or_pinned(name: str) -> None:
    image = str(SERVICES[name]["image"])
    if name == "postgres":
        assert image == f"postgres:{postgres_major()}", "the PostgreSQL major version the tests run"
    else:
        assert image == MESHPLANE_IMAGE, f"{name}: the image docker-compose.yml builds"
    assert not image.endswith(":latest")
    assert ":" in image


@pytest.mark.parametrize("name", sorted(OVERRIDE["services"]))
def test_mounted_files_exist_read_only_and_named_volumes_are_declared(name: str) -> None:
    for mount in mounts_of(SERVICES[name]):
        assert mount.target.startswith("/"), f"{name}: {mount}"
        if mount.is_bind:
            path = (REPO / mount.source).resolve()
            assert path.exists(), f"{name} mounts {mount.source}, which is not in the repository"
            assert REPO in (path, *path.parents), f"{name} mounts {path}, outside the repository"
            assert mount.read_only, f"{name}: repository files are mounted read-only"
        else:
            assert mount.source in VOLUMES, f"{name} uses volume {mount.source!r}, not declared"


def test_every_volume_and_secret_the_override_declares_is_used() -> None:
    used_volumes = {m.source for s in SERVICES.values() for m in mounts_of(s) if not m.is_bind}
    assert set(OVERRIDE["volumes"]) <= used_volumes
    used_secrets = {secret for s in SERVICES.values() for secret in s.get("secrets", [])}
    assert used_secrets == set(OVERRIDE["secrets"])
    for secret in OVERRIDE["secrets"].values():
        path = (REPO / secret["file"]).resolve()  # relative to the first file's folder
        assert path.is_file(), path
        assert REPO in path.parents
        assert len(path.read_text().strip().splitlines()) == 1, "one password, on one line"


@pytest.mark.parametrize("name", sorted(OVERRIDE["services"]))
def test_depends_on_and_networks_name_what_exists(name: str) -> None:
    service = SERVICES[name]
    for target, how in service.get("depends_on", {}).items():
        assert target in SERVICES, f"{name} depends on {target}, not a service"
        assert how["condition"] in CONDITIONS
        if how["condition"] == "service_healthy":
            assert not SERVICES[target].get("healthcheck", {}).get("disable"), f"{target} has no health check"
    networks = service.get("networks", [])
    for network in networks:
        assert network in NETWORKS, f"{name} joins {network}, not declared"
    assert networks, f"{name} joins the mesh network"


def test_postgresql_has_a_health_check_asking_its_own_database() -> None:
    postgres = SERVICES["postgres"]
    test = postgres["healthcheck"]["test"]
    assert test[:2] == ["CMD", "pg_isready"]
    environment = environment_of(postgres)
    assert f"--username={environment['POSTGRES_USER']}" in test
    assert f"--dbname={environment['POSTGRES_DB']}" in test
    assert postgres["healthcheck"]["retries"] >= 1


@pytest.mark.parametrize("name", REPLICAS)
def test_each_replica_keeps_the_images_health_check_and_waits_for_a_healthy_database(name: str) -> None:
    service = SERVICES[name]
    assert not service.get("healthcheck", {}).get("disable"), "the image's HEALTHCHECK asks /healthz"
    assert "healthcheck" not in OVERRIDE["services"][name]
    assert service["depends_on"]["postgres"] == {"condition": "service_healthy"}


@pytest.mark.parametrize("name", REPLICAS)
def test_every_host_port_of_a_replica_names_a_service_on_a_port_it_listens_on(name: str) -> None:
    texts = [*command_of(SERVICES[name]), *environment_of(SERVICES[name]).values()]
    found = [(host, port) for text in texts for host, port in host_ports(text) if host not in ("0.0.0.0", "127.0.0.1")]
    assert ("postgres", POSTGRES_PORT) in found
    for host, port in found:
        assert host in SERVICES, f"{name}: {host}:{port} names no compose service"
        assert port in listening_ports(host), f"{name}: {host} does not listen on {port}"


def test_published_ports_are_on_the_hosts_loopback_and_do_not_clash() -> None:
    published = [(name, published_port(port)) for name, s in SERVICES.items() for port in s.get("ports", [])]
    assert [(name, entry) for name, entry in published if entry[0] != "127.0.0.1"] == []
    host_ports_used = [entry[1] for _, entry in published]
    assert len(host_ports_used) == len(set(host_ports_used)), published
    assert "ports" not in SERVICES["postgres"], "the database is reachable from the compose network only"
    (status,) = [entry for name, entry in published if name == "meshplane-2"]
    assert status[2] == int(parsed("meshplane-2").status_address.rpartition(":")[2])


# --- what the override is for ---------------------------------------------------------------------


@pytest.mark.parametrize("name", REPLICAS)
def test_each_replica_serves_the_registry_from_postgresql_with_the_password_in_a_secret(name: str) -> None:
    service = SERVICES[name]
    args = parsed(name)
    assert args.command == "serve"
    assert args.registry_db is None
    assert store_url(args.registry_store) == args.registry_store  # no password in it
    assert [str(args.registry_store_password_file)] == [secret_file(secret) for secret in service["secrets"]]


def test_both_replicas_run_the_same_command_on_one_database_with_the_same_files() -> None:
    first, second = (SERVICES[name] for name in REPLICAS)
    assert first["command"] == second["command"]
    binds = [sorted((m.source, m.target) for m in mounts_of(s) if m.is_bind) for s in (first, second)]
    assert binds[0] == binds[1], "the same policy and tokens files"
    assert second["depends_on"]["meshplane"] == {"condition": "service_started"}, "the image is built by meshplane"


def test_the_second_replica_answers_to_the_name_the_proxies_and_devices_use() -> None:
    assert SERVICES["meshplane-2"]["networks"]["mesh"]["aliases"] == ["meshplane"]
    assert BASE["services"]["devices"]["command"].count("--registry=meshplane:18001") == 1
    servers = {
        environment_of(s).get("MESHPLANE_XDS_SERVER") for s in SERVICES.values() if "MESHPLANE_XDS_SERVER" in str(s)
    }
    assert servers == {"meshplane:18000"}


def test_the_url_names_the_database_and_user_the_postgresql_service_creates() -> None:
    postgres = SERVICES["postgres"]
    url = urllib.parse.urlsplit(parsed("meshplane").registry_store)
    assert (url.hostname, url.port) == ("postgres", POSTGRES_PORT)
    assert url.username == postgres["environment"]["POSTGRES_USER"]
    assert url.path == "/" + postgres["environment"]["POSTGRES_DB"]
    assert postgres["environment"]["POSTGRES_PASSWORD_FILE"] == secret_file(postgres["secrets"][0])
    assert postgres["secrets"] == SERVICES["meshplane"]["secrets"]


def test_the_password_is_in_no_command_line_url_or_variable() -> None:
    (secret,) = OVERRIDE["secrets"].values()
    password = (REPO / secret["file"]).read_text().strip()
    assert password
    for name, service in SERVICES.items():
        visible = [*command_of(service), *(f"{k}={v}" for k, v in environment_of(service).items())]
        assert not any(password in text for text in visible), f"{name} shows the password"
        assert "POSTGRES_PASSWORD" not in environment_of(service), f"{name}: a _FILE variable, not the value"
        assert "PGPASSWORD" not in environment_of(service), name


def test_docs_give_the_command_that_runs_the_override() -> None:
    command = "docker compose -f docker-compose.yml -f deploy/compose/ha.yaml up"
    assert command in (REPO / "docs" / "deploy.md").read_text()
    assert command in OVERRIDE_FILE.read_text()
