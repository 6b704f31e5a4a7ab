"""The status meshplane owes each of its own objects, as values: conditions with the Gateway API's
types and reasons where they exist.

Owns the vocabulary (condition types, reasons) and `ObjectStatus`, which the merge fills
(`Merged.object_status`) and the status writer renders. `Programmed` depends on what proxies
acknowledged, which only the xDS side knows: it is not here. Must not read or write anything.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshplane.model.problems import ProblemKind

TRUE, FALSE = "True", "False"
# Condition types.
ACCEPTED = "Accepted"
RESOLVED_REFS = "ResolvedRefs"
# True when the object is served but clashes with another that is served too (as the Gateway
# API's listener condition of that name): EdgeSites whose device ranges overlap.
CONFLICTED = "Conflicted"
# Reasons, spelled as the Gateway API spells them (apis/v1/shared_types.go, policy_types.go).
REASON_ACCEPTED = "Accepted"
REASON_CONFLICTED = "Conflicted"
REASON_INVALID = "Invalid"
REASON_RESOLVED_REFS = "ResolvedRefs"
# True when the object is served but clashes with another that is served too (as the Gateway
# API's listener condition of that name): EdgeSites whose device ranges overlap.
CONFLICTED = "Conflicted"
REASON_TARGET_NOT_FOUND = "TargetNotFound"
REASON_BACKEND_NOT_FOUND = "BackendNotFound"
# Ours, where the Gateway API has none: a site a DevicePolicy selects is not defined.
REASON_SITE_NOT_FOUND = "SiteNotFound"
REASON_DEVICE_RANGE_OVERLAP = "DeviceRangeOverlap"
REASON_INVALID_CERTIFICATE_REF = "InvalidCertificateRef"
# A condition message is cut to this many characters (the CRD's maxLength for it).
MAX_MESSAGE = 32768


@dataclass(frozen=True, slots=True)
class ObjectCondition:
    """One condition: `type` ("Accepted", "ResolvedRefs" or "Conflicted"), `status` ("True"/"False"), the
    reason (one of the REASON_* names) and a message for people."""

    type: str
    status: str
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class ObjectStatus:
    """What the status of one object says: `generation` is the metadata.generation the conditions
    were worked out from (the status writer's `observedGeneration`)."""

    generation: int
    conditions: tuple[ObjectCondition, ...]

    def condition(self, kind: str) -> ObjectCondition | None:
        """The condition of type `kind`, or None."""
        return next((found for found in self.conditions if found.type == kind), None)


def unresolved_reason(kind: str, problem: ProblemKind) -> str:
    """The ResolvedRefs=False reason of an object of `kind` whose reference has `problem`: a
    TrafficPolicy's target is TargetNotFound; a secret, InvalidCertificateRef (the Gateway API's
    word for a certificate reference that does not resolve); a site, SiteNotFound; a service or
    port (a backend, an allowed service, a collector), BackendNotFound."""
    if kind == "TrafficPolicy" and problem is ProblemKind.UNKNOWN_SERVICE:
        return REASON_TARGET_NOT_FOUND
    if problem in (ProblemKind.UNKNOWN_SECRET, ProblemKind.UNKNOWN_NAMESPACED_SECRET):
        return REASON_INVALID_CERTIFICATE_REF
    if problem is ProblemKind.UNKNOWN_SITE:
        return REASON_SITE_NOT_FOUND
    return REASON_BACKEND_NOT_FOUND


def condition(kind: str, ok: bool, reason: str, message: str) -> ObjectCondition:
    """A condition whose status is True when `ok`, its message cut to the CRD's bound."""
    return ObjectCondition(kind, TRUE if ok else FALSE, reason, message[:MAX_MESSAGE])
