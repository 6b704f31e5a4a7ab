"""The edge registry's command-line flags (`meshplane serve --registry-…`), each also settable as
`MESHPLANE_<FLAG>`. Kept apart from cli.py so the CLI stays one screen; imports nothing heavy."""

from __future__ import annotations

import argparse
import re
import sys
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING

from meshplane.flags import env_flag, env_switch

# Repeated from meshplane.registry_api.service (which imports grpc: too heavy for the CLI's start);
# a test keeps them equal.
DEFAULT_REGISTER_RATE = 100.0
DEFAULT_REGISTER_BURST = 1_000
# Repeated from meshplane.registry_api.http, meshplane.registry_api.server and meshplane.grpc_limits likewise;
# tests/test_edge_http_limits.py and tests/test_edge_grpc_limits.py keep them equal.
DEFAULT_HTTP_READ_TIMEOUT = 10.0
DEFAULT_HTTP_MAX_CONNECTIONS_PER_CLIENT = 256
DEFAULT_GRPC_READ_TIMEOUT = 10.0
DEFAULT_GRPC_IDLE_TIMEOUT = 300.0
DEFAULT_GRPC_MAX_CALLS_PER_CLIENT = 1_000
# Repeated from meshplane.discovery.registry.identity (which imports cryptography); tests/test_edge_identity.py
# keeps them equal.
DEFAULT_TRUST_DOMAIN = "meshplane.local"
_TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]{1,255}$")

if TYPE_CHECKING:
    from meshplane.registry_api.server import EdgeSettings


def positive_seconds(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: must be a positive number of seconds")
    return value


def connection_count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be 0 (unlimited) or more")
    return value


def trust_domain(text: str) -> str:
    if not _TRUST_DOMAIN.match(text):
        raise argparse.ArgumentTypeError(
            f"{text[:64]!r}: a SPIFFE trust domain is lowercase letters, digits, '.', '-', '_' (at most 255)"
        )
    return text


# Bounds of --registry-store-pool, repeated from meshplane.discovery.registry.store_postgres (which
# imports psycopg); tests/test_registry_postgres.py keeps them equal.
MIN_STORE_POOL = 2
MAX_STORE_POOL = 64


def store_url(text: str) -> str:
    """A `--registry-store` URL: postgresql:// (or postgres://), never with a password in it."""
    parsed = urllib.parse.urlsplit(text)
    if parsed.scheme not in ("postgresql", "postgres") or not parsed.path.strip("/"):
        raise argparse.ArgumentTypeError(
            f"{text[:80]!r}: expected postgresql://[user@]host[:port]/database[?sslmode=…&sslrootcert=…]"
        )
    query = urllib.parse.parse_qs(parsed.query)
    if parsed.password is not None or "password" in query:
        raise argparse.ArgumentTypeError(
            "the URL holds a password: give it in --registry-store-password-file or the PGPASSWORD"
            " environment variable instead (a command line is visible to every process on the machine)"
        )
    return text


def store_pool(text: str) -> int:
    value = int(text)
    if not MIN_STORE_POOL <= value <= MAX_STORE_POOL:
        raise argparse.ArgumentTypeError(f"{text!r}: must be from {MIN_STORE_POOL} to {MAX_STORE_POOL} connections")
    return value


def add_edge_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "edge registry (docs/edge.md); on when --registry-db or --registry-store is given"
    )
    env_flag(group, "--registry-db", help="SQLite file holding registrations (`:memory:`: keep none across restarts)")
    env_flag(
        group,
        "--registry-store",
        type=store_url,
        help="instead of --registry-db: a PostgreSQL database shared by every replica"
        " (postgresql://user@host:port/db?sslmode=verify-full&sslrootcert=…; no password in it)",
    )
    env_flag(
        group,
        "--registry-store-password-file",
        type=Path,
        help="file holding the --registry-store password (else libpq's PGPASSWORD or ~/.pgpass)",
    )
    env_flag(
        group,
        "--registry-store-pool",
        type=store_pool,
        default=4,
        help=f"--registry-store: most connections for writes and reads ({MIN_STORE_POOL}-{MAX_STORE_POOL};"
        " one more listens for other replicas' changes)",
    )
    env_flag(
        group,
        "--registry-store-resync",
        type=positive_seconds,
        default=30.0,
        help="--registry-store: seconds between full re-reads of the database (bounds how long a missed"
        " change notification can go unseen)",
    )
    env_flag(group, "--registry-address", default="0.0.0.0:18001", help="gRPC registry listen address")
    env_flag(
        group, "--registry-http-address", default="0.0.0.0:18002", help="the registry's JSON mirror listen address"
    )
    env_flag(
        group,
        "--registry-tokens",
        type=Path,
        help="YAML file of SHA-256 hashed bearer tokens per device, class or operator",
    )
    env_flag(group, "--registry-tls-cert", type=Path, help="registry TLS certificate (PEM)")
    env_flag(group, "--registry-tls-key", type=Path, help="its private key (PEM)")
    env_flag(
        group,
        "--registry-client-ca",
        type=Path,
        help="with TLS: CA of device client certificates (an alternative to tokens)",
    )
    env_flag(
        group,
        "--registry-ca-cert",
        type=Path,
        help="CA certificate (PEM) signing the CSRs devices send with Register (with --registry-ca-key)",
    )
    env_flag(group, "--registry-ca-key", type=Path, help="that CA's private key (PEM file, unencrypted)")
    env_flag(
        group,
        "--registry-trust-domain",
        type=trust_domain,
        default=DEFAULT_TRUST_DOMAIN,
        help="SPIFFE trust domain of issued device certificates (spiffe://<domain>/site/<site>/device/<id>)",
    )
    env_switch(
        group,
        "--registry-csr-device-credentials-only",
        help="sign a CSR only for the device's own token or its current certificate, never for a class token"
        " (which could otherwise get the certificate of any device of its class that is not live)",
    )
    env_flag(group, "--lease-ttl", type=float, default=30.0, help="lease seconds when a device asks for none")
    env_flag(group, "--lease-min-ttl", type=float, default=5.0, help="shortest lease granted, seconds")
    env_flag(group, "--lease-max-ttl", type=float, default=3600.0, help="longest lease granted, seconds")
    env_flag(group, "--lease-check-interval", type=float, default=1.0, help="seconds between sweeps for expired leases")
    env_flag(
        group,
        "--registry-rate",
        type=float,
        default=DEFAULT_REGISTER_RATE,
        help="Register calls a second per principal (token bucket; 0: unlimited; heartbeats are not limited)",
    )
    env_flag(
        group,
        "--registry-burst",
        type=int,
        default=DEFAULT_REGISTER_BURST,
        help="Register calls a principal may make at once before --registry-rate applies",
    )
    env_flag(
        group,
        "--registry-http-read-timeout",
        type=positive_seconds,
        default=DEFAULT_HTTP_READ_TIMEOUT,
        help="JSON port: seconds a client has to send a request's headers, then its body (and an idle"
        " kept-alive connection lives); slower connections are closed",
    )
    env_flag(
        group,
        "--registry-http-max-connections-per-client",
        type=connection_count,
        default=DEFAULT_HTTP_MAX_CONNECTIONS_PER_CLIENT,
        help="JSON port: connections one client address may hold open at once; more are answered 429"
        " and closed (0: unlimited)",
    )
    env_flag(
        group,
        "--registry-grpc-read-timeout",
        type=positive_seconds,
        default=DEFAULT_GRPC_READ_TIMEOUT,
        help="gRPC port: seconds a client has to finish its connection's handshake, and a call's request"
        " message to arrive once the call started; slower connections are closed, slower calls ended",
    )
    env_flag(
        group,
        "--registry-grpc-idle-timeout",
        type=positive_seconds,
        default=DEFAULT_GRPC_IDLE_TIMEOUT,
        help="gRPC port: seconds a connection may carry no call before it is closed (clients reconnect"
        " on their next call)",
    )
    env_flag(
        group,
        "--registry-grpc-max-calls-per-client",
        type=connection_count,
        default=DEFAULT_GRPC_MAX_CALLS_PER_CLIENT,
        help="gRPC port: calls (streams included) one client address may hold open at once; more are"
        " refused RESOURCE_EXHAUSTED (0: unlimited)",
    )


