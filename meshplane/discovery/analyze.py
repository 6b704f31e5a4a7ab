"""`meshplane analyze --kubernetes`: read a live cluster once and report every problem meshplane
would have with it, per object, without serving anything.

Owns three steps and nothing else:

- `read_cluster`: one list (never a watch) of every kind `meshplane serve --kubernetes
  --gateway-api --meshplane-api` reads: Services and EndpointSlices, the Gateway API kinds (and the
  CA ConfigMaps BackendTLSPolicies name, and Namespaces when a listener selects by their labels),
  meshplane's own kinds, and the Secrets' *metadata* (a `PartialObjectMetadataList`: the server
  sends no `data`, so no secret byte is ever read, held or printed). A kind whose CRDs are not
  installed, or that the credentials may not list, is a warning and is left out; Services and
  EndpointSlices must be readable, else the cluster "cannot be read" (`ClusterUnreadable`).
- `analyze`: what serving would make of those objects, by the very code that serves them: the
  Kubernetes source's mapping (`map_service`), the Gateway API's parsers and resolution (through
  the merge), meshplane's own `parse_object`, `Inventory.merge`, and the model's `problems()`.
  Each problem becomes a `Finding` naming the object (kind, namespace, name) and the reason: a
  problem said where one of our objects is belongs to that object (`said_of`, the rule the merge
  derives ResolvedRefs by). EdgeSites whose device ranges overlap are the merge's problem too
  (`inventory.overlapping_sites`): serving and analysing say the same.
- `render_text` / `render_json`: the report, errors then warnings, grouped by object.

Secrets: with their metadata listed, a TLS reference is checked against the Secrets that exist
and carry meshplane's label (their content is not checked: that needs their data); without
(listing them is refused), every `namespace/name` reference is taken to resolve, with a warning.

Must not watch, write to the cluster, or print secret data. Pure but for `connect`, `read_cluster`
and `analyze_command` (the command line's part: connect, read, analyze, print).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TextIO

import aiohttp

from meshplane.discovery.gateway_api.class_status import accepted_condition
from meshplane.discovery.gateway_api.conditions import CONFLICTED, FALSE, TRUE, GatewayApiStatus
from meshplane.discovery.gateway_api.gateway_classes import DEFAULT_CONTROLLER_NAME
from meshplane.discovery.gateway_api.objects import GATEWAY_CLASS, GatewayApiObjects
from meshplane.discovery.gateway_api.source import CONFIG_MAP, CONFIG_MAPS, KINDS, MAX_CA_CONFIG_MAPS, NAMESPACES
from meshplane.discovery.inventory import Contents, Inventory, Merged
from meshplane.discovery.kubernetes import KubernetesContent, endpoint_slice_resource, load_configuration
from meshplane.discovery.kubernetes_annotations import policy_of
from meshplane.discovery.kubernetes_mapping import ORIGIN as KUBERNETES_ORIGIN
from meshplane.discovery.kubernetes_mapping import key_of, map_service, service_key_of_slice
from meshplane.discovery.kubernetes_secrets import DEFAULT_SECRET_SELECTOR, ca_bundle_name, certificate_name
from meshplane.discovery.kubernetes_watching import SECRETS, SERVICES, ApiError, Object, Resource, list_objects
from meshplane.discovery.meshplane_api.kinds import GROUP, VERSION
from meshplane.discovery.meshplane_api.kinds import KINDS as MESHPLANE_KINDS
from meshplane.discovery.meshplane_api.objects import MeshplaneObjects, parse_object
from meshplane.discovery.meshplane_api.resolve import said_of
from meshplane.model import Service, TlsCertificate, TrustBundle, UpstreamTls
from meshplane.model.changes import MeshChanges
from meshplane.model.problems import Problem

if TYPE_CHECKING:  # a type only (kubernetes.py says why)
    from kubernetes_asyncio.client import ApiClient

# Each list page may take this long; a server that does not answer within it cannot be read.
PAGE_SECONDS = 20.0
# What a message may show of one value of the cluster (a name, a reason).
MAX_SHOWN = 2048
# The Accept header that makes the API server send a list as meta.k8s.io/v1 PartialObjectMetadata:
# names, labels and versions, never a Secret's `data` (served since Kubernetes 1.15).
METADATA_ONLY = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
CA_KEY = "ca.crt"
MAX_CA_CERTIFICATE = 256 * 1024  # as the Gateway API source reads a CA ConfigMap's ca.crt


class Severity(enum.StrEnum):
    """An error: something is not served as written (left out, refused, or kept at an older
    version). A warning: something to know that serving works around (a port left out of a
    Service, a kind not checked)."""

    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True, order=True)
class Finding:
    """One problem: the object it is about (`kind`, `namespace`, `name`; namespace "" for a
    cluster-scoped object, kind and name "" for the cluster as a whole) and why."""

    severity: Severity
    kind: str
    namespace: str
    name: str
    reason: str

    @property
    def subject(self) -> str:
        if not self.kind:
            return "cluster"
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespace else f"{self.kind} {self.name}"

    def document(self) -> dict[str, str]:
        return {"kind": self.kind, "namespace": self.namespace, "name": self.name, "reason": self.reason}


class ClusterUnreadable(Exception):
    """The cluster cannot be read: no configuration, no answer, or Services and EndpointSlices
    may not be listed. The message says why."""


@dataclass(frozen=True, slots=True)
class ClusterObjects:
    """What `read_cluster` listed, as the API server sent it. `gateway_api`: each Gateway API
    kind's objects (a kind not installed or not allowed is absent); `meshplane_api`: our kinds'
    objects, None when none of our CRDs is installed; `secrets`: the (namespace, name) of every
    Secret carrying meshplane's label, None when they may not be listed; `config_maps`: the
    `ca.crt` of each CA ConfigMap a BackendTLSPolicy names; `namespace_labels`: every Namespace's
    labels when a listener selects by them (else None); `notes`: what could not be read."""

    server: str
    services: tuple[Object, ...] = ()
    endpoint_slices: tuple[Object, ...] = ()
    gateway_api: Mapping[str, tuple[Object, ...]] = dataclasses.field(default_factory=dict)
    meshplane_api: tuple[Object, ...] | None = None
    secrets: frozenset[tuple[str, str]] | None = None
    config_maps: Mapping[tuple[str, str], str] = dataclasses.field(default_factory=dict)
    namespace_labels: Mapping[str, Mapping[str, str]] | None = None
    notes: tuple[Finding, ...] = ()


async def connect(kubeconfig: Path | None, context: str | None) -> tuple[ApiClient, str]:
    """A client of the cluster (`kubeconfig`, else $KUBECONFIG, ~/.kube/config or in-cluster; its
    `context`, else the current one) and the server's URL. Raises ClusterUnreadable with the reason."""
    from kubernetes_asyncio import config as kube_config
    from kubernetes_asyncio.client import ApiClient, Configuration

    try:
        if context is None:
            configuration = await load_configuration(kubeconfig)
        else:
            configuration = Configuration()
            await kube_config.load_kube_config(
                config_file=str(kubeconfig) if kubeconfig is not None else None,
                context=context,
                client_configuration=configuration,
                persist_config=False,
            )
    except Exception as error:  # the loaders raise many kinds; each means "no usable configuration"
        raise ClusterUnreadable(f"no usable client configuration: {_shown(_describe(error))}") from error
    return ApiClient(configuration), str(configuration.host)


