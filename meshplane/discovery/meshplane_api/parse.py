"""Reading one object of meshplane's own API as the API server sends it (JSON as Python values).

Owns turning the object's `spec` into the composed nodes the policy-file reader reads (one node per
value, each at a line of its own, so every problem the reader reports at a line is reported here
at the field path of that value: `spec.policy.connect_timeout`), and reading the metadata. The
spec itself is read by `policy_schema.read_spec`: the same reader as the policy files, never a
second parser. Pure; never raises for any JSON value; bounded work (`MAX_NODES`, `MAX_DEPTH`).
Must not know where objects come from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from yaml.error import Mark
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from meshplane.discovery.gateway_api.fields import DNS_LABEL, DNS_SUBDOMAIN
from meshplane.discovery.meshplane_api.kinds import API_VERSION, KINDS, kind_named
from meshplane.discovery.policy_schema import MeshplaneContent, read_spec

# An object's spec holds at most this many values (the API server bounds objects at ~1.5 MB; this
# bounds the reader's work whatever it is given), nested at most this deep.
MAX_NODES = 100_000
MAX_DEPTH = 32
# Error messages quote at most this much of a name the object gave.
_QUOTED = 80

Content = MeshplaneContent

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"


@dataclass(frozen=True, slots=True)
class ReadObject:
    """What `read_object` found: the key's parts ("" where unreadable), metadata, errors, content."""

    kind: str
    namespace: str
    name: str
    generation: int
    created: str
    errors: tuple[str, ...]
    content: Content | None


class _TooBig(Exception):
    pass


def read_object(raw: Any) -> ReadObject:
    """`raw` read; see `objects.parse_object`, whose contract this is."""
    if not isinstance(raw, Mapping):
        return ReadObject("", "", "", 0, "", ("an object must be a JSON object",), None)
    errors: list[str] = []
    kind_name = raw.get("kind")
    kind = kind_named(kind_name) if isinstance(kind_name, str) else None
    metadata = raw.get("metadata")
    metadata = metadata if isinstance(metadata, Mapping) else {}
    name = _text(metadata.get("name"))
    namespace = _text(metadata.get("namespace"))
    generation = metadata.get("generation")
    generation = generation if isinstance(generation, int) and not isinstance(generation, bool) else 0
    created = _text(metadata.get("creationTimestamp"))
    if kind is None:
        known = ", ".join(known.name for known in KINDS)
        errors.append(f"kind {_quote(kind_name)} is not one of {known}")
        return ReadObject(
            str(kind_name)[:_QUOTED] if isinstance(kind_name, str) else "", "", "", 0, "", tuple(errors), None
        )
    if raw.get("apiVersion") != API_VERSION:
        errors.append(f"apiVersion must be {API_VERSION}, not {_quote(raw.get('apiVersion'))}")
    if not name or len(name) > 253 or not DNS_SUBDOMAIN.fullmatch(name):
        errors.append(f"metadata.name {_quote(name)} is not a DNS subdomain name")
    if kind.namespaced and (not namespace or len(namespace) > 63 or not DNS_LABEL.fullmatch(namespace)):
        errors.append(f"metadata.namespace {_quote(namespace)} is not a DNS label")
    if not kind.namespaced:
        namespace = ""
    subject = f"{kind.name} {namespace}/{name}" if namespace else f"{kind.name} {name}"
    if errors:
        return ReadObject(kind.name, namespace, name, generation, created, _about(subject, errors), None)
    paths: list[str] = []
    try:
        spec = _node(raw.get("spec", {}), "spec", paths, 0)
    except _TooBig:
        errors.append(f"spec: more than {MAX_NODES} values or nested deeper than {MAX_DEPTH} levels")
        return ReadObject(kind.name, namespace, name, generation, created, _about(subject, errors), None)
    content, problems = read_spec(kind, spec, name, namespace, created, subject)
    for line, reason, field in problems:
        path = paths[line - 1] if 0 < line <= len(paths) else "spec"
        errors.append(_at(path, reason, field))
    unique = tuple(dict.fromkeys(errors))
    return ReadObject(kind.name, namespace, name, generation, created, _about(subject, unique), content)


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _about(subject: str, errors: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"{subject}: {error}" for error in errors)


def _quote(value: object) -> str:
    """`value` quoted for a message, cut short (it comes from the client)."""
    return repr(value if not isinstance(value, str) else value[:_QUOTED])


def _at(path: str, reason: str, field: str) -> str:
    """`reason` (worded by the policy-file reader after its section names) said of the field at
    `path`: when the reader says the reason begins with the section's path of that very field
    (`field`, ending in the same key), `path` replaces it; else `path` comes first."""
    if field and reason.startswith(field) and _leaf(field) == _leaf(path):
        return path + reason[len(field) :]
    return f"{path}: {reason}"


def _leaf(path: str) -> str:
    """The last key of a field path: `connect_timeout` of `spec.policy.connect_timeout`, `ports` of
    `spec.ports[0]`."""
    return path.rsplit(".", 1)[-1].partition("[")[0]


def _node(value: Any, path: str, paths: list[str], depth: int) -> Node:
    """`value` as a composed node at line `len(paths)`, its path recorded in `paths` (and its
    items' after it). A mapping's key node stands at its value's line: a problem with the key
    is a problem of that field."""
    if depth > MAX_DEPTH or len(paths) >= MAX_NODES:
        raise _TooBig
    mark = Mark("", len(paths), len(paths), 0, "", 0)
    paths.append(path)
    if isinstance(value, Mapping):
        pairs: list[tuple[Node, Node]] = []
        for key, item in value.items():
            text = str(key)
            child = _node(item, f"{path}.{text}", paths, depth + 1)
            pairs.append((ScalarNode(_STR, text, child.start_mark, child.start_mark), child))
        return MappingNode(_MAP, pairs, mark, mark)
    if isinstance(value, list | tuple):
        items = [_node(item, f"{path}[{index}]", paths, depth + 1) for index, item in enumerate(value)]
        return SequenceNode(_SEQ, items, mark, mark)
    if value is None:
        return ScalarNode(_NULL, "", mark, mark)
    if isinstance(value, bool):
        return ScalarNode(_BOOL, "true" if value else "false", mark, mark)
    if isinstance(value, int):
        try:
            return ScalarNode(_INT, str(value), mark, mark)
        except ValueError:  # more digits than Python converts: no field takes such a number
            return ScalarNode(_STR, "a number of over 4300 digits", mark, mark)
    if isinstance(value, float):
        return ScalarNode(_FLOAT, repr(value), mark, mark)
    return ScalarNode(_STR, str(value), mark, mark)
