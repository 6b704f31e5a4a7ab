"""Services and their endpoints, as every source describes them.

Owns: the shape of a service (ports, protocol, host names, traffic policy) and of an endpoint
(address, port, locality, health, weight), including endpoints named by DNS (`DnsEndpoints`: the
names, how proxies resolve them, and the rules a DNS name must follow). Must not know where they
came from (Kubernetes, policy files, device registrations) nor how Envoy spells them.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass, field
from enum import StrEnum

from meshplane.model.policy import TrafficPolicy
from meshplane.model.problems import Problem, ProblemKind, Subject
from meshplane.model.secrets import UpstreamTls

# RFC 1123 label, as Kubernetes requires of service names and namespaces.
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# A host name as a client may send it in a Host header (no port), letters, digits, '-', '.', '*' first.
_HOST_NAME = re.compile(r"^(\*\.)?[A-Za-z0-9]([-A-Za-z0-9.]{0,251}[A-Za-z0-9])?$")
_PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?$")
# One label of a DNS name an endpoint may have (RFC 1123 section 2.1: letters, digits, '-', not at
# either end, 1-63 characters; either case, as DNS compares without it).
_DNS_NAME_LABEL = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?$")
# RFC 1035's limit on a name's text form (255 octets on the wire, less the length bytes).
MAX_DNS_NAME = 253
# The bounds the model holds ports and endpoint weights to; the policy format's field table (and
# the CRDs generated from it) take them from here.
MIN_PORT, MAX_PORT = 1, 65535
MIN_ENDPOINT_WEIGHT, MAX_ENDPOINT_WEIGHT = 1, 128


def is_dns_label(value: str) -> bool:
    """True when `value` is an RFC 1123 label (what Kubernetes accepts as a name or namespace)."""
    return bool(_DNS_LABEL.match(value))


def is_ip_address(value: str) -> bool:
    """True when `value` is an IPv4 or IPv6 address as `ipaddress.ip_address` reads it.

    Endpoints are mostly dotted-quad IPv4, which `inet_pton` accepts about 15 times faster and
    only when `ipaddress` does too (four decimal octets 0-255, no leading zeros, ASCII digits);
    whatever it refuses, `ipaddress` decides (IPv6, scoped IPv6, every mistake).
    """
    try:
        socket.inet_pton(socket.AF_INET, value)
        return True
    except (OSError, ValueError):  # ValueError: an embedded NUL
        pass
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def is_meant_as_dns_name(value: str) -> bool:
    """True when an endpoint's `value` is written as a DNS name, not as an IP address: it has no
    ':' (every IPv6 address has one) and is not only digits and dots (an IPv4 address, or a mistyped
    one, which `Endpoint.problems` then refuses as such). Cheap: sources sort every endpoint by it."""
    return ":" not in value and not value.replace(".", "").isdigit()


def dns_name_problem(value: str) -> str | None:
    """Why `value` cannot be an endpoint's DNS name, or None when it can: at most 253 characters,
    dot-separated RFC 1123 labels of 1-63 letters, digits and inner hyphens, no wildcard, no
    trailing dot, and a last label that is not all digits (RFC 1123 section 2.1: so a mistyped IPv4
    address, `10.0.0.256`, is never taken for a name)."""
    if not value:
        return "is empty"
    if len(value) > MAX_DNS_NAME:
        return f"is {len(value)} characters long; a DNS name has at most {MAX_DNS_NAME}"
    if "*" in value:
        return "is a wildcard; an endpoint names one host"
    if value.endswith("."):
        return "ends with a dot; write the name without it"
    labels = value.split(".")
    for label in labels:
        if not _DNS_NAME_LABEL.match(label):
            shown = label if len(label) <= 70 else label[:70] + "..."
            return (
                f"has the label {shown!r}: a label is 1-63 letters, digits and hyphens, "
                "beginning and ending with a letter or digit"
            )
    if labels[-1].isdigit():
        return "is neither an IP address nor a DNS name (its last label is a number)"
    return None


def is_host_name(value: str) -> bool:
    """True when `value` may stand in a virtual host's domains (optionally a leading `*.` wildcard)."""
    return bool(_HOST_NAME.match(value))


class Protocol(StrEnum):
    """What a service port speaks; decides cluster options and which listeners carry it."""

    HTTP1 = "http1"
    HTTP2 = "http2"
    GRPC = "grpc"
    TCP = "tcp"

    @property
    def is_http(self) -> bool:
        return self is not Protocol.TCP

    @property
    def needs_http2_upstream(self) -> bool:
        return self in (Protocol.HTTP2, Protocol.GRPC)


