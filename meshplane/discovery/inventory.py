"""The inventory: every source's content merged into the one `Mesh` the translators read.

The one merge (`Inventory.merge(contents) -> Merged(mesh, changes, problems)`) owns every
precedence rule (documented in docs/kubernetes.md, docs/kubernetes-api.md and docs/edge.md). One
rule decides every clash over one identity (a service's namespace/name, a route table's service, a
site id, a TrafficPolicy's target): policy files > meshplane objects (meshplane.io) > Gateway API
objects > Kubernetes Services and their annotations; the loser is left out with a CONFLICT problem
(and, for a meshplane object, `Accepted=False`, reason Conflicted). In detail:

- meshplane objects (`Contents.meshplane_api`, resolved by `meshplane_api/resolve.py`): each one's
  accepted version serves, or its last accepted one when the new one is refused (in memory: a
  process started with a broken object serves nothing of it); ExternalServices join the services
  below the files' and above Kubernetes'; MeshRoutes rank with the files' routes (after them)
  against the Gateway API's and the annotations'; EdgeSites join the files' sites (the files' win
  an id); MeshTelemetry joins the files' telemetry. A TrafficPolicy replaces the whole policy (and
  the TLS when it sets one) of the Kubernetes Services and ExternalServices it targets, never of a
  policy-file service nor of one a policy-file TrafficPolicy document targets (the files' own
  documents naming other sources' services, `Mesh.policy_attachments`, are attached here first);
  of two on one target the older wins. Every object gets its status (`Merged.object_status`):
  an object refused, or losing a clash, is a problem too (INVALID, CONFLICT, said where the object
  is), and every problem said where an object is gives its ResolvedRefs (`StatusBuilder.
  resolved_refs`: one rule for every kind). Sites whose device ranges overlap are a CONFLICT on
  each (`overlapping_sites`; both stay served). The source reports a change of any object as
  `MeshChanges.policy_objects`; the objects are then judged again one by one where they differ
  from the last merge's (`LastGood`), and the merge compares the meshes by value.

- A service defined by both the policy files and Kubernetes is served as the policy files define
  it; the clash is an error on the inventory's status (policy files are the operator's explicit
  word; Kubernetes objects are often created by charts the operator does not control).
- A route attached to a service (policy files, or a Service's timeout/retry annotations) wins in
  the same order: a Kubernetes annotation route for a service a policy-file route attaches to is
  left out, with an error.
- One route table per service: a policy-file route attached to it first, then the Gateway API's
  mesh routes (HTTPRoutes/GRPCRoutes with a Service parent, `resolve_mesh`), then an annotation
  route; each one left out is a conflict.
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
- Sites are the policy files' and the EdgeSites'. Edge devices are the registry's live registrations that those
  sites admit (`DeviceAdmission`): a device whose site went, or whose address a narrowed range no
  longer holds, stays registered but leaves the config until the sites admit it again.
  The device trust (what edge gateways verify device certificates against) is the registry CA's.
- Gateways are the Gateway API's (`gateway_api/resolve.py`): those of Gateway API documents in
  policy files, resolved by the policy-file source against the files' own services and
  certificates, and those of Kubernetes, resolved here against the merged services and
  certificates. Each source's routes attach to its own Gateways only. A Gateway (namespace/name)
  both define is served as the files define it, with an error (the files' rule for services).
  For Kubernetes' Gateways: a backend Service both sources define is the policy files' one, and
  a certificateRef is a served Secret. Policy-file routes and Gateway API routes with a Gateway
  parent never clash: the former go to sidecars (and edge gateways), the latter to `gateway`
  proxies only (routes with a Service parent are the route-table rule above). Gateways are
  resolved again when the Gateway API objects, the services or the secrets change; an endpoint
  change alone keeps them. What the resolution refuses is status on the objects, not a problem
  here; a Gateway the model refuses (`Mesh` checks: a backend or certificate gone) is left out
  with an error.
- Telemetry (access logs, tracing, collectors) is the policy files' and the MeshTelemetries'. A collector may name a
  Kubernetes service; one whose service or gRPC port the merged mesh lacks is an error here, and
  the proxies get no access log or tracer pointing at it (the translators leave them out).

What changed travels as data: each source reports its change set (`MeshChanges`) since the last
merge, the registry the devices it changed, and the merge adds what its own decisions changed, so
the publisher never compares meshes. The merge costs what changed: an endpoint change walks no
service list, and a registration re-checks that device only. Pure but for the clock of
`status.last_success`: no I/O.
"""

from __future__ import annotations

import bisect
import dataclasses
import enum
import heapq
import ipaddress
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from meshplane.discovery.device_admission import DeviceAdmission, LiveDevices
from meshplane.discovery.gateway_api.conditions import GatewayApiStatus
from meshplane.discovery.gateway_api.gateway_classes import DEFAULT_CONTROLLER_NAME
from meshplane.discovery.gateway_api.objects import GatewayApiObjects
from meshplane.discovery.gateway_api.resolve import (
    MeshResolution,
    Resolution,
    conflicted_mesh_parents,
    joined_status,
    resolve,
    resolve_backend_tls,
    resolve_mesh,
)
from meshplane.discovery.kubernetes import KubernetesContent
from meshplane.discovery.meshplane_api.conditions import (
    ACCEPTED,
    CONFLICTED,
    REASON_DEVICE_RANGE_OVERLAP,
    REASON_INVALID,
    ObjectStatus,
)
from meshplane.discovery.meshplane_api.objects import MeshplaneObjects, ObjectKey
from meshplane.discovery.meshplane_api.resolve import LastGood, Served, StatusBuilder, attach, attached
from meshplane.model import (
    Gateway,
    Mesh,
    RouteTable,
    Service,
    ServiceRef,
    Site,
    SourceStatus,
    TargetKind,
    Telemetry,
    TlsCertificate,
    TrustBundle,
    UpstreamTls,
)
from meshplane.model.changes import DeviceChanges, MeshChanges
from meshplane.model.device_policy import DevicePolicy
from meshplane.model.mesh import backend_problems
from meshplane.model.policy import PolicyAttachment
from meshplane.model.problems import Problem, ProblemKind, Subject
from meshplane.model.sites import DeviceTrust
from meshplane.model.telemetry import collector_problems

