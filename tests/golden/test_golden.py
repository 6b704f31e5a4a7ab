"""Golden files: every case of cases.py, translated for each of its proxy groups, against out/.

`pytest tests/golden --update-golden` rewrites out/ from the translators' current output and
deletes files no case produces any more; review the diff like code.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format
from google.protobuf.message import Message

from meshplane.model import ProxyGroup
from meshplane.xds.snapshot import Snapshot
from meshplane.xds.translate import Translation, translate
from meshplane.xds.types import TypeUrl
from tests.golden.cases import CASES, GoldenCase, group_label

OUT = Path(__file__).parent / "out"
PARAMS = [pytest.param(case, group, id=f"{case.name}.{group_label(group)}") for case in CASES for group in case.groups]


def as_plain_data(message: Message) -> object:
    """The message as JSON-like data with proto field names (json round trip: no OrderedDicts for YAML)."""
    return json.loads(json.dumps(json_format.MessageToDict(message, preserving_proto_field_name=True)))


class GoldenDumper(yaml.SafeDumper):
    """yaml.safe_dump's dumper, writing multi-line strings (PEM) as literal blocks, so they read as files."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


GoldenDumper.add_representer(str, _represent_str)


def render(translation: Translation) -> dict[str, str]:
    """One YAML document per resource type, keyed by its file suffix (`cds`, `eds`, …)."""
    return {
        type_url.short.lower(): yaml.dump(
            [as_plain_data(message) for message in translation.resources[type_url]],
            Dumper=GoldenDumper,
            sort_keys=True,
        )
        for type_url in TypeUrl
    }


def golden_path(case: GoldenCase, label: str, kind: str) -> Path:
    return OUT / f"{case.name}.{label}.{kind}.yaml"


def expected_paths() -> set[Path]:
    return {
        golden_path(case, group_label(group), type_url.short.lower())
        for case in CASES
        for group in case.groups
        for type_url in TypeUrl
    }


@pytest.mark.parametrize(("case", "group"), PARAMS)
def test_translation_matches_golden_files(case: GoldenCase, group: ProxyGroup, update_golden: bool) -> None:
    assert case.mesh.problems() == []
    translation = translate(case.mesh, group)
    # What the publisher checks before it publishes: a snapshot with problems never reaches a proxy.
    assert Snapshot.of(translation.resources).consistency_problems() == []
    rendered = render(translation)
    label = group_label(group)
    if update_golden:
        OUT.mkdir(exist_ok=True)
        for kind, text in rendered.items():
            golden_path(case, label, kind).write_text(text)
    for kind, text in rendered.items():
        path = golden_path(case, label, kind)
        assert path.exists(), f"{path.name} is missing; run pytest --update-golden"
        assert text == path.read_text(), f"{path.name} differs; run pytest --update-golden and review the diff"


def test_no_stale_golden_files(update_golden: bool) -> None:
    stale = sorted(set(OUT.glob("*.yaml")) - expected_paths())
    if update_golden:
        for path in stale:
            path.unlink()
    else:
        assert stale == [], "no case produces these any more; run pytest --update-golden"
