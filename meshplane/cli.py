"""`meshplane serve | validate | status | config | diff | changes | wait`: the command line.

Flags can also be set by `MESHPLANE_<FLAG>`.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import select
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from meshplane import __version__
from meshplane.bootstrap.cli import add_bootstrap_command, bootstrap_command
from meshplane.discovery.kubernetes_secrets import DEFAULT_SECRET_SELECTOR
from meshplane.flags import env_flag, env_switch
from meshplane.registry_api.console import add_devices_command, devices_command
from meshplane.registry_api.options import add_edge_arguments, edge_settings
from meshplane.simulate.cli import add_simulate_command, simulate_command


def _env(name: str, default: str) -> str:
    return os.environ.get(f"MESHPLANE_{name}", default)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshplane", description="An Envoy xDS control plane.")
    parser.add_argument("--version", action="version", version=f"meshplane {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve xDS from policy files and/or Kubernetes")
    env_flag(serve, "--config", type=Path, help="policy file or directory")
    kubernetes = serve.add_argument_group("Kubernetes discovery (docs/kubernetes.md)")
    env_switch(kubernetes, "--kubernetes", help="discover Services and EndpointSlices from Kubernetes")
    env_flag(
        kubernetes, "--kubeconfig", type=Path, help="kubeconfig file (else $KUBECONFIG, ~/.kube/config, or in-cluster)"
    )
    kubernetes.add_argument(
        "--namespace",
        dest="namespaces",
        action="append",
        default=None,
        help="watch this namespace; repeat for several; all when absent [MESHPLANE_NAMESPACES, comma-separated]",
    )
    env_flag(
        kubernetes, "--service-selector", default="", help="label selector for Services, e.g. 'mesh=on,tier!=batch'"
    )
    env_switch(
        kubernetes,
        "--kubernetes-secrets",
        help="serve TLS certificates and CA bundles of labelled Kubernetes Secrets over SDS (docs/kubernetes.md;"
        " needs deploy/kubernetes/secrets/)",
    )
    env_flag(
        kubernetes,
        "--secret-selector",
        default=DEFAULT_SECRET_SELECTOR,
        help="with --kubernetes-secrets: label selector for the Secrets served",
    )
    env_flag(serve, "--xds-address", default="0.0.0.0:18000", help="gRPC xDS listen address")
    env_flag(serve, "--status-address", default="0.0.0.0:9900", help="operator HTTP listen address")
    env_flag(serve, "--log-level", default="info", choices=["debug", "info", "warning", "error"], help="log level")
    env_flag(
        serve,
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="text: readable lines; json: one object a line",
    )
    env_flag(
        serve,
        "--admin-token",
        secret=True,
        help="token that unlocks config dumps holding secrets (prefer the variable: flags show in ps)",
    )
    env_flag(serve, "--tls-cert", type=Path, help="xDS port TLS certificate (PEM)")
    env_flag(serve, "--tls-key", type=Path, help="its private key (PEM)")
    env_flag(
        serve,
        "--client-ca",
        type=Path,
        help="require client certificates from this CA (mTLS); proxies' roles then come from their SANs",
    )
    env_flag(
        serve,
        "--xds-tokens",
        type=Path,
        help="bearer tokens (SHA-256 digests) bound to roles and sites; required of proxies without a certificate",
    )
    env_switch(
        serve,
        "--insecure-serve-keys-without-client-auth",
        help="serve secrets holding private keys over SDS to proxies neither --client-ca nor --xds-tokens"
        " authenticates (anyone reaching the xDS port could fetch them); off: withheld from them",
    )
    env_flag(
        serve, "--poll-interval", type=float, default=1.0, help="seconds between checks of the policy files for changes"
    )
    env_flag(serve, "--debounce-quiet", type=float, default=0.1, help="rebuild this many seconds after the last change")
    env_flag(
        serve, "--debounce-max", type=float, default=1.0, help="but no later than this many seconds after the first"
    )
    limits = serve.add_argument_group("input limits (SECURITY.md)")
    env_flag(
        limits,
        "--max-streams-per-connection",
        type=int,
        default=1000,
        help="concurrent xDS streams on one HTTP/2 connection",
    )
    env_flag(
        limits,
        "--max-streams-per-client",
        type=int,
        default=1000,
        help="concurrent xDS streams per client certificate (mTLS) or else per IP; 0: unlimited",
    )
    env_flag(
        limits,
        "--max-policy-file-size",
        type=int,
        default=1024 * 1024,
        help="bytes; a larger policy file is refused (the last good config stays)",
    )
    add_edge_arguments(serve)

    add_devices_command(commands)
    add_simulate_command(commands)
    add_bootstrap_command(commands)

    validate = commands.add_parser("validate", help="check policy files without serving; exit 1 with the reasons")
    env_flag(validate, "--config", type=Path, help="policy file or directory")
    validate.add_argument(
        "--kubernetes",
        action="store_true",
        help="routes may name services the files do not define (Kubernetes will); checked when serving",
    )

    server = argparse.ArgumentParser(add_help=False)
    env_flag(server, "--server", default="http://127.0.0.1:9900", help="the control plane's status endpoint")
    server.add_argument("--output", "-o", default="table", choices=["table", "json"], help="[%(default)s]")

    status = commands.add_parser(
        "status",
        parents=[server],
        help="sync state of every connected proxy, per xDS type (or of the sources: `status sources`)",
    )
    status.add_argument("what", nargs="?", choices=["proxies", "sources"], default="proxies")
    status.add_argument("--role", help="only proxies of this role")
    status.add_argument("--site", help="only proxies of this edge site")
    status.add_argument("--stale", action="store_true", help="only proxies with a type STALE or NACKED")

    config = commands.add_parser(
        "config",
        parents=[server],
        help="what a proxy was last sent (NODE), or what a proxy of a kind would get now (--role, --site, --param)",
    )
    config.add_argument("node", nargs="?", help="node id of a connected proxy")
    config.add_argument("--role", help="a proxy role: dump what such a proxy would get now")
    config.add_argument("--site", help="an edge site, with --role")
    config.add_argument(
        "--param", action="append", default=[], metavar="FIELD=VALUE", help="another group field (e.g. zone=a)"
    )
    env_flag(config, "--admin-token", secret=True, help="include Secret resources (redacted)")

    diff = commands.add_parser(
        "diff",
        parents=[server],
        help="what a proxy holds against what it should have now; exit 0 in sync, 1 differs, 2 on errors",
    )
    diff.add_argument("node", help="node id of a connected proxy")
    diff.add_argument("--json", dest="output", action="store_const", const="json", help="the same as --output json")

    changes = commands.add_parser(
        "changes", parents=[server], help="the last published generations, their causes, and which proxies have them"
    )
    changes.add_argument("--limit", type=int, help="the newest N generations [server's default: 20]")
    changes.add_argument("--json", dest="output", action="store_const", const="json", help="the same as --output json")

    wait = commands.add_parser(
        "wait",
        parents=[server],
        help="wait until every proxy has a generation; exit 0 reached, 1 NACKed, 2 timed out, 3 on errors",
    )
    wait.add_argument("--generation", required=True, help="a generation number, or `latest` (the newest now)")
    wait.add_argument("--timeout", type=float, default=120.0, help="seconds [%(default)s]")
    return parser


def _operator_command(args: argparse.Namespace) -> int:
    """`status`, `config`, `diff`, `changes` and `wait`: read a running control plane's status endpoint."""
    from meshplane.status import console

    if args.command == "wait":
        return console.wait_command(args.server, args.generation, timeout=args.timeout)
    if args.command == "diff":
        try:
            return console.diff_command(args.server, args.node, output=args.output)
        except console.ConsoleError as error:
            print(f"meshplane diff: {error}", file=sys.stderr)
            return 2  # 1 says the proxy differs: an error must not read as an answer
    try:
        if args.command == "changes":
            return console.changes_command(args.server, limit=args.limit, output=args.output)
        if args.command == "status" and args.what == "sources":
            return console.sources_command(args.server, output=args.output)
        if args.command == "status":
            return console.status_command(
                args.server, role=args.role, site=args.site, stale=args.stale, output=args.output
            )
        group = dict(param.partition("=")[::2] for param in args.param)
        group.update({key: value for key, value in (("role", args.role), ("site", args.site)) if value})
        if args.node and group:
            print("meshplane config: give NODE or a group (--role, --site, --param), not both", file=sys.stderr)
            return 2
        return console.config_command(args.server, args.node, group, token=args.admin_token, output=args.output)
    except console.ConsoleError as error:
        print(f"meshplane {args.command}: {error}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command; its exit status. When the reader of standard output goes away
    (`meshplane devices list | head`), the command ends quietly with status 141, as a Unix tool
    killed by SIGPIPE does (128 + 13): no traceback, nothing more written."""
    try:
        try:
            code = _command(argv)
        finally:  # `--help` too: output still buffered fails here, where it can be caught, not at exit
            sys.stdout.flush()
        return code
    except BrokenPipeError:
        if not _stdout_closed():
            raise  # a socket's, not ours to hide
        # The interpreter flushes stdout again at exit and would report that failure too: point the
        # descriptor at /dev/null, so the buffered rest goes nowhere, quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 128 + signal.SIGPIPE


def _stdout_closed() -> bool:
    """Whether standard output is a pipe (or socket) whose reader has gone: polling it reports an error."""
    try:
        descriptor = sys.stdout.fileno()
    except (AttributeError, ValueError, io.UnsupportedOperation):  # replaced by a test or a caller
        return False
    poller = select.poll()
    poller.register(descriptor, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))


def _command(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "devices":
        return devices_command(args)
    if args.command == "simulate":
        return simulate_command(args)
    if args.command == "bootstrap":
        return bootstrap_command(args)
    if args.command in ("status", "config", "diff", "changes", "wait"):
        return _operator_command(args)
    if args.config is None and not (args.command == "serve" and args.kubernetes):
        print("meshplane: --config (or MESHPLANE_CONFIG) is required", file=sys.stderr)
        if args.command == "serve":
            print("meshplane: (or --kubernetes, to serve what Kubernetes discovery finds)", file=sys.stderr)
        return 2
    if args.command == "validate":
        from meshplane.discovery.policy_files import validate_policy

        errors = asyncio.run(validate_policy(args.config, open_world=args.kubernetes))
        for error in errors:
            print(error, file=sys.stderr)
        if errors:
            print(f"{args.config}: {len(errors)} error(s)", file=sys.stderr)
            return 1
        print(f"{args.config}: valid")
        return 0

    from meshplane.app import Settings, TokensFileError, serve
    from meshplane.discovery.registry.store import StoreError
    from meshplane.logs import configure_logging
    from meshplane.tls import TlsFilesError

    configure_logging(args.log_level, args.log_format)
    settings = Settings(
        config=args.config,
        xds_address=args.xds_address,
        status_address=args.status_address,
        poll_interval=args.poll_interval,
        debounce_quiet=args.debounce_quiet,
        debounce_max=args.debounce_max,
        kubernetes=args.kubernetes,
        kubeconfig=args.kubeconfig,
        namespaces=tuple(args.namespaces or [n.strip() for n in _env("NAMESPACES", "").split(",") if n.strip()]),
        service_selector=args.service_selector,
        kubernetes_secrets=args.kubernetes_secrets,
        secret_selector=args.secret_selector,
        admin_token=args.admin_token,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        client_ca=args.client_ca,
        xds_tokens=args.xds_tokens,
        insecure_serve_keys_without_client_auth=args.insecure_serve_keys_without_client_auth,
        edge=edge_settings(args),
        max_streams_per_connection=args.max_streams_per_connection,
        max_streams_per_client=args.max_streams_per_client,
        max_policy_file_size=args.max_policy_file_size,
    )
    problems = settings.problems()
    for problem in problems:
        print(f"meshplane: {problem}", file=sys.stderr)
    if problems:
        return 2
    try:
        asyncio.run(serve(settings))
    except (StoreError, TlsFilesError, TokensFileError) as error:  # a damaged store, bad TLS or tokens files
        print(f"meshplane: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