SOURCE_NAME = "inventory"


@dataclass(frozen=True, slots=True)
class Contents:
    """What every enabled source serves now, and what changed in it since the previous merge.

    `files`: the policy files' last good mesh; `kubernetes`: the Kubernetes source's content (each
    None when that source is off). `changes`: what changed in those since the previous merge, as
    the sources reported it (their `take_changes()`, folded with `|`). `registry`: the live edge
    registrations (None: the registry is off); `device_changes`: the devices changed there since
    the previous merge (`EdgeRegistry.take_changes()`). `gateway_api`: the Gateway API objects
    (None: that source is off), whose changes `changes.gateways` reports; `gateway_controller`:
    the controller name whose GatewayClasses meshplane serves; `ca_certificates`: the `ca.crt` of
    each ConfigMap a BackendTLSPolicy names, by (namespace, name) (absent: not read, or missing).
    `meshplane_api`: the objects of meshplane's own API (None: that source is off), whose changes
    `changes.policy_objects` reports.
    `device_trust`: the registry CA that signs device certificates (None: it signs none); a change
    of it must come with `changes.sites`.
    """

    files: Mesh | None = None
    kubernetes: KubernetesContent | None = None
    changes: MeshChanges = dataclasses.field(default_factory=MeshChanges.everything)
    registry: LiveDevices | None = None
    device_changes: DeviceChanges = dataclasses.field(default_factory=lambda: DeviceChanges(everything=True))
    gateway_api: GatewayApiObjects | None = None
    gateway_controller: str = DEFAULT_CONTROLLER_NAME
    ca_certificates: Mapping[tuple[str, str], str] = dataclasses.field(default_factory=dict)
    device_trust: DeviceTrust | None = None
    meshplane_api: MeshplaneObjects | None = None


@dataclass(frozen=True, slots=True)
class Merged:
    """The merge's result: the mesh to publish, what differs from the previous merged mesh (it may
    say more than changed, never less), and why some content was left out or kept at an older
    version (each problem's message names the object and the outcome). `gateway_status`: the
    status owed to the Gateway API objects (empty without that source). `object_status`: the
    status owed to each object of `Contents.meshplane_api`, every one of them, by key."""

    mesh: Mesh
    changes: MeshChanges
    problems: tuple[Problem, ...]
    gateway_status: GatewayApiStatus = dataclasses.field(default_factory=GatewayApiStatus)
    object_status: Mapping[ObjectKey, ObjectStatus] = dataclasses.field(default_factory=dict)