class EndpointHealth(StrEnum):
    """An endpoint's condition, after Kubernetes' EndpointSlice conditions.

    READY: takes new traffic. SERVING: answers but is not ready (e.g. published not-ready).
    TERMINATING: serving while it drains; kept only for in-flight work, at the lowest priority.
    UNHEALTHY: neither ready nor serving.
    """

    READY = "ready"
    SERVING = "serving"
    TERMINATING = "terminating"
    UNHEALTHY = "unhealthy"


@dataclass(frozen=True, slots=True, order=True)
class Locality:
    """Where something runs. Empty strings mean unknown at that level."""

    region: str = ""
    zone: str = ""
    sub_zone: str = ""

    @property
    def is_known(self) -> bool:
        return bool(self.region or self.zone or self.sub_zone)


@dataclass(frozen=True, slots=True)
class ServiceRef:
    """A reference to a service by namespace and name."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class ServicePort:
    """One port of a service. `name` is how endpoints and routes refer to it."""

    name: str
    port: int
    protocol: Protocol = Protocol.HTTP1

    def problems(self, subject: str, where: str = "") -> list[Problem]:
        """Why this port cannot be served, each problem about `subject` (its service) said at `where`."""
        about = Subject(subject, where)
        found = []
        if not _PORT_NAME.match(self.name):
            found.append(
                about.problem(
                    ProblemKind.INVALID, f"port name {self.name!r} must be a lowercase DNS label of at most 15 chars"
                )
            )
        if not MIN_PORT <= self.port <= MAX_PORT:
            found.append(about.invalid(f"port {self.port} is out of range {MIN_PORT}-{MAX_PORT}"))
        return found


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One address serving one port of a service. `port_name` matches a `ServicePort.name`."""

    address: str
    port: int
    port_name: str
    locality: Locality = field(default_factory=Locality)
    health: EndpointHealth = EndpointHealth.READY
    weight: int = 1

    def problems(self, subject: str, where: str = "", *, named: bool = False) -> list[Problem]:
        """Why this endpoint cannot be served, each problem about `subject` (its service) said at `where`.

        `named`: the address is a DNS name (one of a `DnsEndpoints`), held to `dns_name_problem`;
        otherwise it must be an IP address.
        """
        about = Subject(subject, where)
        found = []
        if named:
            if is_ip_address(self.address):
                found.append(about.invalid(f"DNS endpoint {self.address!r} is an IP address, not a DNS name"))
            elif (why := dns_name_problem(self.address)) is not None:
                found.append(about.invalid(f"endpoint name {self.address[:80]!r} {why}"))
        elif not is_ip_address(self.address):
            found.append(
                about.problem(ProblemKind.NOT_AN_IP_ADDRESS, f"endpoint address {self.address!r} is not an IP address")
            )
        if not MIN_PORT <= self.port <= MAX_PORT:
            found.append(about.invalid(f"endpoint port {self.port} is out of range {MIN_PORT}-{MAX_PORT}"))
        if not MIN_ENDPOINT_WEIGHT <= self.weight <= MAX_ENDPOINT_WEIGHT:
            found.append(
                about.invalid(
                    f"endpoint weight {self.weight} is out of range {MIN_ENDPOINT_WEIGHT}-{MAX_ENDPOINT_WEIGHT}"
                )
            )
        return found


class DnsResolution(StrEnum):
    """How a proxy turns a DNS endpoint into connection targets.

    STRICT: every address the name resolves to is a host of its own, balanced across (the names
    of a service whose addresses are its replicas). LOGICAL: the name is one host; new connections
    go to the first address of the latest answer (a name standing for a load balancer or a CDN,
    whose addresses rotate). Proxyless gRPC resolves every DNS service the logical way.
    """

    STRICT = "strict"
    LOGICAL = "logical"


class LookupFamily(StrEnum):
    """Which addresses a proxy asks DNS for. AUTO: IPv4 when the name has any, IPv6 otherwise."""

    V4 = "v4"
    V6 = "v6"
    AUTO = "auto"


@dataclass(frozen=True, slots=True)
class DnsResolver:
    """A DNS server a proxy asks instead of its host's (`address` an IP address)."""

    address: str
    port: int = 53