async def read_cluster(client: ApiClient, server: str, namespaces: Sequence[str] = ()) -> ClusterObjects:
    """Every object `analyze` reads, listed once (in `namespaces`, every namespace when empty;
    cluster-scoped kinds always). Raises ClusterUnreadable when Services or EndpointSlices cannot
    be listed, or the server stops answering; any other kind that cannot be listed is a note."""
    selected: tuple[str | None, ...] = tuple(dict.fromkeys(namespaces)) or (None,)
    notes: list[Finding] = []
    try:
        slices_resource = await endpoint_slice_resource(client)
        services = await _list_all(client, SERVICES, selected)
        slices = await _list_all(client, slices_resource, selected)
    except (ApiError, aiohttp.ClientError, TimeoutError, OSError, RuntimeError) as error:
        raise ClusterUnreadable(f"cannot list Services and EndpointSlices at {server}: {_describe(error)}") from error
    try:
        gateway_api = await _api_objects(
            client,
            "the Gateway API",
            [(kind.resource, () if kind.name == GATEWAY_CLASS else selected) for kind in KINDS],
            notes,
        )
        ours = await _api_objects(
            client,
            "meshplane's API",
            [
                (Resource(kind.name, f"/apis/{GROUP}/{VERSION}", kind.plural), selected if kind.namespaced else ())
                for kind in MESHPLANE_KINDS
            ],
            notes,
        )
        secrets = await _secret_names(client, selected, notes)
        config_maps = await _ca_config_maps(client, gateway_api, notes)
        labels = await _namespace_labels(client, gateway_api, notes)
    except (aiohttp.ClientError, TimeoutError, OSError) as error:
        raise ClusterUnreadable(f"{server} stopped answering: {_describe(error)}") from error
    return ClusterObjects(
        server=server,
        services=tuple(services),
        endpoint_slices=tuple(slices),
        gateway_api=MappingProxyType(gateway_api),
        meshplane_api=tuple(obj for listed in ours.values() for obj in listed) if ours else None,
        secrets=secrets,
        config_maps=MappingProxyType(config_maps),
        namespace_labels=labels,
        notes=tuple(notes),
    )


