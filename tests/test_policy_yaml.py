"""The policy loaders tag every node as PyYAML's `SafeLoader` does: YAML 1.1's implicit types for
plain scalars, strings for quoted ones, explicit tags kept, collections by kind."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from benchmarks.policy_edit import write_policy_directory
from meshplane.discovery.policy_yaml import LibyamlPolicyLoader, PythonPolicyLoader
from tests.test_policy_schema import ERROR_CASES, ROUTE_CASES, SERVICE_CASES

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
LOADERS = [
    pytest.param(PythonPolicyLoader, id="pure-python"),
    pytest.param(
        LibyamlPolicyLoader,
        id="libyaml",
        marks=pytest.mark.skipif(not yaml.__with_libyaml__, reason="PyYAML without libyaml"),
    ),
]

# Every implicit type of YAML 1.1 in several spellings, near misses of each, and what policy files hold.
SCALARS = [
    *("", "~", "null", "Null", "NULL", "nul", "NuLL"),
    *("yes", "Yes", "YES", "no", "No", "true", "True", "FALSE", "on", "On", "OFF", "off", "y", "n", "yES"),
    *("0", "00", "010", "019", "0x1F", "0X1F", "0o17", "0b101", "0b102", "1_000", "+5", "-5", "1:30", "190:20:30"),
    *("1.5", "1.", ".5", "1e3", "1.0e+3", "1.0e3", "-.inf", ".Inf", ".NaN", ".nan", "6.8523015e+5", "1_0.5"),
    *("2001-12-14", "2001-12-14t21:59:43.10-05:00", "2001-12-14 21:59:43.10 -5", "2002-1-1", "2001-12-14x"),
    *(
        "<<",
        "=",
        "==",
        "a!",
        "a&",
        "a*",
        "é",
        "\uff18\uff10",
        "\u00b2",
        "\u0663",
    ),  # full-width 80, superscript 2, Arabic-Indic 3
    *("10.0.0.1", "::1", "10.0.0.0/8", "svc-00001", "team-07", "8080", "250ms", "1s", "http", "5xx", "x-canary"),
]


def _tags(node: Node) -> Iterator[tuple[int, int, str, object]]:
    """Every node's position, tag and scalar text, depth first."""
    yield (
        node.start_mark.line,
        node.start_mark.column,
        node.tag,
        node.value if not isinstance(node, MappingNode | SequenceNode) else None,
    )
    if isinstance(node, SequenceNode):
        for item in node.value:
            yield from _tags(item)
    elif isinstance(node, MappingNode):
        for key, value in node.value:
            yield from _tags(key)
            yield from _tags(value)


def _all_tags(text: str, loader: type[yaml.SafeLoader]) -> list[tuple[int, int, str, object]]:
    return [tag for document in yaml.compose_all(text, Loader=loader) for tag in _tags(document)]


def _texts() -> Iterator[tuple[str, str]]:
    for case in [*SERVICE_CASES, *ROUTE_CASES, *ERROR_CASES]:
        yield case.id or "case", textwrap.dedent(case.values[0])  # type: ignore[misc]
    for path in sorted(EXAMPLES.glob("*.yaml")):
        yield path.name, path.read_text()
    plain = "\n".join(f"- {scalar}" for scalar in SCALARS if scalar)
    yield "plain-scalars", f"{plain}\n- \n"
    yield "quoted-scalars", "\n".join(f"- '{scalar}'" for scalar in SCALARS) + "\n"
    yield "scalars-twice", f"{plain}\n{plain}\n"  # the second reading of each comes from the loader's memory
    yield "keys", "\n".join(f"{scalar}: {scalar}" for scalar in SCALARS if scalar not in ("", "<<")) + "\n"
    yield "indicators", "- '!'\n- '&'\n- '*'\n- \"!x\"\n- ! '!'\n- !!str a&\n"
    yield "explicit-tags", "- !!int '80'\n- !!str 80\n- !foo 80\n- ! 80\n- !!float 1\n- !!null x\n- ! ~\n"
    yield "collections", "a: [1, {b: ~}]\nc: !!set {x}\nd: !!omap [{e: 1}]\n"


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize(("name", "text"), list(_texts()), ids=[name for name, _ in _texts()])
def test_every_node_is_tagged_as_safe_loader_tags_it(loader: type[yaml.SafeLoader], name: str, text: str) -> None:
    try:
        expected = _all_tags(text, yaml.SafeLoader)
    except yaml.YAMLError:
        with pytest.raises(yaml.YAMLError):
            _all_tags(text, loader)
        return
    assert _all_tags(text, loader) == expected


@pytest.mark.parametrize("loader", LOADERS)
def test_a_generated_directory_is_tagged_as_safe_loader_tags_it(loader: type[yaml.SafeLoader], tmp_path: Path) -> None:
    for path in write_policy_directory(tmp_path, services=30, endpoints=3, files=2):
        assert _all_tags(path.read_text(), loader) == _all_tags(path.read_text(), yaml.SafeLoader)


def test_safe_loaders_have_no_path_resolvers() -> None:
    """The loaders skip path resolution: the tag of a scalar depends on its text alone only so."""
    assert not yaml.SafeLoader.yaml_path_resolvers
    assert not PythonPolicyLoader.yaml_path_resolvers
    assert not LibyamlPolicyLoader.yaml_path_resolvers
