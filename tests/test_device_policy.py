"""The `device_policies` section of the policy files and the DevicePolicy kind: read into the
model, bad input refused as `file:line: reason`, JWKS files read beside their policy file, objects
merged with the files' policies, and fuzzed documents never crash the reader."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshplane.discovery.inventory import Contents, Inventory
from meshplane.discovery.kubernetes import KubernetesContent
from meshplane.discovery.meshplane_api.conditions import ACCEPTED
from meshplane.discovery.meshplane_api.convert import convert
from meshplane.discovery.meshplane_api.kinds import API_VERSION
from meshplane.discovery.meshplane_api.objects import MeshplaneObjects, ObjectKey, parse_object
from meshplane.discovery.policy_files import validate_policy
from meshplane.discovery.policy_schema import KEYS, parse_policy
from meshplane.model import Mesh
from meshplane.model.changes import MeshChanges
from meshplane.model.device_policy import (
    DefaultAccess,
    DevicePolicy,
    DeviceRateLimit,
    JwksUri,
    PathKind,
    PathRule,
    ServiceAccess,
)
from meshplane.model.services import ServiceRef
from tests.test_cli import meshplane
from tests.test_edge_authorization import JWKS

SOURCE = "policy/devices.yaml"
ERROR = re.compile(rf"^{re.escape(SOURCE)}:\d+: ")

GOOD = f"""
device_policies:
  - name: zero-trust
    sites: [gym]
    default: deny
  - name: bikes
    classes: [bike]
    allow:
      - service: catalog
        paths: [{{prefix: /rides}}, {{exact: /health}}]
        methods: [GET, HEAD]
      - service: shop/billing
    rate_limit: {{requests: 5, interval: 250ms, burst: 10}}
  - name: mobile
    jwt_providers:
      - name: inline
        issuer: https://accounts.example
        audiences: [app]
        jwks: '{JWKS}'
      - name: remote
        issuer: https://accounts.example
        jwks_uri: http://accounts.default:8080/jwks.json
    require_jwt:
      - service: shop/billing
