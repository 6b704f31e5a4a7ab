"""The policy format's field table (`policy_fields.SECTIONS`) and the reader agree: `KEYS` is the
table's, every field of every section refuses a value of the wrong type naming its key (in a
policy file, and in an API object, where the error names the field's path), and every enum field
accepts exactly its StrEnum's values.

Documents are built from the table itself: the path from a root section to the field under test,
every section on the way holding its required fields (a valid sample of each type).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from meshplane.discovery.meshplane_api.kinds import API_VERSION, KINDS, Kind
from meshplane.discovery.meshplane_api.objects import parse_object
from meshplane.discovery.policy_fields import (
    SECTIONS,
    Boolean,
    Choice,
    Duration,
    Field,
    FieldType,
    FreeMap,
    Integer,
    ListOf,
    NameOrNumber,
    Number,
    OneOf,
    Section,
    Text,
    keys_of,
)
from meshplane.discovery.policy_schema import KEYS, parse_policy


def sample(kind: FieldType) -> Any:
    """A value of type `kind` the reader takes."""
    match kind:
        case Text():
            return "a"
        case Integer(minimum=minimum, values=values):
            return values[0] if values else (minimum if minimum is not None else 1)
        case Number():
            return 1
        case Boolean():
            return True
        case Duration():
            return "1s"
        case Choice(values=values):
            return values[-1]
        case NameOrNumber():
            return 80
        case ListOf(item=item):
            return [sample(item)]
        case Section(name=name):
            return {field.key: sample(field.type) for field in SECTIONS[name] if field.required}
        case FreeMap():
            return {}
        case OneOf(types=types):
            return sample(types[0])
    raise AssertionError(kind)


def wrong(kind: FieldType) -> Any:
    """A value of the wrong type for `kind`."""
    match kind:
        case Text() | NameOrNumber():
            return {"not": "a scalar"}
        case Integer() | Number():
            return "many"
        case Boolean():
            return "maybe"
        case Duration():
            return "5x"
        case Choice():
            return "none-of-these"
        case ListOf() | OneOf():
            return {"not": "a list"}
        case Section() | FreeMap():
            return ["not", "a mapping"]
    raise AssertionError(kind)


def sections_below(kind: FieldType) -> list[str]:
    match kind:
        case Section(name=name):
            return [name]
        case ListOf(item=item):
            return sections_below(item)
        case OneOf(types=types):
            return [name for one in types for name in sections_below(one)]
    return []


def paths(root: str) -> dict[str, list[tuple[str, Field]]]:
    """Each section reachable from `root`: the (section, field) steps leading to it."""
    found: dict[str, list[tuple[str, Field]]] = {root: []}
    queue = [root]
    while queue:
        section = queue.pop(0)
        for field in SECTIONS[section]:
            for below in sections_below(field.type):
                if below not in found:
                    found[below] = [*found[section], (section, field)]
                    queue.append(below)
    return found


# What a field needs beside it to be read at all (the table says types, not these rules): a
# service's `protocol` goes with `port`; its `dns` settings with an endpoint named by DNS.
CONTEXT: dict[tuple[str, str], dict[str, Any]] = {
    ("service", "protocol"): {"port": 80},
    ("service", "dns"): {"port": 5432, "endpoints": [{"address": "db.example.com"}]},
}
# `to` is `backends` by another name: the reader's errors call it `backends`.
ALIASES = {("route.rules", "to"): "backends"}


def leaf_of(section: str, field: Field, value: Any) -> dict[str, Any]:
    """A mapping of `section` with its required fields, what `field` needs beside it, and `value` at it."""
    leaf = {f.key: sample(f.type) for f in SECTIONS[section] if f.required}
    leaf.update(CONTEXT.get((section, field.key), {}))
    leaf[field.key] = value
    return leaf


def nest(steps: list[tuple[str, Field]], leaf: dict[str, Any]) -> dict[str, Any]:
    """`leaf` (a mapping of the last section) inside the sections of `steps`, each one holding its
    required fields too."""
    value: Any = leaf
    for section, field in reversed(steps):
        holder = {f.key: sample(f.type) for f in SECTIONS[section] if f.required}
        holder.update(CONTEXT.get((section, field.key), {}))
        # A list holds the mapping as an item; a OneOf in a list takes its mapping form.
        holder[field.key] = [value] if isinstance(field.type, ListOf) else value
        value = holder
    assert isinstance(value, dict)
    return value


def cases() -> Iterator[Any]:
    """(root, section, field) for every field reachable from the document and from each kind."""
    roots = ["document", *dict.fromkeys(kind.section for kind in KINDS)]
    seen = set()
    for root in roots:
        for section, _ in paths(root).items():
            for field in SECTIONS[section]:
                if (root, section, field.key) in seen:
                    continue
                if root != "document" and section == root and field.key in kind_of(root).metadata_keys:
                    continue  # metadata stands for it: a spec holding it is tested apart
                seen.add((root, section, field.key))
                yield pytest.param(root, section, field, id=f"{root}:{section}.{field.key}")


def mentions(message: str, key: str) -> bool:
    return re.search(rf"(^|[ .`'\[]){re.escape(key)}($|[ :`'.\]])", message) is not None


def file_errors(root: str, section: str, leaf: dict[str, Any]) -> tuple[str, ...]:
    """The errors of a policy file holding `leaf` in `section` (reached from `root`: the document,
    or a kind's spec, as a meshplane.io document)."""
    body = nest(paths(root)[section], leaf)
    if root == "document":
        return parse_policy(yaml.safe_dump(body), "p.yaml").errors
    kind = kind_of(root)
    for identity in kind.metadata_keys:
        body.pop(identity, None)
    return parse_policy(yaml.safe_dump(as_object(kind, body)), "p.yaml").errors


def kind_of(section: str) -> Kind:
    return next(kind for kind in KINDS if kind.section == section)


def as_object(kind: Kind, spec: dict[str, Any]) -> dict[str, Any]:
    metadata = {"name": "obj", **({"namespace": "ns"} if kind.namespaced else {}), "generation": 1}
    return {"apiVersion": API_VERSION, "kind": kind.name, "metadata": metadata, "spec": spec}


def test_keys_are_the_field_tables() -> None:
    assert dict(KEYS) == keys_of(SECTIONS)


@pytest.mark.parametrize(("root", "section", "field"), list(cases()))
def test_a_value_of_the_wrong_type_is_refused_naming_its_key(root: str, section: str, field: Field) -> None:
    leaf = leaf_of(section, field, wrong(field.type))
    key = ALIASES.get((section, field.key), field.key)
    errors = file_errors(root, section, leaf)
    assert any(mentions(error.split(": ", 1)[1], key) for error in errors), errors
    if root == "document":
        return
    kind = kind_of(root)
    spec = nest(paths(root)[section], leaf)
    for identity in kind.metadata_keys:
        spec.pop(identity, None)
    parsed = parse_object(as_object(kind, spec))
    assert any(mentions(error, key) for error in parsed.errors), parsed.errors
    # The object's error names the field by its path in the object.
    assert all(": spec" in error for error in parsed.errors), parsed.errors


@pytest.mark.parametrize(("root", "section", "field"), [case for case in cases() if case.values[0] == "document"])
def test_a_sample_of_the_right_type_is_taken_without_an_error_naming_its_key(
    root: str, section: str, field: Field
) -> None:
    errors = file_errors(root, section, leaf_of(section, field, sample(field.type)))
    # Other errors may be (a `to` and a `backends` together, a `port` of a service with `ports`),
    # but no type error about this key.
    type_words = ("must be a ", "must be true or false", "is not a duration", "is not one of")
    assert not [e for e in errors if mentions(e.split(": ", 1)[1], field.key) and any(w in e for w in type_words)]


def choice_cases() -> Iterator[Any]:
    for section, fields in SECTIONS.items():
        for field in fields:
            if isinstance(field.type, Choice) and field.type.enum is not None:
                yield pytest.param(section, field, id=f"{section}.{field.key}")
            if isinstance(field.type, ListOf) and isinstance(field.type.item, Choice):
                yield pytest.param(section, field, id=f"{section}.{field.key}[]")


@pytest.mark.parametrize(("section", "field"), list(choice_cases()))
def test_every_enum_field_takes_exactly_its_strenums_values(section: str, field: Field) -> None:
    choice = field.type.item if isinstance(field.type, ListOf) else field.type
    assert isinstance(choice, Choice)
    if choice.enum is not None:
        assert choice.values == tuple(member.value for member in choice.enum)
    root = "document" if section in paths("document") else "traffic_policy"
    for value in (*choice.values, "none-of-these"):
        leaf = leaf_of(section, field, [value] if isinstance(field.type, ListOf) else value)
        errors = file_errors(root, section, leaf)
        refused = [e for e in errors if "is not one of" in e and mentions(e.split(": ", 1)[1], field.key)]
        assert bool(refused) == (value == "none-of-these"), (value, errors)


def test_a_spec_holding_what_metadata_says_is_refused() -> None:
    parsed = parse_object(as_object(kind_of("service"), {"name": "other", "port": 80}))
    assert parsed.errors == (
        "ExternalService ns/obj: spec.name: a ExternalService takes it from metadata.name, not from its spec",
    )
    assert parsed.content is None
