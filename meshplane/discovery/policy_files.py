"""The policy-file source: YAML files on disk → the last good `Mesh`, reloaded when they change.

Owns finding the files (one file, or every *.yaml / *.yml below a directory, Kubernetes ConfigMap
mounts included), reading them and the secret files they name, merging everything into one Mesh,
and refusing the whole new content when anything is wrong: the last good mesh keeps serving and
`status.errors` says why. Changes are noticed at once through file-system notifications (inotify,
via watchfiles), and by polling a cheap signature of the files every `poll_interval` as a fallback
for file systems that send no notifications (some network and FUSE mounts).

Gateway API documents of the files (docs/gateway-api.md, "Without Kubernetes") are gathered here
into one `GatewayApiObjects` (an object defined twice is an error; the GatewayClass `meshplane` is
implied) and resolved by `gateway_api/resolve.py` against the files' own services: their Gateways
are the mesh's `gateways`, their routes with a Service parent join its `routes`, and the status
each object gets is `gateway_status` (nothing writes it: `meshplane validate` shows it).

Parsing is `policy_schema`'s (pure); this module does the I/O. No module-level state: everything
lives on a `PolicyFileSource`; `run()` is a trivial loop around `load()`, which is what tests drive.

Performance contract: nothing here reads, parses or validates on the event loop (which also serves
xDS): a whole read is one call in a worker thread, and one source runs one at a time. A file is
parsed only when its bytes are new: each read keeps every file's parse keyed by its path and a
hash of its bytes, so an edit of one file of ten parses one file, and re-reading unchanged bytes
(the racy window below, a `touch`) parses nothing; when nothing read differs from the last read,
its merged and validated mesh is reused as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import watchfiles

from meshplane.discovery.gateway_api.conditions import GatewayApiStatus
from meshplane.discovery.gateway_api.fields import Parsed
from meshplane.discovery.gateway_api.gateway_classes import DEFAULT_CONTROLLER_NAME, GatewayClass
from meshplane.discovery.gateway_api.objects import (
    GATEWAY,
    GATEWAY_CLASS,
    GRPC_ROUTE,
    HTTP_ROUTE,
    REFERENCE_GRANT,
    GatewayApiObjects,
    Key,
)
from meshplane.discovery.gateway_api.resolve import joined_status, resolve, resolve_mesh
from meshplane.discovery.meshplane_api.resolve import attach_in_files
from meshplane.discovery.policy_schema import (
    CertificateFiles,
    FileRef,
    GatewayApiDocument,
    ParsedPolicy,
    SecretFiles,
    parse_policy,
)
from meshplane.memory import release_free_memory
from meshplane.model import (
    Mesh,
    ProblemKind,
    RouteTable,
    Service,
    Site,
    SourceStatus,
    Telemetry,
    TlsCertificate,
    TrustBundle,
)
from meshplane.model.changes import MeshChanges
from meshplane.model.device_policy import DevicePolicy
from meshplane.model.policy import PolicyAttachment

log = logging.getLogger(__name__)

SOURCE_NAME = "policy-files"
DEFAULT_MAX_FILE_SIZE = 1024 * 1024
POLICY_SUFFIXES = (".yaml", ".yml")
# Kustomize's own files (the names `kustomize build` looks for): a folder a cluster applies from
# holds one; it is no policy, and is skipped when a directory is read.
KUSTOMIZATION_FILES = frozenset({"kustomization.yaml", "kustomization.yml", "Kustomization"})

# A file changed within this long before its signature was taken may change again without its
# size or mtime showing it (coarse file-system clocks; git calls this "racily clean"), so it is
# re-read on the next poll instead of trusted. Re-reading is harmless: equal content changes nothing.
_RACY_WINDOW_NS = 2_000_000_000

# The problems another source may resolve (see `open_world`): a route naming a service the files
# lack, and a service's TLS naming a `namespace/name` secret, a Kubernetes Secret's
# (kubernetes_secrets.py). The inventory checks both in the merged mesh.
_OPEN_WORLD_KINDS = frozenset({ProblemKind.UNKNOWN_SERVICE, ProblemKind.UNKNOWN_NAMESPACED_SECRET})


@dataclass(frozen=True, slots=True)
class FileState:
    """What the signature holds of one file; all -1 when it cannot be stat'ed (e.g. missing)."""

    path: str
    inode: int
    size: int
    mtime_ns: int

    @staticmethod
    def of(path: Path) -> FileState:
        try:
            stat = path.stat()  # follows symlinks: a ConfigMap swap shows as a new inode
        except OSError:
            return FileState(str(path), -1, -1, -1)
        return FileState(str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)