def edge_settings(args: argparse.Namespace) -> EdgeSettings | None:
    """The registry's settings, None when it is off. Exits (status 2, the reason on stderr) when
    only one of --registry-ca-cert and --registry-ca-key is given, or both --registry-db and
    --registry-store."""
    if not args.registry_db and not args.registry_store:
        return None
    if args.registry_db and args.registry_store:
        print("meshplane: give --registry-db (one machine) or --registry-store (shared), not both", file=sys.stderr)
        raise SystemExit(2)
    if (args.registry_ca_cert is None) != (args.registry_ca_key is None):
        print("meshplane: --registry-ca-cert and --registry-ca-key go together: give both or neither", file=sys.stderr)
        raise SystemExit(2)
    from meshplane.discovery.registry.registry import LeaseSettings
    from meshplane.registry_api.server import EdgeSettings

    return EdgeSettings(
        db=args.registry_db or "",
        store=args.registry_store or "",
        store_password_file=args.registry_store_password_file,
        store_pool=args.registry_store_pool,
        store_resync=args.registry_store_resync,
        address=args.registry_address,
        http_address=args.registry_http_address,
        tokens=args.registry_tokens,
        tls_certificate=args.registry_tls_cert,
        tls_key=args.registry_tls_key,
        client_ca=args.registry_client_ca,
        ca_certificate=args.registry_ca_cert,
        ca_key=args.registry_ca_key,
        trust_domain=args.registry_trust_domain,
        csr_from_class_tokens=not args.registry_csr_device_credentials_only,
        leases=LeaseSettings(
            default_ttl=args.lease_ttl,
            min_ttl=args.lease_min_ttl,
            max_ttl=args.lease_max_ttl,
            check_interval=args.lease_check_interval,
        ),
        register_rate=args.registry_rate,
        register_burst=args.registry_burst,
        http_read_timeout=args.registry_http_read_timeout,
        http_max_connections_per_client=args.registry_http_max_connections_per_client,
        grpc_read_timeout=args.registry_grpc_read_timeout,
        grpc_idle_timeout=args.registry_grpc_idle_timeout,
        grpc_max_calls_per_client=args.registry_grpc_max_calls_per_client,
    )
