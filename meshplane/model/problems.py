"""Problems as values: why some content cannot be served, typed so that code never reads text back.

Owns `Problem`, the `ProblemKind`s code tells apart, and `Subject`, how model checks word them.
Whoever finds a problem gives its kind, the object at fault (`subject`), where it was said
(`where`) and the whole sentence users see (`message`); whoever decides about a problem (drop the
ones another source may resolve, count, refuse) looks at the kind and the subject, and shows the
message with `str()`. Must not know who shows problems or how (status, logs, CLI).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ProblemKind(enum.Enum):
    """What is wrong, as far as code must tell it apart. Everything else is in the message."""

    INVALID = "invalid"
    """A value is wrong on its own: malformed, out of range, not PEM, a regex Envoy refuses, …"""
    DUPLICATE = "duplicate"
    """One thing is defined twice where it may be defined once (a service or route in two policy
    files, a port declared twice, a device registered twice, …)."""
    CONFLICT = "conflict"
    """Two definitions claim one thing (two routes attach to one service; two sources define one
    object, and one wins)."""
    UNKNOWN_SERVICE = "unknown-service"
    """A reference names a service that no definition has."""
    UNKNOWN_PORT = "unknown-port"
    """A reference names a port its service does not declare."""
    UNKNOWN_SECRET = "unknown-secret"
    """A reference names a secret (certificate or CA bundle) that no definition has."""
    UNKNOWN_NAMESPACED_SECRET = "unknown-namespaced-secret"
    """As UNKNOWN_SECRET, for a `namespace/name` reference: one only a Kubernetes Secret defines,
    so a source that reads no Secrets cannot tell whether it exists."""
    UNKNOWN_SITE = "unknown-site"
    """A device names a site that no definition has."""
    NOT_AN_IP_ADDRESS = "not-an-ip-address"
    """An address that must be an IP address does not parse as one."""
    FORBIDDEN_ADDRESS = "forbidden-address"
    """An IP address no device may claim: never allowed (loopback, metadata, …) or outside its site."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One reason some content cannot be served.

    `subject` names the object at fault as users read it ("service default/web", "route web",
    "site gym-1", "device bike-7"); `where` names where it was said (a `file:line`, an origin),
    "" when nothing says; `message` is the whole sentence users see, subject and place included.
    `str(problem)` is `message`, so whoever only shows problems shows them unchanged.
    """

    kind: ProblemKind
    subject: str
    where: str
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True, slots=True)
class Subject:
    """The object a check is about, and how the messages of its problems begin.

    `name` and `where` become each problem's `subject` and `where`; a message reads
    "`heading`: text", the heading being "`name` (`where`)" (without the parentheses when `where`
    is "") unless given. One place builds that heading, so every model check words it the same way.
    """

    name: str
    where: str = ""
    heading: str = ""

    def __post_init__(self) -> None:
        if not self.heading:
            # frozen: a default computed from the other fields is set once, here
            object.__setattr__(self, "heading", self.name + (f" ({self.where})" if self.where else ""))

    def within(self, part: str) -> Subject:
        """The same subject, its messages naming `part` of it ("rule 2" of a route)."""
        return Subject(self.name, self.where, f"{self.heading} {part}")

    def problem(self, kind: ProblemKind, text: str) -> Problem:
        return Problem(kind, self.name, self.where, f"{self.heading}: {text}")

    def invalid(self, text: str) -> Problem:
        """The commonest problem: a value of this subject is wrong."""
        return self.problem(ProblemKind.INVALID, text)
