"""The meshplane.io objects as the merge uses them: each object's version to serve, and the status
owed to every object.

Owns the last good version of each object (`LastGood`): an object refused (by parsing, or by the
model's own checks of it, both done once per generation by `parse_object`) keeps its last accepted
version serving, and says why in its conditions and in a problem; one never accepted (a process
started with it broken: memory is all there is) serves nothing. `LastGood` judges only the objects
that changed since the previous call. Owns the TrafficPolicy rule too (`attach`): a policy
replaces its target's whole `policy` (and `tls` when it sets one); of two on one target the older
(`metadata.creationTimestamp`, then namespace/name) wins, as the Gateway API's policy attachment
says; a policy is Conflicted only when it loses every target. And the one rule that turns the
merge's problems into `ResolvedRefs` (`StatusBuilder.resolved_refs`): a reference problem said
where an object is (`Problem.where == str(key)`) is that object's. The precedence between sources
is the merge's (`inventory.py`); this module only reports what the merge decided
(`StatusBuilder`). Pure: no I/O, no clock.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TypeVar

from meshplane.discovery.meshplane_api.conditions import (
    ACCEPTED,
    REASON_ACCEPTED,
    REASON_CONFLICTED,
    REASON_INVALID,
    REASON_RESOLVED_REFS,
    RESOLVED_REFS,
    ObjectCondition,
    ObjectStatus,
    condition,
    unresolved_reason,
)
from meshplane.discovery.meshplane_api.kinds import (
    DEVICE_POLICY,
    EDGE_SITE,
    EXTERNAL_SERVICE,
    MESH_ROUTE,
    MESH_TELEMETRY,
)
from meshplane.discovery.meshplane_api.objects import MeshplaneObjects, ObjectKey, ParsedObject
from meshplane.model import RouteTable, Service, ServiceRef, Site, Telemetry
from meshplane.model.device_policy import DevicePolicy
from meshplane.model.policy import PolicyAttachment, PolicyTarget, TargetKind
from meshplane.model.problems import Problem, ProblemKind

_T = TypeVar("_T")

# The problems that mean a reference does not resolve (ResolvedRefs=False), not that the object is
# wrong by itself or lost a clash (those are Accepted's).
REFERENCE_KINDS = frozenset(
    {
        ProblemKind.UNKNOWN_SERVICE,
        ProblemKind.UNKNOWN_PORT,
        ProblemKind.UNKNOWN_SECRET,
        ProblemKind.UNKNOWN_NAMESPACED_SECRET,
        ProblemKind.UNKNOWN_SITE,
    }
)


@dataclass(frozen=True, slots=True)
class Served:
    """The objects' content to serve, in key order: each kind's model values with the key of the
    object they come from."""

    services: tuple[tuple[ObjectKey, Service], ...] = ()
    routes: tuple[tuple[ObjectKey, RouteTable], ...] = ()
    sites: tuple[tuple[ObjectKey, Site], ...] = ()
    telemetry: tuple[tuple[ObjectKey, Telemetry], ...] = ()
    attachments: tuple[tuple[ObjectKey, PolicyAttachment], ...] = ()
    device_policies: tuple[tuple[ObjectKey, DevicePolicy], ...] = ()


_NO_STATUS: Mapping[ObjectKey, ObjectStatus] = MappingProxyType({})


class StatusBuilder:
    """The conditions owed to each object for one merge: `base` is what `LastGood` found
    (`Accepted`, and `ResolvedRefs=True` on every object with a version served); the merge's
    decisions (conflicts, references that do not resolve) are kept apart, per object touched, so a
    merge costs the objects it decides about, not every object."""

    def __init__(self, base: Mapping[ObjectKey, ObjectStatus] = _NO_STATUS) -> None:
        self._base = base
        self._touched: dict[ObjectKey, dict[str, ObjectCondition]] = {}

    @staticmethod
    def over(keys: Iterable[ObjectKey]) -> StatusBuilder:
        """A builder for objects known by key only (generation 0): TrafficPolicy documents of policy files."""
        return StatusBuilder(MappingProxyType({key: ObjectStatus(0, ()) for key in keys}))

    def _conditions(self, key: ObjectKey) -> dict[str, ObjectCondition]:
        found = self._touched.get(key)
        if found is None:
            found = self._touched[key] = {c.type: c for c in self._base[key].conditions}
        return found

    def has(self, key: ObjectKey, kind: str, reason: str) -> bool:
        """Whether `key` has a condition of type `kind` with `reason`."""
        if key in self._touched:
            found = self._touched[key].get(kind)
        else:
            status = self._base.get(key)
            found = status.condition(kind) if status is not None else None
        return found is not None and found.reason == reason

    def set(self, key: ObjectKey, kind: str, ok: bool, reason: str, message: str) -> None:
        if key in self._base:
            self._conditions(key)[kind] = condition(kind, ok, reason, message)

    def conflicted(self, key: ObjectKey, message: str) -> None:
        """`key` lost a clash: Accepted=False, reason Conflicted (whatever it was). It serves
        nothing, so nothing of it is resolved: no ResolvedRefs."""
        if key in self._base:
            found = self._conditions(key)
            found[ACCEPTED] = condition(ACCEPTED, False, REASON_CONFLICTED, message)
            found.pop(RESOLVED_REFS, None)

    def resolved_refs(self, problems: Iterable[Problem], keys: Mapping[str, ObjectKey]) -> None:
        """ResolvedRefs=False on each object a reference problem is said of (`where` is the object's
        key as `keys` spells it), with the problems' messages and a reason by the kind of object
        and of reference; the objects Conflicted are left as they are."""
        unresolved: dict[ObjectKey, list[Problem]] = {}
        for problem in problems:
            if problem.kind in REFERENCE_KINDS and (key := said_of(problem, keys)) is not None:
                unresolved.setdefault(key, []).append(problem)
        for key, found in unresolved.items():
            if self.has(key, ACCEPTED, REASON_CONFLICTED):
                continue
            reason = unresolved_reason(key.kind, found[0].kind)
            self.set(key, RESOLVED_REFS, False, reason, "; ".join(dict.fromkeys(str(p) for p in found)))

    def status(self) -> Mapping[ObjectKey, ObjectStatus]:
        """Every object's status, `Accepted` first, in key order (read-only)."""
        if not self._touched:
            return self._base
        found = dict(self._base)
        for key, conditions in self._touched.items():
            found[key] = ObjectStatus(self._base[key].generation, _ordered(conditions.values()))
        return MappingProxyType(found)


