"""YAML text to nodes for policy files: PyYAML's safe loaders with a cheaper tag resolver.

Owns the loaders `policy_schema` composes policy files with. They give every node the tag PyYAML's
`SafeLoader` gives it (YAML 1.1's implicit types: null, bool, int, float, timestamp, merge, value);
only the cost differs. Composes nodes and nothing more: no Python values are constructed here, and
nothing about the policy format is known here.

Why: libyaml composes in C but asks the loader, in Python, for every node's tag and path; PyYAML's
resolver tries up to three regexes per plain scalar, and that was about 40 % of composing a large
policy file. Policy files repeat their scalars (keys, ports, namespaces), so each loader resolves
a distinct plain scalar once and looks it up after.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.nodes import ScalarNode, SequenceNode

_STR = yaml.resolver.BaseResolver.DEFAULT_SCALAR_TAG
_SEQ = yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG
_MAP = yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG


class _ResolvedOnce:
    """Resolves as the safe loader it is mixed into, each distinct plain scalar once per stream.

    A plain scalar's implicit tag depends only on its text while the loader has no path resolvers
    (`add_path_resolver`); the safe loaders have none, so the path bookkeeping PyYAML does for
    every node (`descend_resolver`, `ascend_resolver`) is skipped, and a quoted scalar or a
    collection gets its default tag directly. tests/test_policy_yaml.py holds the tags to
    `SafeLoader`'s and checks that no path resolver was added.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)  # type: ignore[call-arg]
        self._plain_tags: dict[str, str] = {}

    def resolve(self, kind: type[yaml.Node], value: Any, implicit: Any) -> str:
        if kind is ScalarNode:
            if not implicit[0]:  # quoted, or `!` non-specific: a string
                return _STR
            tag = self._plain_tags.get(value)
            if tag is None:
                tag = self._plain_tags[value] = self._resolve_plain(value)
            return tag
        return _SEQ if kind is SequenceNode else _MAP

    def _resolve_plain(self, value: str) -> str:
        """`BaseResolver.resolve` for a plain scalar: the first implicit resolver for its first
        character (then those for any character) whose pattern matches, else a string."""
        resolvers: dict[str | None, list[tuple[str, re.Pattern[str]]]]
        resolvers = self.yaml_implicit_resolvers  # type: ignore[attr-defined]
        for tag, pattern in resolvers.get(value[:1], []) + resolvers.get(None, []):
            if pattern.match(value):
                return tag
        return _STR

    def descend_resolver(self, current_node: Any, current_index: Any) -> None:
        pass

    def ascend_resolver(self) -> None:
        pass


class PythonPolicyLoader(_ResolvedOnce, yaml.SafeLoader):
    """PyYAML's pure-Python `SafeLoader`, resolving each distinct plain scalar once."""


# Where PyYAML was built without libyaml there is no `CSafeLoader`; the pure-Python one stands in
# (`policy_schema` then uses `PythonPolicyLoader`). Typed as `SafeLoader`: the interface both offer
# `yaml.compose_all`.
_LIBYAML_BASE: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class LibyamlPolicyLoader(_ResolvedOnce, _LIBYAML_BASE):  # type: ignore[valid-type,misc]
    """libyaml's `CSafeLoader`, resolving each distinct plain scalar once."""
