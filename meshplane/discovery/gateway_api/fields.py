"""Reading fields of one Gateway API object from untrusted JSON, collecting problems, never raising.

Owns how a parser reads a value the API server sent: a wrong type, a string too long or not matching
its pattern, a number out of range, a list longer than the schema allows each becomes a `Problem`
naming the object and the field's path (`spec.listeners[2].port: 70000 is not in 1..65535`), and
the reader returns a safe value instead (None, an empty mapping, the list cut at its bound). The
bounds are the CRDs' (`maxLength`, `maxItems`), so nothing read here is larger than the schema
allows. Must not know what any field means: the kinds' modules do.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from meshplane.model.problems import Problem, Subject

_EMPTY: Mapping[str, Any] = {}
# A value shown in a message is cut to this many characters: a message names the value, it does not
# carry it whole.
_SHOWN = 64

# Patterns of the CRDs (apis/v1/shared_types.go), reused by several kinds.
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
HOSTNAME = re.compile(r"(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
KIND = re.compile(r"[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?")
SECTION_NAME = DNS_SUBDOMAIN
HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`|~]+")


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Parsed(Generic[T]):
    """One object as read: `value` always (the best reading of it), and `problems`: what the CRDs'
    schema or rules forbid in it. An object with problems is one the API server's validation would
    have refused (the test API server and any before 1.25 do not run the CEL rules): show its
    problems, never serve it."""

    value: T
    problems: tuple[Problem, ...] = ()


def shown(value: object) -> str:
    """`value` as a message quotes it, cut to a readable length."""
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 1] + "…"


class Fields:
    """The reader of one object: `problems` collects what is wrong, each naming `subject`."""

    def __init__(self, subject: Subject) -> None:
        self.subject = subject
        self.problems: list[Problem] = []

    def invalid(self, path: str, text: str) -> None:
        self.problems.append(self.subject.invalid(f"{path}: {text}"))

    def mapping(self, value: Any, path: str) -> Mapping[str, Any]:
        """`value` if it is an object; else an empty one (a problem unless `value` is absent)."""
        if isinstance(value, Mapping):
            return value
        if value is not None:
            self.invalid(path, f"must be an object, not {shown(value)}")
        return _EMPTY

    def child(self, obj: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any]:
        return self.mapping(obj.get(key), f"{path}.{key}")

    def text(
        self,
        obj: Mapping[str, Any],
        key: str,
        path: str,
        *,
        required: bool = False,
        max_length: int = 253,
        min_length: int = 0,
        pattern: re.Pattern[str] | None = None,
    ) -> str | None:
        """The string at `key`: None when absent (a problem if `required`) or invalid."""
        where = f"{path}.{key}"
        value = obj.get(key)
        if value is None:
            if required:
                self.invalid(where, "is required")
            return None
        if not isinstance(value, str):
            self.invalid(where, f"must be a string, not {shown(value)}")
            return None
        if len(value) > max_length:
            self.invalid(where, f"is longer than {max_length} characters")
            return None
        if len(value) < min_length:
            self.invalid(where, "must not be empty" if min_length == 1 else f"is shorter than {min_length} characters")
            return None
        if pattern is not None and value and not pattern.fullmatch(value):
            self.invalid(where, f"{shown(value)} is not valid (must match {pattern.pattern})")
            return None
        return value

    def choice(
        self, obj: Mapping[str, Any], key: str, path: str, choices: Sequence[str], default: str | None = None
    ) -> str | None:
        """The string at `key`, one of `choices`; `default` when absent, None when not one of them."""
        value = obj.get(key)
        if value is None:
            return default
        if value not in choices:
            self.invalid(f"{path}.{key}", f"{shown(value)} is not one of {', '.join(choices)}")
            return None
        return str(value)

    def number(
        self, obj: Mapping[str, Any], key: str, path: str, *, low: int, high: int, required: bool = False
    ) -> int | None:
        """The integer at `key` within `low..high`; None when absent (a problem if `required`) or invalid."""
        where = f"{path}.{key}"
        value = obj.get(key)
        if value is None:
            if required:
                self.invalid(where, "is required")
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.invalid(where, f"must be an integer, not {shown(value)}")
            return None
        if not low <= value <= high:
            self.invalid(where, f"{value} is not in {low}..{high}")
            return None
        return value

    def flag(self, obj: Mapping[str, Any], key: str, path: str) -> bool | None:
        value = obj.get(key)
        if value is None or isinstance(value, bool):
            return value
        self.invalid(f"{path}.{key}", f"must be true or false, not {shown(value)}")
        return None

    def items(
        self, obj: Mapping[str, Any], key: str, path: str, *, max_items: int, min_items: int = 0
    ) -> list[tuple[str, Any]]:
        """The elements of the list at `key` with their paths, at most `max_items` (the rest is cut,
        with a problem); empty when absent or not a list."""
        where = f"{path}.{key}"
        value = obj.get(key)
        if value is None:
            if min_items:
                self.invalid(where, "is required")
            return []
        if not isinstance(value, list):
            self.invalid(where, f"must be a list, not {shown(value)}")
            return []
        if len(value) < min_items:
            self.invalid(where, f"must have at least {min_items} item{'s' if min_items > 1 else ''}")
        if len(value) > max_items:
            self.invalid(where, f"has {len(value)} items, more than the {max_items} allowed")
        return [(f"{where}[{index}]", item) for index, item in enumerate(value[:max_items])]

    def objects(
        self, obj: Mapping[str, Any], key: str, path: str, *, max_items: int, min_items: int = 0
    ) -> list[tuple[str, Mapping[str, Any]]]:
        """As `items`, for a list of objects: an element that is not one is left out, with a problem."""
        found = []
        for where, item in self.items(obj, key, path, max_items=max_items, min_items=min_items):
            if isinstance(item, Mapping):
                found.append((where, item))
            else:
                self.invalid(where, f"must be an object, not {shown(item)}")
        return found

    def strings(
        self,
        obj: Mapping[str, Any],
        key: str,
        path: str,
        *,
        max_items: int,
        max_length: int = 253,
        pattern: re.Pattern[str] | None = None,
        unique: bool = False,
    ) -> tuple[str, ...]:
        """A list of strings, each checked as `text` checks one; invalid ones are left out."""
        found: list[str] = []
        for where, item in self.items(obj, key, path, max_items=max_items):
            value = self.text({"_": item}, "_", where, max_length=max_length, min_length=1, pattern=pattern)
            if value is None:
                continue
            if unique and value in found:
                self.invalid(where, f"{shown(value)} is listed twice")
                continue
            found.append(value)
        return tuple(found)


def metadata(obj: Mapping[str, Any]) -> tuple[str, str, int]:
    """(namespace, name, generation) of `obj`, with safe values when its metadata is malformed
    (the API server never sends such, but a test or a fuzzer may)."""
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        return "", "", 0
    namespace, name, generation = meta.get("namespace"), meta.get("name"), meta.get("generation")
    return (
        namespace if isinstance(namespace, str) else "",
        name if isinstance(name, str) else "",
        generation if isinstance(generation, int) and not isinstance(generation, bool) else 0,
    )


def created_of(obj: Mapping[str, Any]) -> str:
    """`metadata.creationTimestamp` as the API server writes it (RFC 3339 in UTC, which sorts as
    time does), "" when absent or malformed."""
    meta = obj.get("metadata")
    created = meta.get("creationTimestamp") if isinstance(meta, Mapping) else None
    return created if isinstance(created, str) and len(created) <= 64 else ""


def subject_of(kind: str, namespace: str, name: str) -> Subject:
    """How messages name an object: `HTTPRoute shop/web`, `GatewayClass meshplane`."""
    return Subject(f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}")
