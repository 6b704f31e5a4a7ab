"""The whole mesh as the sources currently describe it: the one input of every translator.

Owns `Mesh` (services and route tables, sorted and unique) and its validation, which lists every
problem rather than the first. Must not do I/O or know any wire format.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshplane.model.devices import Device
from meshplane.model.routes import RouteTable, WeightedBackend
from meshplane.model.secrets import TlsCertificate, TrustBundle
from meshplane.model.services import Service, ServiceRef
from meshplane.model.sites import Site

DEFAULT_CLUSTER_DOMAIN = "cluster.local"


@dataclass(frozen=True, slots=True)
class Mesh:
    """Services and route tables, each sorted by key, so equal meshes compare and translate equal.

    `sites` (edge sites, from the policy files) and `devices` (live edge registrations, sorted by
    id) matter only to the edge roles' translators.
    """

    services: tuple[Service, ...] = ()
    routes: tuple[RouteTable, ...] = ()
    certificates: tuple[TlsCertificate, ...] = ()
    trust_bundles: tuple[TrustBundle, ...] = ()
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN
    sites: tuple[Site, ...] = ()
    devices: tuple[Device, ...] = ()

    @staticmethod
    def of(
        services: list[Service] | tuple[Service, ...],
        routes: list[RouteTable] | tuple[RouteTable, ...] = (),
        certificates: list[TlsCertificate] | tuple[TlsCertificate, ...] = (),
        trust_bundles: list[TrustBundle] | tuple[TrustBundle, ...] = (),
        cluster_domain: str = DEFAULT_CLUSTER_DOMAIN,
        sites: list[Site] | tuple[Site, ...] = (),
        devices: list[Device] | tuple[Device, ...] = (),
    ) -> Mesh:
        """A mesh with its parts in canonical order (services by namespace/name, others by name or id)."""
        return Mesh(
            services=tuple(sorted(services, key=lambda s: (s.namespace, s.name))),
            routes=tuple(sorted(routes, key=lambda r: r.name)),
            certificates=tuple(sorted(certificates, key=lambda c: c.name)),
            trust_bundles=tuple(sorted(trust_bundles, key=lambda b: b.name)),
            cluster_domain=cluster_domain,
            sites=tuple(sorted(sites, key=lambda s: s.id)),
            devices=tuple(sorted(devices, key=lambda d: d.id)),
        )

    def site(self, site_id: str) -> Site | None:
        for site in self.sites:
            if site.id == site_id:
                return site
        return None

    def service(self, ref: ServiceRef) -> Service | None:
        for service in self.services:
            if service.namespace == ref.namespace and service.name == ref.name:
                return service
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

    def problems(self) -> list[str]:
        """Every reason this mesh cannot be served; empty when it can."""
        found: list[str] = []
        by_ref: dict[ServiceRef, Service] = {}
        for service in self.services:
            found += service.problems()
            if (twin := by_ref.get(service.ref)) is not None:
                found.append(f"service {service.ref} is defined twice: in {twin.origin} and in {service.origin}")
            by_ref[service.ref] = service
        found += self._secret_problems()
        found += self._edge_problems()
        route_names: dict[str, RouteTable] = {}
        attached: dict[ServiceRef, RouteTable] = {}
        for table in self.routes:
            found += table.problems()
            if (twin_table := route_names.get(table.name)) is not None:
                found.append(f"route {table.name} is defined twice: in {twin_table.origin} and in {table.origin}")
            route_names[table.name] = table
            if table.service is not None:
                if table.service not in by_ref:
                    found.append(f"route {table.name} ({table.origin}): unknown service {table.service}")
                elif (other := attached.get(table.service)) is not None:
                    found.append(
                        f"route {table.name} ({table.origin}) and route {other.name} ({other.origin}) "
                        f"both attach to service {table.service}"
                    )
                attached[table.service] = table
            for index, rule in enumerate(table.rules):
                for backend in rule.backends:
                    where = f"route {table.name} ({table.origin}) rule {index + 1}"
                    found += _backend_problems(where, backend, by_ref.get(backend.service))
        return found

    def _edge_problems(self) -> list[str]:
        found: list[str] = []
        sites: dict[str, Site] = {}
        for site in self.sites:
            found += site.problems()
            if (twin := sites.get(site.id)) is not None:
                found.append(f"site {site.id} is defined twice: in {twin.origin} and in {site.origin}")
            sites[site.id] = site
        seen: set[str] = set()
        for device in self.devices:
            found += device.problems(sites)
            if device.id in seen:
                found.append(f"device {device.id} is registered twice")
            seen.add(device.id)
        return found

    def _secret_problems(self) -> list[str]:
        found: list[str] = []
        origins: dict[str, str] = {}
        secrets: list[TlsCertificate | TrustBundle] = [*self.certificates, *self.trust_bundles]
        for secret in secrets:
            found += secret.problems()
            if secret.name in origins:
                found.append(f"secret {secret.name} is defined twice: in {origins[secret.name]} and in {secret.origin}")
            origins[secret.name] = secret.origin
        certificates = {c.name for c in self.certificates}
        bundles = {b.name for b in self.trust_bundles}
        for service in self.services:
            if (tls := service.tls) is None:
                continue
            if tls.trust not in bundles:
                found.append(
                    f"service {service.ref} ({service.origin}): tls.trust names unknown CA bundle {tls.trust!r}"
                )
            if tls.client_certificate and tls.client_certificate not in certificates:
                found.append(
                    f"service {service.ref} ({service.origin}): tls.client_certificate names unknown "
                    f"certificate {tls.client_certificate!r}"
                )
        return found


def _backend_problems(where: str, backend: WeightedBackend, target: Service | None) -> list[str]:
    if target is None:
        return [f"{where}: unknown service {backend.service}"]
    if backend.port is None and len(target.ports) > 1:
        return [f"{where}: service {backend.service} has several ports; name one"]
    port = target.port(backend.port)
    if port is None:
        return [f"{where}: service {backend.service} has no port {backend.port!r}"]
    if not port.protocol.is_http:
        return [f"{where}: port {port.name} of {backend.service} is {port.protocol}, not HTTP"]
    return []