"""


def test_a_good_section_reads_into_the_model() -> None:
    parsed = parse_policy(GOOD, SOURCE)
    assert parsed.errors == ()
    deny, bikes, mobile = parsed.device_policies
    assert deny == DevicePolicy("zero-trust", sites=("gym",), default=DefaultAccess.DENY, origin=f"{SOURCE}:3")
    assert bikes.allow == (
        ServiceAccess(
            ServiceRef("default", "catalog"),
            (PathRule(PathKind.PREFIX, "/rides"), PathRule(PathKind.EXACT, "/health")),
            ("GET", "HEAD"),
        ),
        ServiceAccess(ServiceRef("shop", "billing")),
    )
    assert bikes.rate_limit == DeviceRateLimit(5, 0.25, 10)
    assert mobile.jwt_providers[0].jwks == JWKS
    assert mobile.jwt_providers[1].jwks_uri == JwksUri("accounts.default", 8080, "/jwks.json")
    assert all(policy.problems() == [] for policy in parsed.device_policies)


def test_a_policy_that_restricts_nothing_is_told_apart_from_one_that_allows_nothing() -> None:
    parsed = parse_policy("device_policies:\n  - {name: a}\n  - {name: b, allow: []}\n", SOURCE)
    assert [policy.allow for policy in parsed.device_policies] == [None, ()]


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        pytest.param("device_policies:\n  - {classes: [bike]}\n", 2, "device_policy needs `name`", id="name"),
        pytest.param("device_policies:\n  - name: a\n    color: red\n", 3, "unknown key 'color'", id="unknown-key"),
        pytest.param(
            "device_policies:\n  - name: a\n    default: maybe\n", 3, "'maybe' is not one of allow, deny", id="default"
        ),
        pytest.param(
            "device_policies:\n  - name: a\n    allow:\n      - paths: [{prefix: /x}]\n",
            4,
            "needs `service`",
            id="service",
        ),
        pytest.param(
            "device_policies:\n  - name: a\n    allow:\n      - service: a/b/c\n", 4, 'is not "name"', id="ref"
        ),
        pytest.param(
            "device_policies:\n  - name: a\n    allow:\n      - service: s\n        paths: [{prefix: rides}]\n",
            5,
            "must start with /",
            id="path",
        ),
        pytest.param(
            "device_policies:\n  - name: a\n    allow:\n      - service: s\n        paths: [{prefix: /a, exact: /b}]\n",
            5,
            "each path is one of",
            id="two-kinds",
        ),
        pytest.param(
            "device_policies:\n  - name: a\n    allow:\n      - service: s\n        methods: [FETCH]\n",
            5,
            "'FETCH' is not one of",
            id="method",
        ),
        pytest.param(
            "device_policies:\n  - name: a\n    rate_limit: {interval: 1s}\n", 3, "needs `requests`", id="requests"
        ),
        pytest.param(
            "device_policies:\n  - name: a\n    rate_limit: {requests: ten}\n", 3, "whole number", id="requests-type"
        ),
        pytest.param(
            "device_policies:\n  - name: a\n    jwt_providers:\n      - {name: p, issuer: i, jwks: 'nope'}\n",
            4,
            "jwks: not JSON",
            id="jwks",
        ),
        pytest.param(
            "device_policies:\n  - name: a\n    jwt_providers:\n      - {name: p, issuer: i, jwks_uri: 'https://x/k'}\n",
            4,
            "is not http://host[:port]/path",
            id="jwks-uri",
        ),
        pytest.param(
            "device_policies:\n  - name: a\n    sites: [" + ", ".join(f"s{n}" for n in range(65)) + "]\n",
            3,
            "at most 64",
            id="too-many-sites",
        ),
    ],
)
def test_bad_input_is_refused_at_its_line(text: str, line: int, reason: str) -> None:
    errors = parse_policy(text, SOURCE).errors
    assert any(error.startswith(f"{SOURCE}:{line}: ") and reason in error for error in errors), errors


async def test_the_models_checks_name_the_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "sites.yaml").write_text("sites:\n  - {id: gym, region: local, device_ranges: ['198.18.0.0/24']}\n")
    (tmp_path / "devices.yaml").write_text(
        "device_policies:\n  - name: a\n    classes: [bike]\n    default: deny\n  - name: b\n    sites: [nowhere]\n"
    )
    errors = await validate_policy(tmp_path)
    devices = str(tmp_path / "devices.yaml")
    assert any(f"({devices}:2)" in error and "default applies to a whole site" in error for error in errors), errors
    assert any(f"({devices}:5)" in error and "unknown site 'nowhere'" in error for error in errors), errors


# --- fuzz ---

SECTION_KEYS = sorted({key for section, keys in KEYS.items() if section.startswith("device_policy") for key in keys})
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["/rides", "rides", "GET", "deny", "allow", "1s", "http://a.b:80/k", "{}", JWKS, "a/b", "bike"]),
)


def values(depth: int = 3) -> st.SearchStrategy[Any]:
    if depth == 0:
        return scalars
    inner = values(depth - 1)
    keys = st.one_of(st.sampled_from(SECTION_KEYS), st.text(max_size=6))
    return st.one_of(scalars, st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=4))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.dictionaries(st.sampled_from(SECTION_KEYS), values(), max_size=6), max_size=3))
def test_fuzzed_sections_never_crash_and_every_error_has_a_line(policies: list[dict[str, Any]]) -> None:
    text = yaml.safe_dump({"device_policies": policies})
    parsed = parse_policy(text, SOURCE)
    assert all(ERROR.match(error) for error in parsed.errors), parsed.errors
    for policy in parsed.device_policies:
        for problem in policy.problems():
            assert problem.message.startswith(f"device policy {policy.name}")


def test_a_device_policy_document_of_meshplanes_own_kind_reads_as_the_section_does() -> None:
    text = """apiVersion: meshplane.io/v1alpha1
kind: DevicePolicy
metadata: {name: bikes}
spec:
  classes: [bike]
  allow: [{service: catalog, paths: [{prefix: /rides}]}]