async def _list_all(client: ApiClient, resource: Resource, namespaces: Iterable[str | None]) -> list[Object]:
    found: list[Object] = []
    for namespace in namespaces:
        items, _ = await list_objects(client, resource, namespace, page_seconds=PAGE_SECONDS)
        found += items
    return found


async def _api_objects(
    client: ApiClient,
    api: str,
    resources: Sequence[tuple[Resource, Sequence[str | None]]],
    notes: list[Finding],
) -> dict[str, tuple[Object, ...]]:
    """The objects of each of an API's kinds that can be listed, by kind (in the namespaces given
    with it; every one when none are). A kind that cannot be is a note: one for the whole API when
    none of its kinds is served (its CRDs are not installed)."""
    found: dict[str, tuple[Object, ...]] = {}
    refused: list[Finding] = []
    missing = []
    for resource, namespaces in resources:
        try:
            found[resource.kind] = tuple(await _list_all(client, resource, namespaces or (None,)))
        except ApiError as error:
            if error.status == 404:
                missing.append(resource.kind)
                continue
            refused.append(_not_listed(resource.kind, error, f"{resource.kind} objects were not checked"))
    if missing and len(missing) == len(resources):
        notes.append(
            Finding(Severity.WARNING, "", "", "", f"the CRDs of {api} are not installed: its objects were not checked")
        )
    elif missing:
        kinds = ", ".join(missing)
        notes.append(Finding(Severity.WARNING, "", "", "", f"{kinds} of {api} not served (CRDs missing?): not checked"))
    notes.extend(refused)
    return found


async def _secret_names(
    client: ApiClient, namespaces: Iterable[str | None], notes: list[Finding]
) -> frozenset[tuple[str, str]] | None:
    """(namespace, name) of every Secret labelled for meshplane, from their metadata only; None
    with a note when they may not be listed."""
    found: set[tuple[str, str]] = set()
    try:
        for namespace in namespaces:
            token = ""
            while True:
                query = [("labelSelector", DEFAULT_SECRET_SELECTOR), ("limit", "500")]
                if token:
                    query.append(("continue", token))
                body = await _get_metadata(client, SECRETS.path(namespace), query)
                for item in body.get("items") or ():
                    found.add(key_of(item))
                token = str((body.get("metadata") or {}).get("continue") or "")
                if not token:
                    break
    except ApiError as error:
        notes.append(_not_listed("Secrets", error, "TLS references to Kubernetes Secrets were not checked"))
        return None
    return frozenset(found)


