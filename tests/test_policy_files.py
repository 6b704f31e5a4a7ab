"""The policy-file source against a real directory: one `load()` pass at a time, no sleeps."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from pathlib import Path

import pytest

from meshplane.discovery.policy_files import PolicyFileSource, find_policy_files, validate_policy
from meshplane.model import Endpoint, Mesh, ServiceRef

CERT = "-----BEGIN CERTIFICATE-----\nMIIBfakecertificate\n-----END CERTIFICATE-----\n"
OTHER_CERT = "-----BEGIN CERTIFICATE-----\nMIIBanothercertificate\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\nMIIEfakekey\n-----END PRIVATE KEY-----\n"

WEB = """\
services:
  - name: web
    port: 8080
    endpoints:
      - {address: 127.0.0.1, port: 9101}
"""
API = """\
services:
  - name: api
    port: 8080
    endpoints:
      - {address: 127.0.0.1, port: 9201}
"""
API_ROUTE = """\
routes:
  - name: api
    service: api
    rules:
      - to: [api]
"""
# A long time ago: files this old are trusted by their signature rather than re-read.
OLD_NS = 1_000_000_000 * 1_000_000_000


class Changes:
    """An on_change callback that counts."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def age(*paths: Path) -> None:
    for path in paths:
        os.utime(path, ns=(OLD_NS, OLD_NS))


def source(path: Path, **kwargs: object) -> tuple[PolicyFileSource, Changes]:
    changes = Changes()
    return PolicyFileSource(path, on_change=changes, **kwargs), changes  # type: ignore[arg-type]


def service_names(mesh: Mesh | None) -> list[str]:
    assert mesh is not None
    return [service.name for service in mesh.services]


async def test_a_single_file_loads_and_reports_its_status(tmp_path: Path) -> None:
    policy, changes = source(write(tmp_path / "mesh.yaml", WEB + API_ROUTE.replace("api", "web")))
    assert policy.mesh is None
    assert policy.status.synced is False
    assert policy.status.last_attempt is None

    assert await policy.load() is True

    assert changes.count == 1
    assert service_names(policy.mesh) == ["web"]
    status = policy.status
    assert status.name == "policy-files"
    assert status.synced is True
    assert status.errors == ()
    assert status.last_success is not None
    assert status.last_attempt is not None
    assert dict(status.counts) == {"services": 1, "routes": 1, "secrets": 0, "files": 1}


async def test_a_directory_merges_every_yaml_file_below_it(tmp_path: Path) -> None:
    write(tmp_path / "services" / "web.yaml", WEB)
    write(tmp_path / "services" / "team-b" / "api.yml", API)
    write(tmp_path / "routes.yaml", API_ROUTE)
    write(tmp_path / "README.md", "not a policy")
    write(tmp_path / ".hidden.yaml", "this: is skipped")
    write(tmp_path / ".git" / "config.yaml", "so: is this")
    policy, _ = source(tmp_path)

    assert await policy.load() is True

    assert policy.status.errors == ()
    assert service_names(policy.mesh) == ["api", "web"]
    assert policy.status.counts["files"] == 3
    assert find_policy_files(tmp_path) == [
        tmp_path / "routes.yaml",
        tmp_path / "services" / "team-b" / "api.yml",
        tmp_path / "services" / "web.yaml",
    ]


async def test_an_empty_directory_is_a_valid_empty_mesh(tmp_path: Path) -> None:
    policy, changes = source(tmp_path)
    assert await policy.load() is True
    assert policy.mesh == Mesh()
    assert policy.status.synced is True
    assert changes.count == 1


def configmap(root: Path, version: str, files: dict[str, str]) -> None:
    """Lay out `files` as the kubelet mounts a ConfigMap, swapping `..data` atomically to `version`."""
    data = root / f"..{version}"
    for name, text in files.items():
        write(data / name, text)
    (root / "..data_tmp").symlink_to(data.name)
    os.replace(root / "..data_tmp", root / "..data")
    for name in files:
        if not (root / name).is_symlink():
            (root / name).symlink_to(Path("..data") / name)