# Bounds of `DnsEndpoints`: the refresh interval (Envoy takes at least 1 ms; below 50 ms a fleet
# would flood its DNS servers, above a day a moved backend stays unreached), and list sizes.
MIN_DNS_REFRESH = 0.05
MAX_DNS_REFRESH = 86_400.0
MAX_DNS_ENDPOINTS = 64
MAX_DNS_RESOLVERS = 8


@dataclass(frozen=True, slots=True)
class DnsEndpoints:
    """A service's endpoints named by DNS, which every proxy resolves itself, again and again.

    `endpoints`: each one's `address` a DNS name (`dns_name_problem`), with port, locality, health
    and weight as an IP endpoint's. `resolution`: `DnsResolution`. `refresh`: seconds between two
    lookups of a name; None follows each answer's TTL. `lookup_family`: `LookupFamily`.
    `resolvers`: the DNS servers to ask instead of the proxy host's (split-horizon DNS: an edge
    site's own view of a name); empty asks the host's.

    Kept apart from `Service.endpoints` on purpose: a proxy gets these names inside the service's
    clusters, not as EDS, so a change to them is a change of the service (`MeshChanges.services`),
    never an endpoint-only change that would replace EDS assignments alone.
    """

    endpoints: tuple[Endpoint, ...]
    resolution: DnsResolution = DnsResolution.STRICT
    refresh: float | None = None
    lookup_family: LookupFamily = LookupFamily.AUTO
    resolvers: tuple[DnsResolver, ...] = ()

    def problems(self, ports: tuple[ServicePort, ...], subject: str, where: str = "") -> list[Problem]:
        """Why these endpoints cannot serve `ports` (their service's), each about `subject` at `where`."""
        about = Subject(subject, where)
        found = []
        if len(self.endpoints) > MAX_DNS_ENDPOINTS:
            found.append(about.invalid(f"{len(self.endpoints)} DNS endpoints; at most {MAX_DNS_ENDPOINTS}"))
        for endpoint in self.endpoints[:MAX_DNS_ENDPOINTS]:
            found += endpoint.problems(subject, where, named=True)
        if self.refresh is not None and not MIN_DNS_REFRESH <= self.refresh <= MAX_DNS_REFRESH:
            found.append(about.invalid(f"dns.refresh must be within {MIN_DNS_REFRESH * 1000:.0f}ms and 24h"))
        if len(self.resolvers) > MAX_DNS_RESOLVERS:
            found.append(about.invalid(f"{len(self.resolvers)} DNS resolvers; at most {MAX_DNS_RESOLVERS}"))
        for resolver in self.resolvers[:MAX_DNS_RESOLVERS]:
            if not is_ip_address(resolver.address):
                found.append(about.invalid(f"DNS resolver {resolver.address[:80]!r} is not an IP address"))
            if not 1 <= resolver.port <= 65535:
                found.append(about.invalid(f"DNS resolver port {resolver.port} is out of range 1-65535"))
        # Each port needs a name to reach; logical resolution takes exactly one (Envoy refuses a
        # LOGICAL_DNS cluster with more, and proxyless gRPC resolves only that way).
        for port in ports:
            count = sum(1 for endpoint in self.endpoints if endpoint.port_name == port.name)
            if count == 0:
                found.append(about.invalid(f"port {port.name!r} has no DNS endpoint"))
            elif count > 1 and self.resolution is DnsResolution.LOGICAL:
                found.append(
                    about.invalid(
                        f"port {port.name!r} has {count} DNS endpoints; logical resolution takes one name per port"
                    )
                )
        return found


class _RemembersProblems:
    """A base whose one slot, `_problems`, remembers a frozen value's problems on the instance.

    It sits outside the dataclass fields, so equality, hashing, `repr`, `dataclasses.fields` and
    `replace` never see it (a replaced copy starts without it). Sources hand an unchanged service
    over as the very object of their last load (policy files keep the object of an equal service,
    the Kubernetes source the object of a service whose objects did not change), so a reload
    validates only the services that changed.
    """

    __slots__ = ("_problems",)
    _problems: tuple[Problem, ...]


