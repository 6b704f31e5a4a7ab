"""Gateways: the listeners a gateway proxy opens for a Kubernetes Gateway, and the routes on them.

Owns `Gateway` (namespace, name, listeners), `GatewayListener` (port, protocol, hostname, the
certificates an HTTPS listener presents) and what each listener serves: virtual hosts by hostname
(`GatewayHost`), each an ordered list of `GatewayRule`s (the model's `RouteRule`, plus the share of
traffic whose backends did not resolve). The values are resolved already: hostnames intersected,
routes attached, rules in precedence order, backends named as `ServiceRef`s the mesh holds.
`BackendTls` is the TLS a gateway proxy speaks to one port of a Service (a BackendTLSPolicy):
held by each Gateway whose routes reach that Service, and applied to the Service's cluster only in
that Gateway's proxies. Refers to services and certificates by name; must not know Kubernetes or
Envoy's wire types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from meshplane.model.problems import Problem, Subject
from meshplane.model.routes import RouteRule
from meshplane.model.services import ServiceRef

# Envoy answers a request whose rule has no backend that resolved with this status (the spec's
# "MUST receive a 500 status code").
UNRESOLVED_STATUS = 500
MAX_GATEWAY_LISTENERS = 64
# A gateway's config is bounded: past this many rules in one listener, the rest are refused.
MAX_RULES_PER_HOST = 4096
# A CA bundle held for one BackendTls is bounded (a ConfigMap holds at most 1 MiB anyway).
MAX_CA_BUNDLE = 256 * 1024
_PEM_CERT = "-----BEGIN CERTIFICATE-----"


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


class SanKind(StrEnum):
    """The kind of a subject alternative name a backend's certificate must carry."""

    DNS = "DNS"
    URI = "URI"


@dataclass(frozen=True, slots=True)
class BackendTls:
    """TLS from a gateway proxy to the port named `port` of `service`: send `sni`; verify the
    backend's certificate chains to `ca_certificates` (PEM), or to the proxy's system trust store
    when `system_trust`; and that it carries one of `subject_alt_names` (none given: a DNS name
    equal to `sni`)."""

    service: ServiceRef
    port: str
    sni: str
    ca_certificates: str = field(default="", repr=False)
    system_trust: bool = False
    subject_alt_names: tuple[tuple[SanKind, str], ...] = ()

    def problems(self, about: Subject) -> list[Problem]:
        """Why this cannot be served: no trust (or both kinds), a CA bundle not PEM or too large."""
        where = about.within(f"backend TLS {self.service}:{self.port}")
        found = []
        if self.system_trust == bool(self.ca_certificates):
            found.append(where.invalid("needs exactly one of CA certificates and the system trust store"))
        if self.ca_certificates and _PEM_CERT not in self.ca_certificates:
            found.append(where.invalid("CA certificates are not PEM"))
        if len(self.ca_certificates) > MAX_CA_BUNDLE:
            found.append(where.invalid(f"CA certificates are larger than {MAX_CA_BUNDLE} bytes"))
        if not self.sni:
            found.append(where.invalid("needs a hostname (SNI)"))
        return found


@dataclass(frozen=True, slots=True)
class Gateway:
    """A Gateway meshplane serves: its listeners (sorted by port, then name), each resolved, and
    the TLS its proxies speak to backends (`backend_tls`, sorted by service and port, one each)."""

    namespace: str
    name: str
    listeners: tuple[GatewayListener, ...] = ()
    backend_tls: tuple[BackendTls, ...] = ()

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
        for tls in self.backend_tls:
            found += tls.problems(about)
        return found