def said_of(problem: Problem, names: Mapping[str, ObjectKey]) -> ObjectKey | None:
    """The object `problem` belongs to, of those `names` holds by their text: the one it is said
    where (an object's content has its key as origin, so its problems are said there), or None."""
    return names.get(problem.where)


def _ordered(conditions: Iterable[ObjectCondition]) -> tuple[ObjectCondition, ...]:
    order = {ACCEPTED: 0, RESOLVED_REFS: 1}
    return tuple(sorted(conditions, key=lambda c: (order.get(c.type, 2), c.type)))


class LastGood:
    """Which version of each object to serve: the current one when accepted, else the last one
    accepted (kept in memory, by key, with its generation), else none. Judges again only the
    objects that differ from the previous call's (by value: an object read again is equal), so a
    change of one object costs one judgement, whatever the number of objects; `judged` counts
    them (tests hold the cost to it)."""

    def __init__(self) -> None:
        self._seen: Mapping[ObjectKey, ParsedObject] = {}
        self._good: dict[ObjectKey, ParsedObject] = {}
        self._chosen: dict[ObjectKey, ParsedObject] = {}
        self._order: list[ObjectKey] = []
        self._status: dict[ObjectKey, ObjectStatus] = {}
        self._problems: dict[ObjectKey, Problem] = {}
        self._refused: tuple[Problem, ...] = ()
        self._served = Served()
        self._base: Mapping[ObjectKey, ObjectStatus] = _NO_STATUS
        self._names: Mapping[str, ObjectKey] = MappingProxyType({})
        self.judged = 0

    @property
    def names(self) -> Mapping[str, ObjectKey]:
        """Every object's key by its text (`str(key)`, the `where` of its content's problems)."""
        return self._names

    @property
    def problems(self) -> tuple[Problem, ...]:
        """An INVALID problem for each object refused, in key order: the reason and what is served."""
        return self._refused

    @property
    def status(self) -> Mapping[ObjectKey, ObjectStatus]:
        """Each object's status as the last `serve` found it (read-only)."""
        return self._base

    def serve(self, objects: MeshplaneObjects) -> tuple[Served, StatusBuilder]:
        """The versions to serve of `objects`, and a builder holding each object's `Accepted` (and
        `ResolvedRefs=True` where a version is served)."""
        current = objects.objects
        changed = [key for key, parsed in current.items() if self._seen.get(key) != parsed]
        gone = [key for key in self._seen if key not in current]
        if changed or gone:
            status = dict(self._status)
            for key in gone:
                for held in (self._good, self._chosen, status, self._problems):
                    held.pop(key, None)
                del self._order[bisect.bisect_left(self._order, key)]
            for key in changed:
                if key not in self._seen:
                    bisect.insort(self._order, key)
                status[key] = self._judge(current[key])
            self._status = status
            self._base = MappingProxyType({key: status[key] for key in self._order})
            self._names = MappingProxyType({str(key): key for key in self._order})
            self._served = _served(self._chosen[key] for key in self._order if key in self._chosen)
            self._refused = tuple(self._problems[key] for key in self._order if key in self._problems)
            self._seen = current
        return self._served, StatusBuilder(self._base)

    def _judge(self, parsed: ParsedObject) -> ObjectStatus:
        self.judged += 1
        key = parsed.key
        self._problems.pop(key, None)
        if not parsed.errors and parsed.content is not None:
            self._good[key] = self._chosen[key] = parsed
            return ObjectStatus(parsed.generation, _served_conditions("accepted"))
        reasons = list(parsed.errors) or [f"{key}: could not be read"]
        last = self._good.get(key)
        outcome = (
            f"serving generation {last.generation}, the last one accepted"
            if last is not None
            else "not served (no version of it was accepted since meshplane started)"
        )
        message = f"{'; '.join(reasons)}; {outcome}"
        self._problems[key] = Problem(ProblemKind.INVALID, str(key), str(key), message)
        refused = condition(ACCEPTED, False, REASON_INVALID, message)
        if last is None:
            self._chosen.pop(key, None)
            return ObjectStatus(parsed.generation, (refused,))
        self._chosen[key] = last
        return ObjectStatus(parsed.generation, (refused, _resolved()))