class Inventory:
    """Merges the sources' contents; remembers the last merged mesh (the precedence rules use it)."""

    def __init__(self, *, kubernetes_secrets: bool = True) -> None:
        # Whether Kubernetes Secrets are read: when not, an error about a missing `namespace/name`
        # secret says so instead of blaming the Secret.
        self.kubernetes_secrets = kubernetes_secrets
        self._merged: Merged | None = None
        # Whether the last merge substituted anything for what the sources said (a previous TLS,
        # a carried secret, a service left out for a secret): see `_changes`.
        self._substituted = False
        self._merged_at: float | None = None
        self.devices = DeviceAdmission()
        self._resolution = Resolution()
        self._mesh_resolution = MeshResolution()
        # meshplane.io objects: the last accepted version of each, and the versions served now
        # with their `Accepted` conditions (worked out again only when the objects change).
        self._last_good = LastGood()
        self._served = Served()
        # The sites whose device ranges were last checked for overlaps, and what was found.
        self._overlaps: tuple[tuple[Site, ...], tuple[Problem, ...]] = ((), ())

    @property
    def mesh(self) -> Mesh | None:
        """The last merged mesh (None before the first merge)."""
        return self._merged.mesh if self._merged is not None else None

    @property
    def problems(self) -> tuple[Problem, ...]:
        """The last merge's problems."""
        return self._merged.problems if self._merged is not None else ()

    @property
    def status(self) -> SourceStatus:
        mesh = self.mesh or Mesh()
        return SourceStatus(
            name=SOURCE_NAME,
            synced=True,
            last_success=self._merged_at,
            last_attempt=self._merged_at,
            errors=tuple(str(problem) for problem in self.problems),
            counts={
                "services": len(mesh.services),
                "routes": len(mesh.routes),
                "certificates": len(mesh.certificates),
                "trust_bundles": len(mesh.trust_bundles),
            },
        )

    def merge(self, contents: Contents) -> Merged:
        """The merged mesh of `contents`, with what changed since the previous merge and the problems.

        `contents.kubernetes.services` must be in mesh order (namespace, name), as the Kubernetes
        source gives them. With no change reported (`contents.changes` none, and `device_changes` too
        when there is a registry) the previous result stands: its mesh, with no changes.
        """
        last = self._merged
        devices_quiet = contents.registry is None or contents.device_changes.none
        if last is not None and contents.changes.none and devices_quiet:
            self._merged_at = time.time()
            return Merged(last.mesh, MeshChanges(), last.problems, last.gateway_status, last.object_status)
        files = contents.files or Mesh()
        kubernetes = contents.kubernetes or KubernetesContent((), ())
        previous = last.mesh if last is not None else None
        problems: list[Problem] = []
        served, status = self._served_objects(contents, problems)
        by_object = _object_services(files, served, status, problems)
        # Linear in the policy files' services; the Kubernetes services are only walked when the
        # files or meshplane objects define any (to find clashes): an endpoint change costs no
        # sort and no dict here.
        policy = {service.ref: service for service in files.services}
        object_refs = {service.ref for service in by_object}
        policy.update((service.ref, service) for service in by_object)
        if policy:
            kept = []
            for service in kubernetes.services:
                twin = policy.get(service.ref)
                if twin is None:
                    kept.append(service)
                    continue
                definer, winner = (
                    ("an ExternalService", "the ExternalService's")
                    if service.ref in object_refs
                    else ("policy files", "the policy files'")
                )
                problems.append(
                    Problem(
                        ProblemKind.CONFLICT,
                        f"service {service.ref}",
                        twin.origin,
                        f"service {service.ref} is defined by {definer} ({twin.origin}) and by Kubernetes; "
                        f"serving {winner} definition",
                    )
                )
            services = tuple(heapq.merge(files.services, by_object, kept, key=_order))
        else:
            services = kubernetes.services
        if served.attachments or files.policy_attachments:
            services = _attach(services, files, by_object, served, status, previous, problems)
            # `lookup` answers with the services as served: the ExternalServices' with their policy.
            policy.update((ref, one) for ref in object_refs if (one := _find(services, ref)) is not None)

        certificates = _merge_secrets(files.certificates, kubernetes.certificates, problems)
        bundles = _merge_secrets(files.trust_bundles, kubernetes.trust_bundles, problems)
        resolved = _resolve_secret_references(
            services, certificates, bundles, previous, problems, self.kubernetes_secrets
        )
        substituted = resolved is not None
        if resolved is not None:
            services, certificates, bundles = resolved
            policy = {ref: service for ref, service in policy.items() if _find(services, ref) is service}

        def lookup(ref: ServiceRef) -> Service | None:
            return policy.get(ref) or _find(services, ref)

        mesh_routes = self._mesh_routes(contents, services, substituted)
        # The meshplane objects' route tables rank with the files' against the Gateway API's and
        # the annotations' (the files' having won over them already).
        first = _object_routes(files.routes, served, status, problems)
        lost_gamma: dict[ServiceRef, str] = {}
        routes = _merge_routes(
            first, _gateway_api_routes(first, mesh_routes, kubernetes.routes, problems, lost_gamma), lookup, problems
        )
        sites = _object_sites(files.sites, served, status, problems)
        problems += self._overlapping_sites(sites, status)
        device_policies = _object_device_policies(files.device_policies, served, status, problems)
        problems += _device_policy_references(served, sites, lookup)
        telemetry = _object_telemetry(files.telemetry, served, status, lookup, routes, problems)
        problems += _collector_problems(telemetry, lookup)
        if contents.registry is not None:
            devices, devices_changed = self.devices.admit(sites, contents.registry, contents.device_changes)
        else:
            devices, devices_changed = (), False
        resolution = self._gateways(contents, services, certificates, substituted)
        refused = {gateway.key: _one_gateway_problems(gateway, lookup, certificates) for gateway in resolution.gateways}
        for found in refused.values():
            problems += [dataclasses.replace(p, message=f"{p.message}; the Gateway is left out") for p in found]
        gateways = _merge_gateways(
            files.gateways, tuple(gateway for gateway in resolution.gateways if not refused[gateway.key]), problems
        )
        # Everything else the files say (sites, cluster domain…) is theirs alone: kept as is.
        mesh = dataclasses.replace(
            files,
            services=services,
            routes=routes,
            certificates=certificates,
            trust_bundles=bundles,
            devices=devices,
            gateways=gateways,
            device_trust=contents.device_trust,
            sites=sites,
            device_policies=device_policies,
            telemetry=telemetry,
            policy_attachments=(),
        )
        changes = self._changes(previous, mesh, contents.changes, substituted, devices_changed)
        self._substituted = substituted
        self._resolution = resolution
        self._mesh_resolution = mesh_routes
        joined = joined_status(resolution.status, mesh_routes.status)
        if lost_gamma:
            joined = conflicted_mesh_parents(joined, lost_gamma)
        if contents.meshplane_api is not None:
            # One rule for every kind: a reference problem said where an object is is its ResolvedRefs.
            status.resolved_refs(problems, self._last_good.names)
        self._merged = Merged(mesh, changes, tuple(problems), joined, status.status())
        self._merged_at = time.time()
        return self._merged

    def _changes(
        self, previous: Mesh | None, mesh: Mesh, reported: MeshChanges, substituted: bool, devices: bool
    ) -> MeshChanges:
        """What differs from `previous` to `mesh`: the sources' change sets, plus the merge's own.

        The small parts (routes, secrets, sites) are compared whole: cheap, and they change with
        decisions of the merge (a route left out when its service goes). The services are compared
        only where the merge substituted something for what a source said, this time or last time
        (a previous TLS, a service left out until its secret exists): there the sources' sets
        cannot tell. Elsewhere they are exactly the sources' sets.
        """
        if previous is None:
            return MeshChanges.everything()
        found = MeshChanges(
            services=reported.services or previous.cluster_domain != mesh.cluster_domain,
            endpoints=reported.endpoints,
            routes=previous.routes != mesh.routes,
            secrets=previous.certificates != mesh.certificates or previous.trust_bundles != mesh.trust_bundles,
            sites=previous.sites != mesh.sites
            or previous.device_trust != mesh.device_trust
            or previous.device_policies != mesh.device_policies,
            devices=devices,
            telemetry=previous.telemetry != mesh.telemetry,
            gateways=previous.gateways != mesh.gateways,
        )
        # meshplane objects change services, routes, sites and telemetry at once, and their
        # precedence decides what is served: compared by value, as for substitutions.
        if substituted or self._substituted or reported.policy_objects:
            found |= MeshChanges.between(previous, mesh)
        return found

    def _served_objects(self, contents: Contents, problems: list[Problem]) -> tuple[Served, StatusBuilder]:
        """The meshplane objects' versions to serve and their `Accepted` conditions (the refused
        ones' problems added to `problems`): worked out again for the objects that changed when
        the source says some did (`changes.policy_objects`), else the previous ones."""
        objects = contents.meshplane_api
        if objects is None:
            return Served(), StatusBuilder()
        if self._merged is None or contents.changes.policy_objects:
            self._served, status = self._last_good.serve(objects)
        else:
            status = StatusBuilder(self._last_good.status)
        problems += self._last_good.problems
        return self._served, status

    def _overlapping_sites(self, sites: tuple[Site, ...], status: StatusBuilder) -> tuple[Problem, ...]:
        """`overlapping_sites` of `sites` (worked out again only when they differ from the last
        merge's), with Conflicted=True on each EdgeSite named."""
        if sites != self._overlaps[0]:
            self._overlaps = (sites, tuple(overlapping_sites(sites)))
        found = self._overlaps[1]
        for problem in found:
            if (key := self._last_good.names.get(problem.where)) is not None:
                status.set(key, CONFLICTED, True, REASON_DEVICE_RANGE_OVERLAP, problem.message)
        return found

    def _mesh_routes(self, contents: Contents, services: tuple[Service, ...], substituted: bool) -> MeshResolution:
        """The Gateway API's routes with a Service parent (GAMMA), resolved against the merged
        services: again when what it reads may have changed, else the previous resolution."""
        if contents.gateway_api is None:
            return MeshResolution()
        reported = contents.changes
        if (
            self._merged is not None
            and not (reported.gateways or reported.services or reported.policy_objects)
            and not (substituted or self._substituted)
        ):
            return self._mesh_resolution
        return resolve_mesh(contents.gateway_api, {service.ref: service for service in services})

    def _gateways(
        self,
        contents: Contents,
        services: tuple[Service, ...],
        certificates: tuple[TlsCertificate, ...],
        substituted: bool,
    ) -> Resolution:
        """The Gateway API content resolved against the merged services and certificates: again
        when what it reads may have changed, else the previous resolution."""
        if contents.gateway_api is None:
            return Resolution()
        reported = contents.changes
        if (
            self._merged is not None
            and not (reported.gateways or reported.services or reported.secrets or reported.policy_objects)
            and not (substituted or self._substituted)
        ):
            return self._resolution
        by_ref = {service.ref: service for service in services}
        resolution = resolve(
            contents.gateway_api,
            contents.gateway_controller,
            by_ref,
            frozenset(certificate.name for certificate in certificates),
        )
        # BackendTLSPolicies apply to the Gateways resolved (their CA ConfigMaps change `gateways`).
        return resolve_backend_tls(resolution, contents.gateway_api, by_ref, contents.ca_certificates)


