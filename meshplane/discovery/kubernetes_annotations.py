"""`meshplane.io/…` Service annotations → per-service traffic policy, as the policy files can set it.

Owns the annotation vocabulary (documented in docs/kubernetes.md) and its parsing, as pure
functions. Each annotation is one policy; an invalid one is skipped for that service with a note
saying why (kept for the status endpoint), and never stops discovery or the other annotations.

    meshplane.io/connect-timeout      250ms | 2s | 1.5 (seconds)
    meshplane.io/load-balancing       round_robin | least_request | ring_hash | maglev | random
    meshplane.io/hash-key             header:<name> | cookie:<name> | source-ip (with ring_hash, maglev)
    meshplane.io/locality-failover    true | false
    meshplane.io/circuit-breakers     max-connections=100, max-pending-requests=10, max-requests=1000, max-retries=3
    meshplane.io/outlier-detection    consecutive-5xx=5, consecutive-gateway-failure=3, interval=10s,
                                      base-ejection-time=30s, max-ejection-percent=10
    meshplane.io/timeout              request timeout, e.g. 5s (0 disables)
    meshplane.io/retries              attempts=3, on=5xx|reset|connect-failure, per-try-timeout=1s
    meshplane.io/tls-trust            upstream TLS: a CA bundle, e.g. internal-ca#ca (a Secret of the
                                      Service's namespace; shop/internal-ca#ca in namespace shop)
    meshplane.io/tls-client-certificate   with tls-trust: a certificate (mTLS), e.g. web-client
    meshplane.io/tls-sni              with tls-trust: the server name to send and verify

Secrets named by annotations are the Service's own namespace's only: whoever may edit a Service
must not make meshplane fetch, and hand to proxies, a key from a namespace they cannot read. A bare
`name[#ca]` means `<the Service's namespace>/name[#ca]`; another namespace is refused. A refused
tls-trust withholds the service (`AnnotationPolicy.withheld`): served without the TLS it asks for,
its requests would go out in clear. Policy files (the operator's) may name any namespace.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from meshplane.model import (
    RETRY_CONDITIONS,
    CircuitBreakers,
    HashKey,
    LoadBalancing,
    OutlierDetection,
    RetryPolicy,
    TrafficPolicy,
    UpstreamTls,
    is_host_name,
)

PREFIX = "meshplane.io/"
CONNECT_TIMEOUT = PREFIX + "connect-timeout"
LOAD_BALANCING = PREFIX + "load-balancing"
HASH_KEY = PREFIX + "hash-key"
LOCALITY_FAILOVER = PREFIX + "locality-failover"
CIRCUIT_BREAKERS = PREFIX + "circuit-breakers"
OUTLIER_DETECTION = PREFIX + "outlier-detection"
TIMEOUT = PREFIX + "timeout"
RETRIES = PREFIX + "retries"
TLS_TRUST = PREFIX + "tls-trust"
TLS_CLIENT_CERTIFICATE = PREFIX + "tls-client-certificate"
TLS_SNI = PREFIX + "tls-sni"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}


class AnnotationError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class AnnotationPolicy:
    """What a Service's annotations ask for. `timeout`/`retry` become a route attached to the service."""

    policy: TrafficPolicy = field(default_factory=TrafficPolicy)
    timeout: float | None = None
    retry: RetryPolicy | None = None
    tls: UpstreamTls | None = None
    notes: tuple[str, ...] = ()
    # The service must not be served: its tls-trust was refused (`notes` say why), and served
    # without TLS its requests would go out in clear.
    withheld: bool = False


def parse_duration(text: str) -> float:
    """`250ms`, `2s`, `1m` or bare seconds → float seconds."""
    match = _DURATION.match(text)
    if not match:
        raise AnnotationError(f"{text!r} is not a duration (e.g. 250ms, 2s, 1.5)")
    value = float(match.group(1)) * _UNIT[match.group(2)]
    if not math.isfinite(value):
        raise AnnotationError(f"{text!r} is not a finite duration")
    return value


def _pairs(text: str, allowed: Mapping[str, Callable[[str], Any]]) -> dict[str, Any]:
    """`a=1, b=2s` → {"a": parsed, …}, each value parsed by its key's function."""
    found: dict[str, Any] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in allowed:
            raise AnnotationError(f"{part!r}: expected one of {', '.join(f'{k}=…' for k in allowed)}")
        if key in found:
            raise AnnotationError(f"{key} is given twice")
        try:
            found[key] = allowed[key](value.strip())
        except ValueError as error:
            raise AnnotationError(f"{key}: {error}") from None
    if not found:
        raise AnnotationError("is empty")
    return found