@dataclass(frozen=True, slots=True)
class Service(_RemembersProblems):
    """A named, addressable backend with its ports, endpoints and traffic policy.

    `hosts` are extra names clients may use beyond the ones derived from name and namespace.
    `origin` says where it was declared (a file path, `kubernetes`), for error messages only.
    `external_name`, when set, makes this a DNS alias (a Kubernetes `ExternalName` service): proxies
    resolve that host name themselves and connect to it on each port; it has no endpoints.
    `dns`, when set, holds the service's endpoints named by DNS (`DnsEndpoints`); such a service has
    no IP `endpoints` (a service's endpoints are all addresses or all names) and no external name.
    """

    name: str
    namespace: str
    ports: tuple[ServicePort, ...]
    endpoints: tuple[Endpoint, ...] = ()
    hosts: tuple[str, ...] = ()
    policy: TrafficPolicy = field(default_factory=TrafficPolicy)
    tls: UpstreamTls | None = None
    origin: str = ""
    external_name: str = ""
    dns: DnsEndpoints | None = None

    @property
    def ref(self) -> ServiceRef:
        return ServiceRef(self.namespace, self.name)

    def port(self, name_or_number: str | int | None) -> ServicePort | None:
        """The port named or numbered so; with None, the service's only (or first) port."""
        if name_or_number is None:
            return self.ports[0] if self.ports else None
        for port in self.ports:
            if port.name == name_or_number or port.port == name_or_number:
                return port
        return None

    def problems(self) -> list[Problem]:
        """Every reason this service cannot be served, each naming it; empty when it can.

        Computed once per object (a pure function of its frozen fields, most of the cost parsing
        every endpoint's address), then remembered: asking the same object again costs a copy.
        """
        try:
            remembered = self._problems
        except AttributeError:  # the slot is unset until the first call
            remembered = tuple(self._find_problems())
            object.__setattr__(self, "_problems", remembered)  # frozen: its fields; this slot is no field
        return list(remembered)

    def _find_problems(self) -> list[Problem]:
        subject, where = f"service {self.namespace}/{self.name}", self.origin
        about = Subject(subject, where)
        found = []
        if not is_dns_label(self.name):
            found.append(about.invalid("name must be a lowercase RFC 1123 label"))
        if not is_dns_label(self.namespace):
            found.append(about.invalid("namespace must be a lowercase RFC 1123 label"))
        if not self.ports:
            found.append(about.invalid("declares no ports"))
        seen_names: set[str] = set()
        seen_numbers: set[int] = set()
        for port in self.ports:
            found += port.problems(subject, where)
            if port.name in seen_names:
                found.append(about.problem(ProblemKind.DUPLICATE, f"port name {port.name!r} is declared twice"))
            if port.port in seen_numbers:
                found.append(about.problem(ProblemKind.DUPLICATE, f"port {port.port} is declared twice"))
            seen_names.add(port.name)
            seen_numbers.add(port.port)
        for endpoint in self.endpoints:
            found += endpoint.problems(subject, where)
            if endpoint.port_name not in seen_names:
                found.append(
                    about.problem(
                        ProblemKind.UNKNOWN_PORT,
                        f"endpoint {endpoint.address} names unknown port {endpoint.port_name!r}",
                    )
                )
        for host in self.hosts:
            if not is_host_name(host):
                found.append(about.invalid(f"host {host!r} is not a valid host name"))
        # SNI is a DNS host name (RFC 6066: no address, no wildcard); Envoy refuses one over 255 bytes.
        if self.tls is not None and self.tls.sni and (not is_host_name(self.tls.sni) or self.tls.sni.startswith("*")):
            found.append(about.invalid(f"tls.sni {self.tls.sni!r} is not a host name"))
        if self.external_name:
            if not is_host_name(self.external_name) or self.external_name.startswith("*"):
                found.append(about.invalid(f"external name {self.external_name!r} is not a valid DNS name"))
            if self.endpoints or self.dns is not None:
                found.append(about.invalid("a service with an external name has no endpoints of its own"))
        if self.dns is not None:
            if self.endpoints:
                found.append(
                    about.invalid(
                        "mixes IP addresses and DNS names in its endpoints; a service has one kind or the other"
                    )
                )
            found += self.dns.problems(self.ports, subject, where)
            for endpoint in self.dns.endpoints[:MAX_DNS_ENDPOINTS]:
                if endpoint.port_name not in seen_names:
                    found.append(
                        about.problem(
                            ProblemKind.UNKNOWN_PORT,
                            f"endpoint {endpoint.address[:80]} names unknown port {endpoint.port_name!r}",
                        )
                    )
        found += self.policy.problems(subject, where)
        return found
