"""The composition root: the one place where sources, the xDS pipeline and the status endpoint meet.

Wiring: sources (policy files and/or Kubernetes) → inventory (merge) → (debounced) publisher →
snapshot cache → gRPC xDS server; the status endpoint (status, dumps, metrics, dashboard) reads
the sources' status, the publisher's state, the cache and the stream registry, through read
functions handed to it here. Nothing is published before every enabled source has
synced (the policy files' first good load, Kubernetes' first full list of Services and
EndpointSlices), so a restarting control plane never pushes an empty configuration to live proxies.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import yaml
from aiohttp import web

from meshplane.addresses import split_address
from meshplane.debounce import Debouncer
from meshplane.discovery.gateway_api.gateway_classes import DEFAULT_CONTROLLER_NAME, controller_name_problem
from meshplane.discovery.gateway_api.source import GatewayApiSource
from meshplane.discovery.inventory import Contents, Inventory
from meshplane.discovery.kubernetes import KubernetesSource
from meshplane.discovery.kubernetes_secrets import DEFAULT_SECRET_SELECTOR, selector_problem
from meshplane.discovery.meshplane_api.objects import MeshplaneObjects
from meshplane.discovery.meshplane_api.source import MeshplaneApiSource, namespaces_problem
from meshplane.discovery.meshplane_api.status_writer import ProxiesHolding
from meshplane.discovery.policy_files import DEFAULT_MAX_FILE_SIZE, PolicyFileSource
from meshplane.discovery.registry.auth import TokenFileError
from meshplane.model import ProxyGroup, ProxyRole, Site, SourceStatus
from meshplane.model.changes import DeviceChanges, MeshChanges
from meshplane.model.sites import DeviceTrust
from meshplane.status.devices import DeviceLookup
from meshplane.status.document import StatusInputs
from meshplane.status.grpc_stats import GrpcStats, InstrumentedXdsServices
from meshplane.status.http import status_app
from meshplane.status.metrics import ControlPlaneMetrics
from meshplane.status.source_watch import SourceWatch
from meshplane.tls import ReloadingCredentials, TlsFiles
from meshplane.xds.cache import SnapshotCache
from meshplane.xds.publication import Cause, ChangeLog, Instant
from meshplane.xds.publisher import SnapshotPublisher
from meshplane.xds.server.identity import XdsTokens
from meshplane.xds.server.nodes import peer_address
from meshplane.xds.server.service import (
    DEFAULT_MAX_STREAMS_PER_CLIENT,
    DEFAULT_MAX_STREAMS_PER_CONNECTION,
    XdsServices,
    create_server,
)
from meshplane.xds.server.tracking import StreamRegistry, StreamTrack, SyncState
from meshplane.xds.types import TypeUrl

if TYPE_CHECKING:
    # Imported where used, when the registry is on: its gRPC service, store and generated API cost
    # every `meshplane serve` start ~25 ms otherwise.
    from meshplane.registry_api.server import EdgeRegistryServer, EdgeSettings

log = logging.getLogger(__name__)


class TokensFileError(Exception):
    """A tokens file (`--xds-tokens`, `--registry-tokens`) that cannot be read or holds a malformed
    entry; the message names the flag, the file and each entry at fault, and is enough alone."""


@dataclass(frozen=True, slots=True)
class Settings:
    """`config` (policy files) and `kubernetes` each enable a source; at least one must be on."""

    config: Path | None = None
    xds_address: str = "0.0.0.0:18000"
    status_address: str = "0.0.0.0:9900"
    poll_interval: float = 1.0
    debounce_quiet: float = 0.1
    debounce_max: float = 1.0
    shutdown_grace: float = 5.0
    kubernetes: bool = False
    kubeconfig: Path | None = None  # else $KUBECONFIG, ~/.kube/config, or the pod's service account
    namespaces: tuple[str, ...] = ()  # empty: all namespaces
    service_selector: str = ""
    # Opt-in (secrets are sensitive): SDS certificates and CA bundles from Kubernetes Secrets of type
    # kubernetes.io/tls or Opaque with ca.crt, labelled `secret_selector`, in `namespaces`.
    kubernetes_secrets: bool = False
    secret_selector: str = DEFAULT_SECRET_SELECTOR
    # Gateway API objects watched and served to gateway proxies (docs/gateway-api.md); status written
    # on the GatewayClasses of `gateway_controller_name`, their Gateways and the routes naming them.
    gateway_api: bool = False
    gateway_controller_name: str = DEFAULT_CONTROLLER_NAME
    # meshplane's own kinds (group meshplane.io) watched, served and their status written
    # (docs/kubernetes-api.md); `watch_namespaces`: the namespaces whose objects of them are served
    # (empty: those of `namespaces`, else all: `meshplane_api_namespaces`; objects elsewhere are
    # ignored and listed in /status).
    meshplane_api: bool = False
    watch_namespaces: tuple[str, ...] = ()
    # Unlocks config dumps that hold secrets (their Secret resources, redacted); None: never shown.
    admin_token: str | None = dataclasses.field(default=None, repr=False)
    # The edge registry (docs/edge.md): on when set; its devices join every published mesh.
    edge: EdgeSettings | None = None
    # TLS on the xDS port (both or neither); with `client_ca`, mTLS and proxy identity from SANs.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None
    # Bearer tokens bound to roles and sites (identity.XdsTokens): required of proxies without a certificate.
    xds_tokens: Path | None = None
    # Serve secrets holding private keys to streams neither of the two above authenticates
    # (xds/server/keys.py); off, they are withheld from such streams.
    insecure_serve_keys_without_client_auth: bool = False
    # Input limits (SECURITY.md): 0 streams per client means unlimited.
    max_streams_per_connection: int = DEFAULT_MAX_STREAMS_PER_CONNECTION
    max_streams_per_client: int = DEFAULT_MAX_STREAMS_PER_CLIENT
    max_policy_file_size: int = DEFAULT_MAX_FILE_SIZE

    def problems(self) -> list[str]:
        """Every combination of settings that cannot serve, each named by its flags (the CLI exits 2
        with them; `ControlPlane.start` refuses them)."""
        found = []
        if self.tls_cert is None and self.tls_key is None:
            if self.client_ca is not None:
                found.append("--client-ca needs --tls-cert and --tls-key")
        elif self.tls_cert is None or self.tls_key is None:
            found.append("--tls-cert and --tls-key go together")
        if self.kubernetes_secrets and not self.kubernetes:
            found.append("--kubernetes-secrets needs --kubernetes (MESHPLANE_KUBERNETES=true)")
        if self.kubernetes_secrets and (problem := selector_problem(self.secret_selector)) is not None:
            found.append(problem)
        if self.gateway_api and not self.kubernetes:
            found.append("--gateway-api needs --kubernetes (MESHPLANE_KUBERNETES=true)")
        if self.gateway_api and (problem := controller_name_problem(self.gateway_controller_name)) is not None:
            found.append(f"--gateway-controller-name: {problem}")
        if self.meshplane_api and not self.kubernetes:
            found.append("--meshplane-api needs --kubernetes (MESHPLANE_KUBERNETES=true)")
        if self.watch_namespaces and not self.meshplane_api:
            found.append("--watch-namespaces needs --meshplane-api (MESHPLANE_MESHPLANE_API=true)")
        if self.watch_namespaces and (problem := namespaces_problem(self.watch_namespaces)) is not None:
            found.append(f"--watch-namespaces: {problem}")
        return found

    @property
    def meshplane_api_namespaces(self) -> tuple[str, ...]:
        """The namespaces whose objects of meshplane's kinds are served (empty: all): those of
        `--watch-namespaces`, else those of `--namespace`, so one `--namespace` limits Services and
        our kinds alike, as `meshplane analyze --namespace` does."""
        return self.watch_namespaces or self.namespaces


class ControlPlane:
    """One running meshplane. `start()` binds the ports; `run()` serves until `stop` is set."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cache = SnapshotCache()
        changes = ChangeLog()  # the publisher records generations, the server the ACKs reaching them
        self.registry = StreamRegistry(published_at=self.cache.published_monotonic, changes=changes)
        self.publisher = SnapshotPublisher(self.cache, changes)
        # When the oldest change not yet published was first observed: the start, for the first
        # publication (which waits for every source's sync), then each debounce window's first poke.
        self._unpublished_since: Instant | None = Instant.now()
        self.debouncer = Debouncer(self._rebuild, quiet=settings.debounce_quiet, max_delay=settings.debounce_max)
        self.policy = (
            PolicyFileSource(
                settings.config,
                poll_interval=settings.poll_interval,
                on_change=self._on_source_change,
                # Its errors are logged by `source_watch` (one line each); looking at once logs a
                # refusal even when the file is fixed before the watch's next look.
                on_errors_changed=lambda: self.source_watch.check(),
                open_world=settings.kubernetes,
                max_file_size=settings.max_policy_file_size,
                gateway_controller=settings.gateway_controller_name,
            )
            if settings.config is not None
            else None
        )
        self.kubernetes = (
            KubernetesSource(
                kubeconfig=settings.kubeconfig,
                namespaces=settings.namespaces,
                service_selector=settings.service_selector,
                secrets=settings.kubernetes_secrets,
                secret_selector=settings.secret_selector,
                on_change=self._on_source_change,
            )
            if settings.kubernetes
            else None
        )
        # Merged into the mesh (Gateways for gateway proxies); it does not hold back the first
        # publication: until it has synced its content is empty (sidecars need no CRDs).
        self.gateway_api = (
            GatewayApiSource(
                kubeconfig=settings.kubeconfig,
                controller_name=settings.gateway_controller_name,
                on_change=self._on_source_change,
                serving=self._gateway_envoys,
            )
            if settings.gateway_api and settings.kubernetes
            else None
        )
        self._gateway_envoys_seen: tuple[int, dict[str, list[str]]] = (-1, {})  # see _gateway_envoys
        # Merged into the mesh; it holds the first publication back until it has synced, unless its
        # CRDs are known not to be installed (then it says so, and its content is empty).
        self.meshplane_api = (
            MeshplaneApiSource(
                kubeconfig=settings.kubeconfig,
                namespaces=settings.meshplane_api_namespaces,
                on_change=self._on_source_change,
                holding=self._proxies_holding,
                revision=lambda: self.registry.revision,
            )
            if settings.meshplane_api and settings.kubernetes
            else None
        )
        self._keys_warned = False  # see _warn_if_keys_unauthenticated
        self._device_trust: DeviceTrust | None = None  # the last given to the merge (see _contents)
        if self.kubernetes is not None and settings.kubernetes_secrets:
            self._warn_if_keys_unauthenticated(None)
        self.inventory = Inventory(kubernetes_secrets=settings.kubernetes_secrets)
        self.edge: EdgeRegistryServer | None = None
        try:
            if settings.edge is not None:
                from meshplane.registry_api.server import EdgeRegistryServer  # see TYPE_CHECKING above

                self.edge = EdgeRegistryServer(settings.edge, self._sites, on_change=self._on_source_change)
        except TokenFileError as error:
            raise TokensFileError(f"--registry-tokens: {error}") from None
        except OSError as error:
            if settings.edge is None or settings.edge.tokens is None or error.filename != str(settings.edge.tokens):
                raise
            raise TokensFileError(f"--registry-tokens {error.filename}: {error.strerror or error}") from None
        self.status_inputs = StatusInputs(
            sources=self._sources,
            publish_state=lambda: self.publisher.state,
            cache=self.cache,
            registry=self.registry,
            snapshot_for=self.publisher.snapshot_for,
            admin_token=settings.admin_token,
            # The server exists once started; until then no proxy is connected to ask about.
            subscriptions=lambda node_id: self._services.subscriptions_of(node_id) if self._services else {},
            mesh=lambda: self.inventory.mesh,
            devices=DeviceLookup(self.edge.registry.get, self.edge.registry.first) if self.edge is not None else None,
        )
        self.source_watch = SourceWatch(self._sources)
        self.grpc_stats = GrpcStats()
        self.metrics = ControlPlaneMetrics(
            self.status_inputs,
            debounce=lambda: {
                "pokes": self.debouncer.pokes,
                "runs": self.debouncer.runs,
                "merged": self.debouncer.merged,
            },
            source_errors=lambda: self.source_watch.error_counts,
            grpc_stats=self.grpc_stats,
            changes=self.publisher.changes,
        )
        self.xds_port = 0
        self.status_port = 0
        self._grpc: grpc.aio.Server | None = None
        self._services: XdsServices | None = None
        self._http: web.AppRunner | None = None
        # False until start() has published: a change a source reports before then (its first
        # load, the registry's stored devices) is in that first publication already, so poking
        # the debouncer for it would publish the same mesh again a debounce later.
        self._published_at_start = False

    def _on_source_change(self) -> None:
        if self._published_at_start:
            self.debouncer.poke()

    def _rebuild(self) -> None:
        """Merges the sources' contents and publishes the result, once every enabled source has synced."""
        if self._unpublished_since is None and (opened := self.debouncer.window_opened) is not None:
            self._unpublished_since = Instant(*opened)
        found = self._contents()
        if found is None:
            return
        contents, cause = found
        merged = self.inventory.merge(contents)
        if self.gateway_api is not None and contents.gateway_api is not None:
            self.gateway_api.gateway_writer.update(merged.gateway_status)
        self._warn_if_keys_unauthenticated(len(merged.mesh.certificates))
        # Only the groups whose role reads a changed part are translated again (a registration
        # changes `devices` only: the edge gateways').
        self.publisher.publish(merged.mesh, merged.changes, cause, self._unpublished_since)
        self._unpublished_since = None
        if self.meshplane_api is not None and contents.meshplane_api is not None:
            # After the publication: its generation is the one that carries what the merge accepted.
            self.meshplane_api.writer.update(merged.object_status, self.publisher.state.mesh_generation)
        self.metrics.observe_rebuild(self.publisher.state)

    def _gateway_envoys(self, gateway: str) -> list[str]:
        """The addresses of the connected gateway Envoys serving Gateway `gateway` (namespace/name)
        that took its listeners (ACKed the last listeners sent, and there are some): their listen
        address, or the address they connect from when they listen on every address."""
        # The status writer asks for every Gateway every second: one pass over the streams per
        # change of the stream registry (its revision), then lookups.
        revision, serving = self._gateway_envoys_seen
        if revision != self.registry.revision:
            serving = {}
            for track in self.registry.streams():
                group = track.group
                listeners = track.types.get(TypeUrl.LISTENER)
                if group.role is not ProxyRole.GATEWAY or listeners is None:
                    continue
                if listeners.state is SyncState.SYNCED and listeners.resource_count > 0:
                    address = group.listen_address or peer_address(track.peer)
                    if address:
                        serving.setdefault(group.gateway, []).append(address)
            self._gateway_envoys_seen = (self.registry.revision, serving)
        return list(serving.get(gateway, ()))

    def _proxies_holding(self, number: int) -> ProxiesHolding:
        """Of the connected proxies (by node id) that were sent configuration, how many hold mesh
        generation `number` or a later one: every type they were sent is ACKed, and each whose
        version the change log knows is that of a generation at or after the newest one up to
        `number` that changed their group. One pass over the streams; the status writer asks per
        generation waited on, after a merge and at most once a second while the registry moves."""
        changes = self.publisher.changes
        generations = changes.newest_first()
        required: dict[ProxyGroup, int] = {}
        nodes: dict[str, list[StreamTrack]] = {}
        for track in self.registry.streams():
            nodes.setdefault(track.node_id, []).append(track)
        held = total = 0
        for tracks in nodes.values():
            sent = [
                (track.group, url, entry) for track in tracks for url, entry in track.types.items() if entry.sent_seq
            ]
            if not sent:
                continue
            total += 1
            if any(entry.state is not SyncState.SYNCED for _, _, entry in sent):
                continue
            reached = []
            for group, url, entry in sent:
                if group not in required:
                    required[group] = next(
                        (g.number for g in generations if g.number <= number and group in g.groups), 0
                    )
                known = changes.generation_of(group, str(url), entry.acked_version)
                # A selection's version (EDS, RDS by name) is not a type's: its generation is the send's.
                reached.append((known if known is not None else entry.converged_generation) >= required[group])
            held += all(reached)
        return ProxiesHolding(held, total)

    def _contents(self) -> tuple[Contents, Cause] | None:
        """What every enabled source serves and what changed in it since the last merge, with the
        sources that reported changes (the publication's cause, for `/changes`); None while a
        source has not synced (its changes wait for the first merge after it has)."""
        policy, kubernetes, edge = self.policy, self.kubernetes, self.edge
        if (policy is not None and policy.mesh is None) or (kubernetes is not None and not kubernetes.synced):
            return None
        own = self.meshplane_api
        if own is not None and not own.synced and not own.crds_missing:
            return None  # its objects may be the mesh's routes: never publish without them
        changes = MeshChanges()
        sources: list[str] = []
        for name, source in (("policy files", policy), ("kubernetes", kubernetes)):
            if source is not None and not (taken := source.take_changes()).none:
                changes |= taken
                sources.append(name)
        gateway_api = self.gateway_api if self.gateway_api is not None and self.gateway_api.synced else None
        if gateway_api is not None and not gateway_api.take_changes().none:
            changes |= MeshChanges(gateways=True)
            sources.append("gateway api")
        if own is not None and own.synced and own.take_changes():
            changes |= MeshChanges(policy_objects=True)
            sources.append("meshplane api")
        device_changes = edge.registry.take_changes() if edge is not None else DeviceChanges()
        if not device_changes.none:
            sources.append("edge registry")
        authority = edge.registry.authority if edge is not None else None
        trusted = edge.registry.trusted_ca_pem() if edge is not None else None
        device_trust = DeviceTrust(authority.trust_domain, trusted) if authority is not None and trusted else None
        if device_trust != self._device_trust:  # the CA's files renewed (or first seen): gateways verify anew
            self._device_trust = device_trust
            changes |= MeshChanges(sites=True)
            sources.append("registry ca")
        contents = Contents(
            files=policy.mesh if policy is not None else None,
            kubernetes=kubernetes.content() if kubernetes is not None else None,
            changes=changes,
            registry=edge.registry if edge is not None else None,
            device_changes=device_changes,
            gateway_api=gateway_api.content() if gateway_api is not None else None,
            gateway_controller=self.settings.gateway_controller_name,
            ca_certificates=gateway_api.ca_certificates() if gateway_api is not None else {},
            meshplane_api=(own.content() if own.synced else MeshplaneObjects()) if own is not None else None,
            device_trust=device_trust,
        )
        devices = None if device_changes.everything else len(device_changes.ids)
        return contents, Cause(tuple(sources), devices)

    def _warn_if_keys_unauthenticated(self, certificates: int | None) -> None:
        """Says once that private keys exist while the xDS port authenticates no client: withheld
        from every proxy, or with the opt-in served to anyone who poses as one (xds/server/keys.py).
        `certificates`: how many the mesh holds (nothing to say at 0), or None for
        --kubernetes-secrets at start, before its Secrets are read."""
        settings = self.settings
        if self._keys_warned or certificates == 0 or settings.client_ca or settings.xds_tokens:
            return
        self._keys_warned = True
        what = (
            f"{certificates} certificates hold private keys"
            if certificates is not None
            else "--kubernetes-secrets serves Secrets' private keys"
        )
        unauthenticated = "the xDS port authenticates no client (no --client-ca, no --xds-tokens)"
        if settings.insecure_serve_keys_without_client_auth:
            message = (
                f"{what}, {unauthenticated}, and --insecure-serve-keys-without-client-auth is on: anyone who can"
                f" reach {settings.xds_address} can fetch the certificates and private keys over SDS by posing as a"
                " sidecar or an edge gateway"
            )
        else:
            message = (
                f"{what} and {unauthenticated}: they are withheld from every proxy, whose listeners and clusters"
                " using them never get their certificate (Envoy warms them until its initial fetch timeout, then"
                " their TLS connections fail); turn on --client-ca or --xds-tokens (or, accepting that anyone who can"
                f" reach {settings.xds_address} can fetch the keys, --insecure-serve-keys-without-client-auth)"
            )
        log.warning("%s", message, extra={"event": "keys_unauthenticated"})

    def _sites(self) -> dict[str, Site] | None:
        """The edge sites devices may register at. With meshplane's own API on, the last merged
        mesh's (the policy files' sites and the EdgeSite objects, files winning an id), so a site
        defined by an EdgeSite alone admits registrations; else the policy files' last good load.
        None before there is one (the registry then asks devices to retry)."""
        if self.meshplane_api is not None:
            merged = self.inventory.mesh
            return {site.id: site for site in merged.sites} if merged is not None else None
        if self.policy is None:
            return {}
        mesh = self.policy.mesh
        return {site.id: site for site in mesh.sites} if mesh is not None else None

    def _sources(self) -> list[SourceStatus]:
        sources = [source.status for source in (self.policy, self.kubernetes, self.edge) if source is not None]
        if self.gateway_api is not None:
            sources.append(self.gateway_api.status)
        if self.meshplane_api is not None:
            sources.append(self.meshplane_api.status)
        if self.kubernetes is not None and (self.policy is not None or self.inventory.problems):
            sources.append(self.inventory.status)  # merge clashes, routes left out, missing secrets
        return sources

    def _xds_tokens(self) -> XdsTokens | None:
        path = self.settings.xds_tokens
        if path is None:
            return None
        try:
            return XdsTokens.from_file(path)
        except OSError as error:
            raise TokensFileError(f"--xds-tokens {path}: {error.strerror or error}") from None
        except (ValueError, yaml.YAMLError) as error:
            raise TokensFileError(f"--xds-tokens: {error}") from None

    def _tls(self) -> ReloadingCredentials | None:
        settings = self.settings  # paired, as `start` checked (Settings.problems)
        if settings.tls_cert is None or settings.tls_key is None:
            return None
        return ReloadingCredentials(TlsFiles(settings.tls_cert, settings.tls_key, settings.client_ca))

    async def start(self) -> None:
        problems = self.settings.problems()
        if problems:
            raise ValueError("; ".join(problems))
        if self.policy is None and self.kubernetes is None and self.edge is None:
            raise ValueError("no source enabled: give policy files (config) or enable Kubernetes")
        tokens = self._xds_tokens()  # before anything is served: a bad file stops the start
        if self.policy is not None:
            await self.policy.load()  # refused: it said so, and source_watch logged each error
        if self.edge is not None:
            await self.edge.start()  # before the first rebuild, which serves its stored devices
        self._rebuild()  # the one publication at start (none while a source has not synced)
        self._published_at_start = True
        self.source_watch.check()
        self._services = InstrumentedXdsServices(
            self.grpc_stats,
            self.cache,
            self.registry,
            max_streams_per_client=self.settings.max_streams_per_client,
            tokens=tokens,
            serve_keys_without_client_auth=self.settings.insecure_serve_keys_without_client_auth,
            admin_token=self.settings.admin_token,  # CSDS on the xDS port answers operators only
            authenticates_clients=self.settings.client_ca is not None,
        )
        self._grpc, self.xds_port = create_server(
            self._services,
            self.settings.xds_address,
            self._tls(),
            max_streams_per_connection=self.settings.max_streams_per_connection,
        )
        await self._grpc.start()
        self._http = web.AppRunner(
            status_app(self.status_inputs, self.metrics, self.publisher.changes), access_log=None
        )
        await self._http.setup()
        host, port = split_address(self.settings.status_address)
        site = web.TCPSite(self._http, host, port)
        await site.start()
        self.status_port = self._http.addresses[0][1]
        log.info("xDS on port %d, status on port %d", self.xds_port, self.status_port)

    async def run(self, stop: asyncio.Event) -> None:
        """Serves until `stop` is set, then shuts down gracefully (streams get `shutdown_grace` seconds)."""
        try:
            if self._grpc is None:
                await self.start()
            async with asyncio.TaskGroup() as group:
                loops = [group.create_task(self.debouncer.run()), group.create_task(self.source_watch.run())]
                loops.append(group.create_task(self.publisher.run()))  # builds groups new streams want
                loops += [group.create_task(source.run()) for source in (self.policy, self.kubernetes) if source]
                if self.gateway_api is not None:
                    loops.append(group.create_task(self.gateway_api.run()))
                if self.meshplane_api is not None:
                    loops.append(group.create_task(self.meshplane_api.run()))
                if self.edge is not None:
                    loops.append(group.create_task(self.edge.run()))
                await stop.wait()
                for task in loops:
                    task.cancel()
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        if self._grpc is not None:
            # Refuse new streams, end open ones with OK (proxies reconnect elsewhere at once and keep
            # serving their config meanwhile), and give responses in flight the grace period.
            stop = asyncio.create_task(self._grpc.stop(self.settings.shutdown_grace))
            await asyncio.sleep(0)  # let stop() refuse new RPCs before the open streams end
            if self._services is not None:
                self._services.close_streams()
            await stop
            self._grpc = None
        if self._http is not None:
            await self._http.cleanup()
            self._http = None
        if self.edge is not None:
            await self.edge.shutdown(self.settings.shutdown_grace)


async def serve(settings: Settings) -> None:
    """Runs a control plane until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await ControlPlane(settings).run(stop)