def _not_listed(what: str, error: ApiError, consequence: str) -> Finding:
    """The note that `what` could not be listed (the server's reason), and what went unchecked."""
    return Finding(Severity.WARNING, "", "", "", f"{what} cannot be listed ({_describe(error)}): {consequence}")


async def _get_metadata(client: ApiClient, path: str, query: list[tuple[str, str]]) -> dict[str, Any]:
    """GET `path` as a PartialObjectMetadataList: names, labels and versions, never `data`."""
    response = await client.call_api(
        path,
        "GET",
        query_params=query,
        header_params={"Accept": METADATA_ONLY},
        auth_settings=["BearerToken"],
        _preload_content=False,
        _request_timeout=aiohttp.ClientTimeout(total=PAGE_SECONDS),
    )
    try:
        body = await response.read()
        if response.status != 200:
            raise ApiError(response.status, _reason_of(body))
        answer = json.loads(body)
        return answer if isinstance(answer, dict) else {}
    finally:
        response.release()


async def _ca_config_maps(
    client: ApiClient, gateway_api: Mapping[str, tuple[Object, ...]], notes: list[Finding]
) -> dict[tuple[str, str], str]:
    """The `ca.crt` of each ConfigMap a BackendTLSPolicy names (at most MAX_CA_CONFIG_MAPS)."""
    wanted: set[tuple[str, str]] = set()
    kind = next(kind for kind in KINDS if kind.name == "BackendTLSPolicy")
    for obj in gateway_api.get(kind.name, ()):
        for ref in kind.parse(obj).value.ca_certificate_refs:
            if ref.group == "" and ref.kind == CONFIG_MAP:
                wanted.add((key_of(obj)[0], ref.name))
    found: dict[tuple[str, str], str] = {}
    for namespace, name in sorted(wanted)[:MAX_CA_CONFIG_MAPS]:
        try:
            items, _ = await list_objects(
                client, CONFIG_MAPS, namespace, field_selector=f"metadata.name={name}", page_seconds=PAGE_SECONDS
            )
        except ApiError as error:
            notes.append(Finding(Severity.WARNING, "ConfigMap", namespace, name, f"cannot be read: {_describe(error)}"))
            continue
        for item in items:
            data = item.get("data")
            text = data.get(CA_KEY) if isinstance(data, Mapping) else None
            if isinstance(text, str) and len(text) <= MAX_CA_CERTIFICATE:
                found[(namespace, name)] = text
    return found


async def _namespace_labels(
    client: ApiClient, gateway_api: Mapping[str, tuple[Object, ...]], notes: list[Finding]
) -> Mapping[str, Mapping[str, str]] | None:
    """Every Namespace's labels, when a Gateway's listener selects routes' namespaces by label."""
    kind = next(kind for kind in KINDS if kind.name == "Gateway")
    if not any(
        listener.allowed_routes.namespaces == "Selector"
        for obj in gateway_api.get(kind.name, ())
        for listener in kind.parse(obj).value.listeners
    ):
        return None
    try:
        items = await _list_all(client, NAMESPACES, (None,))
    except ApiError as error:
        notes.append(_not_listed("Namespaces", error, "listeners selecting namespaces by label see none"))
        return None
    labels: dict[str, Mapping[str, str]] = {}
    for item in items:
        raw = (item.get("metadata") or {}).get("labels") or {}
        pairs = {k: v for k, v in raw.items() if isinstance(k, str) and isinstance(v, str)}
        labels[key_of(item)[1]] = MappingProxyType(pairs)
    return MappingProxyType(labels)