def _merge_gateways(
    files: tuple[Gateway, ...], kubernetes: tuple[Gateway, ...], problems: list[Problem]
) -> tuple[Gateway, ...]:
    """The policy files' Gateways and Kubernetes', sorted by namespace/name (the files' tuple itself
    when Kubernetes has none). A Gateway both define is served as the files define it, with an error."""
    if not kubernetes:
        return files
    if not files:
        return kubernetes
    mine = {gateway.key: gateway for gateway in files}
    kept = list(files)
    for gateway in kubernetes:
        if gateway.key in mine:
            subject = f"Gateway {gateway.namespace}/{gateway.name}"
            problems.append(
                Problem(
                    ProblemKind.CONFLICT,
                    subject,
                    "policy files",
                    f"{subject} is defined by policy files and by Kubernetes; serving the policy files' "
                    "definition (with the routes of the policy files)",
                )
            )
            continue
        kept.append(gateway)
    return tuple(sorted(kept, key=lambda gateway: (gateway.namespace, gateway.name)))


def _gateway_api_routes(
    files: Sequence[RouteTable],
    mesh: MeshResolution,
    annotations: Sequence[RouteTable],
    problems: list[Problem],
    lost: dict[ServiceRef, str],
) -> tuple[RouteTable, ...]:
    """The Gateway API's mesh route tables and the Kubernetes annotation routes, by precedence for
    one service: a route of `files` (the policy files' and the MeshRoutes') first, then the
    Gateway API's, then an annotation route; each one left out is a conflict naming the route
    served, and each Service whose Gateway API routes lost is added to `lost` with why (their
    parent status says it). (An annotation route losing to a policy-file route is kept here:
    `_merge_routes` leaves it out and says so.)"""
    by_files = {table.service: table for table in files if table.service is not None}
    kept: list[RouteTable] = []
    gateway_api: dict[ServiceRef, RouteTable] = {}
    for table in mesh.routes:
        assert table.service is not None  # a mesh route table is attached to its Service
        if (other := by_files.get(table.service)) is not None:
            problems.append(
                Problem(
                    ProblemKind.CONFLICT,
                    f"route {table.name}",
                    table.origin,
                    f"route {table.name} ({table.origin}) and route {other.name} ({other.origin}) both attach to "
                    f"service {table.service}; serving route {other.name} ({other.origin})",
                )
            )
            lost[table.service] = (
                f"route {other.name} ({other.origin}) attaches to Service {table.service} and is served"
            )
            continue
        gateway_api[table.service] = table
        kept.append(table)
    for table in annotations:
        if table.service is not None and (other := gateway_api.get(table.service)) is not None:
            problems.append(
                Problem(
                    ProblemKind.CONFLICT,
                    f"route {table.name}",
                    "Kubernetes annotations",
                    f"route {table.name} (Kubernetes annotations) and route {other.name} ({other.origin}) both "
                    f"attach to service {table.service}; serving the Gateway API's route",
                )
            )
            continue
        kept.append(table)
    return tuple(kept)