"""
    parsed = parse_policy(text, SOURCE)
    assert parsed.errors == ()
    [policy] = parsed.device_policies
    assert (policy.name, policy.classes) == ("bikes", ("bike",))
    assert policy.allow == (ServiceAccess(ServiceRef("default", "catalog"), (PathRule(PathKind.PREFIX, "/rides"),)),)
    refused = parse_policy(text.replace("metadata: {name: bikes}", "metadata: {name: bikes, namespace: x}"), SOURCE)
    assert any("DevicePolicy is cluster-scoped" in error for error in refused.errors), refused.errors


# --- DevicePolicy objects in the merge ---


def test_device_policy_objects_join_the_files_policies_and_lose_a_clash() -> None:
    def raw(name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": API_VERSION, "kind": "DevicePolicy", "metadata": {"name": name}, "spec": spec}

    files = Mesh(device_policies=(DevicePolicy("bikes", classes=("bike",), origin="d.yaml:2"),))
    found = MeshplaneObjects.of(
        [parse_object(raw("bikes", {"classes": ["row"]})), parse_object(raw("rows", {"classes": ["row"]}))]
    )
    inventory = Inventory()
    merged = inventory.merge(
        Contents(
            files=files,
            kubernetes=KubernetesContent((), ()),
            changes=MeshChanges.everything(),
            meshplane_api=found,
        )
    )
    assert [(p.name, p.classes) for p in merged.mesh.device_policies] == [("bikes", ("bike",)), ("rows", ("row",))]
    assert merged.object_status[ObjectKey("DevicePolicy", "", "bikes")].conditions[0].reason == "Conflicted"
    rows = merged.object_status[ObjectKey("DevicePolicy", "", "rows")].conditions[0]
    assert (rows.type, rows.status) == (ACCEPTED, "True")
    # A changed policy object is a change of the sites part (the edge gateways rebuild).
    changed = MeshplaneObjects.of(
        [parse_object(raw("bikes", {"classes": ["row"]})), parse_object(raw("rows", {"classes": ["bike"]}))]
    )
    again = inventory.merge(
        Contents(
            files=files,
            kubernetes=KubernetesContent((), ()),
            changes=MeshChanges(policy_objects=True),
            meshplane_api=changed,
        )
    )
    assert again.changes.sites


# --- JWKS files ---


def _jwks_policy(directory: Path, jwks_file: str) -> None:
    (directory / "sites.yaml").write_text("sites:\n  - {id: gym, region: local, device_ranges: ['198.18.0.0/24']}\n")
    (directory / "devices.yaml").write_text(
        "device_policies:\n  - name: mobile\n    jwt_providers:\n"
        f"      - {{name: accounts, issuer: https://a.example, jwks_file: {jwks_file}}}\n"
        "    require_jwt: [{service: billing}]\n"
    )


async def test_a_jwks_file_is_read_relative_to_its_policy_file(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "jwks.json").write_text(JWKS)
    _jwks_policy(tmp_path, "keys/jwks.json")
    assert await validate_policy(tmp_path) == []
    conversion = convert(tmp_path)
    [policy] = [document for document in conversion.documents if document["kind"] == "DevicePolicy"]
    # An object has no directory: the file's keys go inline.
    assert policy["spec"]["jwt_providers"] == [{"name": "accounts", "issuer": "https://a.example", "jwks": JWKS}]


async def test_an_unreadable_or_bad_jwks_file_is_an_error_at_the_policys_line(tmp_path: Path) -> None:
    _jwks_policy(tmp_path, "missing.json")
    errors = await validate_policy(tmp_path)
    devices = tmp_path / "devices.yaml"
    assert any(
        error.startswith(f"{devices}:2: device policy mobile: jwt provider accounts: jwks_file") for error in errors
    ), errors
    (tmp_path / "missing.json").write_text('{"keys": []}')
    errors = await validate_policy(tmp_path)
    assert any(f"({devices}:2)" in error and "non-empty list `keys`" in error for error in errors), errors


def test_validate_shows_that_require_jwt_paths_and_methods_are_not_used(tmp_path: Path) -> None:
    (tmp_path / "sites.yaml").write_text("sites:\n  - {id: gym, region: local, device_ranges: ['198.18.0.0/24']}\n")
    (tmp_path / "api.yaml").write_text("services:\n  - {name: billing, port: 8080}\n")
    (tmp_path / "devices.yaml").write_text(
        "device_policies:\n  - name: mobile\n    jwt_providers:\n"
        f"      - {{name: accounts, issuer: https://a.example, jwks: '{JWKS}'}}\n"
        "    require_jwt: [{service: billing, paths: [{prefix: /pay}], methods: [POST]}]\n"
    )
    result = meshplane("validate", "--config", str(tmp_path))
    assert result.returncode == 0, result.stderr
    devices = tmp_path / "devices.yaml"
    assert (
        f"warning: {devices}:2: device policy mobile: require_jwt 1 (default/billing): a token is required on "
        "every path and method of the service; its paths and methods are not used"
    ) in result.stderr