def _count(text: str) -> int:
    if not text.isdigit():
        raise AnnotationError(f"{text!r} is not a non-negative integer")
    return int(text)


def _bool(text: str) -> bool:
    if text.lower() in ("true", "yes", "on", "1"):
        return True
    if text.lower() in ("false", "no", "off", "0"):
        return False
    raise AnnotationError(f"{text!r} is not true or false")


def _hash_key(text: str) -> HashKey:
    if text == "source-ip":
        return HashKey(source_ip=True)
    kind, sep, name = text.partition(":")
    if sep and name.strip() and kind == "header":
        return HashKey(header=name.strip().lower())
    if sep and name.strip() and kind == "cookie":
        return HashKey(cookie=name.strip())
    raise AnnotationError(f"{text!r}: expected header:<name>, cookie:<name> or source-ip")


def _retry(text: str) -> RetryPolicy:
    values = _pairs(text, {"attempts": _count, "on": lambda v: tuple(v.split("|")), "per-try-timeout": parse_duration})
    on = values.get("on", RetryPolicy().on)
    unknown = [condition for condition in on if condition not in RETRY_CONDITIONS]
    if unknown:
        raise AnnotationError(f"unknown retry condition(s) {', '.join(unknown)}")
    attempts = values.get("attempts", RetryPolicy().attempts)
    if attempts < 1:
        raise AnnotationError("attempts must be at least 1")
    per_try = values.get("per-try-timeout")
    if per_try is not None and per_try <= 0:
        raise AnnotationError("per-try-timeout must be positive")
    return RetryPolicy(on=on, attempts=attempts, per_try_timeout=per_try)


def _circuit_breakers(text: str) -> CircuitBreakers:
    names = ("max-connections", "max-pending-requests", "max-requests", "max-retries")
    values = _pairs(text, dict.fromkeys(names, _count))
    return CircuitBreakers(**{name.replace("-", "_"): value for name, value in values.items()})


def _outlier_detection(text: str) -> OutlierDetection:
    parsers: dict[str, Callable[[str], Any]] = {
        "consecutive-5xx": _count,
        "consecutive-gateway-failure": _count,
        "interval": parse_duration,
        "base-ejection-time": parse_duration,
        "max-ejection-percent": _count,
    }
    values = _pairs(text, parsers)
    return OutlierDetection(**{name.replace("-", "_"): value for name, value in values.items()})