def _one_gateway_problems(
    gateway: Gateway, lookup: Callable[[ServiceRef], Service | None], certificates: tuple[TlsCertificate, ...]
) -> list[Problem]:
    """What the model refuses in `gateway` against the merged mesh (`Mesh` checks it so)."""
    return Mesh(services=tuple(_targets(gateway, lookup)), certificates=certificates, gateways=(gateway,)).problems()


def _targets(gateway: Gateway, lookup: Callable[[ServiceRef], Service | None]) -> list[Service]:
    found: dict[ServiceRef, Service] = {}
    for listener in gateway.listeners:
        for host in listener.hosts:
            for rule in host.rules:
                for backend in rule.rule.targets():
                    if backend.service not in found and (service := lookup(backend.service)) is not None:
                        found[backend.service] = service
    return sorted(found.values(), key=_order)


def _merge_routes(
    files: Sequence[RouteTable],
    kubernetes: Sequence[RouteTable],
    lookup: Callable[[ServiceRef], Service | None],
    problems: list[Problem],
) -> tuple[RouteTable, ...]:
    """The files' routes and Kubernetes', sorted by name; those that cannot be served left out."""
    routes: list[RouteTable] = []
    attached: dict[ServiceRef, RouteTable] = {}
    names: set[str] = set()
    for table in files:
        found = _route_problems(table, lookup)
        if found:
            problems += found
            continue
        routes.append(table)
        names.add(table.name)
        if table.service is not None:
            attached[table.service] = table
    for table in kubernetes:
        if table.service is not None and (other := attached.get(table.service)) is not None:
            problems.append(
                Problem(
                    ProblemKind.CONFLICT,
                    f"route {table.name}",
                    "Kubernetes annotations",
                    f"route {table.name} (Kubernetes annotations) and route {other.name} ({other.origin}) both "
                    f"attach to service {table.service}; serving the policy files' route",
                )
            )
            continue
        if table.name in names or _route_problems(table, lookup):
            continue  # its service was dropped in favour of a policy file's: said above
        routes.append(table)
    return tuple(sorted(routes, key=lambda r: r.name))


_Secret = TypeVar("_Secret", TlsCertificate, TrustBundle)


def _merge_secrets(
    files: tuple[_Secret, ...], kubernetes: Sequence[_Secret], problems: list[Problem]
) -> tuple[_Secret, ...]:
    """The files' secrets and Kubernetes', sorted by name (the files' tuple itself when Kubernetes has none)."""
    if not kubernetes:
        return files
    names = {secret.name: secret for secret in files}
    kept = list(files)
    for secret in kubernetes:
        if (twin := names.get(secret.name)) is not None:
            problems.append(
                Problem(
                    ProblemKind.CONFLICT,
                    f"secret {secret.name}",
                    twin.origin,
                    f"secret {secret.name} is defined by policy files ({twin.origin}) and by Kubernetes; "
                    "serving the policy files' definition",
                )
            )
            continue
        kept.append(secret)
    return tuple(sorted(kept, key=lambda secret: secret.name))


class _SecretKind(enum.Enum):
    """The two kinds of secret a service's TLS names; the value is how messages call it."""

    CERTIFICATE = "certificate"
    CA_BUNDLE = "CA bundle"


@dataclass(frozen=True, slots=True)
class _Reference:
    """One secret a service's TLS names: in which field, of which kind, by which name."""

    field: str
    kind: _SecretKind
    name: str