def analyze(cluster: ClusterObjects, controller: str = DEFAULT_CONTROLLER_NAME) -> tuple[Finding, ...]:
    """Every finding about `cluster`, sorted: errors first, then by object. Pure."""
    findings: set[Finding] = set(cluster.notes)
    content = _kubernetes_content(cluster, findings)
    gateway_api = _gateway_api_objects(cluster) if cluster.gateway_api else None
    ours = (
        MeshplaneObjects.of([parse_object(raw) for raw in cluster.meshplane_api])
        if cluster.meshplane_api is not None
        else None
    )
    content = _with_secrets(content, cluster.secrets, ours)
    merged = Inventory(kubernetes_secrets=True).merge(
        Contents(
            kubernetes=content,
            changes=MeshChanges.everything(),
            gateway_api=gateway_api,
            gateway_controller=controller,
            ca_certificates=cluster.config_maps,
            meshplane_api=ours,
        )
    )
    if gateway_api is not None:
        findings.update(_gateway_api_findings(gateway_api, merged.gateway_status, controller))
    for key, status in merged.object_status.items():
        for condition in status.conditions:
            if condition.status == FALSE:
                line = f"{condition.type} {condition.status} ({condition.reason}): {condition.message}"
                findings.add(Finding(Severity.ERROR, key.kind, key.namespace, key.name, _shown(line)))
    # A problem said where one of our objects is (its origin is the object's key, as written) is
    # that object's; its False conditions already say it when it has any (the merge reports what
    # it decided about an object in both places).
    names = {str(key): key for key in merged.object_status}
    told = {key for key, status in merged.object_status.items() if any(c.status == FALSE for c in status.conditions)}
    shown = {problem.message for problem in merged.problems}
    for problem in (*merged.problems, *_model_problems(merged, _placeholder_names(content), shown)):
        source = said_of(problem, names)
        if source is None:
            findings.add(_problem_finding(problem))
        elif source not in told:
            findings.add(Finding(Severity.ERROR, source.kind, source.namespace, source.name, _shown(problem.message)))
    return tuple(sorted(findings, key=lambda f: (f.severity != Severity.ERROR, f.kind, f.namespace, f.name, f.reason)))


def _kubernetes_content(cluster: ClusterObjects, findings: set[Finding]) -> KubernetesContent:
    """The Kubernetes source's content of the listed Services and EndpointSlices (its mapping,
    sorted by namespace/name as it sorts them). What mapping leaves out becomes warnings (a UDP
    port, an annotation skipped), but for a Service withheld whole (its `tls-trust` refused: served
    without it, its requests would go out in clear): that is an error."""
    slices_of: dict[tuple[str, str], list[Object]] = {}
    for obj in cluster.endpoint_slices:
        if (owner := service_key_of_slice(obj)) is not None:
            slices_of.setdefault(owner, []).append(obj)
    services: list[tuple[tuple[str, str], Service]] = []
    routes = []
    for obj in cluster.services:
        key = key_of(obj)
        annotated = policy_of(obj)
        mapped = map_service(obj, slices_of.get(key, ()), annotated)
        severity = Severity.ERROR if annotated.withheld else Severity.WARNING
        for note in mapped.notes:
            findings.add(Finding(severity, "Service", *key, _shown(note)))
        if mapped.service is not None:
            services.append((key, mapped.service))
        if mapped.route is not None:
            routes.append((key, mapped.route))
    return KubernetesContent(
        tuple(service for _, service in sorted(services, key=lambda pair: pair[0])),
        tuple(route for _, route in sorted(routes, key=lambda pair: pair[0])),
    )


def _gateway_api_objects(cluster: ClusterObjects) -> GatewayApiObjects:
    """The Gateway API source's content of the listed objects: each read by its kind's parser."""
    parsed: dict[str, Mapping[tuple[str, str], Any]] = {}
    for kind in KINDS:
        objects = {key_of(obj): kind.parse(obj) for obj in cluster.gateway_api.get(kind.name, ())}
        parsed[kind.name] = MappingProxyType(dict(sorted(objects.items())))
    return GatewayApiObjects(
        gateway_classes=parsed["GatewayClass"],
        gateways=parsed["Gateway"],
        http_routes=parsed["HTTPRoute"],
        grpc_routes=parsed["GRPCRoute"],
        reference_grants=parsed["ReferenceGrant"],
        backend_tls_policies=parsed["BackendTLSPolicy"],
        namespace_labels=cluster.namespace_labels,
    )


