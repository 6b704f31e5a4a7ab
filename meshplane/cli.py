"""`meshplane serve | validate`: the command line. Every flag can also be set by `MESHPLANE_<FLAG>`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from meshplane import __version__


def _env(name: str, default: str) -> str:
    return os.environ.get(f"MESHPLANE_{name}", default)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshplane", description="An Envoy xDS control plane.")
    parser.add_argument("--version", action="version", version=f"meshplane {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve xDS from policy files")
    serve.add_argument(
        "--config", type=Path, default=_env("CONFIG", "") or None, help="policy file or directory [MESHPLANE_CONFIG]"
    )
    serve.add_argument(
        "--xds-address", default=_env("XDS_ADDRESS", "0.0.0.0:18000"), help="gRPC xDS listen address [%(default)s]"
    )
    serve.add_argument(
        "--status-address",
        default=_env("STATUS_ADDRESS", "0.0.0.0:9900"),
        help="operator HTTP listen address [%(default)s]",
    )
    serve.add_argument("--log-level", default=_env("LOG_LEVEL", "info"), choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--poll-interval",
        type=float,
        default=float(_env("POLL_INTERVAL", "1.0")),
        help="seconds between checks of the policy files for changes [%(default)s]",
    )
    serve.add_argument(
        "--debounce-quiet",
        type=float,
        default=float(_env("DEBOUNCE_QUIET", "0.1")),
        help="rebuild this many seconds after the last change [%(default)s]",
    )
    serve.add_argument(
        "--debounce-max",
        type=float,
        default=float(_env("DEBOUNCE_MAX", "1.0")),
        help="but no later than this many seconds after the first [%(default)s]",
    )

    validate = commands.add_parser("validate", help="check policy files without serving; exit 1 with the reasons")
    validate.add_argument("--config", type=Path, default=_env("CONFIG", "") or None, required=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.config is None:
        print("meshplane: --config (or MESHPLANE_CONFIG) is required", file=sys.stderr)
        return 2
    if args.command == "validate":
        from meshplane.discovery.policy_files import validate_policy

        errors = asyncio.run(validate_policy(args.config))
        for error in errors:
            print(error, file=sys.stderr)
        if errors:
            print(f"{args.config}: {len(errors)} error(s)", file=sys.stderr)
            return 1
        print(f"{args.config}: valid")
        return 0

    from meshplane.app import Settings, serve

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    settings = Settings(
        config=args.config,
        xds_address=args.xds_address,
        status_address=args.status_address,
        poll_interval=args.poll_interval,
        debounce_quiet=args.debounce_quiet,
        debounce_max=args.debounce_max,
    )
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