def _resolve_secret_references(
    services: tuple[Service, ...],
    certificates: tuple[TlsCertificate, ...],
    bundles: tuple[TrustBundle, ...],
    last: Mesh | None,
    problems: list[Problem],
    kubernetes_secrets: bool = True,
) -> tuple[tuple[Service, ...], tuple[TlsCertificate, ...], tuple[TrustBundle, ...]] | None:
    """Services, certificates and bundles with every TLS reference resolved, or None when all were
    already (the common case: nothing is copied). A secret gone since `last` is carried over from
    it. A service naming a secret never served takes the TLS of its definition in `last` when that
    one resolves (a typo in a live service's TLS must not take it from the mesh), else is dropped.
    Problems name secrets, never their content."""
    if not any(service.tls is not None for service in services):
        return None
    current = _SecretSets(certificates, bundles)
    served = _SecretSets(last.certificates, last.trust_bundles) if last else _SecretSets((), ())
    carried = changed = False
    kept: list[Service] = []

    def carry(subject: str, where: str, tls: UpstreamTls, previous: str = "") -> bool:
        gone = current.carry(tls, served)
        for reference in gone:
            problems.append(
                Problem(
                    ProblemKind.UNKNOWN_SECRET,
                    subject,
                    where,
                    f"{_heading(subject, where)}: {previous}{reference.field} names {reference.kind.value} "
                    f"{reference.name!r}, which no source has any more (a Kubernetes Secret deleted or no longer "
                    "labelled for meshplane?); serving its last version until it is back or the reference goes",
                )
            )
        return bool(gone)

    for service in services:
        if service.tls is None:
            kept.append(service)
            continue
        subject = f"service {service.ref}"
        missing = [wanted for wanted in _references(service.tls) if not current.resolves(wanted, served)]
        if not missing:
            carried |= carry(subject, service.origin, service.tls)
            kept.append(service)
            continue
        changed = True
        previous = _find(last.services, service.ref) if last is not None else None
        # A definition of `last` resolved there, so its references are in `served` at least; checked
        # anyway, as the contract this relies on. One without TLS resolves trivially.
        usable = previous is not None and (
            previous.tls is None or all(current.resolves(wanted, served) for wanted in _references(previous.tls))
        )
        for reference in missing:
            cause = (
                "--kubernetes-secrets is off, so no Kubernetes Secret is read"
                if "/" in reference.name and not kubernetes_secrets
                else "a Kubernetes Secret not created, not labelled for meshplane, or not valid?"
            )
            outcome = (
                "serving its previous TLS settings until it exists or the reference is fixed"
                if usable
                else "the service is left out until it exists"
            )
            problems.append(
                Problem(
                    ProblemKind.UNKNOWN_SECRET,
                    subject,
                    service.origin,
                    f"{_heading(subject, service.origin)}: {reference.field} names {reference.kind.value} "
                    f"{reference.name!r}, which no source has ({cause}); {outcome}",
                )
            )
        if previous is None or not usable:
            continue
        # The new definition (endpoints, ports, policy) with the TLS that worked: keeping the whole
        # old object would pin its endpoints, and the next rollout would empty them.
        replacement = dataclasses.replace(service, tls=previous.tls)
        if previous.tls is not None:
            carried |= carry(subject, service.origin, previous.tls, "previous ")
        kept.append(previous if replacement == previous else replacement)
    if not carried and not changed:
        return None
    return tuple(kept), current.certificates(), current.bundles()


def _heading(subject: str, where: str) -> str:
    return f"{subject} ({where})" if where else subject


class _SecretSets:
    """The certificates and CA bundles by name, to resolve references against (and carry into)."""

    def __init__(self, certificates: Sequence[TlsCertificate], bundles: Sequence[TrustBundle]) -> None:
        self.by_kind: dict[_SecretKind, dict[str, Any]] = {
            _SecretKind.CERTIFICATE: {certificate.name: certificate for certificate in certificates},
            _SecretKind.CA_BUNDLE: {bundle.name: bundle for bundle in bundles},
        }

    def resolves(self, wanted: _Reference, served: _SecretSets) -> bool:
        """Whether the reference resolves here, or in `served` (to be carried over)."""
        return wanted.name in self.by_kind[wanted.kind] or wanted.name in served.by_kind[wanted.kind]

    def carry(self, tls: UpstreamTls, served: _SecretSets) -> list[_Reference]:
        """Adds what `tls` names from `served` when missing here (it must resolve); the references carried."""
        carried = []
        for wanted in _references(tls):
            here = self.by_kind[wanted.kind]
            if wanted.name not in here:
                here[wanted.name] = served.by_kind[wanted.kind][wanted.name]
                carried.append(wanted)
        return carried

    def certificates(self) -> tuple[TlsCertificate, ...]:
        return tuple(sorted(self.by_kind[_SecretKind.CERTIFICATE].values(), key=lambda secret: secret.name))

    def bundles(self) -> tuple[TrustBundle, ...]:
        return tuple(sorted(self.by_kind[_SecretKind.CA_BUNDLE].values(), key=lambda secret: secret.name))


def _references(tls: UpstreamTls) -> list[_Reference]:
    """Every secret `tls` names."""
    found = [_Reference("tls.trust", _SecretKind.CA_BUNDLE, tls.trust)]
    if tls.client_certificate:
        found.append(_Reference("tls.client_certificate", _SecretKind.CERTIFICATE, tls.client_certificate))
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


def _collector_problems(telemetry: Telemetry, lookup: Callable[[ServiceRef], Service | None]) -> list[Problem]:
    """Why a collector (of the files or of MeshTelemetry objects) cannot be reached in the merged
    mesh (its service gone, or its port not gRPC), each saying that telemetry to it is left out."""
    found = []
    for collector in telemetry.collectors:
        about = Subject(f"collector {collector.name}", collector.origin)
        found += collector_problems(about, collector, lookup(collector.service))
    return [
        dataclasses.replace(problem, message=f"{problem.message}; no access log or tracing to it") for problem in found
    ]