def _with_secrets(
    content: KubernetesContent, secrets: frozenset[tuple[str, str]] | None, ours: MeshplaneObjects | None
) -> KubernetesContent:
    """`content` with a stand-in certificate and CA bundle for each Secret that resolves: those
    listed when their metadata could be, else every `namespace/name` one a service, an
    ExternalService or a TrafficPolicy names (then unchecked). The stand-ins carry names only:
    the merge resolves references by name, and their content is never shown or checked."""
    if secrets is None:
        names = {
            reference.split("#", 1)[0]
            for tls in _tls_settings(content, ours)
            for reference in (tls.trust, tls.client_certificate)
            if "/" in reference
        }
        keys = {tuple(name.split("/", 1)) for name in names}
    else:
        keys = set(secrets)
    ordered = sorted(keys)
    return dataclasses.replace(
        content,
        certificates=tuple(TlsCertificate(certificate_name(*key), "", "", _STAND_IN) for key in ordered),
        trust_bundles=tuple(TrustBundle(ca_bundle_name(*key), "", _STAND_IN) for key in ordered),
    )


_STAND_IN = "kubernetes (metadata only)"


def _tls_settings(content: KubernetesContent, ours: MeshplaneObjects | None) -> list[UpstreamTls]:
    """Every TLS setting that may name a Kubernetes Secret: the Services', the ExternalServices'
    and the TrafficPolicies'."""
    found = [service.tls for service in content.services if service.tls is not None]
    for parsed in ours.objects.values() if ours is not None else ():
        service, attachment = parsed.service(), parsed.attachment()
        if service is not None and service.tls is not None:
            found.append(service.tls)
        if attachment is not None and attachment.tls is not None:
            found.append(attachment.tls)
    return found


def _placeholder_names(content: KubernetesContent) -> frozenset[str]:
    return frozenset([*(c.name for c in content.certificates), *(b.name for b in content.trust_bundles)])


def _model_problems(merged: Merged, placeholders: frozenset[str], shown: set[str]) -> list[Problem]:
    """The model's own check of the merged mesh, but for what the stand-in secrets make it say
    (their content is not read) and what the merge already said."""
    stand_ins = {f"secret {name}" for name in placeholders}
    return [
        problem
        for problem in merged.mesh.problems()
        if problem.subject not in stand_ins and problem.message not in shown
    ]


def _problem_finding(problem: Problem) -> Finding:
    """A merge or model problem as a finding: its subject ("service shop/web", "route r",
    "Gateway shop/edge") names the object as the model words it; a service that came from a
    Kubernetes Service is named as that Service."""
    kind, _, rest = problem.subject.partition(" ")
    namespace, _, name = rest.rpartition("/") if "/" in rest else ("", "", rest)
    if kind == "service" and problem.where == KUBERNETES_ORIGIN:
        kind = "Service"
    return Finding(Severity.ERROR, kind, namespace, name, _shown(problem.message))


def _gateway_api_findings(objects: GatewayApiObjects, status: GatewayApiStatus, controller: str) -> list[Finding]:
    """What the Gateway API objects meshplane serves would say in their status: every Accepted or
    ResolvedRefs condition that is False, and every listener Conflicted, as errors; what their
    CRDs' rules forbid (not run by an API server before 1.25) as errors. Objects of other
    controllers are theirs, not reported."""
    found: list[Finding] = []

    def add(kind: str, key: tuple[str, str], where: str, conditions: Iterable[Any]) -> None:
        for condition in conditions:
            bad = condition.status == FALSE or (condition.type == CONFLICTED and condition.status == TRUE)
            if bad:
                line = f"{where}{condition.type} {condition.status} ({condition.reason}): {condition.message}"
                found.append(Finding(Severity.ERROR, kind, key[0], key[1], _shown(line)))

    for key, parsed_class in objects.gateway_classes.items():
        if parsed_class.value.controller_name == controller:
            add("GatewayClass", key, "", [accepted_condition(parsed_class)])
    for key, gateway in status.gateways.items():
        add("Gateway", key, "", gateway.conditions)
        for listener in gateway.listeners:
            add("Gateway", key, f"listener {listener.name}: ", listener.conditions)
    for kind, routes in (("HTTPRoute", status.http_routes), ("GRPCRoute", status.grpc_routes)):
        for key, route in routes.items():
            for parent in route.parents:
                ref = parent.parent
                where = f"parent {ref.kind} {ref.namespace or key[0]}/{ref.name}: "
                add(kind, key, where, parent.conditions)
    for key, policy in status.backend_tls_policies.items():
        for ancestor in policy.ancestors:
            add("BackendTLSPolicy", key, f"ancestor Gateway {'/'.join(ancestor.ancestor)}: ", ancestor.conditions)
    served = {
        "Gateway": status.gateways,
        "HTTPRoute": status.http_routes,
        "GRPCRoute": status.grpc_routes,
        "BackendTLSPolicy": status.backend_tls_policies,
    }
    for kind_name, keys in served.items():
        for key in keys:
            for problem in objects.of_kind(kind_name)[key].problems:
                found.append(Finding(Severity.ERROR, kind_name, key[0], key[1], _shown(str(problem))))
    return found


