"""The inventory: every source's content merged into the one `Mesh` the translators read.

Owns the merge and its precedence rules (documented in docs/kubernetes.md):

- A service defined by both the policy files and Kubernetes is served as the policy files define
  it; the clash is an error on the inventory's status (policy files are the operator's explicit
  word; Kubernetes objects are often created by charts the operator does not control).
- A route attached to a service (policy files, or a Service's timeout/retry annotations) wins in
  the same order: a Kubernetes annotation route for a service a policy-file route attaches to is
  left out, with an error.
- Policy-file routes may send traffic to Kubernetes services. A route whose backends or attached
  service do not exist in the merged mesh (e.g. the Kubernetes service was deleted) is left out,
  with an error, and the rest is served.
- Secrets: the policy files' and the Kubernetes Secrets' (names cannot clash: file secret names
  have no `/`, Kubernetes ones are `namespace/name`; should one clash anyway, the file's wins). A
  service whose TLS names a secret no source has any more (a Kubernetes Secret deleted or
  unlabelled) keeps the version last served, with an error, until the Secret is back or the
  reference goes: proxies keep working TLS, and the rest of the mesh keeps getting changes (the
  publisher's gate would otherwise hold every snapshot using the service). A service whose TLS
  names a secret never served (a typo, a Secret not created yet) is served with the TLS of its
  definition in the last merged mesh, with an error, when it had one there (a typo while editing
  a live service is not an outage); one never served is left out, with an error, like a route to
  a missing service: only that service waits. Told that Kubernetes Secrets are not watched, the
  error for a `namespace/name` secret says so.
- Carried secrets and kept TLS settings live in this object's memory only (the last merged mesh):
  a process started while a reference is broken has neither, so replicas can differ until the
  reference is fixed (docs/kubernetes.md).

The merge keeps every `Service` object its sources gave (but for a service served with its
previous TLS: the last mesh's object while equal), so a service that did not change is the same
object in the new mesh as in the last (identity checks downstream find what changed). It is
recomputed only when an input changed (by identity). Pure: no I/O, no clock.
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from meshplane.discovery.source_status import SourceStatus
from meshplane.model import Mesh, RouteTable, Service, ServiceRef, TlsCertificate, TrustBundle, UpstreamTls

SOURCE_NAME = "inventory"


class Inventory:
    """Merges policy-file content (a `Mesh`) and Kubernetes content (services and routes)."""

    def __init__(self, *, kubernetes_secrets: bool = True) -> None:
        # Whether Kubernetes Secrets are read: when not, an error about a missing `namespace/name`
        # secret says so instead of blaming the Secret.
        self.kubernetes_secrets = kubernetes_secrets
        self._inputs: tuple[object, ...] | None = None
        self._mesh: Mesh | None = None
        self.errors: tuple[str, ...] = ()
        self._merged_at: float | None = None

    @property
    def mesh(self) -> Mesh | None:
        """The last merged mesh (None before the first merge)."""
        return self._mesh

    @property
    def status(self) -> SourceStatus:
        mesh = self._mesh or Mesh()
        return SourceStatus(
            name=SOURCE_NAME,
            synced=True,
            last_success=self._merged_at,
            last_attempt=self._merged_at,
            errors=self.errors,
            counts={
                "services": len(mesh.services),
                "routes": len(mesh.routes),
                "certificates": len(mesh.certificates),
                "trust_bundles": len(mesh.trust_bundles),
            },
        )

    def merge(
        self,
        files: Mesh | None,
        kubernetes_services: Sequence[Service] = (),
        kubernetes_routes: Sequence[RouteTable] = (),
        kubernetes_certificates: Sequence[TlsCertificate] = (),
        kubernetes_trust_bundles: Sequence[TrustBundle] = (),
    ) -> Mesh:
        """The merged mesh; the same object as last time when no input changed.

        `kubernetes_services` must be in mesh order (namespace, name), as `KubernetesContent` is.
        """
        inputs = (files, kubernetes_services, kubernetes_routes, kubernetes_certificates, kubernetes_trust_bundles)
        last = self._inputs
        if self._mesh is not None and last is not None and all(a is b for a, b in zip(inputs, last, strict=True)):
            return self._mesh
        files = files or Mesh()
        errors: list[str] = []
        # Linear in the policy files' services; the Kubernetes services are only walked when the
        # files define any (to find clashes): an endpoint change costs no sort and no dict here.
        policy = {service.ref: service for service in files.services}
        kubernetes = tuple(kubernetes_services)
        if policy:
            kept = []
            for service in kubernetes:
                twin = policy.get(service.ref)
                if twin is None:
                    kept.append(service)
                    continue
                errors.append(
                    f"service {service.ref} is defined by policy files ({twin.origin}) and by Kubernetes; "
                    "serving the policy files' definition"
                )
            services = tuple(heapq.merge(files.services, kept, key=_order))
        else:
            services = kubernetes

        certificates = _merge_secrets(files.certificates, kubernetes_certificates, errors)
        bundles = _merge_secrets(files.trust_bundles, kubernetes_trust_bundles, errors)
        resolved = _resolve_secret_references(
            services, certificates, bundles, self._mesh, errors, self.kubernetes_secrets
        )
        if resolved is not None:
            services, certificates, bundles = resolved
            policy = {ref: service for ref, service in policy.items() if _find(services, ref) is service}

        def lookup(ref: ServiceRef) -> Service | None:
            return policy.get(ref) or _find(services, ref)

        routes: list[RouteTable] = []
        attached: dict[ServiceRef, RouteTable] = {}
        names: set[str] = set()
        for table in files.routes:
            problems = _route_problems(table, lookup)
            if problems:
                errors += problems
                continue
            routes.append(table)
            names.add(table.name)
            if table.service is not None:
                attached[table.service] = table
        for table in kubernetes_routes:
            if table.service is not None and (other := attached.get(table.service)) is not None:
                errors.append(
                    f"route {table.name} (Kubernetes annotations) and route {other.name} ({other.origin}) both "
                    f"attach to service {table.service}; serving the policy files' route"
                )
                continue
            if table.name in names or _route_problems(table, lookup):
                continue  # its service was dropped in favour of a policy file's: said above
            routes.append(table)

        # Everything else the files say (sites, cluster domain…) is theirs alone: kept as is.
        self._mesh = dataclasses.replace(
            files,
            services=services,
            routes=tuple(sorted(routes, key=lambda r: r.name)),
            certificates=certificates,
            trust_bundles=bundles,
        )
        self._inputs = inputs
        self.errors = tuple(errors)
        self._merged_at = time.time()
        return self._mesh


_Secret = TypeVar("_Secret", TlsCertificate, TrustBundle)


def _merge_secrets(files: tuple[_Secret, ...], kubernetes: Sequence[_Secret], errors: list[str]) -> tuple[_Secret, ...]:
    """The files' secrets and Kubernetes', sorted by name (the files' tuple itself when Kubernetes has none)."""
    if not kubernetes:
        return files
    names = {secret.name: secret for secret in files}
    kept = list(files)
    for secret in kubernetes:
        if (twin := names.get(secret.name)) is not None:
            errors.append(
                f"secret {secret.name} is defined by policy files ({twin.origin}) and by Kubernetes; "
                "serving the policy files' definition"
            )
            continue
        kept.append(secret)
    return tuple(sorted(kept, key=lambda secret: secret.name))


def _resolve_secret_references(
    services: tuple[Service, ...],
    certificates: tuple[TlsCertificate, ...],
    bundles: tuple[TrustBundle, ...],
    last: Mesh | None,
    errors: list[str],
    kubernetes_secrets: bool = True,
) -> tuple[tuple[Service, ...], tuple[TlsCertificate, ...], tuple[TrustBundle, ...]] | None:
    """Services, certificates and bundles with every TLS reference resolved, or None when all were
    already (the common case: nothing is copied). A secret gone since `last` is carried over from
    it. A service naming a secret never served takes the TLS of its definition in `last` when that
    one resolves (a typo in a live service's TLS must not take it from the mesh), else is dropped.
    Errors name secrets, never their content."""
    if not any(service.tls is not None for service in services):
        return None
    current = _SecretSets(certificates, bundles)
    served = _SecretSets(last.certificates, last.trust_bundles) if last else _SecretSets((), ())
    carried = changed = False
    kept: list[Service] = []

    def carry(where: str, tls: UpstreamTls, previous: str = "") -> bool:
        gone = current.carry(tls, served)
        for field, kind, name in gone:
            errors.append(
                f"{where}: {previous}{field} names {kind} {name!r}, which no source has any more (a Kubernetes "
                "Secret deleted or no longer labelled for meshplane?); serving its last version until it is "
                "back or the reference goes"
            )
        return bool(gone)

    for service in services:
        if service.tls is None:
            kept.append(service)
            continue
        where = f"service {service.ref}" + (f" ({service.origin})" if service.origin else "")
        missing = [wanted for wanted in _references(service.tls) if not current.resolves(wanted, served)]
        if not missing:
            carried |= carry(where, service.tls)
            kept.append(service)
            continue
        changed = True
        previous = _find(last.services, service.ref) if last is not None else None
        # A definition of `last` resolved there, so its references are in `served` at least; checked
        # anyway, as the contract this relies on. One without TLS resolves trivially.
        usable = previous is not None and (
            previous.tls is None or all(current.resolves(wanted, served) for wanted in _references(previous.tls))
        )
        for field, kind, name in missing:
            cause = (
                "--kubernetes-secrets is off, so no Kubernetes Secret is read"
                if "/" in name and not kubernetes_secrets
                else "a Kubernetes Secret not created, not labelled for meshplane, or not valid?"
            )
            outcome = (
                "serving its previous TLS settings until it exists or the reference is fixed"
                if usable
                else "the service is left out until it exists"
            )
            errors.append(f"{where}: {field} names {kind} {name!r}, which no source has ({cause}); {outcome}")
        if previous is None or not usable:
            continue
        # The new definition (endpoints, ports, policy) with the TLS that worked: keeping the whole
        # old object would pin its endpoints, and the next rollout would empty them.
        replacement = dataclasses.replace(service, tls=previous.tls)
        if previous.tls is not None:
            carried |= carry(where, previous.tls, "previous ")
        kept.append(previous if replacement == previous else replacement)
    if not carried and not changed:
        return None
    return tuple(kept), current.certificates(), current.bundles()


class _SecretSets:
    """The certificates and CA bundles by name, to resolve references against (and carry into)."""

    def __init__(self, certificates: Sequence[TlsCertificate], bundles: Sequence[TrustBundle]) -> None:
        self.by_kind: dict[str, dict[str, Any]] = {
            "certificate": {certificate.name: certificate for certificate in certificates},
            "CA bundle": {bundle.name: bundle for bundle in bundles},
        }

    def resolves(self, wanted: tuple[str, str, str], served: _SecretSets) -> bool:
        """Whether the reference resolves here, or in `served` (to be carried over)."""
        _, kind, name = wanted
        return name in self.by_kind[kind] or name in served.by_kind[kind]

    def carry(self, tls: UpstreamTls, served: _SecretSets) -> list[tuple[str, str, str]]:
        """Adds what `tls` names from `served` when missing here (it must resolve); the references carried."""
        carried = []
        for wanted in _references(tls):
            _, kind, name = wanted
            if name not in self.by_kind[kind]:
                self.by_kind[kind][name] = served.by_kind[kind][name]
                carried.append(wanted)
        return carried

    def certificates(self) -> tuple[TlsCertificate, ...]:
        return tuple(sorted(self.by_kind["certificate"].values(), key=lambda secret: secret.name))

    def bundles(self) -> tuple[TrustBundle, ...]:
        return tuple(sorted(self.by_kind["CA bundle"].values(), key=lambda secret: secret.name))


def _references(tls: UpstreamTls) -> list[tuple[str, str, str]]:
    """(field, kind, name) of every secret `tls` names."""
    found = [("tls.trust", "CA bundle", tls.trust)]
    if tls.client_certificate:
        found.append(("tls.client_certificate", "certificate", tls.client_certificate))
    return found


def _order(service: Service) -> tuple[str, str]:
    """Mesh order (as `Mesh.of` sorts): by namespace, then name."""
    return (service.namespace, service.name)


def _find(services: tuple[Service, ...], ref: ServiceRef) -> Service | None:
    """The service `ref` in `services` (in mesh order), by binary search."""
    index = bisect.bisect_left(services, (ref.namespace, ref.name), key=_order)
    if index < len(services) and services[index].namespace == ref.namespace and services[index].name == ref.name:
        return services[index]
    return None


def _route_problems(table: RouteTable, lookup: Callable[[ServiceRef], Service | None]) -> list[str]:
    """What makes `table` unservable against the merged services: unknown services or ports."""
    where = f"route {table.name}" + (f" ({table.origin})" if table.origin else "")
    found = []
    if table.service is not None and lookup(table.service) is None:
        found.append(f"{where}: unknown service {table.service}; route left out")
    for index, rule in enumerate(table.rules):
        for backend in rule.backends:
            target = lookup(backend.service)
            if target is None:
                found.append(f"{where} rule {index + 1}: unknown service {backend.service}; route left out")
                continue
            if backend.port is None and len(target.ports) > 1:
                found.append(f"{where} rule {index + 1}: service {backend.service} has several ports; route left out")
                continue
            port = target.port(backend.port)
            if port is None:
                found.append(f"{where} rule {index + 1}: service {backend.service} has no port {backend.port!r}")
            elif not port.protocol.is_http:
                found.append(f"{where} rule {index + 1}: port {port.name} of {backend.service} is not HTTP")
    return found