def find_policy_files(root: Path) -> list[Path]:
    """`root` itself when it is a file; else every *.yaml / *.yml below it but Kustomize's own
    (`KUSTOMIZATION_FILES`), sorted.

    Names starting with "." are skipped at every level: a ConfigMap mount keeps its real files in
    `..2024_…` directories behind a `..data` symlink and shows them through top-level symlinks,
    which are followed. A file reached twice (through symlinks) is listed once, as first found; a
    directory reached twice is walked once, so symlink loops end. Raises FileNotFoundError when
    `root` does not exist, OSError when a directory cannot be listed.
    """
    if not root.exists():
        raise FileNotFoundError(root)
    if not root.is_dir():
        return [root]
    found: dict[str, Path] = {}
    walked: set[str] = set()

    def walk(directory: Path) -> None:
        real = os.path.realpath(directory)
        if real in walked:
            return
        walked.add(real)
        with os.scandir(directory) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            if entry.is_dir():
                walk(path)
            elif path.suffix in POLICY_SUFFIXES and entry.name not in KUSTOMIZATION_FILES:
                # Files, and broken symlinks too: reading one reports it rather than skipping it silently.
                found.setdefault(os.path.realpath(path), path)

    walk(root)
    return sorted(found.values())


# A policy file's parse is reused while the file at this path holds bytes of this hash.
_ParseKey = tuple[str, bytes]


@dataclass(frozen=True, slots=True)
class _Attempt:
    """One read of the policy: what it found, and the signature of what it read (taken before reading).

    `contents` is everything the result depends on (each policy file's path and bytes' hash, each
    secret file's text or read error): a read with equal contents has this attempt's mesh and errors.
    `parses` holds each policy file's parse by `_ParseKey`, for the next read to reuse.
    """

    mesh: Mesh
    errors: tuple[str, ...]
    files: tuple[Path, ...]
    secret_files: tuple[Path, ...]
    signature: tuple[FileState, ...]
    signed_at_ns: int
    contents: tuple[object, ...] = ()
    parses: Mapping[_ParseKey, ParsedPolicy] | None = None
    # How many files this read parsed (not found parsed in `previous`).
    parsed: int = 0
    # What `mesh` changes from the mesh served when it was read (everything: not known).
    changes: MeshChanges = dataclasses.field(default_factory=MeshChanges.everything)
    # The Gateway API documents read, and the status `resolve` gives them (their Gateways are `mesh.gateways`).
    gateway_api: GatewayApiObjects = dataclasses.field(default_factory=GatewayApiObjects)
    gateway_status: GatewayApiStatus = dataclasses.field(default_factory=GatewayApiStatus)
    # Documents ignored (objects of other API groups), each `file:line: reason`.
    warnings: tuple[str, ...] = ()

    def is_racy(self) -> bool:
        return any(state.mtime_ns >= self.signed_at_ns - _RACY_WINDOW_NS for state in self.signature)


class _ReadError(Exception):
    pass


def _read_bytes(path: Path, size: int, max_size: int) -> bytes:
    """The file's bytes; `size` is from its stat, so an oversize file is refused without reading it."""
    if size > max_size:
        raise _ReadError(f"{size} bytes is over the limit of {max_size} bytes")
    try:
        with path.open("rb") as file:
            data = file.read(max_size + 1)
    except OSError as error:
        raise _ReadError(f"cannot read: {error.strerror or error}") from error
    if len(data) > max_size:  # it grew since the stat
        raise _ReadError(f"file is over the limit of {max_size} bytes")
    return data


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _ReadError(f"not UTF-8 text (byte {error.start})") from error