def render_text(findings: Sequence[Finding]) -> str:
    """The report for people: "errors:" then "warnings:", each object once with its reasons below it
    (the look of `meshplane validate`). Names and reasons from the cluster are shown escaped."""
    lines: list[str] = []
    for severity, title in ((Severity.ERROR, "errors"), (Severity.WARNING, "warnings")):
        chosen = [finding for finding in findings if finding.severity == severity]
        if not chosen:
            continue
        lines.append(f"{title} ({len(chosen)}):")
        subject = None
        for finding in chosen:
            if finding.subject != subject:
                subject = finding.subject
                lines.append(f"  {_escaped(subject)}")
            lines.append(f"    {_escaped(finding.reason)}")
    return "\n".join(lines) + "\n" if lines else ""


def render_json(findings: Sequence[Finding], server: str) -> str:
    """The report for programs: {"cluster", "errors": [...], "warnings": [...]}, each finding's
    kind, namespace, name and reason."""
    document = {
        "cluster": server,
        "errors": [f.document() for f in findings if f.severity == Severity.ERROR],
        "warnings": [f.document() for f in findings if f.severity == Severity.WARNING],
    }
    return json.dumps(document, indent=2) + "\n"


def _escaped(text: str) -> str:
    """`text` with control characters (a terminal's escape sequences, line breaks) shown as escapes."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def _shown(text: str) -> str:
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 1] + "…"


def _describe(error: BaseException) -> str:
    if isinstance(error, ApiError):
        return str(error)
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _reason_of(body: bytes) -> str:
    try:
        answer = json.loads(body)
    except ValueError:
        return _shown(body.decode("utf-8", "replace"))
    return _shown(str(answer.get("message", answer)) if isinstance(answer, dict) else str(answer))


async def analyze_command(
    kubeconfig: Path | None, context: str | None, namespaces: Sequence[str], output: str, out: TextIO, err: TextIO
) -> int:
    """`meshplane analyze --kubernetes`: the report on `out` (a summary line on `err`, or on `out`
    for a clean text report); exit 0 with no errors, 1 with errors, 2 when the cluster cannot be read."""
    try:
        client, server = await connect(kubeconfig, context)
    except ClusterUnreadable as error:
        print(f"meshplane analyze: {error}", file=err)
        return 2
    try:
        cluster = await read_cluster(client, server, namespaces)
    except ClusterUnreadable as error:
        print(f"meshplane analyze: {error}", file=err)
        return 2
    finally:
        await client.close()
    findings = await asyncio.to_thread(analyze, cluster)
    errors = sum(1 for finding in findings if finding.severity == Severity.ERROR)
    warnings = len(findings) - errors
    if output == "json":
        out.write(render_json(findings, server))
    else:
        out.write(render_text(findings))
    summary = f"cluster {server}: {errors} error(s), {warnings} warning(s)"
    print(summary, file=err if errors or output == "json" else out)
    return 1 if errors else 0
