"""HTTP routing declared by policy: which requests go to which services, and how.

Owns route tables (hosts → ordered rules), matches (path, headers), weighted splits (canaries),
retries, timeouts and prefix rewrites. Refers to services by `ServiceRef`; must not know Envoy's
wire types. What it accepts a proxy accepts: regexes, header names, rewrites and timeouts are held
to proxies' limits (`meshplane.model.limits`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from meshplane.model.limits import MIN_TIMEOUT, has_control_characters, header_name_problem, regex_problem
from meshplane.model.services import ServiceRef, is_host_name


class PathMatchKind(StrEnum):
    PREFIX = "prefix"
    EXACT = "exact"
    REGEX = "regex"


class HeaderMatchKind(StrEnum):
    EXACT = "exact"
    PREFIX = "prefix"
    REGEX = "regex"
    PRESENT = "present"


@dataclass(frozen=True, slots=True)
class PathMatch:
    kind: PathMatchKind = PathMatchKind.PREFIX
    value: str = "/"


@dataclass(frozen=True, slots=True)
class HeaderMatch:
    """Matches one request header. With `invert`, matches when the condition does not hold."""

    name: str
    kind: HeaderMatchKind = HeaderMatchKind.EXACT
    value: str = ""
    invert: bool = False


@dataclass(frozen=True, slots=True)
class RouteMatch:
    path: PathMatch = PathMatch()
    headers: tuple[HeaderMatch, ...] = ()


@dataclass(frozen=True, slots=True)
class WeightedBackend:
    """A share of a rule's traffic. `port` (name or number) may be omitted for single-port services."""

    service: ServiceRef
    port: str | int | None = None
    weight: int = 100


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """`on` uses Envoy's retry conditions vocabulary (5xx, gateway-error, reset, connect-failure, …)."""

    on: tuple[str, ...] = ("5xx", "reset", "connect-failure")
    attempts: int = 2
    per_try_timeout: float | None = None


RETRY_CONDITIONS = frozenset(
    {
        "5xx",
        "gateway-error",
        "reset",
        "reset-before-request",
        "connect-failure",
        "envoy-ratelimited",
        "retriable-4xx",
        "refused-stream",
        "retriable-status-codes",
        "retriable-headers",
        "http3-post-connect-failure",
        # gRPC status based conditions
        "cancelled",
        "deadline-exceeded",
        "internal",
        "resource-exhausted",
        "unavailable",
    }
)


@dataclass(frozen=True, slots=True)
class RouteRule:
    """One ordered rule: requests matching `match` go to `backends` split by weight."""

    match: RouteMatch
    backends: tuple[WeightedBackend, ...]
    timeout: float | None = None
    retry: RetryPolicy | None = None
    prefix_rewrite: str | None = None


@dataclass(frozen=True, slots=True)
class RouteTable:
    """Routing for a set of host names, replacing the default route of the services it names.

    `service`, when set, attaches the table to that service's own host names (its virtual host);
    `hosts` adds further names. Rules are tried in order; the first match wins.
    """

    name: str
    rules: tuple[RouteRule, ...]
    service: ServiceRef | None = None
    hosts: tuple[str, ...] = ()
    origin: str = ""

    def problems(self) -> list[str]:
        where = f"route {self.name}" + (f" ({self.origin})" if self.origin else "")
        found = []
        if not self.rules:
            found.append(f"{where}: has no rules")
        if self.service is None and not self.hosts:
            found.append(f"{where}: names neither a service nor hosts")
        for host in self.hosts:
            if not is_host_name(host):
                found.append(f"{where}: host {host!r} is not a valid host name")
        for index, rule in enumerate(self.rules):
            found += _rule_problems(f"{where} rule {index + 1}", rule)
        return found


def _rule_problems(where: str, rule: RouteRule) -> list[str]:
    found = []
    path = rule.match.path
    if path.kind is PathMatchKind.REGEX:
        found += _regex_problems(where, path.value)
    else:
        if not path.value.startswith("/"):
            found.append(f"{where}: path {path.value!r} must start with '/'")
        # Envoy takes it, but no request path holds one: the rule could never match.
        if has_control_characters(path.value):
            found.append(f"{where}: path {path.value!r} must not contain control characters")
    for header in rule.match.headers:
        if (problem := header_name_problem(header.name)) is not None:
            found.append(f"{where}: {problem}")
        if header.kind is HeaderMatchKind.REGEX:
            found += _regex_problems(where, header.value)
    if not rule.backends:
        found.append(f"{where}: has no backends")
    if any(backend.weight < 0 for backend in rule.backends):
        found.append(f"{where}: backend weights must not be negative")
    if rule.backends and sum(backend.weight for backend in rule.backends) <= 0:
        found.append(f"{where}: backend weights add up to zero")
    if rule.timeout is not None and not (rule.timeout == 0 or MIN_TIMEOUT <= rule.timeout < float("inf")):
        found.append(f"{where}: timeout must be 0 (none) or at least 1ms")
    if (retry := rule.retry) is not None:
        unknown = sorted(set(retry.on) - RETRY_CONDITIONS)
        if unknown:
            found.append(f"{where}: unknown retry conditions {unknown}")
        if not 0 <= retry.attempts <= 10:
            found.append(f"{where}: retry attempts must be within 0-10")
        if retry.per_try_timeout is not None and not MIN_TIMEOUT <= retry.per_try_timeout < float("inf"):
            found.append(f"{where}: per_try_timeout must be at least 1ms")
    if (rewrite := rule.prefix_rewrite) is not None:
        if not rewrite.startswith("/"):
            found.append(f"{where}: prefix_rewrite must start with '/'")
        if has_control_characters(rewrite):
            found.append(f"{where}: prefix_rewrite {rewrite!r} must not contain control characters")
    return found


def _regex_problems(where: str, pattern: str) -> list[str]:
    problem = regex_problem(pattern)
    return [] if problem is None else [f"{where}: {problem}"]