def _read_text(path: Path, size: int, max_size: int) -> str:
    return _decode(_read_bytes(path, size, max_size))


@contextlib.contextmanager
def _collection_paused() -> Iterator[None]:
    """Python's cycle collector paused while a read builds its objects, then run once on the young ones.

    A parse allocates hundreds of thousands of objects (YAML nodes, then model objects), none in
    cycles; each allocation burst triggers collections that walk the whole growing heap again,
    which doubled the time to parse a big file. One young-generation pass at the end, in this
    worker thread, moves the survivors on, so the event loop never pays for walking them.

    The pause is process-wide: while one file parses, the event loop thread (xDS included) runs
    with the cycle collector off too. That is accepted because it is bounded: one file of at most
    `max_file_size` bytes, one source reading at a time. Reference counting still frees everything
    not in a cycle, and cyclic garbage made meanwhile is found by the pass at the end. Overlapping
    pauses (two sources) are safe: one entered while another holds the pause finds the collector
    off and leaves re-enabling it to that one, so it is never left off; a collector someone else
    turned off stays off.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
            gc.collect(1)


def _reuse_equal(parsed: ParsedPolicy, served: Mesh | None) -> ParsedPolicy:
    """`parsed` with each service and route equal to one of `served` replaced by that object.

    Finding what changed (`MeshChanges.between`, in the worker thread) then compares by identity
    first: an edit of one endpoint in a file of a thousand services leaves one object to compare
    field by field, not a thousand. (Identity is this module's shortcut only: what leaves the
    source is the change set.)
    """
    if served is None:
        return parsed
    services = {(service.namespace, service.name): service for service in served.services}
    routes = {route.name: route for route in served.routes}
    return dataclasses.replace(
        parsed,
        services=tuple(
            old if (old := services.get((service.namespace, service.name))) == service else service
            for service in parsed.services
        ),
        routes=tuple(twin if (twin := routes.get(route.name)) == route else route for route in parsed.routes),
    )


def _read_policy(
    files: Sequence[Path],
    max_file_size: int,
    open_world: bool = False,
    previous: _Attempt | None = None,
    served: Mesh | None = None,
    controller_name: str = DEFAULT_CONTROLLER_NAME,
) -> _Attempt:
    """Read, parse, merge and validate `files` and the secret files they name. With `open_world`,
    routes may name services the files do not define (another source may; the inventory checks).

    Blocking, and CPU-heavy for big files: run it in a worker thread, never on the event loop. A
    file whose path and bytes `previous` parsed is not parsed again; when nothing read differs
    from `previous`, its mesh and errors are returned as they are. A new mesh equal to `served`
    is returned as `served` itself, so whoever holds `served` sees "unchanged" by identity.
    """
    signed_at_ns = time.time_ns()
    states = [FileState.of(path) for path in files]
    known = previous.parses if previous is not None and previous.parses is not None else {}
    parses: dict[_ParseKey, ParsedPolicy] = {}
    parsed_files = 0
    contents: list[object] = []
    errors: list[str] = []
    warnings: list[str] = []
    services: list[Service] = []
    routes: list[RouteTable] = []
    sites: list[Site] = []
    telemetry: list[Telemetry] = []
    secrets: list[tuple[Path, SecretFiles]] = []
    documents: list[GatewayApiDocument] = []
    policies: list[PolicyAttachment] = []
    device_policies: list[tuple[Path, DevicePolicy]] = []
    for path, state in zip(files, states, strict=True):
        try:
            data = _read_bytes(path, state.size, max_file_size)
        except _ReadError as error:
            errors.append(f"{path}: {error}")
            contents.append((str(path), str(error)))
            continue
        key = (str(path), hashlib.sha256(data).digest())
        contents.append(key)
        parsed = known.get(key)
        if parsed is None:
            parsed_files += 1
            try:
                with _collection_paused():
                    parsed = _reuse_equal(parse_policy(_decode(data), str(path)), served)
            except _ReadError as error:
                errors.append(f"{path}: {error}")
                continue
        parses[key] = parsed
        errors += parsed.errors
        warnings += parsed.warnings
        services += parsed.services
        routes += parsed.routes
        sites += parsed.sites
        telemetry.append(parsed.telemetry)
        documents += parsed.gateway_api
        policies += parsed.policies
        device_policies += [(path.parent, policy) for policy in parsed.device_policies]
        secrets += [(path.parent, secret) for secret in parsed.secrets]

    # Secret files are relative to the directory of the policy file naming them, as found: beside a
    # ConfigMap's symlinked policy file, `certs/ca.pem` is that ConfigMap's own `certs/ca.pem`.
    secret_paths = list(dict.fromkeys(base / ref.path for base, secret in secrets for _, ref in _secret_files(secret)))
    # JWKS files of device policies are read, watched and relative as secret files are.
    secret_paths += [path for path in dict.fromkeys(_jwks_paths(device_policies)) if path not in secret_paths]
    secret_states = {path: FileState.of(path) for path in secret_paths}
    texts: dict[Path, str | None] = {}
    read_errors: dict[Path, str] = {}
    certificates: list[TlsCertificate] = []
    bundles: list[TrustBundle] = []
    unreadable: list[TlsCertificate | TrustBundle] = []
    for base, secret in secrets:
        pem: dict[str, str] = {}
        for field, ref in _secret_files(secret):
            path = base / ref.path
            if path not in texts:
                try:
                    texts[path] = _read_text(path, secret_states[path].size, max_file_size)
                except _ReadError as error:
                    texts[path] = None
                    read_errors[path] = str(error)
                    errors.append(f"{ref.origin}: secret {secret.name}: {field} {ref.path!r}: {error}")
            pem[field] = texts[path] or ""
        built: TlsCertificate | TrustBundle
        if isinstance(secret, CertificateFiles):
            built = TlsCertificate(secret.name, pem["certificate_file"], pem["key_file"], origin=secret.origin)
            certificates.append(built)
        else:
            built = TrustBundle(secret.name, pem["ca_file"], origin=secret.origin)
            bundles.append(built)
        if any(texts[base / ref.path] is None for _, ref in _secret_files(secret)):
            unreadable.append(built)

    read_policies = [
        _with_jwks_files(base, policy, texts, secret_states, max_file_size, read_errors, errors)
        for base, policy in device_policies
    ]
    contents += [(str(path), texts[path], read_errors.get(path)) for path in secret_paths]
    signature = (*states, *(secret_states[path] for path in secret_paths))
    if previous is not None and previous.contents == tuple(contents):
        # The same bytes as last time (a racy re-read, a touched file): the same mesh and errors.
        return _Attempt(
            mesh=previous.mesh,
            errors=previous.errors,
            files=tuple(files),
            secret_files=tuple(secret_paths),
            signature=signature,
            signed_at_ns=signed_at_ns,
            contents=previous.contents,
            parses=parses,
            parsed=parsed_files,
            changes=MeshChanges() if previous.mesh is served else MeshChanges.between(served, previous.mesh),
            gateway_api=previous.gateway_api,
            gateway_status=previous.gateway_status,
            warnings=previous.warnings,
        )
    mesh = Mesh.of(
        services,
        routes,
        certificates,
        bundles,
        sites=sites,
        telemetry=Telemetry.joined(telemetry),
        device_policies=read_policies,
    )
    if policies:
        # TrafficPolicy documents apply to the files' own services (`attach_in_files`); with
        # `open_world`, one naming another source's service is the merge's to attach.
        applied, refused, left = attach_in_files(mesh.services, policies, open_world)
        errors += refused
        mesh = dataclasses.replace(mesh, services=applied, policy_attachments=left)
    gateway_api = _gateway_api_objects(documents, controller_name, errors)
    gateway_status = GatewayApiStatus()
    if documents:
        by_ref = {service.ref: service for service in mesh.services}
        resolution = resolve(
            gateway_api, controller_name, by_ref, frozenset(certificate.name for certificate in mesh.certificates)
        )
        # Routes with a Service parent (GAMMA) join the files' routes: one attaching to a service a
        # files' route attaches to too is the mesh's conflict, an error like any other.
        origins = {(document.kind, document.key): document.origin for document in documents}
        mesh_routes = resolve_mesh(gateway_api, by_ref, origins)
        gateway_status = joined_status(resolution.status, mesh_routes.status)
        mesh = dataclasses.replace(
            mesh,
            gateways=resolution.gateways,
            routes=tuple(sorted((*mesh.routes, *mesh_routes.routes), key=lambda table: table.name)),
        )
    # By part, and by identity first: the services equal to served ones are those objects.
    changes = MeshChanges.between(served, mesh)
    if served is not None and changes.none:
        mesh = served
    # An unreadable secret file is reported already; the empty PEM it leaves need not be too.
    said = set(errors) | {str(problem) for secret in unreadable for problem in secret.problems()}
    for problem in mesh.problems():
        if open_world and problem.kind in _OPEN_WORLD_KINDS:
            continue
        if (message := str(problem)) not in said:
            errors.append(message)
            said.add(message)
    return _Attempt(
        mesh=mesh,
        errors=tuple(errors),
        files=tuple(files),
        secret_files=tuple(secret_paths),
        signature=signature,
        signed_at_ns=signed_at_ns,
        contents=tuple(contents),
        parses=parses,
        parsed=parsed_files,
        changes=changes,
        gateway_api=gateway_api,
        gateway_status=gateway_status,
        warnings=tuple(warnings),
    )


# The GatewayClass a policy directory's Gateways may name without declaring it.
IMPLICIT_GATEWAY_CLASS = "meshplane"


def _gateway_api_objects(
    documents: Sequence[GatewayApiDocument], controller_name: str, errors: list[str]
) -> GatewayApiObjects:
    """The Gateway API documents of every file as the content `resolve` reads; an object defined
    twice is an error (at the second definition). The GatewayClass `meshplane` is implied, owned by
    `controller_name`, unless the files declare a class of that name. No Namespace has labels: a
    listener's `allowedRoutes` selector selects none."""
    by_kind: dict[str, dict[Key, Parsed[Any]]] = {
        kind: {} for kind in (GATEWAY_CLASS, GATEWAY, HTTP_ROUTE, GRPC_ROUTE, REFERENCE_GRANT)
    }
    origins: dict[tuple[str, Key], str] = {}
    for document in documents:
        if (first := origins.get((document.kind, document.key))) is not None:
            namespace, name = document.key
            shown = f"{namespace}/{name}" if namespace else name
            errors.append(f"{document.origin}: {document.kind} {shown} is defined already at {first}")
            continue
        origins[(document.kind, document.key)] = document.origin
        by_kind[document.kind][document.key] = document.parsed
    classes = by_kind[GATEWAY_CLASS]
    if documents and ("", IMPLICIT_GATEWAY_CLASS) not in classes:
        classes[("", IMPLICIT_GATEWAY_CLASS)] = Parsed(GatewayClass(IMPLICIT_GATEWAY_CLASS, 1, controller_name))
    frozen = {kind: MappingProxyType(found) for kind, found in by_kind.items()}
    return GatewayApiObjects(
        gateway_classes=frozen[GATEWAY_CLASS],
        gateways=frozen[GATEWAY],
        http_routes=frozen[HTTP_ROUTE],
        grpc_routes=frozen[GRPC_ROUTE],
        reference_grants=frozen[REFERENCE_GRANT],
        namespace_labels=MappingProxyType({}),
    )


