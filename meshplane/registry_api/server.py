"""The edge registry as one running part of a control plane: store, registry, gRPC and JSON servers.

The composition root (`meshplane.app`) creates an `EdgeRegistryServer` when `--registry-db` is
given, hands it the sites (from the policy files: registrations outside them are refused) and a
change callback, starts it, and runs `run()` in its task group. Its `registry` is a source: the
merge (`meshplane.discovery.inventory`) reads its live devices and their changes, and decides which
devices the sites admit into config.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
from aiohttp import web

from meshplane.addresses import split_address
from meshplane.discovery.registry.auth import TokenAuthenticator
from meshplane.discovery.registry.identity import DEFAULT_TRUST_DOMAIN, CertificateAuthority, CertificateAuthorityError
from meshplane.discovery.registry.registry import EdgeRegistry, LeaseSettings
from meshplane.discovery.registry.store import MemoryStore, RegistrationStore, SqliteStore, StoreError
from meshplane.grpc_limits import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CALLS_PER_CLIENT,
    DEFAULT_REQUEST_TIMEOUT,
    CallLimits,
    ConnectionLimits,
)
from meshplane.model import Site, SourceStatus
from meshplane.registry_api.http import DEFAULT_READ_TIMEOUT, registry_http_app, serve_limited
from meshplane.registry_api.service import (
    DEFAULT_REGISTER_BURST,
    RateLimiter,
    RegistryCalls,
    authenticator,
    create_registry_server,
)
from meshplane.tls import ReloadingCredentials, TlsFiles, TlsFilesError

log = logging.getLogger(__name__)

# Open JSON-port connections per client address (`--registry-http-max-connections-per-client`). A
# site's devices may all sit behind one NAT address; 256 covers a large gym, while a single
# address can no longer exhaust the process's file descriptors.
DEFAULT_MAX_CONNECTIONS_PER_CLIENT = 256


@dataclass(frozen=True, slots=True)
class EdgeSettings:
    """`db`: the SQLite file (`:memory:` keeps nothing across restarts); or `store`, a PostgreSQL
    database several replicas share (`meshplane.discovery.registry.store_postgres`). `tokens`: the hashed tokens
    file. With `tls_certificate` and `tls_key` the gRPC registry serves TLS; with `client_ca` too,
    devices may authenticate by client certificate instead of a token. With `ca_certificate` and
    `ca_key` (both or neither), a device registering with a CSR gets a certificate naming its SPIFFE
    id in `trust_domain`.

    On the JSON port, `http_read_timeout` bounds the seconds a client has to send a request's
    headers (from connecting, or from the previous answer on a kept-alive connection: an idle
    connection is closed after it too) and then, separately, its body; `http_max_connections_per_client`
    bounds the connections one client address holds open at once (0: no limit).

    On the gRPC port, `grpc_read_timeout` bounds the seconds a client has to finish its
    connection's handshake (TLS, HTTP/2 preface) and, on each call taking one request, to send that
    request once the call's headers are in; `grpc_idle_timeout` closes a connection that carried no
    call for that long; `grpc_max_calls_per_client` bounds the calls one client address holds open
    at once (0: no limit). See `meshplane.grpc_limits` for the keepalive and per-connection bounds."""

    db: str
    # Instead of `db`: a PostgreSQL URL shared by replicas (no password in it: `store_password_file`
    # or libpq's PGPASSWORD), with its pool size and the period of full re-reads.
    store: str = ""
    store_password_file: Path | None = None
    store_pool: int = 4
    store_resync: float = 30.0
    address: str = "0.0.0.0:18001"
    http_address: str = "0.0.0.0:18002"
    tokens: Path | None = None
    tls_certificate: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None
    # With both, the registry signs the CSRs devices send (meshplane.discovery.registry.identity).
    ca_certificate: Path | None = None
    ca_key: Path | None = None
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    # Off: a class token's CSR is refused; only a device token or certificate gets one signed.
    csr_from_class_tokens: bool = True
    leases: LeaseSettings = dataclasses.field(default_factory=LeaseSettings)
    # Register calls per principal (token bucket; rate 0: unlimited). Heartbeats are not limited.
    # `meshplane serve` passes DEFAULT_REGISTER_RATE/BURST (100/s, bursts of 1,000); built in code (benchmarks,
    # tests) the registry is unlimited unless asked, so throughput figures measure the registry.
    register_rate: float = 0.0
    register_burst: int = DEFAULT_REGISTER_BURST
    http_read_timeout: float = DEFAULT_READ_TIMEOUT
    http_max_connections_per_client: int = DEFAULT_MAX_CONNECTIONS_PER_CLIENT
    grpc_read_timeout: float = DEFAULT_REQUEST_TIMEOUT
    grpc_idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    grpc_max_calls_per_client: int = DEFAULT_MAX_CALLS_PER_CLIENT


class EdgeRegistryServer:
    def __init__(
        self, settings: EdgeSettings, sites: Callable[[], Mapping[str, Site] | None], on_change: Callable[[], None]
    ) -> None:
        self.settings = settings
        authority = _authority(settings)
        store = _store(settings)
        self.registry = EdgeRegistry(
            store,
            sites,
            leases=settings.leases,
            on_change=on_change,
            authority=authority,
            csr_from_class_tokens=settings.csr_from_class_tokens,
        )
        self.tokens = TokenAuthenticator.from_file(settings.tokens) if settings.tokens else TokenAuthenticator()
        # Shared by the gRPC and JSON APIs: one bucket per principal, whichever API it calls.
        self.register_limit = RateLimiter(settings.register_rate, settings.register_burst)
        self.port = 0
        self.http_port = 0
        self._grpc: grpc.aio.Server | None = None
        self.tls: ReloadingCredentials | None = None  # with TLS on: its reload counts
        self._http: web.AppRunner | None = None
        self._http_listener: asyncio.Server | None = None

    @property
    def status(self) -> SourceStatus:
        return self.registry.status

    async def start(self) -> None:
        await self.registry.load()
        settings = self.settings
        credentials = None
        certificates = False
        if settings.tls_certificate is not None and settings.tls_key is not None:
            # Re-read when renewed, as on the xDS port: no restart, a half-written renewal refused.
            files = TlsFiles(settings.tls_certificate, settings.tls_key, settings.client_ca)
            self.tls = ReloadingCredentials(files, port="the registry port")
            credentials = self.tls.server_credentials()
            certificates = self.tls.requires_client_certificates
        authenticate = authenticator(self.tokens, certificates=certificates)
        calls = RegistryCalls(self.registry, self.register_limit)
        self._grpc, self.port = create_registry_server(
            calls,
            authenticate,
            settings.address,
            credentials=credentials,
            connections=ConnectionLimits(
                handshake_timeout=settings.grpc_read_timeout, idle_timeout=settings.grpc_idle_timeout
            ),
            call_limits=CallLimits(settings.grpc_max_calls_per_client, settings.grpc_read_timeout),
        )
        await self._grpc.start()
        timeout = settings.http_read_timeout
        self._http = web.AppRunner(
            registry_http_app(calls, authenticate, read_timeout=timeout),
            access_log=None,
            # aiohttp closes a connection that has not sent a whole request's headers within its
            # keep-alive timeout (counted from connecting or from the last answer): the header bound.
            keepalive_timeout=timeout,
            # After an answer to a request whose body was not read (refused early), unread bytes are
            # drained this long so the client sees the answer rather than a reset; then it is closed.
            lingering_time=min(1.0, timeout),
        )
        await self._http.setup()
        host, port = split_address(settings.http_address)
        self._http_listener = await serve_limited(self._http, host, port, settings.http_max_connections_per_client)
        self.http_port = self._http_listener.sockets[0].getsockname()[1]
        log.info(
            "edge registry: gRPC on port %d, JSON on port %d, %d devices, %d tokens",
            self.port,
            self.http_port,
            len(self.registry),
            len(self.tokens),
        )
        if self.registry.authority is not None:
            log.info(
                "edge registry: signing device CSRs for trust domain %s with the CA in %s",
                self.registry.authority.trust_domain,
                settings.ca_certificate,
            )

    async def run(self) -> None:
        await self.registry.run()

    async def shutdown(self, grace: float) -> None:
        self.registry.end_watches()  # else open Watch streams hold both servers' shutdown
        if self._grpc is not None:
            await self._grpc.stop(grace)
            self._grpc = None
        if self._http_listener is not None:
            self._http_listener.close()  # accept no more; the runner's cleanup closes the open ones
        if self._http is not None:
            await self._http.cleanup()
            self._http = None
        if self._http_listener is not None:
            await self._http_listener.wait_closed()
            self._http_listener = None
        await self.registry.close()


def _store(settings: EdgeSettings) -> RegistrationStore:
    """The store `settings` name. Raises StoreError (which `meshplane serve` reports, exit status 1)
    when the password file cannot be read or the URL cannot be used."""
    if not settings.store:
        return MemoryStore() if settings.db == ":memory:" else SqliteStore(Path(settings.db))
    from meshplane.discovery.registry.store_postgres import PostgresSettings, PostgresStore  # only when used

    password = None
    if settings.store_password_file is not None:
        try:
            password = settings.store_password_file.read_text().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as error:
            raise StoreError(f"--registry-store-password-file {settings.store_password_file}: {error}") from None
        if not password or "\n" in password:
            raise StoreError(
                f"--registry-store-password-file {settings.store_password_file}: must hold the password on one line"
            )
    return PostgresStore(
        PostgresSettings(
            settings.store,
            password=password,
            pool_size=settings.store_pool,
            resync_interval=settings.store_resync,
            sweep_interval=settings.leases.check_interval,
        )
    )


def _authority(settings: EdgeSettings) -> CertificateAuthority | None:
    """The CA of `settings`, None without one. Raises TlsFilesError (which `meshplane serve` reports
    as a bad TLS file, exit status 1) when its files cannot serve, or only one of them is given."""
    if settings.ca_certificate is None and settings.ca_key is None:
        return None
    if settings.ca_certificate is None or settings.ca_key is None:
        raise TlsFilesError("--registry-ca-cert and --registry-ca-key go together: give both or neither")
    try:
        return CertificateAuthority(settings.ca_certificate, settings.ca_key, settings.trust_domain)
    except CertificateAuthorityError as error:
        raise TlsFilesError(f"the registry's CA (--registry-ca-cert, --registry-ca-key): {error}") from None
