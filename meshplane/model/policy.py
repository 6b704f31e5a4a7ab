"""Per-service traffic policy: how a proxy connects to, balances over and protects a service.

Owns the policy's shape and its validation, and `PolicyAttachment` (a policy set apart from the
services it applies to, by reference: a TrafficPolicy object, which the merge applies). Durations
are float seconds. Must not know Envoy's field names; the translators map these onto clusters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from meshplane.model.limits import MIN_TIMEOUT, has_control_characters, header_name_problem
from meshplane.model.problems import Problem, Subject
from meshplane.model.secrets import UpstreamTls


class LoadBalancing(StrEnum):
    ROUND_ROBIN = "round_robin"
    LEAST_REQUEST = "least_request"
    RING_HASH = "ring_hash"
    MAGLEV = "maglev"
    RANDOM = "random"

    @property
    def is_consistent_hash(self) -> bool:
        return self in (LoadBalancing.RING_HASH, LoadBalancing.MAGLEV)


@dataclass(frozen=True, slots=True)
class HashKey:
    """What a consistent-hash balancer hashes on: one header, one cookie, or the client's address."""

    header: str = ""
    cookie: str = ""
    source_ip: bool = False


@dataclass(frozen=True, slots=True)
class CircuitBreakers:
    """Upper bounds Envoy enforces per upstream cluster (Envoy's defaults apply where None)."""

    max_connections: int | None = None
    max_pending_requests: int | None = None
    max_requests: int | None = None
    max_retries: int | None = None


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    """Passive health: eject hosts that keep failing."""

    consecutive_5xx: int = 5
    consecutive_gateway_failure: int | None = None
    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_percent: int = 10


class HealthCheckProtocol(StrEnum):
    HTTP = "http"
    TCP = "tcp"
    GRPC = "grpc"


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """Active health checking of every endpoint."""

    protocol: HealthCheckProtocol = HealthCheckProtocol.HTTP
    path: str = "/healthz"
    interval: float = 10.0
    timeout: float = 1.0
    unhealthy_threshold: int = 3
    healthy_threshold: int = 2


@dataclass(frozen=True, slots=True)
class TrafficPolicy:
    """Everything a service's owner may tune about how proxies reach it.

    `locality_failover`: when the proxy's locality is known, prefer endpoints in its zone, then its
    region, then anywhere (Envoy priorities); when off, every ready endpoint is equal.
    """

    connect_timeout: float = 1.0
    load_balancing: LoadBalancing = LoadBalancing.ROUND_ROBIN
    hash_key: HashKey | None = None
    circuit_breakers: CircuitBreakers | None = None
    outlier_detection: OutlierDetection | None = None
    health_check: HealthCheck | None = None
    locality_failover: bool = True

    def problems(self, subject: str, where: str = "") -> list[Problem]:
        """Why this policy cannot be served, each problem about `subject` (the service whose policy
        it is, as "service default/web") said at `where` ("" when nothing says)."""
        about = Subject(subject, where)
        found = _non_finite(about, self)
        if not MIN_TIMEOUT <= self.connect_timeout <= 300:
            found.append(about.invalid("connect_timeout must be within 1ms and 300s"))
        if self.load_balancing.is_consistent_hash and self.hash_key is None:
            found.append(about.invalid(f"{self.load_balancing} needs a hash_key (header, cookie or source_ip)"))
        if self.hash_key is not None:
            chosen = sum((bool(self.hash_key.header), bool(self.hash_key.cookie), self.hash_key.source_ip))
            if chosen != 1:
                found.append(about.invalid("hash_key must name exactly one of header, cookie, source_ip"))
            # Proxies compare header names without case (Envoy lowercases the one it hashes on).
            if self.hash_key.header and (problem := header_name_problem(self.hash_key.header.lower())):
                found.append(about.invalid(f"hash_key: {problem}"))
        if self.circuit_breakers is not None:
            for name in ("max_connections", "max_pending_requests", "max_requests", "max_retries"):
                value = getattr(self.circuit_breakers, name)
                if value is not None and value < 0:
                    found.append(about.invalid(f"circuit_breakers.{name} must not be negative"))
        if (od := self.outlier_detection) is not None:
            if od.consecutive_5xx < 1:
                found.append(about.invalid("outlier_detection.consecutive_5xx must be at least 1"))
            # Sent as a uint32: a negative count would become 0 on the wire, not be refused.
            if od.consecutive_gateway_failure is not None and od.consecutive_gateway_failure < 1:
                found.append(about.invalid("outlier_detection.consecutive_gateway_failure must be at least 1"))
            if od.interval < MIN_TIMEOUT or od.base_ejection_time < MIN_TIMEOUT:
                found.append(about.invalid("outlier_detection interval and base_ejection_time must be at least 1ms"))
            if not 0 <= od.max_ejection_percent <= 100:
                found.append(about.invalid("outlier_detection.max_ejection_percent must be within 0-100"))
        if (hc := self.health_check) is not None:
            if hc.interval < MIN_TIMEOUT or hc.timeout < MIN_TIMEOUT:
                found.append(about.invalid("health_check interval and timeout must be at least 1ms"))
            if hc.unhealthy_threshold < 1 or hc.healthy_threshold < 1:
                found.append(about.invalid("health_check thresholds must be at least 1"))
            if hc.protocol is HealthCheckProtocol.HTTP and not hc.path.startswith("/"):
                found.append(about.invalid("health_check.path must start with '/'"))
            if has_control_characters(hc.path):
                found.append(about.invalid(f"health_check.path {hc.path!r} must not contain control characters"))
        return found


class TargetKind(StrEnum):
    """What a policy attachment targets: a Kubernetes Service (core group), or a service that
    meshplane's own API defines (an ExternalService, or a service of the policy files)."""

    SERVICE = "Service"
    EXTERNAL_SERVICE = "ExternalService"


@dataclass(frozen=True, slots=True, order=True)
class PolicyTarget:
    """One service a policy attachment applies to, by kind, namespace and name."""

    kind: TargetKind
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class PolicyAttachment:
    """A traffic policy, and optionally TLS settings, for the services in `targets`: it replaces
    each target's whole `policy` (and its `tls` when `tls` is set). `created` orders two
    attachments to one target (the older wins; then `name`); `name` is "namespace/name" of the
    object that declared it, `origin` where it was said."""

    name: str
    targets: tuple[PolicyTarget, ...]
    policy: TrafficPolicy = TrafficPolicy()
    tls: UpstreamTls | None = None
    created: str = ""
    origin: str = ""


def _non_finite(about: Subject, policy: TrafficPolicy) -> list[Problem]:
    """NaN passes every `> 0` check and infinity most upper bounds: refuse both anywhere in the policy."""
    parts: list[object] = [policy, policy.circuit_breakers, policy.outlier_detection, policy.health_check]
    found = []
    for part in parts:
        if part is None:
            continue
        for name in part.__slots__:  # type: ignore[attr-defined]
            value = getattr(part, name)
            if isinstance(value, float) and not math.isfinite(value):
                found.append(about.invalid(f"{name} must be a finite number"))
    return found