def _jwks_paths(policies: list[tuple[Path, DevicePolicy]]) -> list[Path]:
    return [base / p.jwks_file for base, policy in policies for p in policy.jwt_providers if p.jwks_file]


def _with_jwks_files(
    base: Path,
    policy: DevicePolicy,
    texts: dict[Path, str | None],
    states: dict[Path, FileState],
    max_file_size: int,
    read_errors: dict[Path, str],
    errors: list[str],
) -> DevicePolicy:
    """`policy` with each `jwks_file` read into its provider's `jwks` (an unreadable one reported
    at the policy's line, and left empty: the model then refuses the provider)."""
    if not any(provider.jwks_file for provider in policy.jwt_providers):
        return policy
    providers = []
    for provider in policy.jwt_providers:
        if provider.jwks_file:
            path = base / provider.jwks_file
            if path not in texts:
                try:
                    texts[path] = _read_text(path, states[path].size, max_file_size)
                except _ReadError as error:
                    texts[path] = None
                    read_errors[path] = str(error)
            if texts[path] is None:
                errors.append(
                    f"{policy.origin}: device policy {policy.name}: jwt provider {provider.name}: "
                    f"jwks_file {provider.jwks_file!r}: {read_errors[path]}"
                )
            provider = dataclasses.replace(provider, jwks=texts[path] or "")
        providers.append(provider)
    return dataclasses.replace(policy, jwt_providers=tuple(providers))


