"""Which host names each service port answers to, unique across one proxy's config.

Envoy rejects a RouteConfiguration whose virtual hosts repeat a domain (compared without case),
and a snapshot cannot hold two listeners of one name. The names derived from a service's name and
namespace never collide with each other (`Mesh.host_names` leaves out an ambiguous bare name), so
they are granted first and an alias can never take a service's own name. Aliases (`Service.hosts`,
then route tables' `hosts`) are granted next, first asker first; what is already taken is left out
and reported. Must stay pure.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from meshplane.model import Mesh, Service


@dataclass(frozen=True, slots=True)
class HostClaim:
    """One name an owner wants. `derived`: from the service's own name and namespace (granted first)."""

    name: str
    derived: bool


@dataclass(frozen=True, slots=True)
class Grants:
    """The names each owner got, in the order it asked for them, and a warning per name refused."""

    names: dict[str, tuple[str, ...]]
    warnings: tuple[str, ...]


def derived_host_names(mesh: Mesh, service: Service) -> frozenset[str]:
    """The names `Mesh.host_names` derives from the service's name, namespace and the cluster domain
    (its answer for the service without aliases, so the two can never disagree)."""
    if not service.hosts:  # most services: no copy to make
        return frozenset(mesh.host_names(service))
    return frozenset(mesh.host_names(dataclasses.replace(service, hosts=())))


class HostNames:
    """`Mesh.host_names` and `derived_host_names` for every service of one mesh, in O(services).

    `Mesh.host_names` counts the services sharing the name, a scan of the whole mesh per call:
    quadratic over a translation (2 s for 5,000 services). Asking it of a mesh narrowed to the
    services of that name gives the very same answer (it reads nothing else of the services), so
    the model stays the one place that decides host names. (`Mesh.host_names` reads the services'
    names and the cluster domain: the narrowed mesh carries those two.)
    """

    def __init__(self, mesh: Mesh) -> None:
        same_name: dict[str, list[Service]] = {}
        for service in mesh.services:
            same_name.setdefault(service.name, []).append(service)
        domain = mesh.cluster_domain
        self._narrowed = {name: Mesh(services=tuple(group), cluster_domain=domain) for name, group in same_name.items()}

    def of(self, service: Service) -> tuple[str, ...]:
        return self._narrowed[service.name].host_names(service)

    def derived(self, service: Service) -> frozenset[str]:
        return derived_host_names(self._narrowed[service.name], service)


def grant(requests: Sequence[tuple[str, Sequence[HostClaim]]], *, what: str, fold_case: bool) -> Grants:
    """Grants every owner (a label, unique among `requests`) the names nobody before it took.

    Derived names go first, in request order, then all other names, in request order. With
    `fold_case`, names that differ only in case are the same name (Envoy's domains).
    """
    owner_of: dict[str, str] = {}
    warnings: list[str] = []
    for derived_phase in (True, False):
        for owner, claims in requests:
            for claim in claims:
                if claim.derived is not derived_phase:
                    continue
                holder = owner_of.setdefault(_key(claim.name, fold_case), owner)
                if holder != owner:
                    warnings.append(f"{what} {claim.name!r} of {owner} is already taken by {holder}; left out")
    names: dict[str, tuple[str, ...]] = {}
    for owner, claims in requests:
        mine: dict[str, str] = {}  # key -> the spelling first asked for, so an owner never repeats a name
        for claim in claims:
            key = _key(claim.name, fold_case)
            if owner_of.get(key) == owner:
                mine.setdefault(key, claim.name)
        names[owner] = tuple(mine.values())
    return Grants(names, tuple(warnings))


def _key(name: str, fold_case: bool) -> str:
    return name.lower() if fold_case else name
