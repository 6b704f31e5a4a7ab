"""The whole mesh as the sources currently describe it: the one input of every translator.

Owns `Mesh` (services and route tables, sorted and unique) and its validation, which lists every
problem rather than the first. Must not do I/O or know any wire format.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from meshplane.model.device_policy import DevicePolicy, device_policy_problems
from meshplane.model.devices import Device
from meshplane.model.gateways import Gateway
from meshplane.model.policy import PolicyAttachment
from meshplane.model.problems import Problem, ProblemKind, Subject
from meshplane.model.routes import RouteTable, WeightedBackend
from meshplane.model.secrets import TlsCertificate, TrustBundle
from meshplane.model.services import Service, ServiceRef
from meshplane.model.sites import DeviceTrust, Site
from meshplane.model.telemetry import NO_TELEMETRY, Telemetry

DEFAULT_CLUSTER_DOMAIN = "cluster.local"


def device_order(device: Device) -> tuple[str, str]:
    """The order of `Mesh.devices`: by site, then id (so one site's devices are one slice)."""
    return (device.site, device.id)


def _service_order(service: Service) -> tuple[str, str]:
    return (service.namespace, service.name)


def _site_only(device: Device) -> tuple[str]:
    return (device.site,)


@dataclass(frozen=True, slots=True)
class Mesh:
    """Services and route tables, each sorted by key, so equal meshes compare and translate equal.

    `sites` (edge sites, from the policy files) and `devices` (live edge registrations, sorted by
    site, then id: `device_order`) matter only to the edge roles' translators. `telemetry` (access
    logs and tracing, from the policy files) matters to the Envoy roles' listeners and routes.
    `gateways` (Kubernetes Gateways, sorted by namespace/name) matter only to the `gateway` role.
    `device_trust` (the registry CA, when it signs device CSRs) is what edge gateways verify device
    certificates against (sites with `tls`). `device_policies` (sorted by name) say what the devices
    behind edge gateways may reach (`model/device_policy.py`): read by the edge gateways only.
    `policy_attachments`: the policy files' TrafficPolicy documents that target services of other
    sources, for the inventory's merge to attach (never in a merged mesh; no translator reads it).
    """

    services: tuple[Service, ...] = ()
    routes: tuple[RouteTable, ...] = ()
    certificates: tuple[TlsCertificate, ...] = ()
    trust_bundles: tuple[TrustBundle, ...] = ()
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN
    sites: tuple[Site, ...] = ()
    devices: tuple[Device, ...] = ()
    telemetry: Telemetry = NO_TELEMETRY
    gateways: tuple[Gateway, ...] = ()
    device_trust: DeviceTrust | None = None
    device_policies: tuple[DevicePolicy, ...] = ()
    policy_attachments: tuple[PolicyAttachment, ...] = ()

    @staticmethod
    def of(
        services: list[Service] | tuple[Service, ...],
        routes: list[RouteTable] | tuple[RouteTable, ...] = (),
        certificates: list[TlsCertificate] | tuple[TlsCertificate, ...] = (),
        trust_bundles: list[TrustBundle] | tuple[TrustBundle, ...] = (),
        cluster_domain: str = DEFAULT_CLUSTER_DOMAIN,
        sites: list[Site] | tuple[Site, ...] = (),
        devices: list[Device] | tuple[Device, ...] = (),
        telemetry: Telemetry = NO_TELEMETRY,
        gateways: list[Gateway] | tuple[Gateway, ...] = (),
        device_trust: DeviceTrust | None = None,
        device_policies: list[DevicePolicy] | tuple[DevicePolicy, ...] = (),
    ) -> Mesh:
        """A mesh with its parts in canonical order (services by namespace/name, others by name or id)."""
        return Mesh(
            services=tuple(sorted(services, key=lambda s: (s.namespace, s.name))),
            routes=tuple(sorted(routes, key=lambda r: r.name)),
            certificates=tuple(sorted(certificates, key=lambda c: c.name)),
            trust_bundles=tuple(sorted(trust_bundles, key=lambda b: b.name)),
            cluster_domain=cluster_domain,
            sites=tuple(sorted(sites, key=lambda s: s.id)),
            devices=tuple(sorted(devices, key=device_order)),
            telemetry=telemetry,
            gateways=tuple(sorted(gateways, key=lambda g: (g.namespace, g.name))),
            device_trust=device_trust,
            device_policies=tuple(sorted(device_policies, key=lambda p: p.name)),
        )

    def devices_at(self, site_id: str) -> tuple[Device, ...]:
        """The devices of one site, by id: a slice of `devices` found by binary search (a gateway's
        translation reads its site's devices without walking a fleet's)."""
        start = bisect.bisect_left(self.devices, (site_id,), key=_site_only)
        end = bisect.bisect_right(self.devices, (site_id,), key=_site_only)
        return self.devices[start:end]

    def site(self, site_id: str) -> Site | None:
        for site in self.sites:
            if site.id == site_id:
                return site
        return None

    def service(self, ref: ServiceRef) -> Service | None:
        """The service `ref`, by binary search (`services` are in (namespace, name) order)."""
        index = bisect.bisect_left(self.services, (ref.namespace, ref.name), key=_service_order)
        if index < len(self.services):
            found = self.services[index]
            if found.namespace == ref.namespace and found.name == ref.name:
                return found
        return None

    def services_by_ref(self) -> dict[ServiceRef, Service]:
        return {service.ref: service for service in self.services}

    def host_names(self, service: Service) -> tuple[str, ...]:
        """Every name a client may use for `service`, most specific last.

        `name.namespace`, `name.namespace.svc` and `name.namespace.svc.<cluster domain>` always;
        the bare `name` only when no other namespace has a service of that name (it would be
        ambiguous, and a virtual host's domains must be unique); then the service's own `hosts`.
        """
        names = []
        if sum(1 for other in self.services if other.name == service.name) == 1:
            names.append(service.name)
        base = f"{service.name}.{service.namespace}"
        names += [base, f"{base}.svc", f"{base}.svc.{self.cluster_domain}"]
        names += [host for host in service.hosts if host not in names]
        return tuple(names)

    def problems(self) -> list[Problem]:
        """Every reason this mesh cannot be served; empty when it can."""
        found: list[Problem] = []
        by_ref: dict[ServiceRef, Service] = {}
        for service in self.services:
            found += service.problems()
            if (twin := by_ref.get(service.ref)) is not None:
                found.append(
                    _twice(f"service {service.ref}", service.origin, f"in {twin.origin} and in {service.origin}")
                )
            by_ref[service.ref] = service
        found += self._secret_problems()
        found += self._edge_problems()
        found += device_policy_problems(self.device_policies, frozenset(site.id for site in self.sites))
        found += self.telemetry.problems(by_ref, self.routes)
        found += self._gateway_problems(by_ref)
        route_names: dict[str, RouteTable] = {}
        attached: dict[tuple[ServiceRef, int | None, str], RouteTable] = {}
        for table in self.routes:
            found += table.problems()
            subject = f"route {table.name}"
            if (twin_table := route_names.get(table.name)) is not None:
                found.append(_twice(subject, table.origin, f"in {twin_table.origin} and in {table.origin}"))
            route_names[table.name] = table
            # These messages name the origin even when it is empty ("route r ()"), as they always have.
            about = Subject(subject, table.origin, f"{subject} ({table.origin})")
            if table.service is not None:
                if table.service not in by_ref:
                    found.append(about.problem(ProblemKind.UNKNOWN_SERVICE, f"unknown service {table.service}"))
                elif table.attachment is not None and (other := attached.get(table.attachment)) is not None:
                    on = f"service {table.service}" + ("" if table.port is None else f" port {table.port}")
                    on += f" for the clients of namespace {table.consumer}" if table.consumer else ""
                    found.append(
                        Problem(
                            ProblemKind.CONFLICT,
                            subject,
                            table.origin,
                            f"{about.heading} and route {other.name} ({other.origin}) both attach to {on}",
                        )
                    )
                elif table.port is not None and by_ref[table.service].port(table.port) is None:
                    found.append(about.invalid(f"service {table.service} has no port {table.port}"))
                if table.attachment is not None:
                    attached[table.attachment] = table
            for index, rule in enumerate(table.rules):
                for backend in rule.targets():
                    found += backend_problems(about.within(f"rule {index + 1}"), backend, by_ref.get(backend.service))
        return found

    def gateway(self, key: str) -> Gateway | None:
        """The Gateway `namespace/name`, or None."""
        for gateway in self.gateways:
            if gateway.key == key:
                return gateway
        return None

    def _gateway_problems(self, by_ref: dict[ServiceRef, Service]) -> list[Problem]:
        """A Gateway's own problems, and each rule's backends checked as a route's are."""
        found: list[Problem] = []
        certificates = frozenset(c.name for c in self.certificates)
        for gateway in self.gateways:
            found += gateway.problems(certificates)
            about = Subject(f"gateway {gateway.key}")
            for listener in gateway.listeners:
                for host in listener.hosts:
                    for index, rule in enumerate(host.rules):
                        where = about.within(f"listener {listener.name} host {host.hostname} rule {index + 1}")
                        for backend in rule.rule.targets():
                            found += backend_problems(where, backend, by_ref.get(backend.service))
        return found

    def _edge_problems(self) -> list[Problem]:
        found: list[Problem] = []
        sites: dict[str, Site] = {}
        for site in self.sites:
            found += site.problems()
            if (twin := sites.get(site.id)) is not None:
                found.append(_twice(f"site {site.id}", site.origin, f"in {twin.origin} and in {site.origin}"))
            sites[site.id] = site
        seen: set[str] = set()
        for device in self.devices:
            found += device.problems(sites)
            if device.id in seen:
                found.append(
                    Problem(ProblemKind.DUPLICATE, f"device {device.id}", "", f"device {device.id} is registered twice")
                )
            seen.add(device.id)
        return found

    def _secret_problems(self) -> list[Problem]:
        found: list[Problem] = []
        origins: dict[str, str] = {}
        secrets: list[TlsCertificate | TrustBundle] = [*self.certificates, *self.trust_bundles]
        for secret in secrets:
            found += secret.problems()
            if secret.name in origins:
                found.append(
                    _twice(f"secret {secret.name}", secret.origin, f"in {origins[secret.name]} and in {secret.origin}")
                )
            origins[secret.name] = secret.origin
        certificates = {c.name for c in self.certificates}
        bundles = {b.name for b in self.trust_bundles}
        for site in self.sites:
            if site.tls is not None and site.tls.certificate and site.tls.certificate not in certificates:
                about = Subject(f"site {site.id}", site.origin)
                found.append(
                    about.problem(
                        _unknown_secret(site.tls.certificate),
                        f"tls.certificate names unknown certificate {site.tls.certificate!r}",
                    )
                )
        for service in self.services:
            if (tls := service.tls) is None:
                continue
            # These messages name the origin even when it is empty, as they always have.
            subject = f"service {service.ref}"
            about = Subject(subject, service.origin, f"{subject} ({service.origin})")
            if tls.trust not in bundles:
                found.append(
                    about.problem(_unknown_secret(tls.trust), f"tls.trust names unknown CA bundle {tls.trust!r}")
                )
            if tls.client_certificate and tls.client_certificate not in certificates:
                found.append(
                    about.problem(
                        _unknown_secret(tls.client_certificate),
                        f"tls.client_certificate names unknown certificate {tls.client_certificate!r}",
                    )
                )
        return found


def _twice(subject: str, where: str, places: str) -> Problem:
    """`subject` is defined twice, at `places` ("in a.yaml:3 and in b.yaml:9"), the second at `where`."""
    return Problem(ProblemKind.DUPLICATE, subject, where, f"{subject} is defined twice: {places}")


def _unknown_secret(name: str) -> ProblemKind:
    """The kind of a reference to a secret the mesh lacks: a `namespace/name` one names a Kubernetes
    Secret, which a source reading no Secrets cannot rule out; any other one is simply unknown."""
    return ProblemKind.UNKNOWN_NAMESPACED_SECRET if "/" in name else ProblemKind.UNKNOWN_SECRET


def backend_problems(about: Subject, backend: WeightedBackend, target: Service | None) -> list[Problem]:
    """Why a route rule cannot send traffic to `backend` (`target`: the service it names, None when
    none has its name): an unknown service, an ambiguous or unknown port, a port that is not HTTP."""
    if target is None:
        return [about.problem(ProblemKind.UNKNOWN_SERVICE, f"unknown service {backend.service}")]
    if backend.port is None and len(target.ports) > 1:
        return [about.invalid(f"service {backend.service} has several ports; name one")]
    port = target.port(backend.port)
    if port is None:
        return [about.problem(ProblemKind.UNKNOWN_PORT, f"service {backend.service} has no port {backend.port!r}")]
    if not port.protocol.is_http:
        return [about.invalid(f"port {port.name} of {backend.service} is {port.protocol}, not HTTP")]
    return []