def _resolved() -> ObjectCondition:
    return condition(RESOLVED_REFS, True, REASON_RESOLVED_REFS, "every reference resolved")


def _served_conditions(message: str) -> tuple[ObjectCondition, ...]:
    return (condition(ACCEPTED, True, REASON_ACCEPTED, message), _resolved())


def _served(chosen: Iterable[ParsedObject]) -> Served:
    parts: dict[str, list[tuple[ObjectKey, object]]] = {}
    for parsed in chosen:
        parts.setdefault(parsed.key.kind, []).append((parsed.key, parsed.content))
    return Served(
        services=tuple(_typed(parts.get(EXTERNAL_SERVICE, ()), Service)),
        routes=tuple(_typed(parts.get(MESH_ROUTE, ()), RouteTable)),
        sites=tuple(_typed(parts.get(EDGE_SITE, ()), Site)),
        telemetry=tuple(_typed(parts.get(MESH_TELEMETRY, ()), Telemetry)),
        attachments=tuple(
            (key, value) for key, value in parts.get("TrafficPolicy", ()) if isinstance(value, PolicyAttachment)
        ),
        device_policies=tuple(_typed(parts.get(DEVICE_POLICY, ()), DevicePolicy)),
    )


def _typed(pairs: Iterable[tuple[ObjectKey, object]], kind: type[_T]) -> list[tuple[ObjectKey, _T]]:
    return [(key, value) for key, value in pairs if isinstance(value, kind)]


