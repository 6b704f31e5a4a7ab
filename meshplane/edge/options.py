"""The edge registry's command-line flags (`meshplane serve --registry-…`), each also settable as
`MESHPLANE_<FLAG>`. Kept apart from cli.py so the CLI stays one screen; imports nothing heavy."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

# Repeated from meshplane.edge.api (which imports grpc: too heavy for the CLI's start); a test keeps them equal.
DEFAULT_REGISTER_RATE = 100.0
DEFAULT_REGISTER_BURST = 1_000

if TYPE_CHECKING:
    from meshplane.edge.server import EdgeSettings


def _env(name: str, default: str) -> str:
    return os.environ.get(f"MESHPLANE_{name}", default)


def add_edge_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("edge registry (docs/edge.md); on when --registry-db is given")
    group.add_argument(
        "--registry-db",
        default=_env("REGISTRY_DB", "") or None,
        help="SQLite file holding registrations (`:memory:`: keep none across restarts) [MESHPLANE_REGISTRY_DB]",
    )
    group.add_argument(
        "--registry-address",
        default=_env("REGISTRY_ADDRESS", "0.0.0.0:18001"),
        help="gRPC registry listen address [%(default)s]",
    )
    group.add_argument(
        "--registry-http-address",
        default=_env("REGISTRY_HTTP_ADDRESS", "0.0.0.0:18002"),
        help="the registry's JSON mirror listen address [%(default)s]",
    )
    group.add_argument(
        "--registry-tokens",
        type=Path,
        default=_env("REGISTRY_TOKENS", "") or None,
        help="YAML file of SHA-256 hashed bearer tokens per device, class or operator",
    )
    group.add_argument("--registry-tls-cert", type=Path, default=_env("REGISTRY_TLS_CERT", "") or None)
    group.add_argument("--registry-tls-key", type=Path, default=_env("REGISTRY_TLS_KEY", "") or None)
    group.add_argument(
        "--registry-client-ca",
        type=Path,
        default=_env("REGISTRY_CLIENT_CA", "") or None,
        help="with TLS: CA of device client certificates (an alternative to tokens)",
    )
    group.add_argument("--lease-ttl", type=float, default=float(_env("LEASE_TTL", "30")), help="[%(default)s]")
    group.add_argument("--lease-min-ttl", type=float, default=float(_env("LEASE_MIN_TTL", "5")), help="[%(default)s]")
    group.add_argument(
        "--lease-max-ttl", type=float, default=float(_env("LEASE_MAX_TTL", "3600")), help="[%(default)s]"
    )
    group.add_argument(
        "--lease-check-interval",
        type=float,
        default=float(_env("LEASE_CHECK_INTERVAL", "1.0")),
        help="seconds between sweeps for expired leases [%(default)s]",
    )
    group.add_argument(
        "--registry-rate",
        type=float,
        default=float(_env("REGISTRY_RATE", str(DEFAULT_REGISTER_RATE))),
        help="Register calls a second per principal (token bucket; 0: unlimited; heartbeats are not limited)"
        " [%(default)s]",
    )
    group.add_argument(
        "--registry-burst",
        type=int,
        default=int(_env("REGISTRY_BURST", str(DEFAULT_REGISTER_BURST))),
        help="Register calls a principal may make at once before --registry-rate applies [%(default)s]",
    )


def edge_settings(args: argparse.Namespace) -> EdgeSettings | None:
    if not args.registry_db:
        return None
    from meshplane.discovery.edge.registry import LeaseSettings
    from meshplane.edge.server import EdgeSettings

    return EdgeSettings(
        db=args.registry_db,
        address=args.registry_address,
        http_address=args.registry_http_address,
        tokens=args.registry_tokens,
        tls_certificate=args.registry_tls_cert,
        tls_key=args.registry_tls_key,
        client_ca=args.registry_client_ca,
        leases=LeaseSettings(
            default_ttl=args.lease_ttl,
            min_ttl=args.lease_min_ttl,
            max_ttl=args.lease_max_ttl,
            check_interval=args.lease_check_interval,
        ),
        register_rate=args.registry_rate,
        register_burst=args.registry_burst,
    )