def policy_of(obj: Mapping[str, Any]) -> AnnotationPolicy:
    """The policy Service `obj`'s annotations ask for; every annotation that cannot be used is
    skipped and explained in `notes` (`service ns/name: annotation …: reason; skipped`)."""
    meta = obj.get("metadata") or {}
    annotations: Mapping[str, str] = meta.get("annotations") or {}
    ours = {key: str(value) for key, value in annotations.items() if key.startswith(PREFIX)}
    if not ours:
        return _DEFAULT
    where = f"service {meta.get('namespace')}/{meta.get('name')}"
    notes: list[str] = []
    policy = TrafficPolicy()
    timeout: float | None = None
    retry: RetryPolicy | None = None

    def skip(key: str, reason: str) -> None:
        notes.append(f"{where}: annotation {key}={ours[key]!r}: {reason}; skipped")

    def apply(key: str, change: Callable[[str], dict[str, Any]]) -> None:
        nonlocal policy
        if key not in ours:
            return
        try:
            candidate = dataclasses.replace(policy, **change(ours[key].strip()))
        except (AnnotationError, ValueError) as error:
            skip(key, str(error))
            return
        # A value that parses may still be out of range: the model's own checks decide.
        new_problems = set(map(str, candidate.problems(where))) - set(map(str, policy.problems(where)))
        if new_problems:
            skip(key, "; ".join(sorted(p.removeprefix(f"{where}: ") for p in new_problems)))
            return
        policy = candidate

    apply(CONNECT_TIMEOUT, lambda v: {"connect_timeout": parse_duration(v)})
    apply(LOCALITY_FAILOVER, lambda v: {"locality_failover": _bool(v)})
    apply(CIRCUIT_BREAKERS, lambda v: {"circuit_breakers": _circuit_breakers(v)})
    apply(OUTLIER_DETECTION, lambda v: {"outlier_detection": _outlier_detection(v)})
    if LOAD_BALANCING in ours:
        # The balancer and its hash key stand or fall together: ring_hash without a key is invalid.
        def balancing(value: str) -> dict[str, Any]:
            try:
                algorithm = LoadBalancing(value.lower())
            except ValueError:
                raise AnnotationError(f"expected one of {', '.join(LoadBalancing)}") from None
            try:
                key = _hash_key(ours[HASH_KEY].strip()) if HASH_KEY in ours else None
            except AnnotationError as error:  # the note is on the balancer: name the annotation at fault
                raise AnnotationError(f"{HASH_KEY}: {error}") from None
            return {"load_balancing": algorithm, "hash_key": key}

        apply(LOAD_BALANCING, balancing)
    elif HASH_KEY in ours:
        skip(HASH_KEY, f"needs {LOAD_BALANCING} ring_hash or maglev")
    if TIMEOUT in ours:
        try:
            timeout = parse_duration(ours[TIMEOUT])
        except AnnotationError as error:
            skip(TIMEOUT, str(error))
    if RETRIES in ours:
        try:
            retry = _retry(ours[RETRIES])
        except AnnotationError as error:
            skip(RETRIES, str(error))
    tls, withheld = _tls(ours, str(meta.get("namespace") or ""), skip)
    known = {CONNECT_TIMEOUT, LOAD_BALANCING, HASH_KEY, LOCALITY_FAILOVER, CIRCUIT_BREAKERS, OUTLIER_DETECTION}
    for key in sorted(set(ours) - known - {TIMEOUT, RETRIES, TLS_TRUST, TLS_CLIENT_CERTIFICATE, TLS_SNI}):
        skip(key, "unknown meshplane annotation")
    return AnnotationPolicy(policy=policy, timeout=timeout, retry=retry, tls=tls, notes=tuple(notes), withheld=withheld)


def _tls(ours: Mapping[str, str], namespace: str, skip: Callable[[str, str], None]) -> tuple[UpstreamTls | None, bool]:
    """Upstream TLS from the tls-* annotations, and whether the service must be withheld. Secret
    names come out as the policy files write them (`namespace/name` for a Kubernetes Secret's
    certificate, `namespace/name#ca` for its CA bundle), always in `namespace`, the Service's own
    (see the module docstring). Whether the secrets exist is checked on the merged mesh (the
    inventory), not here."""
    trust = ours.get(TLS_TRUST, "").strip()
    client_certificate = ours.get(TLS_CLIENT_CERTIFICATE, "").strip()
    sni = ours.get(TLS_SNI, "").strip()
    if not trust:
        if TLS_TRUST in ours:
            skip(TLS_TRUST, "is empty; the service is served without TLS")
        for key in (TLS_CLIENT_CERTIFICATE, TLS_SNI):
            if key in ours:
                skip(key, f"needs {TLS_TRUST}")
        return None, False
    try:
        trust = _own_secret(trust, namespace)
    except AnnotationError as error:
        # Fail closed: without its trust the service would be served in clear.
        skip(TLS_TRUST, str(error))
        return None, True
    if TLS_CLIENT_CERTIFICATE in ours and not client_certificate:
        skip(TLS_CLIENT_CERTIFICATE, "is empty")
    elif client_certificate:
        try:
            client_certificate = _own_secret(client_certificate, namespace)
        except AnnotationError as error:
            skip(TLS_CLIENT_CERTIFICATE, str(error))  # TLS still, without a client certificate
            client_certificate = ""
    if sni and (not is_host_name(sni) or sni.startswith("*")):
        skip(TLS_SNI, "is not a host name")
        sni = ""
    return UpstreamTls(trust=trust, sni=sni, client_certificate=client_certificate), False


def _own_secret(reference: str, namespace: str) -> str:
    """`name[#ca]` → `namespace/name[#ca]`; `namespace/…` as is; another namespace's Secret refused."""
    named, slash, _ = reference.partition("/")
    if not slash:
        return f"{namespace}/{reference}"
    if named != namespace:
        raise AnnotationError(
            f"names a Secret of namespace {named!r}; a Service's annotations may only name Secrets of "
            f"its own namespace {namespace!r}"
        )
    return reference


_DEFAULT = AnnotationPolicy()