def attach(
    kinds: Mapping[ServiceRef, TargetKind | None],
    attachments: Sequence[tuple[ObjectKey, PolicyAttachment]],
    status: StatusBuilder,
    problems: list[Problem],
) -> dict[ServiceRef, PolicyAttachment]:
    """The TrafficPolicy that applies to each service it targets; the policies' `Accepted` set in
    `status`, and a problem added to `problems` for each target lost or missing (said where the
    policy is, so its ResolvedRefs follows from them: `StatusBuilder.resolved_refs`).

    `kinds` says, per served service a policy targets (absent: not served), which kind of target
    may name it: `TargetKind.SERVICE` for a Kubernetes Service, `TargetKind.EXTERNAL_SERVICE` for
    an ExternalService's, None for one whose policy the policy files set (they define the service,
    or a TrafficPolicy document of theirs targets it: the operator's explicit word; a
    TrafficPolicy naming one loses it). A target naming no served service of its
    kind is an UNKNOWN_SERVICE problem; the policy applies to it once it appears. Of two policies
    on one target, the one created first wins (then namespace/name); the other loses that target
    (a CONFLICT problem). A policy that loses every target is Conflicted; one that loses some is
    Accepted, its message naming the targets lost and why.
    """
    ordered = sorted(attachments, key=lambda pair: (pair[1].created or "~", pair[0].namespace, pair[0].name))
    winner: dict[ServiceRef, tuple[ObjectKey, PolicyAttachment]] = {}
    for key, attachment in ordered:
        lost: list[str] = []
        missing: list[PolicyTarget] = []
        for target in attachment.targets:
            ref = ServiceRef(target.namespace, target.name)
            kind = kinds.get(ref, _ABSENT)
            if kind is _ABSENT or (kind is not None and kind is not target.kind):
                missing.append(target)
            elif kind is None:
                lost.append(f"{target}: the policy files set the policy of service {ref}")
            elif (first := winner.get(ref)) is not None:
                why = "was created first" if first[1].created < attachment.created else "comes first by namespace/name"
                lost.append(f"{target}: {first[0]} {why} and applies to it")
            else:
                winner[ref] = (key, attachment)
        if lost:
            text = "; ".join(lost)
            problems.append(Problem(ProblemKind.CONFLICT, str(key), str(key), f"{key}: {text}"))
            if len(lost) == len(attachment.targets):
                status.conflicted(key, text)
            else:
                status.set(key, ACCEPTED, True, REASON_ACCEPTED, f"accepted, but not applied to {text}")
        if missing:
            names = ", ".join(str(target) for target in missing)
            message = f"{key}: no such target: {names}"
            problems.append(Problem(ProblemKind.UNKNOWN_SERVICE, str(key), str(key), message))
    return {ref: attachment for ref, (_, attachment) in winner.items()}


def attached(service: Service, attachment: PolicyAttachment) -> Service:
    """`service` with `attachment` applied: its whole policy, and its TLS when the attachment sets one."""
    tls = attachment.tls if attachment.tls is not None else service.tls
    return dataclasses.replace(service, policy=attachment.policy, tls=tls)


_ABSENT = object()


def attach_in_files(
    services: tuple[Service, ...], attachments: Sequence[PolicyAttachment], open_world: bool = False
) -> tuple[tuple[Service, ...], list[str], tuple[PolicyAttachment, ...]]:
    """The policy files' services (in mesh order) with the files' own TrafficPolicy documents
    applied, the errors (`origin: reason`) that refuse the files' content, and what is left to the
    merge. In policy files, a policy targets the files' services (kind ExternalService, the kind
    they become in a cluster); two policies claiming one is an error like any other in the files.
    A target the files do not define is an error naming it, unless `open_world` (another source,
    Kubernetes, defines services): then the document applies here to the targets the files define,
    and the rest of it (the same document with the other targets) is left to the merge, which
    attaches it above every TrafficPolicy object (`Inventory.merge`: the files' precedence)."""
    mine = {service.ref for service in services}
    kept: list[PolicyAttachment] = []
    left: list[PolicyAttachment] = []
    for attachment in attachments:
        here = tuple(t for t in attachment.targets if ServiceRef(t.namespace, t.name) in mine)
        if not open_world or len(here) == len(attachment.targets):
            kept.append(attachment)
            continue
        if here:
            kept.append(dataclasses.replace(attachment, targets=here))
        others = tuple(t for t in attachment.targets if t not in here)
        left.append(dataclasses.replace(attachment, targets=others))
    keyed = []
    for attachment in kept:
        namespace, _, name = attachment.name.partition("/")
        keyed.append((ObjectKey("TrafficPolicy", namespace, name), attachment))
    status = StatusBuilder.over(key for key, _ in keyed)
    kinds: dict[ServiceRef, TargetKind | None] = {ref: TargetKind.EXTERNAL_SERVICE for ref in mine}
    problems: list[Problem] = []
    winners = attach(kinds, keyed, status, problems)
    origins = {str(key): attachment.origin for key, attachment in keyed}
    errors = [f"{origins[problem.where]}: {problem.message}" for problem in problems]
    applied = tuple(
        attached(service, winners[service.ref]) if service.ref in winners else service for service in services
    )
    return applied, errors, tuple(left)