def _route_problems(table: RouteTable, lookup: Callable[[ServiceRef], Service | None]) -> list[Problem]:
    """What makes `table` unservable against the merged services (the model's own check of a
    route's service and backends, `backend_problems`), each saying that the route is left out."""
    about = Subject(f"route {table.name}", table.origin)
    found = []
    if table.service is not None and lookup(table.service) is None:
        found.append(about.problem(ProblemKind.UNKNOWN_SERVICE, f"unknown service {table.service}"))
    for index, rule in enumerate(table.rules):
        for backend in rule.targets():
            found += backend_problems(about.within(f"rule {index + 1}"), backend, lookup(backend.service))
    return [dataclasses.replace(problem, message=f"{problem.message}; route left out") for problem in found]


# --- meshplane.io objects: precedence below the policy files, above everything else ----------


def _object_services(files: Mesh, served: Served, status: StatusBuilder, problems: list[Problem]) -> list[Service]:
    """The ExternalServices' services in mesh order, but for those the policy files define too
    (the files' win: a conflict, and the object Conflicted)."""
    if not served.services:
        return []
    kept = []
    for key, service in served.services:
        twin = files.service(service.ref)
        if twin is None:
            kept.append(service)
            continue
        message = (
            f"service {service.ref} is defined by policy files ({twin.origin}) and by {key}; "
            "serving the policy files' definition"
        )
        problems.append(Problem(ProblemKind.CONFLICT, f"service {service.ref}", str(key), message))
        status.conflicted(key, message)
    return sorted(kept, key=_order)


def _attach(
    services: tuple[Service, ...],
    files: Mesh,
    objects: Sequence[Service],
    served: Served,
    status: StatusBuilder,
    previous: Mesh | None,
    problems: list[Problem],
) -> tuple[Service, ...]:
    """`services` (in mesh order) with the TrafficPolicies applied: the policy files' documents
    left to the merge first (they target other sources' services only), then the objects, which
    lose a target whose policy the files set. Costs the targets, not the services: each one is
    found by binary search. A service equal to its previous version is that object (so the
    sources' identity shortcuts keep working)."""
    objects_refs = {service.ref for service in objects}
    keyed = [(_file_policy_key(attachment), attachment) for attachment in files.policy_attachments]
    kinds: dict[ServiceRef, TargetKind | None] = {}
    for _, attachment in (*keyed, *served.attachments):
        for target in attachment.targets:
            ref = ServiceRef(target.namespace, target.name)
            if _find(services, ref) is None:
                continue
            if files.service(ref) is not None:
                kinds[ref] = None
            else:
                kinds[ref] = TargetKind.EXTERNAL_SERVICE if ref in objects_refs else TargetKind.SERVICE
    # The files' problems are said where the document is (`file:line`), as the files' others are.
    said: list[Problem] = []
    winners = attach(kinds, keyed, StatusBuilder(), said)
    origins = {str(key): attachment.origin for key, attachment in keyed}
    problems += [
        dataclasses.replace(p, where=origins[p.where], message=f"{origins[p.where]}: {p.message}") for p in said
    ]
    kinds.update(dict.fromkeys(winners))
    winners |= attach(kinds, served.attachments, status, problems)
    if not winners:
        return services
    applied = list(services)
    for ref, attachment in winners.items():
        index = bisect.bisect_left(applied, (ref.namespace, ref.name), key=_order)
        service = attached(applied[index], attachment)
        old = _find(previous.services, ref) if previous is not None else None
        applied[index] = old if old == service and old is not None else service
    return tuple(applied)


def _file_policy_key(attachment: PolicyAttachment) -> ObjectKey:
    """The key a policy files' TrafficPolicy document would have as an object."""
    namespace, _, name = attachment.name.partition("/")
    return ObjectKey("TrafficPolicy", namespace, name)


def _object_routes(
    files: tuple[RouteTable, ...], served: Served, status: StatusBuilder, problems: list[Problem]
) -> tuple[RouteTable, ...]:
    """The files' route tables and the MeshRoutes' that clash with none of them (by name, or by the
    service they attach to; the files' win), nor with an earlier MeshRoute (by namespace/name)."""
    if not served.routes:
        return files
    names = {table.name: table for table in files}
    attached_to = {table.service: table for table in files if table.service is not None}
    kept = []
    for key, table in served.routes:
        other = names.get(table.name)
        clash = "have one name"
        if other is None and table.service is not None and (other := attached_to.get(table.service)) is not None:
            clash = f"both attach to service {table.service}"
        if other is not None:
            message = (
                f"route {table.name} ({key}) and route {other.name} ({other.origin}) {clash}; "
                f"serving route {other.name} ({other.origin})"
            )
            problems.append(Problem(ProblemKind.CONFLICT, f"route {table.name}", str(key), message))
            status.conflicted(key, message)
            continue
        kept.append(table)
        names[table.name] = table
        if table.service is not None:
            attached_to[table.service] = table
    return (*files, *kept)


_Keyed = TypeVar("_Keyed", Site, DevicePolicy)


def _object_sites(
    files: tuple[Site, ...], served: Served, status: StatusBuilder, problems: list[Problem]
) -> tuple[Site, ...]:
    """The files' sites and the EdgeSites' of other ids, by id (the files' tuple itself without any)."""
    return _files_first(files, served.sites, lambda site: site.id, "site", status, problems)