def _secret_files(secret: SecretFiles) -> tuple[tuple[str, FileRef], ...]:
    """The files a secret is read from, by the key that names them."""
    if isinstance(secret, CertificateFiles):
        return (("certificate_file", secret.certificate_file), ("key_file", secret.key_file))
    return (("ca_file", secret.ca_file),)


class PolicyFileSource:
    """Serves the mesh that policy files at `path` (a file or a directory) describe.

    Contract: `mesh` is the last good content (None before the first); bad content never
    replaces it. `take_changes()` says what changed in it since the previous call (everything at
    the first), as a change set: the merge passes it on, and nobody downstream compares meshes
    to find it. `load()` reads only when the files' signature (path, inode, size, mtime of every
    policy file and every secret file they name) changed, calls `on_change()` exactly when the
    last good mesh changed, and returns whether it did. `on_change` is called synchronously from
    `load()`; keep it cheap (poke a debouncer); its exceptions propagate. A definition that
    moves to another line counts as a change: origins are part of the model (the snapshot
    downstream is unchanged). With `open_world` (another source, e.g. Kubernetes, also defines
    services), a route naming a service the files do not define is not an error here; the
    inventory checks the merged mesh.

    Logging: the errors themselves are not logged here. They are `status.errors`, and whoever
    reports source errors (the control plane's `SourceWatch`: one line per distinct error, with its
    fields) logs each once; `on_errors_changed()` is called synchronously whenever `status.errors`
    changes, so that reporter can log a refusal at once, even one fixed before its next look. This
    module logs one summary line when a refusal's set of errors differs from the current one (how
    many, and whether the last good content keeps serving). So a file that stays broken across
    reloads with the same errors is not logged again; an error that goes away and comes back is.
    """

    def __init__(
        self,
        path: Path,
        *,
        poll_interval: float = 1.0,
        on_change: Callable[[], None] = lambda: None,
        on_errors_changed: Callable[[], None] = lambda: None,
        max_file_size: int = DEFAULT_MAX_FILE_SIZE,
        open_world: bool = False,
        gateway_controller: str = DEFAULT_CONTROLLER_NAME,
    ) -> None:
        self._path = path
        self._gateway_controller = gateway_controller
        self._open_world = open_world
        self._poll_interval = poll_interval
        self._on_change = on_change
        self._on_errors_changed = on_errors_changed
        self._max_file_size = max_file_size
        self._mesh: Mesh | None = None
        self._gateway_status = GatewayApiStatus()
        self._changes = MeshChanges.everything()  # since the last `take_changes()`
        self._served_files = 0
        self._attempt: _Attempt | None = None
        self._errors: tuple[str, ...] = ()
        self._last_success: float | None = None
        self._last_attempt: float | None = None
        # One read at a time: each builds on the last one's parses and decides against `_mesh`.
        self._loading = asyncio.Lock()

    @property
    def mesh(self) -> Mesh | None:
        return self._mesh

    @property
    def gateway_status(self) -> GatewayApiStatus:
        """The status the Gateway API documents of the last good content get (their Gateways are
        `mesh.gateways`); empty before the first good content."""
        return self._gateway_status

    def take_changes(self) -> MeshChanges:
        """What changed in `mesh` since the previous call (the first call: everything), and
        forgets it: meant for one reader, the merge."""
        changes, self._changes = self._changes, MeshChanges()
        return changes

    @property
    def status(self) -> SourceStatus:
        mesh = self._mesh or Mesh()
        return SourceStatus(
            name=SOURCE_NAME,
            synced=self._mesh is not None,
            last_success=self._last_success,
            last_attempt=self._last_attempt,
            errors=self._errors,
            counts={
                "services": len(mesh.services),
                "routes": len(mesh.routes),
                "secrets": len(mesh.certificates) + len(mesh.trust_bundles),
                "files": self._served_files,
                # Only for files that hold Gateway API documents: others' counts stay as they were.
                **({"gateways": len(mesh.gateways)} if mesh.gateways else {}),
            },
        )

    async def load(self) -> bool:
        """Check the files once; re-read, validate and maybe adopt them. True when the mesh changed.

        Concurrent calls run one after the other. The event loop only waits: listing, stat'ing,
        reading, parsing and validating happen in a worker thread."""
        async with self._loading:
            return await self._load()

    async def _load(self) -> bool:
        self._last_attempt = time.time()
        try:
            files = await asyncio.to_thread(find_policy_files, self._path)
        except FileNotFoundError:
            return self._refuse((f"{self._path}: does not exist",))
        except OSError as error:
            return self._refuse((f"{self._path}: cannot list: {error.strerror or error}",))
        previous = self._attempt
        if previous is not None and not previous.is_racy() and previous.files == tuple(files):
            watched = [*files, *previous.secret_files]
            signature = await asyncio.to_thread(lambda: tuple(FileState.of(path) for path in watched))
            if signature == previous.signature:
                return self._refuse(previous.errors) if previous.errors else self._adopt(previous)
        attempt = await asyncio.to_thread(
            _read_policy,
            files,
            self._max_file_size,
            self._open_world,
            previous,
            self._mesh,
            self._gateway_controller,
        )
        if attempt.parsed:
            # The parse's garbage (YAML nodes, the previous model objects) sits freed in the worker
            # thread's heap arena; give it back, off the event loop.
            await asyncio.to_thread(release_free_memory)
        if attempt.warnings != (self._attempt.warnings if self._attempt is not None else ()):
            for warning in attempt.warnings:
                log.warning("policy files: %s", warning)
        self._attempt = attempt
        return self._refuse(attempt.errors) if attempt.errors else self._adopt(attempt)

    async def run(self) -> None:
        """Load, then load again on every change notification, and at least every `poll_interval`
        seconds; returns only by cancellation."""
        changed = asyncio.Event()
        async with asyncio.TaskGroup() as group:
            group.create_task(self._watch(changed))
            while True:
                await self.load()
                # asyncio.timeout, not wait_for: Python 3.11's wait_for loses a cancellation that arrives as the
                # wait completes, and a loop meant to end by cancellation would run on.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._poll_interval):
                        await changed.wait()
                changed.clear()

    async def _watch(self, changed: asyncio.Event) -> None:
        """Sets `changed` on every file-system event below the watched directory.

        Watches the directory (a file's parent), not the files: editors and GitOps syncs replace
        files by rename, and ConfigMap mounts swap a `..data` symlink, which a watch on the old
        file would miss. If the directory vanishes, waits for it to come back.

        The watch runs watchfiles' blocking `watch()` in a thread this coroutine owns and stops
        through `stop` when cancelled; cancellation never waits for the thread (watchfiles'
        `awatch` would, in a worker thread that cannot be cancelled).
        """
        loop = asyncio.get_running_loop()
        root = self._path if self._path.is_dir() else self._path.parent
        while True:
            if root.is_dir():
                stop = threading.Event()
                ended = asyncio.Event()
                thread = threading.Thread(
                    target=_notify, args=(root, stop, loop, changed, ended), name=f"watch {root}", daemon=True
                )
                thread.start()
                try:
                    await ended.wait()
                finally:
                    stop.set()
                log.info("not watching %s any more; polling every %.1f s", root, self._poll_interval)
            await asyncio.sleep(self._poll_interval)

    def _refuse(self, errors: tuple[str, ...]) -> bool:
        if errors != self._errors:
            self._errors = errors
            log.warning(
                "policy files at %s refused: %d error(s); %s",
                self._path,
                len(errors),
                "still serving the last good content" if self._mesh is not None else "nothing to serve yet",
            )
            self._on_errors_changed()
        return False

    def _adopt(self, attempt: _Attempt) -> bool:
        cleared = bool(self._errors)
        self._errors = ()
        self._last_success = time.time()
        self._served_files = len(attempt.files)
        # By identity: `_read_policy` hands back the served mesh itself when the new one equals it,
        # so a big mesh is never compared here, on the event loop.
        changed = attempt.mesh is not self._mesh
        self._gateway_status = attempt.gateway_status
        if changed:
            self._mesh = attempt.mesh
            self._changes |= attempt.changes
            mesh = attempt.mesh
            log.info(
                "policy files at %s loaded: %d services, %d routes, %d secrets from %d files",
                self._path,
                len(mesh.services),
                len(mesh.routes),
                len(mesh.certificates) + len(mesh.trust_bundles),
                len(attempt.files),
            )
        if cleared:
            self._on_errors_changed()
        if changed:
            self._on_change()
        return changed


