"""`meshplane serve | validate | analyze | status | config | diff | changes | wait`: the command line.

Flags can also be set by `MESHPLANE_<FLAG>`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import io
import json
import os
import select
import signal
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshplane import __version__
from meshplane.bootstrap.cli import add_bootstrap_command, bootstrap_command
from meshplane.discovery.gateway_api.gateway_classes import DEFAULT_CONTROLLER_NAME
from meshplane.discovery.kubernetes_secrets import DEFAULT_SECRET_SELECTOR
from meshplane.discovery.meshplane_api.kinds import KINDS
from meshplane.flags import env_flag, env_switch, gateway_api_flags, meshplane_api_flags
from meshplane.registry_api.console import add_devices_command, devices_command
from meshplane.registry_api.migrate import add_registry_command, registry_command
from meshplane.registry_api.options import add_edge_arguments, edge_settings
from meshplane.simulate.cli import add_simulate_command, simulate_command

if TYPE_CHECKING:  # types only: `validate` imports the Gateway API modules when it runs
    from meshplane.discovery.gateway_api.conditions import GatewayApiStatus
    from meshplane.discovery.gateway_api.objects import GatewayApiObjects


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
    gateway_api_flags(kubernetes, default_controller_name=DEFAULT_CONTROLLER_NAME)
    meshplane_api_flags(kubernetes, kinds=[kind.name for kind in KINDS])
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
    add_registry_command(commands)
    add_simulate_command(commands)
    add_bootstrap_command(commands)

    validate = commands.add_parser("validate", help="check policy files without serving; exit 1 with the reasons")
    env_flag(validate, "--config", type=Path, help="policy file or directory")
    validate.add_argument(
        "--kubernetes",
        action="store_true",
        help="routes may name services the files do not define (Kubernetes will); checked when serving",
    )
    validate.add_argument(
        "--output", "-o", default="text", choices=["text", "json"], help="Gateway API status as [%(default)s]"
    )

    convert = commands.add_parser(
        "convert", help="policy files -> documents of meshplane's Kubernetes API (meshplane.io) and Secrets"
    )
    env_flag(convert, "--config", type=Path, help="policy file or directory")
    convert.add_argument(
        "--namespace", default="default", help="the namespace of what the files leave in 'default' [%(default)s]"
    )
    convert.add_argument("-o", "--output", dest="output_file", type=Path, help="write here (else to stdout)")
    convert.add_argument(
        "--no-secrets", dest="secrets", action="store_false", help="leave the files' secrets out (with a warning)"
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
        "--gateway", help="NAMESPACE/NAME of the Gateway a gateway proxy serves (implies --role gateway)"
    )
    config.add_argument("--port-offset", type=int, help="a gateway proxy's port offset, with --gateway")
    config.add_argument(
        "--config",
        type=Path,
        help="policy file or directory: show what the proxy would get from it, offline (no --server)",
    )
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

    analyze = commands.add_parser(
        "analyze", help="read a live cluster once and report every problem serving it would meet; exit 1 on errors"
    )
    analyze.add_argument("--kubernetes", action="store_true", required=True, help="analyze a Kubernetes cluster")
    analyze.add_argument(
        "--kubeconfig", type=Path, help="kubeconfig file (else $KUBECONFIG, ~/.kube/config, or in-cluster)"
    )
    analyze.add_argument("--context", help="the kubeconfig's context to use (else its current one)")
    analyze.add_argument(
        "--namespace", dest="namespaces", action="append", default=[], help="only this namespace; repeat for several"
    )
    analyze.add_argument("--output", "-o", default="text", choices=["text", "json"], help="[%(default)s]")
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
        if args.gateway is not None:
            if group.setdefault("role", "gateway") != "gateway":
                print("meshplane config: --gateway is for --role gateway", file=sys.stderr)
                return 2
            group["gateway"] = args.gateway
        if args.port_offset is not None:
            group["port_offset"] = str(args.port_offset)
        if args.node and group:
            print("meshplane config: give NODE or a group (--role, --site, --param), not both", file=sys.stderr)
            return 2
        if args.config is not None:
            if args.node:
                print("meshplane config: --config previews a group (--role …), not a node", file=sys.stderr)
                return 2
            return _offline_config(args.config, group, args.output)
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


@dataclasses.dataclass
class _Report:
    """The status each Gateway API object of a policy would get. `entries`: (kind, name, its
    status as the API would hold it: `conditions`, a Gateway's `listeners`, a route's `parents`;
    or `served: false` with a `reason`). `refused`: how many Accepted or ResolvedRefs conditions
    are False, or objects are not served at all."""

    entries: list[tuple[str, str, dict[str, Any]]] = dataclasses.field(default_factory=list)
    refused: int = 0

    def document(self) -> dict[str, Any]:
        found: dict[str, dict[str, Any]] = {}
        for kind, name, status in self.entries:
            found.setdefault(kind, {})[name] = status
        return found

    def text(self) -> str:
        lines = []
        for kind, name, status in self.entries:
            lines.append(f"{kind} {name}")
            if not status.get("served", True):
                lines.append(f"  not served: {status['reason']}")
            lines += _condition_lines(status.get("conditions", ()), "  ")
            for listener in status.get("listeners", ()):
                lines.append(f"  listener {listener['name']}: attachedRoutes {listener['attachedRoutes']}")
                lines += _condition_lines(listener["conditions"], "    ")
            for parent in status.get("parents", ()):
                ref = parent["parentRef"]
                where = f"{ref.get('namespace') or name.split('/')[0]}/{ref['name']}"
                part = "".join(f" {key} {ref[key]}" for key in ("sectionName", "port") if key in ref)
                lines.append(f"  parent {ref['kind']} {where}{part}")
                lines += _condition_lines(parent["conditions"], "    ")
        return "\n".join(lines) + "\n"


def _condition_lines(conditions: Sequence[Mapping[str, Any]], indent: str) -> list[str]:
    return [
        f"{indent}{c['type']} {c['status']} ({c['reason']})" + (f": {c['message']}" if c["message"] else "")
        for c in conditions
    ]


def _gateway_api_report(objects: GatewayApiObjects, status: GatewayApiStatus) -> _Report:
    """Every status condition each object of `objects` would get from `status` (`resolve`'s),
    `Programmed` as it stands while no gateway Envoy has taken the Gateway's listeners."""
    from meshplane.discovery.gateway_api.class_status import accepted_condition
    from meshplane.discovery.gateway_api.conditions import ACCEPTED, FALSE, RESOLVED_REFS, programmed

    report = _Report()

    def rendered(conditions: Iterable[Any]) -> list[dict[str, Any]]:
        found = []
        for condition in conditions:
            if condition.type in (ACCEPTED, RESOLVED_REFS) and condition.status == FALSE:
                report.refused += 1
            found.append(
                {
                    "type": condition.type,
                    "status": condition.status,
                    "reason": condition.reason,
                    "message": condition.message,
                }
            )
        return found

    for (_, name), parsed_class in sorted(objects.gateway_classes.items()):
        report.entries.append(("GatewayClass", name, {"conditions": rendered([accepted_condition(parsed_class)])}))
    for key, parsed_gateway in sorted(objects.gateways.items()):
        name = "/".join(key)
        gateway_status = status.gateways.get(key)
        if gateway_status is None:
            report.refused += 1
            reason = f"GatewayClass {parsed_gateway.value.gateway_class_name!r} is not one meshplane owns"
            report.entries.append(("Gateway", name, {"served": False, "reason": reason}))
            continue
        gateway_programmed, listener_programmed = programmed(gateway_status, serving=False)
        listeners = [
            {
                "name": listener.name,
                "attachedRoutes": listener.attached_routes,
                "conditions": rendered((*listener.conditions, listener_condition)),
            }
            for listener, listener_condition in zip(gateway_status.listeners, listener_programmed, strict=True)
        ]
        conditions = rendered((*gateway_status.conditions, gateway_programmed))
        report.entries.append(("Gateway", name, {"conditions": conditions, "listeners": listeners}))
    for kind, routes, statuses in (
        ("HTTPRoute", objects.http_routes, status.http_routes),
        ("GRPCRoute", objects.grpc_routes, status.grpc_routes),
    ):
        for key in sorted(routes):
            name = "/".join(key)
            route_status = statuses.get(key)
            if route_status is None:
                report.refused += 1
                reason = "its parentRefs name no Gateway meshplane serves"
                report.entries.append((kind, name, {"served": False, "reason": reason}))
                continue
            parents = []
            for parent in route_status.parents:
                ref = parent.parent
                shown: dict[str, Any] = {"group": ref.group, "kind": ref.kind, "name": ref.name}
                shown |= {
                    k: v
                    for k, v in (("namespace", ref.namespace), ("sectionName", ref.section_name), ("port", ref.port))
                    if v is not None
                }
                parents.append({"parentRef": shown, "conditions": rendered(parent.conditions)})
            report.entries.append((kind, name, {"parents": parents}))
    return report


def _validate(path: Path, *, open_world: bool, output: str) -> int:
    """`meshplane validate`: every error (stderr), then, when the files hold Gateway API documents,
    every status condition each object would get (stdout). Exit 1 on an error, or when a condition
    says part of a Gateway API object is not served as written (see `gateway_api_report`)."""
    from meshplane.discovery.policy_files import check_policy

    check = asyncio.run(check_policy(path, open_world=open_world))
    for line in (*check.errors, *check.warnings):
        print(line, file=sys.stderr)
    for policy in check.mesh.device_policies:  # accepted, but not enforced as written
        for warning in policy.unenforced():
            print(f"warning: {warning}", file=sys.stderr)
    found = _gateway_api_report(check.gateway_api, check.gateway_status)
    if found.entries:
        if output == "json":
            json.dump(found.document(), sys.stdout, indent=2)
            sys.stdout.write("\n")
        else:
            sys.stdout.write(found.text())
    if check.errors:
        print(f"{path}: {len(check.errors)} error(s)", file=sys.stderr)
        return 1
    if found.refused:
        print(f"{path}: {found.refused} Gateway API condition(s) say a part is not served as written", file=sys.stderr)
        return 1
    print(f"{path}: valid", file=sys.stderr if output == "json" else sys.stdout)
    return 0


def _offline_config(path: Path, query: dict[str, str], output: str) -> int:
    """`meshplane config --config PATH --role …`: what a proxy of the group would get from the
    policy at PATH, translated here as the control plane would; exit 1 when the policy has errors,
    2 when the group is not one a node could make."""
    from meshplane.discovery.policy_files import check_policy
    from meshplane.status import console
    from meshplane.status.config_dump import DumpError, group_dump, group_from_query
    from meshplane.xds.publisher import build_snapshot
    from meshplane.xds.server.nodes import group_problem

    try:
        group = group_from_query(query)
    except DumpError as error:
        print(f"meshplane config: {error}", file=sys.stderr)
        return 2
    if (problem := group_problem(group)) is not None:
        print(f"meshplane config: {problem}", file=sys.stderr)
        return 2
    check = asyncio.run(check_policy(path))
    if check.errors:
        for reason in check.errors:
            print(reason, file=sys.stderr)
        print(f"{path}: {len(check.errors)} error(s): nothing would be served from it", file=sys.stderr)
        return 1
    snapshot, warnings = build_snapshot(check.mesh, group)
    dump = group_dump(group, snapshot, authorized=False)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if output == "json":
        json.dump(dump, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    sys.stdout.write(f"group {dump['group']}: from {path}\n")
    headers, rows = console.config_rows(dump)
    console.print_table(headers, rows, sys.stdout, rich=sys.stdout.isatty())
    return 0


def _command(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "devices":
        return devices_command(args)
    if args.command == "registry":
        return registry_command(args)
    if args.command == "simulate":
        return simulate_command(args)
    if args.command == "bootstrap":
        return bootstrap_command(args)
    if args.command in ("status", "config", "diff", "changes", "wait"):
        return _operator_command(args)
    if args.command == "analyze":
        from meshplane.discovery.analyze import analyze_command

        return asyncio.run(
            analyze_command(args.kubeconfig, args.context, args.namespaces, args.output, sys.stdout, sys.stderr)
        )
    if args.config is None and not (args.command == "serve" and args.kubernetes):
        print("meshplane: --config (or MESHPLANE_CONFIG) is required", file=sys.stderr)
        if args.command == "serve":
            print("meshplane: (or --kubernetes, to serve what Kubernetes discovery finds)", file=sys.stderr)
        return 2
    if args.command == "validate":
        return _validate(args.config, open_world=args.kubernetes, output=args.output)
    if args.command == "convert":
        from meshplane.discovery.meshplane_api.convert import convert_command

        return convert_command(args.config, args.namespace, args.output_file, args.secrets, sys.stderr, sys.stdout)

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
        gateway_api=args.gateway_api,
        gateway_controller_name=args.gateway_controller_name,
        meshplane_api=args.meshplane_api,
        watch_namespaces=tuple(n.strip() for n in args.watch_namespaces.split(",") if n.strip()),
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
