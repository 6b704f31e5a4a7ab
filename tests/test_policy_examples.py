"""examples/ is what new users read first and what the demo serves; docs/policy-files.md is the format's
reference. Both are checked here so neither can rot."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from meshplane.discovery.policy_files import PolicyFileSource, find_policy_files, validate_policy
from meshplane.discovery.policy_schema import KEYS, parse_policy
from meshplane.model import (
    Endpoint,
    HeaderMatch,
    HeaderMatchKind,
    LoadBalancing,
    Mesh,
    PathMatch,
    PathMatchKind,
    Protocol,
    RetryPolicy,
    RouteMatch,
    ServicePort,
    ServiceRef,
    WeightedBackend,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
DOCS = ROOT / "docs" / "policy-files.md"


async def test_the_examples_are_valid() -> None:
    assert await validate_policy(EXAMPLES) == []


def test_the_examples_are_split_over_several_files() -> None:
    assert len(find_policy_files(EXAMPLES)) >= 2


@pytest.fixture
async def mesh() -> Mesh:
    source = PolicyFileSource(EXAMPLES)
    assert await source.load()
    assert source.mesh is not None
    return source.mesh


@pytest.mark.parametrize(
    ("name", "port", "endpoints"),
    [
        pytest.param("web", ServicePort("http", 8080, Protocol.HTTP1), [9101, 9102], id="web"),
        pytest.param("api", ServicePort("http", 8080, Protocol.HTTP1), [9201], id="api"),
        pytest.param("api-canary", ServicePort("http", 8080, Protocol.HTTP1), [9202], id="api-canary"),
        pytest.param("greeter", ServicePort("grpc", 50051, Protocol.GRPC), [9301], id="greeter"),
    ],
)
def test_the_demo_services_are_where_the_demo_starts_them(
    mesh: Mesh, name: str, port: ServicePort, endpoints: list[int]
) -> None:
    service = mesh.service(ServiceRef("default", name))
    assert service is not None
    assert service.ports == (port,)
    assert [(e.address, e.port, e.port_name) for e in service.endpoints] == [
        ("127.0.0.1", number, port.name) for number in endpoints
    ]


def test_exactly_the_demo_services(mesh: Mesh) -> None:
    assert [str(service.ref) for service in mesh.services] == [
        "default/api",
        "default/api-canary",
        "default/greeter",
        "default/web",
    ]


def test_web_policy(mesh: Mesh) -> None:
    web = mesh.service(ServiceRef("default", "web"))
    assert web is not None
    assert web.policy.load_balancing is LoadBalancing.LEAST_REQUEST
    assert web.policy.connect_timeout == 0.25
    assert web.policy.outlier_detection is not None
    assert all(isinstance(endpoint, Endpoint) for endpoint in web.endpoints)


def test_api_canary_route(mesh: Mesh) -> None:
    api, canary = ServiceRef("default", "api"), ServiceRef("default", "api-canary")
    (table,) = mesh.routes
    assert table.service == api
    header_rule, *_, last_rule = table.rules
    assert header_rule.match == RouteMatch(headers=(HeaderMatch("x-canary", HeaderMatchKind.EXACT, "always"),))
    assert header_rule.backends == (WeightedBackend(canary, weight=100),)

    assert last_rule.match == RouteMatch()
    assert last_rule.backends == (WeightedBackend(api, weight=90), WeightedBackend(canary, weight=10))
    assert last_rule.timeout == 3.0
    assert last_rule.retry == RetryPolicy(("5xx", "reset", "connect-failure"), attempts=2, per_try_timeout=0.5)

    rewrites = [rule for rule in table.rules if rule.prefix_rewrite is not None]
    assert [(rule.match.path, rule.prefix_rewrite) for rule in rewrites] == [
        (PathMatch(PathMatchKind.PREFIX, "/v1/"), "/")
    ]


def test_the_example_files_explain_themselves() -> None:
    for path in find_policy_files(EXAMPLES):
        lines = path.read_text().splitlines()
        comments = [line for line in lines if line.lstrip().startswith("#") or " # " in line]
        assert len(comments) >= len(lines) / 4, f"{path} needs comments for new users"


# --- the reference docs ---


def doc_sections() -> dict[str, str]:
    """Each heading naming a format section in backticks (`service.policy`) → the text up to the next heading."""
    text = DOCS.read_text()
    sections: dict[str, str] = {}
    parts = re.split(r"^(#{1,6} .*)$", text, flags=re.MULTILINE)
    for heading, body in zip(parts[1::2], parts[2::2], strict=True):
        for name in re.findall(r"`([a-z_.]+)`", heading):
            sections[name] = body
    return sections


@pytest.mark.parametrize("section", sorted(KEYS))
def test_the_docs_describe_every_key_of_every_section(section: str) -> None:
    sections = doc_sections()
    assert section in sections, f"docs/policy-files.md has no heading for `{section}`"
    body = sections[section]
    missing = [key for key in KEYS[section] if f"| `{key}` |" not in body]
    assert missing == [], f"docs/policy-files.md does not describe {missing} under `{section}`"


def test_the_docs_describe_no_key_the_parser_rejects() -> None:
    for section, body in doc_sections().items():
        documented = re.findall(r"^\| `([a-z_0-9]+)` \|", body, flags=re.MULTILINE)
        assert set(documented) <= set(KEYS[section]), section


def test_the_yaml_examples_in_the_docs_parse() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), flags=re.DOTALL)
    assert blocks
    for block in blocks:
        document = block if re.match(r"^(services|routes|secrets):", block, flags=re.MULTILINE) else None
        if document is None:  # a fragment of a service (e.g. `endpoints:`), shown in context
            continue
        assert parse_policy(block, "docs").errors == (), block