async def test_a_configmap_mount_is_read_once_and_its_atomic_swap_reloads(tmp_path: Path) -> None:
    configmap(
        tmp_path, "2024_01_01_00_00_00.1", {"services.yaml": WEB + API[len("services:\n") :], "routes.yaml": API_ROUTE}
    )
    policy, changes = source(tmp_path)

    assert await policy.load() is True
    assert policy.status.errors == ()  # the real files behind ..data are not read a second time
    assert policy.status.counts["files"] == 2
    assert service_names(policy.mesh) == ["api", "web"]

    new_web = WEB.replace("9101", "9109")
    configmap(
        tmp_path,
        "2024_01_02_00_00_00.2",
        {"services.yaml": new_web + API[len("services:\n") :], "routes.yaml": API_ROUTE},
    )
    shutil.rmtree(tmp_path / "..2024_01_01_00_00_00.1")

    assert await policy.load() is True
    assert changes.count == 2
    assert policy.mesh is not None
    web = policy.mesh.service(ServiceRef("default", "web"))
    assert web is not None
    assert web.endpoints == (Endpoint("127.0.0.1", 9109, "http"),)


async def test_a_file_reached_twice_through_symlinks_is_read_once(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", WEB)
    (tmp_path / "b.yaml").symlink_to("a.yaml")
    (tmp_path / "loop").symlink_to(".")  # a directory loop ends too
    policy, _ = source(tmp_path)
    assert await policy.load() is True
    assert policy.status.errors == ()
    assert find_policy_files(tmp_path) == [tmp_path / "a.yaml"]


async def test_a_broken_file_keeps_the_last_good_mesh_and_says_where(tmp_path: Path) -> None:
    path = write(tmp_path / "mesh.yaml", WEB)
    policy, changes = source(tmp_path)
    assert await policy.load() is True
    good = policy.mesh
    last_success = policy.status.last_success

    write(path, WEB + "    policy:\n      load_balancer: random\n")
    assert await policy.load() is False

    assert policy.mesh is good
    assert changes.count == 1
    status = policy.status
    assert status.synced is True
    assert status.errors == (
        f"{path}:7: unknown key 'load_balancer' in service.policy (did you mean 'load_balancing'?)",
    )
    assert status.last_success == last_success
    assert status.last_attempt is not None
    assert last_success is not None
    assert status.last_attempt >= last_success
    assert dict(status.counts) == {"services": 1, "routes": 0, "secrets": 0, "files": 1}

    write(path, WEB.replace("9101", "9102"))
    assert await policy.load() is True
    assert policy.status.errors == ()
    assert changes.count == 2


async def test_content_is_all_or_nothing_across_files(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", WEB)
    policy, _ = source(tmp_path)
    assert await policy.load() is True

    write(tmp_path / "b.yaml", API)  # good on its own ...
    write(tmp_path / "c.yaml", "routes:\n  - {name: r, service: nope, rules: [{to: [api]}]}\n")  # ... this is not
    assert await policy.load() is False
    assert service_names(policy.mesh) == ["web"]
    assert policy.status.errors == (f"route r ({tmp_path / 'c.yaml'}:2): unknown service default/nope",)


async def test_a_name_defined_in_two_files_names_both(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", WEB)
    write(tmp_path / "team" / "b.yaml", "# copy\n" + WEB)
    errors = await validate_policy(tmp_path)
    assert errors == [
        f"service default/web is defined twice: in {tmp_path / 'a.yaml'}:2 and in {tmp_path / 'team' / 'b.yaml'}:3"
    ]


async def test_a_half_written_file_fails_then_succeeds_when_finished(tmp_path: Path) -> None:
    path = write(tmp_path / "mesh.yaml", WEB)
    policy, changes = source(path)
    assert await policy.load() is True

    finished = "services:\n  - {name: web, port: 8080, endpoints: [{address: 127.0.0.1, port: 9105}]}\n"
    write(path, finished[: finished.index("port: 9105")])  # the writer is mid-way
    assert await policy.load() is False
    assert len(policy.status.errors) == 1
    assert policy.status.errors[0].startswith(f"{path}:2: invalid YAML")
    assert changes.count == 1

    write(path, finished)
    assert await policy.load() is True
    assert not policy.status.errors
    assert changes.count == 2


async def test_a_deleted_path_is_an_error_and_the_last_good_mesh_stays(tmp_path: Path) -> None:
    root = tmp_path / "policy"
    write(root / "mesh.yaml", WEB)
    policy, changes = source(root)
    assert await policy.load() is True

    shutil.rmtree(root)
    assert await policy.load() is False
    assert policy.status.errors == (f"{root}: does not exist",)
    assert service_names(policy.mesh) == ["web"]

    write(root / "mesh.yaml", WEB)
    assert await policy.load() is False  # back as it was: nothing changed for the proxies
    assert not policy.status.errors
    assert changes.count == 1


async def test_a_path_missing_from_the_start_is_not_synced(tmp_path: Path) -> None:
    policy, changes = source(tmp_path / "nope.yaml")
    assert await policy.load() is False
    assert policy.mesh is None
    assert policy.status.synced is False
    assert policy.status.errors == (f"{tmp_path / 'nope.yaml'}: does not exist",)
    assert changes.count == 0


async def test_on_change_only_when_the_mesh_changes(tmp_path: Path) -> None:
    path = write(tmp_path / "mesh.yaml", WEB)
    policy, changes = source(path)
    assert await policy.load() is True
    assert changes.count == 1

    os.utime(path)  # touched: re-read, but nothing changed
    assert await policy.load() is False
    write(path, WEB + "# a comment at the end changes nothing either\n")
    assert await policy.load() is False
    assert changes.count == 1

    write(path, WEB.replace("8080", "8081"))
    assert await policy.load() is True
    assert changes.count == 2


async def test_an_unchanged_signature_is_not_read_again(tmp_path: Path) -> None:
    path = write(tmp_path / "mesh.yaml", WEB)
    age(path)
    policy, changes = source(path)
    assert await policy.load() is True

    # Same inode, size and mtime: the cheap signature says unchanged, so the file is not re-read.
    write(path, WEB.replace("9101", "9102"))
    age(path)
    assert await policy.load() is False
    assert changes.count == 1

    write(path, WEB.replace("9101", "19102"))  # a different size gives it away
    assert await policy.load() is True
    assert changes.count == 2


SECRETS = """\
secrets:
  - name: internal-ca
    ca_file: certs/ca.pem
  - name: mesh-client
    certificate_file: certs/client.crt
    key_file: certs/client.key
services:
  - name: web
    port: 8443
    tls: {trust: internal-ca, client_certificate: mesh-client}
"""


async def test_secrets_are_read_relative_to_their_policy_file(tmp_path: Path) -> None:
    write(tmp_path / "team" / "mesh.yaml", SECRETS)
    write(tmp_path / "team" / "certs" / "ca.pem", CERT)
    write(tmp_path / "team" / "certs" / "client.crt", CERT)
    write(tmp_path / "team" / "certs" / "client.key", KEY)
    policy, _ = source(tmp_path)

    assert await policy.load() is True

    assert policy.status.errors == ()
    assert policy.mesh is not None
    assert [(b.name, b.ca_certificates, b.origin) for b in policy.mesh.trust_bundles] == [
        ("internal-ca", CERT, f"{tmp_path / 'team' / 'mesh.yaml'}:2")
    ]
    assert [(c.name, c.certificate_chain, c.private_key) for c in policy.mesh.certificates] == [
        ("mesh-client", CERT, KEY)
    ]
    assert policy.status.counts["secrets"] == 2


async def test_a_changed_secret_file_reloads(tmp_path: Path) -> None:
    paths = [
        write(tmp_path / "mesh.yaml", SECRETS),
        write(tmp_path / "certs" / "ca.pem", CERT),
        write(tmp_path / "certs" / "client.crt", CERT),
        write(tmp_path / "certs" / "client.key", KEY),
    ]
    age(*paths)
    policy, changes = source(tmp_path)
    assert await policy.load() is True
    assert await policy.load() is False  # trusted signature, nothing read

    write(tmp_path / "certs" / "ca.pem", CERT + OTHER_CERT)  # a CA rotation

    assert await policy.load() is True
    assert changes.count == 2
    assert policy.mesh is not None
    assert policy.mesh.trust_bundles[0].ca_certificates == CERT + OTHER_CERT


async def test_a_missing_secret_file_is_one_error_at_its_line(tmp_path: Path) -> None:
    path = write(tmp_path / "mesh.yaml", SECRETS)
    write(tmp_path / "certs" / "client.crt", CERT)
    write(tmp_path / "certs" / "client.key", KEY)
    policy, _ = source(tmp_path)

    assert await policy.load() is False

    assert policy.status.errors == (
        f"{path}:3: secret internal-ca: ca_file 'certs/ca.pem': cannot read: No such file or directory",
    )

    write(tmp_path / "certs" / "ca.pem", CERT)  # appearing later fixes it
    assert await policy.load() is True


async def test_a_secret_that_is_not_pem_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "mesh.yaml", SECRETS)
    write(tmp_path / "certs" / "ca.pem", "not a certificate")
    write(tmp_path / "certs" / "client.crt", CERT)
    write(tmp_path / "certs" / "client.key", KEY)
    assert await validate_policy(tmp_path) == [f"secret internal-ca ({path}:2): CA bundle is not PEM"]


async def test_an_oversize_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    path = write(tmp_path / "mesh.yaml", WEB + "#" * 200 + "\n")
    size = path.stat().st_size
    policy, changes = source(path, max_file_size=200)
    assert await policy.load() is False
    assert policy.status.errors == (f"{path}: {size} bytes is over the limit of 200 bytes",)
    assert changes.count == 0


async def test_a_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_bytes(b"services: []\n# \xff\n")
    assert await validate_policy(path) == [f"{path}: not UTF-8 text (byte 15)"]


async def test_a_broken_symlink_is_reported_not_skipped(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", WEB)
    (tmp_path / "b.yaml").symlink_to("gone.yaml")
    errors = await validate_policy(tmp_path)
    assert errors == [f"{tmp_path / 'b.yaml'}: cannot read: No such file or directory"]


async def test_a_refusal_is_summarised_once_per_distinct_set_and_reported_on_each_change(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The errors themselves are the error reporter's to log (`on_errors_changed`, then
    `status.errors`); this source logs one summary line per distinct set, without their text."""
    path = write(tmp_path / "mesh.yaml", "services: [{name: web, port: eighty}]\n")
    reported: list[tuple[str, ...]] = []
    policy = PolicyFileSource(path, on_errors_changed=lambda: reported.append(policy.status.errors))
    with caplog.at_level(logging.WARNING, logger="meshplane.discovery.policy_files"):
        await policy.load()
        os.utime(path)
        await policy.load()
        assert [record.getMessage() for record in caplog.records] == [
            f"policy files at {path} refused: 2 error(s); nothing to serve yet"
        ]
        assert len(reported) == 1
        assert "service.port must be a whole number, not 'eighty'" in reported[0][0]

        write(path, "services: [{name: web, port: ninety}]\n")
        await policy.load()
        assert len(caplog.records) == 2
        assert all(record.levelno == logging.WARNING for record in caplog.records)
        assert len(reported) == 2

        write(path, WEB)
        await policy.load()
        assert reported[-1] == ()  # cleared: reported once more
        assert len(caplog.records) == 2


async def test_validate_policy_lists_every_error(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "services: [{name: web, port: 0, hosts: [www.example.com]}]\n")
    write(tmp_path / "b.yaml", "routes:\n  - {name: r, service: web, rules: [{to: [web]}], extra: 1}\n")
    write(tmp_path / "c.yaml", "services:\n  - {name: api, port: 80, protocol: http3}\n")
    # Parse errors first, in file order, then what the model finds in the merged mesh.
    assert await validate_policy(tmp_path) == [
        f"{tmp_path / 'b.yaml'}:2: unknown key 'extra' in route (expected one of: name, service, hosts, rules)",
        f"{tmp_path / 'c.yaml'}:2: service.protocol: 'http3' is not one of http1, http2, grpc, tcp"
        " (did you mean 'http2'?)",
        f"service default/web ({tmp_path / 'a.yaml'}:1): port 0 is out of range 1-65535",
    ]
    assert await validate_policy(tmp_path / "nope") == [f"{tmp_path / 'nope'}: does not exist"]


async def test_run_loads_then_polls_until_cancelled(tmp_path: Path) -> None:
    path = write(tmp_path / "mesh.yaml", WEB)
    changed = asyncio.Event()
    policy = PolicyFileSource(path, poll_interval=0.01, on_change=changed.set)

    task = asyncio.create_task(policy.run())
    async with asyncio.timeout(10):
        await changed.wait()
        assert service_names(policy.mesh) == ["web"]
        changed.clear()
        write(path, API)
        await changed.wait()
    assert service_names(policy.mesh) == ["api"]

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