def _notify(
    root: Path, stop: threading.Event, loop: asyncio.AbstractEventLoop, changed: asyncio.Event, ended: asyncio.Event
) -> None:
    """The watch thread: sets `changed` (on the loop) for every batch of events until `stop` is set.
    Logs once that the watch is live (from its first batch or timeout: the watch is set up by then)."""
    live = False
    try:
        # Batches of events are collected for 20 ms; the publisher's debounce does the rest. The
        # 500 ms timeout only bounds how long the thread takes to notice `stop`.
        for events in watchfiles.watch(
            root, debounce=20, step=10, rust_timeout=500, yield_on_timeout=True, stop_event=stop, recursive=True
        ):
            if not live:
                live = True
                log.info("watching %s for changes", root)
            if events:
                loop.call_soon_threadsafe(changed.set)
    except Exception as error:  # e.g. inotify limits reached: polling carries on alone
        log.warning("cannot watch %s for changes (%s)", root, error)
    finally:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            loop.call_soon_threadsafe(ended.set)


async def validate_policy(
    path: Path, *, max_file_size: int = DEFAULT_MAX_FILE_SIZE, open_world: bool = False
) -> list[str]:
    """Every reason the policy at `path` would be refused; [] when it is good. Logs nothing."""
    try:
        files = await asyncio.to_thread(find_policy_files, path)
    except FileNotFoundError:
        return [f"{path}: does not exist"]
    except OSError as error:
        return [f"{path}: cannot list: {error.strerror or error}"]
    return list((await asyncio.to_thread(_read_policy, files, max_file_size, open_world)).errors)


