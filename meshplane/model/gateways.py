"""Gateways: the listeners a gateway proxy opens for a Kubernetes Gateway, and the routes on them.

Owns `Gateway` (namespace, name, listeners), `GatewayListener` (port, protocol, hostname, the
certificates an HTTPS listener presents) and what each listener serves: virtual hosts by hostname
(`GatewayHost`), each an ordered list of `GatewayRule`s (the model's `RouteRule`, plus the share of
traffic whose backends did not resolve). The values are resolved already: hostnames intersected,
routes attached, rules in precedence order, backends named as `ServiceRef`s the mesh holds.
Refers to services and certificates by name; must not know Kubernetes or Envoy's wire types.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from meshplane.model.problems import Problem, Subject
from meshplane.model.routes import RouteRule

# Envoy answers a request whose rule has no backend that resolved with this status (the spec's
# "MUST receive a 500 status code").
UNRESOLVED_STATUS = 500
MAX_GATEWAY_LISTENERS = 64
# A gateway's config is bounded: past this many rules in one listener, the rest are refused.
MAX_RULES_PER_HOST = 4096


class ListenerProtocol(StrEnum):
    """What a gateway listener serves: plain HTTP, or HTTPS terminated with its certificates."""

    HTTP = "HTTP"
    HTTPS = "HTTPS"


@dataclass(frozen=True, slots=True)
class GatewayRule:
    """One rule a gateway serves: `rule` (its match, filters and the backends that resolved, each
    of positive weight) and `unresolved_weight`, the weight of the backends that did not resolve.
    Requests given to that share are answered `failure_status` (500, or 503 for gRPC, which its
    clients read as UNAVAILABLE); a rule with neither a resolved backend nor a redirect answers
    every request so. A PREFIX path match is one of whole segments, the Gateway API's PathPrefix
    (`/api` takes `/api` and `/api/x`, not `/apiary`)."""

    rule: RouteRule
    unresolved_weight: int = 0
    failure_status: int = UNRESOLVED_STATUS

    @property
    def fails_all(self) -> bool:
        """Whether every request this rule matches is answered `UNRESOLVED_STATUS`."""
        return self.rule.redirect is None and not self.rule.backends


@dataclass(frozen=True, slots=True)
class GatewayHost:
    """The rules served for one hostname (`*`: any; `*.example.com`: its subdomains), in the order
    they are tried: the Gateway API's precedence, already applied."""

    hostname: str
    rules: tuple[GatewayRule, ...]


@dataclass(frozen=True, slots=True)
class GatewayListener:
    """One listener of a Gateway. `hostname` (None: any) is what its routes' hostnames were
    intersected with; an HTTPS listener presents `certificates` (names of `Mesh.certificates`) to
    clients whose SNI matches `hostname`. `hosts` are sorted by hostname."""

    name: str
    port: int
    protocol: ListenerProtocol
    hostname: str | None = None
    certificates: tuple[str, ...] = ()
    hosts: tuple[GatewayHost, ...] = ()


@dataclass(frozen=True, slots=True)
class Gateway:
    """A Gateway meshplane serves: its listeners (sorted by port, then name), each resolved."""

    namespace: str
    name: str
    listeners: tuple[GatewayListener, ...] = ()

    @property
    def key(self) -> str:
        """`namespace/name`: how a gateway proxy's node names the Gateway it serves."""
        return f"{self.namespace}/{self.name}"

    def problems(self, certificates: frozenset[str]) -> list[Problem]:
        """Why this Gateway cannot be served as it is: a listener's port out of range, an HTTPS
        listener without certificates or naming one `certificates` lacks, too many listeners."""
        about = Subject(f"gateway {self.key}")
        found = []
        failure_statuses = (UNRESOLVED_STATUS, 503)
        if len(self.listeners) > MAX_GATEWAY_LISTENERS:
            found.append(about.invalid(f"has {len(self.listeners)} listeners, more than {MAX_GATEWAY_LISTENERS}"))
        for listener in self.listeners:
            where = about.within(f"listener {listener.name}")
            if not 1 <= listener.port <= 65535:
                found.append(where.invalid(f"port {listener.port} is out of range 1-65535"))
            if listener.protocol is ListenerProtocol.HTTPS and not listener.certificates:
                found.append(where.invalid("HTTPS needs a certificate"))
            for name in listener.certificates:
                if name not in certificates:
                    found.append(where.invalid(f"certificate {name!r} is not served"))
            for host in listener.hosts:
                if len(host.rules) > MAX_RULES_PER_HOST:
                    found.append(where.invalid(f"host {host.hostname} has more than {MAX_RULES_PER_HOST} rules"))
                if any(rule.failure_status not in failure_statuses for rule in host.rules):
                    found.append(where.invalid(f"host {host.hostname}: a rule fails with a status not 500 or 503"))
        return found