def _object_device_policies(
    files: tuple[DevicePolicy, ...], served: Served, status: StatusBuilder, problems: list[Problem]
) -> tuple[DevicePolicy, ...]:
    """The files' device policies and the DevicePolicies' of other names, by name (the files'
    tuple itself without any): of one name in both, the files' is served, as for sites."""
    return _files_first(files, served.device_policies, lambda policy: policy.name, "device policy", status, problems)


def _files_first(
    files: tuple[_Keyed, ...],
    objects: tuple[tuple[ObjectKey, _Keyed], ...],
    key_of: Callable[[_Keyed], str],
    what: str,
    status: StatusBuilder,
    problems: list[Problem],
) -> tuple[_Keyed, ...]:
    """`files` and the `objects` whose `key_of` none of the files has, sorted by it (`files`
    itself when there are no objects); an object whose key a file has is a conflict, said in
    `problems` and on the object's status as `{what} {key}`, and the file's is served."""
    if not objects:
        return files
    keys = {key_of(one): one for one in files}
    kept = list(files)
    for key, one in objects:
        if (twin := keys.get(key_of(one))) is not None:
            subject = f"{what} {key_of(one)}"
            message = f"{subject} is defined by policy files ({twin.origin}) and by {key}; serving the files'"
            problems.append(Problem(ProblemKind.CONFLICT, subject, str(key), message))
            status.conflicted(key, message)
            continue
        kept.append(one)
    return tuple(sorted(kept, key=key_of))


# Telemetry problems another source may resolve (a collector's Kubernetes service not there yet):
# reported by `_collector_problems` and left out by the translators, not a reason to refuse.
_ELSEWHERE = frozenset({ProblemKind.UNKNOWN_SERVICE, ProblemKind.UNKNOWN_PORT})


def _object_telemetry(
    files: Telemetry,
    served: Served,
    status: StatusBuilder,
    lookup: Callable[[ServiceRef], Service | None],
    routes: tuple[RouteTable, ...],
    problems: list[Problem],
) -> Telemetry:
    """The files' telemetry joined with each MeshTelemetry's, in key order, but for one that the
    joined settings would refuse (a collector twice, a log naming no collector, two tracings of
    one role…): that one is Invalid and left out, as a refused version of any object is (its last
    good version was joined when it had one, so this is a clash with the others)."""
    if not served.telemetry:
        return files
    joined = files
    for key, telemetry in served.telemetry:
        candidate = Telemetry.joined([joined, telemetry])
        services = {c.service: s for c in candidate.collectors if (s := lookup(c.service)) is not None}
        before = {str(problem) for problem in joined.problems(services, routes)}
        found = [
            str(problem)
            for problem in candidate.problems(services, routes)
            if problem.kind not in _ELSEWHERE and str(problem) not in before
        ]
        if found:
            message = f"{'; '.join(found)}; left out"
            status.set(key, ACCEPTED, False, REASON_INVALID, message)
            problems.append(Problem(ProblemKind.INVALID, str(key), str(key), f"{key}: {message}"))
            continue
        joined = candidate
    return joined


def _device_policy_references(
    served: Served, sites: tuple[Site, ...], lookup: Callable[[ServiceRef], Service | None]
) -> list[Problem]:
    """What the DevicePolicies served name that the merged mesh lacks: a site (the policy governs
    nothing there) or an allowed service (nothing to reach). The policy files' own are checked by
    the files (a site), or may name services of other sources. Said where the object is."""
    if not served.device_policies:
        return []
    ids = {site.id for site in sites}
    found = []
    for key, policy in served.device_policies:
        about = Subject(f"device policy {policy.name}", str(key))
        found += [
            about.problem(ProblemKind.UNKNOWN_SITE, f"sites: unknown site {site!r}; it governs nothing there")
            for site in policy.sites
            if site not in ids
        ]
        found += [
            about.problem(ProblemKind.UNKNOWN_SERVICE, f"allow: unknown service {entry.service}; nothing to reach")
            for entry in policy.allow or ()
            if lookup(entry.service) is None
        ]
    return found


def overlapping_sites(sites: Sequence[Site]) -> list[Problem]:
    """A CONFLICT for each site whose device range overlaps another site's, naming both and the
    ranges (both sites get one): a device with an address in both may register at either site,
    and which gateway serves it depends on the site it names. Both stay served. A sweep over the
    ranges sorted by first address: O(n log n) in the ranges, plus the overlaps."""
    ranges: list[tuple[int, int, int, str, str, str]] = []  # (version, first, last, site id, range, origin)
    for site in sites:
        for text in site.device_ranges:
            try:
                network = ipaddress.ip_network(text, strict=False)
            except ValueError:
                continue  # the model refuses it already
            ranges.append((network.version, int(network[0]), int(network[-1]), site.id, str(network), site.origin))
    ranges.sort()
    found: set[tuple[str, str, str, str, str]] = set()
    open_ranges: list[tuple[int, int, int, str, str, str]] = []
    for entry in ranges:
        version, first, _, site_id, text, origin = entry
        open_ranges = [held for held in open_ranges if held[0] == version and held[2] >= first]
        for held in open_ranges:
            if held[3] != site_id:
                found.add((site_id, origin, text, held[3], held[4]))
                found.add((held[3], held[5], held[4], site_id, text))
        open_ranges.append(entry)
    return [
        Problem(
            ProblemKind.CONFLICT,
            f"site {site_id}",
            origin,
            f"{_heading(f'site {site_id}', origin)}: device range {text} overlaps device range {other_range} "
            f"of site {other}: a device with an address in both may register at either site",
        )
        for site_id, origin, text, other, other_range in sorted(found)
    ]