@dataclass(frozen=True, slots=True)
class PolicyCheck:
    """What validating a policy found: every reason it would be refused ([] when good), and, when
    it holds Gateway API documents, those objects and the status each would get."""

    errors: tuple[str, ...]
    gateway_api: GatewayApiObjects
    gateway_status: GatewayApiStatus
    mesh: Mesh
    warnings: tuple[str, ...] = ()  # documents ignored, each `file:line: reason`


async def check_policy(
    path: Path,
    *,
    max_file_size: int = DEFAULT_MAX_FILE_SIZE,
    open_world: bool = False,
    gateway_controller: str = DEFAULT_CONTROLLER_NAME,
) -> PolicyCheck:
    """As `validate_policy`, with the Gateway API objects read, their status, and the mesh read
    (served only when there are no errors). Logs nothing."""
    try:
        files = await asyncio.to_thread(find_policy_files, path)
    except FileNotFoundError:
        return PolicyCheck((f"{path}: does not exist",), GatewayApiObjects(), GatewayApiStatus(), Mesh())
    except OSError as error:
        reason = f"{path}: cannot list: {error.strerror or error}"
        return PolicyCheck((reason,), GatewayApiObjects(), GatewayApiStatus(), Mesh())
    attempt = await asyncio.to_thread(_read_policy, files, max_file_size, open_world, None, None, gateway_controller)
    return PolicyCheck(attempt.errors, attempt.gateway_api, attempt.gateway_status, attempt.mesh, attempt.warnings)
